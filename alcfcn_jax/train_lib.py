"""Training: train state, the sharded jitted train step, and the train/validate/checkpoint loop.

The train state is a plain dict pytree ``{"model", "opt", "step", "rng"}``: the model's and the
optimizer's NNX states (``nnx.split`` once), the number of completed steps and the base PRNG key.
``make_train_step`` returns a pure ``jax.jit`` function ``(state, batch) -> (state, metrics)`` with
the state donated and replicated, the batch sharded over the ``("data",)`` mesh axis. The same code
runs on one CPU, 8 fake CPU devices, a GPU box or a multi-host pod (each process feeds its local
slice; ``sharding.to_global`` builds the global arrays).

Reference step semantics (reference spec section 7): the loss is the mean over the batch of the
per-image losses (the reference trains at batch 1), and the optimizer step is skipped when the
loss is exactly 0; here that is a ``jnp.where`` between the updated and the previous parameters
and optimizer state. A non-finite loss or gradient also leaves the state unchanged; the loop then
stops with an error naming the step and the term, after writing the last good state.

Dropout: each step reseeds the model's dropout stream with ``fold_in(rng, step)``. The masks are
drawn for the global batch, so every image (hence every device's shard) gets its own mask, and
the result does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from alcfcn_jax import config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import Checkpointer
from alcfcn_jax.data.source import example_count
from alcfcn_jax.losses.affinity import affinity_labels, affinity_loss
from alcfcn_jax.metric_writer import MetricWriter

IGNORE = 255
TrainState = dict[str, Any]
# Batch entries the train step reads; everything else (ids, habitats, counts) stays on the host.
# With the frozen-trunk feature cache, ``image`` is replaced by the trunk's taps (``taps/<name>``).
STEP_KEYS = ("image", "points", "mask")
TAPS_PREFIX = "taps/"
LCFCN_TERMS = ("image", "point", "split_global", "split_local", "false_pos")


@dataclasses.dataclass(frozen=True)
class AffinityLoss:
    """The affinity-learning term (``losses.affinity``) added to the per-image loss.

    ``weight`` times the balanced AffinityNet loss on cell labels mined from the activation map
    with thresholds ``fg``/``bg``, over the walk's ``radius``.
    """

    weight: float
    fg: float
    bg: float
    radius: int


def affinity_loss_from_config(config: Any) -> AffinityLoss | None:
    """``config.loss.affinity_*`` as an :class:`AffinityLoss`, or None when the weight is 0."""
    weight = float(config.loss.get("affinity_weight", 0.0))
    if weight == 0.0:
        return None
    return AffinityLoss(
        weight=weight,
        fg=float(config.loss.affinity_fg),
        bg=float(config.loss.affinity_bg),
        radius=int(config.model.radius),
    )


def split_taps(batch: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``taps/<name>`` entries of a batch as ``{name: array}``, or None if it has none."""
    taps = {k[len(TAPS_PREFIX) :]: v for k, v in batch.items() if k.startswith(TAPS_PREFIX)}
    return taps or None


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


# --------------------------------------------------------------------------------------------
# Optimizer and state


def _trunk_scale(mult: float) -> optax.GradientTransformation:
    """Multiplies the updates of every parameter under a ``trunk`` attribute by ``mult``.

    For Adam this equals a ``mult`` times smaller learning rate for the trunk (the update is
    ``lr * m / sqrt(v)``), without a second optimizer state.
    """

    def scale(path, update):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return update * mult if "trunk" in names else update

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def learning_rate_schedule(optim_cfg: Any, num_steps: int) -> optax.Schedule:
    """``optim.schedule``: "constant" (the reference) or "cosine" (from ``lr`` to 0 over
    ``num_steps``)."""
    lr = float(optim_cfg.lr)
    schedule = str(optim_cfg.get("schedule", "constant"))
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(int(num_steps), 1))
    raise config_utils.ConfigError(
        f"config.optim.schedule={schedule!r} is not one of ('constant', 'cosine')"
    )


def make_optimizer(optim_cfg: Any, num_steps: int = 1) -> optax.GradientTransformation:
    """The optax transformation of ``config.optim`` (``num_steps``: the cosine schedule's length).

    ``adam`` is torch's Adam: ``weight_decay`` is added to the gradient (L2), not decoupled;
    ``adamw`` is decoupled weight decay; ``sgd`` uses ``b1`` as momentum. Optional global-norm
    clipping comes first and the trunk learning-rate multiplier last.
    """
    name = optim_cfg.name
    lr = learning_rate_schedule(optim_cfg, num_steps)
    wd = float(optim_cfg.weight_decay)
    parts: list[optax.GradientTransformation] = []
    if float(optim_cfg.get("clip_grad_norm", 0.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_grad_norm)))
    if name == "adam":
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.adam(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))
    elif name == "adamw":
        parts.append(
            optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=wd)
        )
    elif name == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.sgd(lr, momentum=float(optim_cfg.b1) or None))
    else:
        raise config_utils.ConfigError(
            f"config.optim.name={name!r} is not one of {config_utils.OPTIMIZERS}"
        )
    mult = float(optim_cfg.get("trunk_lr_mult", 1.0))
    if mult not in (0.0, 1.0):  # 0: the trunk is not trained at all (trainable_filter)
        parts.append(_trunk_scale(mult))
    return optax.chain(*parts)


def trainable_filter(optim_cfg: Any) -> Any:
    """The NNX filter of the parameters that get gradients and optimizer state.

    Every ``nnx.Param``, except the trunk's when ``optim.trunk_lr_mult`` is 0: a frozen trunk is
    left out of differentiation altogether, so no backward pass runs through it (the cheap way to
    train heads on a pretrained trunk, e.g. the CPU demo).
    """
    if float(optim_cfg.get("trunk_lr_mult", 1.0)) == 0.0:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("trunk")))
    return nnx.Param


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of the split model and optimizer (``nnx.merge`` needs them), and the
    filter of the trained parameters."""

    model: Any
    opt: Any
    wrt: Any = nnx.Param


def build_model_from_config(config: Any) -> nnx.Module:
    """``models.build_model(config.model)`` with the config's seed for params and dropout."""
    from alcfcn_jax.models import build_model

    seed = int(config.seed)
    return build_model(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def create_train_state(
    config: Any,
    mesh: jax.sharding.Mesh,
    *,
    model: nnx.Module | None = None,
) -> tuple[Graphs, TrainState]:
    """Builds the model (unless given) and optimizer; returns their graphs and the replicated state.

    Args:
      config: the experiment config (``model``, ``optim``, ``seed``).
      mesh: the ``("data",)`` device mesh; the state is replicated over it.
      model: an already built model (tests pass stand-ins); built from ``config.model`` if None.
    """
    if model is None:
        model = build_model_from_config(config)
    wrt = trainable_filter(config.optim)
    tx = make_optimizer(config.optim, int(config.train.num_steps))
    opt = nnx.Optimizer(model, tx, wrt=wrt)
    graph_model, model_state = nnx.split(model)
    graph_opt, opt_state = nnx.split(opt)
    state = {
        "model": model_state,
        "opt": opt_state,
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key(int(config.seed)),
    }
    state = jax.device_put(state, shd.replicated(mesh))
    return Graphs(graph_model, graph_opt, wrt), state


def param_counts(state: TrainState, wrt: Any = nnx.Param) -> dict[str, int]:
    """Numbers of trained (``wrt``: every ``nnx.Param``, less a frozen trunk's) and other
    (frozen, statistics) model values."""
    total = sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(state["model"]) if hasattr(x, "shape")
    )
    trainable = sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.filter_state(state["model"], wrt))
    )
    return {"trainable": trainable, "other": total - trainable}


# --------------------------------------------------------------------------------------------
# Losses


def fish_probability(logits: jax.Array) -> jax.Array:
    """(B,H,W) fish probability: softmax channel 1 (sigmoid for a one-channel head)."""
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


def per_image_loss(
    loss_name: str, logits: jax.Array, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-image losses (B,) and per-term values (name -> (B,)) for ``config.loss.name``.

    ``lcfcn`` uses the clicked fish pixels (``points == 1``) and the softmax fish probability,
    as the reference's call site; ``point_level`` uses the full point map (1 fish, 0 background
    points, 255 unlabelled); ``cross_entropy`` and ``joint`` use the mask (255 ignored).
    """
    if loss_name == "lcfcn":
        from alcfcn_jax.losses.lcfcn import lcfcn_terms

        fg_points = (batch["points"] == 1).astype(jnp.int32)
        terms = lcfcn_terms(fish_probability(logits), fg_points)
        total = sum(terms[k] for k in terms)
        return total, dict(terms)
    if loss_name == "point_level":
        from alcfcn_jax.losses.point import point_level_loss

        loss = point_level_loss(logits.astype(jnp.float32), batch["points"])
    elif loss_name == "cross_entropy":
        from alcfcn_jax.losses.supervised import cross_entropy

        loss = cross_entropy(logits.astype(jnp.float32), batch["mask"], ignore_index=IGNORE)
    elif loss_name == "joint":
        from alcfcn_jax.losses.supervised import joint_loss

        loss = joint_loss(logits.astype(jnp.float32), batch["mask"])
    else:
        raise config_utils.ConfigError(
            f"config.loss.name={loss_name!r} is not one of {config_utils.LOSSES}"
        )
    return loss, {}


def _snapshot(tree: Any) -> Any:
    """A structurally new copy of a state tree holding the same (immutable) arrays."""
    return jax.tree.map(lambda x: x, tree)


def _global_norm(tree: Any) -> jax.Array:
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves)) if leaves else jnp.zeros((), jnp.float32)


# --------------------------------------------------------------------------------------------
# The train step


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

    The batch holds ``image`` or the cached taps ``taps/<name>`` (see :func:`forward`).

    Returns:
      The step. Its metrics (replicated scalars): ``loss``, ``loss_<term>`` for LCFCN terms,
      ``grad_norm``, ``param_norm``, ``update_norm``, ``lr``, ``skipped`` (1.0 when the update was
      not applied), ``nonfinite`` (1.0 when loss or gradient was NaN/inf).
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
            if affinity is None:
                logits = forward(m, batch, train=True, walk=walk)
            else:
                logits, aux = forward(m, batch, train=True, walk=walk, return_aux=True)
            per_image, terms = compute(logits, batch)
            if affinity is not None:
                labels = affinity_labels(
                    aux["cam"], batch["points"], fg=affinity.fg, bg=affinity.bg
                )
                aff = affinity_loss(aux["aff_feats"], labels, radius=affinity.radius)
                per_image = per_image + affinity.weight * aff
                terms = {**terms, "affinity": aff}
            return jnp.mean(per_image), {k: jnp.mean(v) for k, v in terms.items()}

        (loss, terms), grads = nnx.value_and_grad(
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


# --------------------------------------------------------------------------------------------
# The loop


class _Window:
    """Averages of per-step metrics and timings between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.data_s = 0.0
        self.step_s = 0.0
        self.skipped = 0

    def add(self, metrics: Mapping[str, float], *, data_s: float, step_s: float) -> None:
        for k, v in metrics.items():
            if k in ("skipped", "nonfinite", "lr"):
                continue
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.skipped += int(metrics.get("skipped", 0.0) > 0)
        self.lr = float(metrics.get("lr", math.nan))
        self.n += 1
        self.data_s += data_s
        self.step_s += step_s

    def summary(self, images_per_step: int) -> dict[str, float]:
        out = {k: v / self.n for k, v in self.sums.items()}
        wall = self.data_s + self.step_s
        out.update(
            lr=self.lr,
            skipped_updates=self.skipped,
            steps_per_second=self.n / wall if wall > 0 else math.nan,
            images_per_second=self.n * images_per_step / wall if wall > 0 else math.nan,
            data_seconds=self.data_s / self.n,
            step_seconds=self.step_s / self.n,
            data_share=self.data_s / wall if wall > 0 else math.nan,
        )
        return out


@dataclasses.dataclass
class _Data:
    """Sources, the training iterator and evaluation batching of one run.

    ``train`` is the training source (images); ``train_input`` what the iterator reads (the same,
    or its frozen-trunk feature cache); ``val`` the validation source (images or cached taps).
    """

    data_cfg: Any
    train: Any
    val: Any
    iterator: Any
    eval_batch_local: int
    train_input: Any = None

    def eval_batches(self, source) -> Iterator[dict[str, np.ndarray]]:
        from alcfcn_jax.data import pipeline

        return pipeline.eval_batches_from_config(
            self.data_cfg,
            source,
            batch_size=self.eval_batch_local,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )


def _build_data(config: Any, *, local_batch: int, eval_batch_local: int) -> _Data:
    from alcfcn_jax.budget_source import budget_subset
    from alcfcn_jax.data import get_source
    from alcfcn_jax.pseudo_source import check_coverage, resolve_pseudo_masks

    data_cfg, manifest = resolve_pseudo_masks(config)
    train = get_source(data_cfg, data_cfg.train_split)
    if "budget" in config:
        train = budget_subset(
            train,
            n_background=int(config.budget.n_background),
            n_fish=int(config.budget.n_fish),
            seed=int(config.budget.seed),
        )
    check_coverage(len(train), manifest, data_cfg.get("pseudo_mask_dir", ""))
    val = get_source(data_cfg, data_cfg.val_split)
    logging.info("Data: %d training and %d validation images", len(train), len(val))
    data = _Data(data_cfg, train, val, None, eval_batch_local, train)
    return _with_iterator(data, config, local_batch)


def _with_iterator(data: _Data, config: Any, local_batch: int) -> _Data:
    from alcfcn_jax.data import pipeline

    data.iterator = pipeline.train_iterator_from_config(
        data.data_cfg,
        data.train_input,
        batch_size=local_batch,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return data


def _attach_feature_cache(
    config: Any, graphs: Graphs, state: TrainState, data: _Data, local_batch: int
) -> _Data:
    """Swaps the training and validation sources for their cached taps when the cache applies
    (``alcfcn_jax.feature_cache``)."""
    from alcfcn_jax import feature_cache
    from alcfcn_jax.data import pipeline

    model = nnx.merge(graphs.model, state["model"])
    mode = feature_cache.cache_mode(config, model)
    if mode is None:
        return data
    kwargs = pipeline._pipeline_kwargs(data.data_cfg)
    batching = {k: kwargs[k] for k in ("pad_or_resize", "bucket_multiple", "fixed_size")}
    cached = feature_cache.cached_sources(
        config, model, {"train": data.train, "val": data.val}, batching=batching, mode=mode
    )
    data.train_input, data.val = cached["train"], cached["val"]
    return _with_iterator(data, config, local_batch)


def _is_box_dataset(data_cfg: Any) -> bool:
    return str(data_cfg.get("dataset", "")) in ("sample", "boxes")


def _scalars(result: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric top-level entries of an evaluation result, keys prefixed."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def evaluate_split(
    graphs: Graphs,
    state: TrainState,
    data: _Data,
    source: Any,
    mesh: jax.sharding.Mesh,
    *,
    per_image: bool = False,
) -> dict[str, Any]:
    """Runs ``alcfcn_jax.evaluation.evaluate`` on ``source`` with the current model state."""
    from alcfcn_jax.evaluation import evaluate

    model = nnx.merge(graphs.model, state["model"])
    return evaluate(
        model,
        data.eval_batches(source),
        mesh=mesh,
        per_image=per_image,
        boxes=_is_box_dataset(data.data_cfg),
    )


def count_baseline(train_source: Any, val_rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """MAE on validation of always predicting the median training count.

    Args:
      train_source: the training source (its ``count`` fields are read).
      val_rows: per-image validation rows with ``true_count`` (from ``evaluate(per_image=True)``).
    """
    counts = np.asarray([example_count(train_source, i) for i in range(len(train_source))])
    median = float(np.median(counts))
    true = np.asarray([r["true_count"] for r in val_rows], np.float64)
    return {
        "median_train_count": median,
        "median_baseline_mae": float(np.abs(true - median).mean()),
    }


def _meta(config: Any, state: TrainState, best: Mapping[str, Any], **extra) -> dict[str, Any]:
    from alcfcn_jax.data.preprocess import Preprocessing

    rng = np.asarray(jax.device_get(jax.random.key_data(state["rng"]))).tolist()
    return {
        "config": config_utils.to_plain(config),
        # How images became inputs: evaluate and predict see them exactly so.
        "preprocessing": Preprocessing.from_data_config(config.data).to_dict(),
        "rng": rng,
        "best": dict(best),
        **extra,
    }


def _save(
    ckpt: Checkpointer,
    step: int,
    state: TrainState,
    *,
    config: Any,
    best: Mapping[str, Any],
    data_state: Any,
    val: Mapping[str, float] | None,
    select_key: str,
    **extra,
) -> None:
    metrics = None
    if val is not None and math.isfinite(val.get(select_key, math.nan)):
        metrics = {select_key: val[select_key]}
    ckpt.save(
        step,
        model_state=state["model"],
        opt_state=state["opt"],
        meta=_meta(config, state, best, val=dict(val) if val else None, **extra),
        data_state=data_state,
        metrics=metrics,
    )


def _is_better(value: float, best: float | None, mode: str) -> bool:
    """The reference's ``>=``: a tie replaces the best (later checkpoints win)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value >= best if mode == "max" else value <= best


def _restore_state(
    ckpt: Checkpointer, step: int, config: Any, state: TrainState, mesh: jax.sharding.Mesh
) -> tuple[TrainState, dict[str, Any], Any]:
    ckpt.check_config(step, config)
    model_state, opt_state, meta, data_state = ckpt.restore(
        step, model_state=state["model"], opt_state=state["opt"]
    )
    rng = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
    restored = {
        "model": model_state,
        "opt": opt_state,
        "step": jnp.asarray(int(meta["step"]), jnp.int32),
        "rng": rng,
    }
    rep = shd.replicated(mesh)
    restored["step"] = jax.device_put(restored["step"], rep)
    restored["rng"] = jax.device_put(restored["rng"], rep)
    return restored, meta, data_state


def _nonfinite_message(step: int, metrics: Mapping[str, float]) -> str:
    bad = [k for k, v in metrics.items() if k.startswith("loss") and not math.isfinite(v)]
    terms = [k.removeprefix("loss_") for k in bad if k != "loss"]
    if terms:
        what = "term(s) " + ", ".join(f"{t}={metrics['loss_' + t]}" for t in terms)
    elif bad:
        what = f"loss={metrics['loss']}"
    else:
        what = f"gradient (grad_norm={metrics.get('grad_norm')})"
    return f"non-finite loss at step {step}: {what}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) a run in ``workdir``, validating and checkpointing as configured.

    Rerunning the same command continues from the latest checkpoint (same data order, same
    dropout masks); a finished run only reports its final figures again.

    Args:
      config: the experiment config (validated first).
      workdir: the run's directory (checkpoints, ``metrics.jsonl``, ``config.json``).

    Returns:
      The final figures: ``step``, ``best`` (step and score), the last validation metrics and,
      when configured, the test metrics and the median-count baseline.

    Raises:
      FloatingPointError: a non-finite loss (the message names the step and the term; the last
        good state is saved first).
      alcfcn_jax.checkpoint.CheckpointError: the workdir holds a checkpoint of another model.
    """
    config_utils.validate_config(config)
    tc = config.train
    workdir_path = pathlib.Path(workdir).expanduser()
    is_chief = jax.process_index() == 0
    mesh = shd.make_mesh()
    n_dev = mesh.devices.size
    batch = config_utils.resolve_batch_size(int(tc.batch_size), n_dev, "train.batch_size")
    eval_batch = config_utils.resolve_batch_size(
        int(tc.eval_batch_size), n_dev, "train.eval_batch_size"
    )
    logging.info(
        "Process %d/%d, %d local of %d devices (%s); global batch %d, eval batch %d",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        n_dev,
        jax.devices()[0].platform,
        batch,
        eval_batch,
    )
    select_key = f"val_{tc.select_metric}"
    from alcfcn_jax.checkpoint import best_mode

    mode = best_mode(select_key)
    data = _build_data(
        config,
        local_batch=batch // jax.process_count(),
        eval_batch_local=eval_batch // jax.process_count(),
    )
    num_steps = int(tc.num_steps)

    with jax.set_mesh(mesh):
        graphs, state = create_train_state(config, mesh)
        data = _attach_feature_cache(config, graphs, state, data, batch // jax.process_count())
        counts = param_counts(state, graphs.wrt)
        logging.info(
            "Model: %s/%s, %d trainable and %d frozen/statistics values",
            config.model.name,
            config.model.get("backbone", ""),
            counts["trainable"],
            counts["other"],
        )
        ckpt = Checkpointer(workdir_path, keep=int(tc.keep_checkpoints), best_metric=select_key)
        best: dict[str, Any] = {"step": None, "score": None, "metric": select_key}
        last_val: dict[str, float] | None = None
        latest = ckpt.latest_step()
        if latest is not None:
            state, meta, data_state = _restore_state(ckpt, latest, config, state, mesh)
            best = dict(meta.get("best") or best)
            last_val = meta.get("val")
            if data_state is not None:
                data.iterator.set_state(data_state)
            logging.info("Resumed from %s at step %d", ckpt.directory, latest)
            done = _read_final(workdir_path)
            if latest >= num_steps and done is not None and done.get("step") == latest:
                logging.info("Run already finished at step %d; final figures: %s", latest, done)
                ckpt.close()
                return done
        start = int(jax.device_get(state["step"]))

        step_kwargs = dict(
            loss_name=config.loss.name,
            learning_rate=learning_rate_schedule(config.optim, num_steps),
            skip_zero_loss=bool(tc.skip_zero_loss),
            affinity=affinity_loss_from_config(config),
        )
        step_fn = make_train_step(graphs, mesh, **step_kwargs)
        # Walk warm-up: the first steps train the activation logits without the random walk.
        warmup = int(tc.get("walk_warmup_steps", 0))
        warmup_fn = make_train_step(graphs, mesh, walk=False, **step_kwargs) if warmup else None
        writer = MetricWriter(
            workdir_path,
            total_steps=num_steps,
            is_chief=is_chief,
            tensorboard=str(tc.tensorboard),
            progress=bool(tc.progress),
        )
        try:
            if start == 0 and bool(tc.eval_at_start):
                result = evaluate_split(graphs, state, data, data.val, mesh)
                writer.write(0, _scalars(result, "val_"), kind="val")

            window = _Window()
            last_result: dict[str, Any] | None = None
            data_state = data.iterator.get_state()
            step = start
            run_start = time.perf_counter()
            while step < num_steps:
                t0 = time.perf_counter()
                np_batch = next(data.iterator)
                global_batch = shd.to_global(prepare_batch(np_batch), mesh)
                t1 = time.perf_counter()
                prev_data_state = data_state
                state, metrics = (warmup_fn if step < warmup else step_fn)(state, global_batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                t2 = time.perf_counter()
                step += 1
                data_state = data.iterator.get_state()
                if metrics["nonfinite"] > 0:
                    # The step left params and optimizer state untouched: keep them as the last
                    # good checkpoint at step - 1, so a resume replays this batch.
                    good = dict(
                        state,
                        step=jax.device_put(jnp.asarray(step - 1, jnp.int32), shd.replicated(mesh)),
                    )
                    if ckpt.latest_step() != step - 1 and step - 1 > 0:
                        _save(
                            ckpt,
                            step - 1,
                            good,
                            config=config,
                            best=best,
                            data_state=prev_data_state,
                            val=None,
                            select_key=select_key,
                        )
                    ckpt.wait()
                    message = _nonfinite_message(step, metrics)
                    writer.write(step, {**metrics, "error": message}, kind="error")
                    raise FloatingPointError(
                        f"{message}. Training stopped; the last good checkpoint is step "
                        f"{ckpt.latest_step()} in {ckpt.directory}."
                    )
                window.add(metrics, data_s=t1 - t0, step_s=t2 - t1)
                writer.update_progress(step, f"loss {metrics['loss']:.4g}")
                if step % int(tc.log_every) == 0 or step == num_steps:
                    writer.write(step, window.summary(batch))
                    window = _Window()
                val = None
                if step % int(tc.eval_every) == 0 or step == num_steps:
                    # The last validation keeps its per-image rows for the count baseline.
                    per_image = bool(tc.count_baseline) and step == num_steps
                    result = evaluate_split(
                        graphs, state, data, data.val, mesh, per_image=per_image
                    )
                    last_result = result
                    val = _scalars(result, "val_")
                    if _is_better(val.get(select_key, math.nan), best["score"], mode):
                        best = {"step": step, "score": val[select_key], "metric": select_key}
                    writer.write(
                        step,
                        {**val, "best_step": best["step"], "best_score": best["score"]},
                        kind="val",
                    )
                    last_val = val
                if val is not None or step % int(tc.checkpoint_every) == 0 or step == num_steps:
                    _save(
                        ckpt,
                        step,
                        state,
                        config=config,
                        best=best,
                        data_state=data_state,
                        val=val,
                        select_key=select_key,
                    )
            train_seconds = time.perf_counter() - run_start
            ckpt.wait()
            final = _finish(
                config,
                graphs,
                state,
                data,
                mesh,
                ckpt,
                writer,
                step=step,
                best=best,
                last_val=last_val,
                select_key=select_key,
                train_seconds=train_seconds,
                last_result=last_result,
            )
            _write_final(workdir_path, final)
            ckpt.wait()
            return final
        finally:
            writer.close()
            ckpt.close()


def _finish(
    config: Any,
    graphs: Graphs,
    state: TrainState,
    data: _Data,
    mesh: jax.sharding.Mesh,
    ckpt: Checkpointer,
    writer: MetricWriter,
    *,
    step: int,
    best: Mapping[str, Any],
    last_val: Mapping[str, float] | None,
    select_key: str,
    train_seconds: float,
    last_result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """End-of-run figures: baseline, best checkpoint, optional test evaluation."""
    tc = config.train
    final: dict[str, Any] = {
        "step": step,
        "best": dict(best),
        "val": dict(last_val or {}),
        "train_seconds": round(train_seconds, 2),
    }
    if bool(tc.count_baseline):
        result = last_result
        if result is None or "per_image" not in result:
            result = evaluate_split(graphs, state, data, data.val, mesh, per_image=True)
        baseline = count_baseline(data.train, result["per_image"])
        baseline["val_mae"] = float(result["mae"])
        final["count_baseline"] = baseline
        writer.write(step, baseline, kind="baseline")
        logging.info(
            "Validation count MAE %.4f vs %.4f for always predicting the median training count "
            "(%g)",
            baseline["val_mae"],
            baseline["median_baseline_mae"],
            baseline["median_train_count"],
        )
    if bool(tc.eval_test):
        test_source = _test_source(data)
        best_step = ckpt.resolve("best")
        restored, meta_state = state, None
        if best_step != step:
            model_state, _, meta_state, _ = ckpt.restore(
                best_step, model_state=state["model"], opt_state=None, with_data=False
            )
            restored = dict(state, model=model_state)
        result = evaluate_split(graphs, restored, data, test_source, mesh)
        test = _scalars(result, "test_")
        test["checkpoint_step"] = best_step
        final["test"] = test
        writer.write(step, test, kind="test")
        del meta_state
    return final


def _test_source(data: _Data):
    from alcfcn_jax.data import get_source

    return get_source(data.data_cfg, data.data_cfg.test_split)


FINAL_FILE = "final.json"


def _write_final(workdir: pathlib.Path, final: Mapping[str, Any]) -> None:
    """Writes ``workdir/final.json`` atomically (process 0)."""
    if jax.process_index() != 0:
        return
    tmp = workdir / (FINAL_FILE + ".tmp")
    tmp.write_text(json.dumps(final, indent=2, default=float) + "\n")
    tmp.replace(workdir / FINAL_FILE)


def _read_final(workdir: pathlib.Path) -> dict[str, Any] | None:
    path = workdir / FINAL_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_config(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path | None:
    """Writes ``workdir/config.json`` (process 0 only) and returns its path."""
    if jax.process_index() != 0:
        return None
    path = pathlib.Path(workdir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    target = path / "config.json"
    tmp = path / "config.json.tmp"
    tmp.write_text(config_utils.config_to_json(config) + "\n")
    tmp.replace(target)  # atomic: a crash never leaves a truncated config.json
    return target


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The ``train.py`` entry: validate, log and save the config, then train and evaluate."""
    from alcfcn_jax.metric_writer import quiet_library_logs

    quiet_library_logs()
    config_utils.validate_config(config)
    logging.info("Config:\n%s", config_utils.config_to_json(config))
    write_config(config, workdir)
    final = train_and_evaluate(config, workdir)
    logging.info("Final: %s", json.dumps(final, default=str))
    return final
