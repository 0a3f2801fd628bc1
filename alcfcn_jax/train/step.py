"""The jitted, sharded train step ``(state, batch) -> (state, metrics)`` and its batch.

The state is replicated and donated, the batch sharded over the ``("data",)`` mesh axis; the same
code runs on one CPU, 8 fake CPU devices, a GPU box or a multi-host pod.

Reference step semantics (reference spec section 7): the loss is the mean over the batch of the
per-image losses (the reference trains at batch 1), and the optimizer step is skipped when the
loss is exactly 0; here that is a ``jnp.where`` between the updated and the previous parameters
and optimizer state. A non-finite loss or gradient also leaves the state unchanged (metric
``nonfinite``); the loop then stops with an error naming the step and the term.

Host overlap (``loss_splits``): the LCFCN targets come from a host callback that needs the
forward's probabilities and blocks the backward. With ``loss_splits=S`` the step computes the
forward and the loss of each of S parts of every device's batch separately (the images' losses are
the same, only summed in another order), so XLA:CPU's executor runs one part's callback while it
computes another part's forward or backward (the step profile in docs/results.md). It changes no
random draw only where there is no dropout and no embedding term, so ``auto_loss_splits`` uses it
only there, and only on the CPU backend, where the callback and the device work share the cores.

Dropout: each step reseeds the model's dropout stream with ``fold_in(rng, step)``. The masks are
drawn for the global batch, so every image (hence every device's shard) gets its own mask, and
the result does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alcfcn_jax import sharding as shd
from alcfcn_jax.data.pipeline import TAPS_PREFIX, split_taps
from alcfcn_jax.losses.affinity import AffinityLoss, affinity_loss
from alcfcn_jax.losses.embedding import EmbeddingLoss, embedding_loss
from alcfcn_jax.losses.registry import per_image_loss
from alcfcn_jax.models.outputs import IGNORE, fish_probability
from alcfcn_jax.train.state import Graphs, TrainState

# Batch entries the train step reads; everything else (ids, habitats, counts) stays on the host.
# With the frozen-trunk feature cache, ``image`` is replaced by the trunk's taps (``taps/<name>``).
STEP_KEYS = ("image", "points", "mask")


def forward(
    model: nnx.Module,
    batch: Mapping[str, jax.Array],
    *,
    train: bool,
    walk: bool = True,
    return_aux: bool = False,
):
    """The model on a batch of images, or its heads on a batch of cached taps.

    ``walk=False`` (A-LCFCN only) returns the activation logits without the random walk.
    """
    kwargs = {"train": train}
    if return_aux:
        kwargs["return_aux"] = True
    if not walk:
        kwargs["walk"] = False
    taps = split_taps(batch)
    if taps is not None:
        return model.from_taps(taps, tuple(batch["points"].shape[1:3]), **kwargs)
    return model(batch["image"], **kwargs)


# Parts per device batch that ``auto_loss_splits`` asks for (measured on the 2-core CPU, the
# frames default's step: 0.45 s with 1 part, 0.43 with 2, 0.41 with 4, 0.42 with 8;
# docs/results.md).
AUTO_LOSS_SPLITS = 4


def _has_dropout(model: nnx.Module) -> bool:
    return any(isinstance(m, nnx.Dropout) and float(m.rate) > 0 for _, m in nnx.iter_graph(model))


def auto_loss_splits(
    model: nnx.Module, loss_name: str, per_device_batch: int, *, embedding: bool = False
) -> int:
    """The ``loss_splits`` that training uses when ``config.train.loss_splits`` is 0 (auto).

    ``AUTO_LOSS_SPLITS`` (or the largest divisor of the per-device batch below it) on the CPU
    backend for the LCFCN loss (the only one with a host callback), when the model has no
    dropout and there is no embedding term (their random draws depend on the batch they see);
    1 otherwise.
    """
    if jax.default_backend() != "cpu" or loss_name != "lcfcn" or embedding or _has_dropout(model):
        return 1
    return max(d for d in range(1, AUTO_LOSS_SPLITS + 1) if per_device_batch % d == 0)


def split_parts(batch: Mapping[str, jax.Array], parts: int, devices: int) -> list[dict]:
    """``parts`` sub-batches, each holding ``1/parts`` of every device's images.

    Image ``d * n + j`` of device ``d``'s ``n`` images goes to part ``j % parts``: the leading
    axis is reshaped to (devices, n / parts, parts) and part ``j`` taken, so no image changes
    device. Concatenating the parts' per-image values gives the batch's in another order.
    """
    if parts == 1:
        return [dict(batch)]
    b = next(iter(batch.values())).shape[0]
    if b % (devices * parts):
        raise ValueError(
            f"loss_splits={parts} does not divide the per-device batch ({b} images on "
            f"{devices} devices); set config.train.loss_splits to a divisor or 0 (auto)"
        )
    n = b // devices

    def part(x: jax.Array, j: int) -> jax.Array:
        y = x.reshape((devices, n // parts, parts) + x.shape[1:])[:, :, j]
        return y.reshape((b // parts,) + x.shape[1:])

    return [{k: part(v, j) for k, v in batch.items()} for j in range(parts)]


def _snapshot(tree: Any) -> Any:
    """A structurally new copy of a state tree holding the same (immutable) arrays."""
    return jax.tree.map(lambda x: x, tree)


def _global_norm(tree: Any) -> jax.Array:
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros((), jnp.float32)


def make_train_step(
    graphs: Graphs,
    mesh: jax.sharding.Mesh,
    *,
    loss_name: str,
    learning_rate: float | optax.Schedule,
    skip_zero_loss: bool = True,
    loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]] | None = None,
    walk: bool = True,
    affinity: AffinityLoss | None = None,
    embedding: EmbeddingLoss | None = None,
    loss_splits: int = 1,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted train step ``(state, batch) -> (state, metrics)``.

    Args:
      graphs: from :func:`create_train_state`.
      mesh: the device mesh (outputs are replicated over it; call the step under
        ``jax.set_mesh(mesh)`` so the LCFCN loss can place one host callback per device shard).
      loss_name: ``config.loss.name``.
      learning_rate: the learning rate or its schedule of the step, reported in the metrics.
      skip_zero_loss: skip the update when the loss is exactly 0 (the reference does).
      loss_fn: override of :func:`per_image_loss` (tests).
      walk: ``False`` trains the activation logits of an A-LCFCN model without the random walk
        (the warm-up of ``train.walk_warmup_steps``).
      affinity: adds the affinity-learning term (metric ``loss_affinity``, unweighted).
      embedding: adds ``embedding.weight`` times the WISE embedding term (metric
        ``loss_embedding``, unweighted); its pixels are drawn with a seed folded from the
        state's rng and the step, so a rerun draws the same pairs.
      loss_splits: compute the forward and the loss in this many parts of every device's batch
        (module docstring; :func:`auto_loss_splits`); 1 = the whole batch at once.

    The batch holds ``image`` or the cached taps ``taps/<name>`` (see :func:`forward`).

    Returns:
      The step. Its metrics (replicated scalars): ``loss``, ``loss_<term>`` for LCFCN terms,
      ``grad_norm``, ``param_norm``, ``update_norm``, ``lr``, ``skipped`` (1.0 when the update was
      not applied), ``nonfinite`` (1.0 when loss or gradient was NaN/inf), ``nonfinite_output``
      (1.0 when the model's outputs themselves were NaN/inf: diverged weights).
    """
    compute = loss_fn or functools.partial(per_image_loss, loss_name)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        # Snapshots (new Variable objects around the same immutable arrays): merge may reuse the
        # input Variables, which the optimizer then updates in place.
        params_before = _snapshot(nnx.filter_state(state["model"], graphs.wrt))
        opt_before = _snapshot(state["opt"])
        model = nnx.merge(graphs.model, state["model"])
        opt = nnx.merge(graphs.opt, state["opt"])
        step = state["step"]
        nnx.reseed(model, dropout=jax.random.fold_in(state["rng"], step))

        def objective(m):
            parts = [part_loss(m, b) for b in split_parts(batch, loss_splits, mesh.devices.size)]
            per_image = jnp.concatenate([p[0] for p in parts])
            terms = {k: jnp.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
            outputs_ok = functools.reduce(jnp.logical_and, [p[2] for p in parts])
            return jnp.mean(per_image), ({k: jnp.mean(v) for k, v in terms.items()}, outputs_ok)

        def part_loss(m, batch):
            if affinity is None and embedding is None:
                logits = forward(m, batch, train=True, walk=walk)
            else:
                logits, aux = forward(m, batch, train=True, walk=walk, return_aux=True)
            outputs_ok = jnp.all(jnp.isfinite(logits))
            per_image, terms = compute(logits, batch)
            if affinity is not None:
                labels = affinity.labels(aux["cam"], batch)
                aff = affinity_loss(aux["aff_feats"], labels, radius=affinity.radius)
                per_image = per_image + affinity.weight * aff
                terms = {**terms, "affinity": aff}
            if embedding is not None:
                if "embedding" not in aux:
                    raise ValueError(
                        "the embedding term needs a model with an embedding branch "
                        "(config.model.embedding_dim > 0)"
                    )
                seed = jax.random.bits(jax.random.fold_in(state["rng"], step), dtype=jnp.uint32)
                emb = embedding_loss(
                    aux["embedding"],
                    fish_probability(logits),
                    batch["points"],
                    seed,
                    embedding,
                )
                per_image = per_image + embedding.weight * emb
                terms = {**terms, "embedding": emb}
            return per_image, terms, outputs_ok

        (loss, (terms, outputs_ok)), grads = nnx.value_and_grad(
            objective, argnums=nnx.DiffState(0, graphs.wrt), has_aux=True
        )(model)
        opt.update(model, grads)
        params_after = nnx.state(model, graphs.wrt)
        opt_after = nnx.state(opt)

        grad_norm = _global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite & (loss != 0) if skip_zero_loss else finite

        def pick(new, old):
            return jnp.where(apply, new, old)

        params = jax.tree.map(pick, params_after, params_before)
        nnx.update(model, params)
        nnx.update(opt, jax.tree.map(pick, opt_after, opt_before))
        update_norm = _global_norm(jax.tree.map(jnp.subtract, params, params_before))
        metrics = {
            "loss": loss,
            **{f"loss_{k}": v for k, v in terms.items()},
            "grad_norm": grad_norm,
            "param_norm": _global_norm(params),
            "update_norm": update_norm,
            "lr": jnp.asarray(
                learning_rate(step) if callable(learning_rate) else learning_rate, jnp.float32
            ),
            "skipped": 1.0 - apply.astype(jnp.float32),
            "nonfinite": 1.0 - finite.astype(jnp.float32),
            # The model's own outputs were NaN/inf: its weights (the state before this step)
            # have diverged, not just this batch's loss.
            "nonfinite_output": 1.0 - outputs_ok.astype(jnp.float32),
        }
        new_state = {
            "model": nnx.state(model),
            "opt": nnx.state(opt),
            "step": step + 1,
            "rng": state["rng"],
        }
        return new_state, metrics

    replicated = shd.replicated(mesh)
    return jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))


def prepare_batch(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The numeric entries the step reads (``image`` or the cached ``taps/*``); padded pixels
    become unlabelled (255).

    Padding (``pad`` False) gets ``points`` and ``mask`` 255 so no loss term sees it as a fish
    click or a labelled pixel.
    """
    out = {k: np.asarray(batch[k]) for k in STEP_KEYS if k in batch}
    taps = {k: np.asarray(v) for k, v in batch.items() if k.startswith(TAPS_PREFIX)}
    missing = [k for k in STEP_KEYS if k not in out and not (k == "image" and taps)]
    if missing:
        raise KeyError(f"training batch lacks {missing}; it has {sorted(batch)}")
    pad = batch.get("pad")
    if pad is not None and not np.all(pad):
        pad = np.asarray(pad, bool)
        out["points"] = np.where(pad, out["points"], IGNORE).astype(np.int32)
        out["mask"] = np.where(pad, out["mask"], IGNORE).astype(np.int32)
    if taps:
        out.pop("image", None)
        out.update(taps)
    else:
        out["image"] = out["image"].astype(np.float32)
    out["points"] = out["points"].astype(np.int32)
    out["mask"] = out["mask"].astype(np.int32)
    return out
