"""LCFCN loss on device: host targets (one callback per data shard) + weighted BCE in jnp.

``lcfcn_loss(probs, points)`` equals the reference ``compute_loss(points, probs)`` of every image
(docs/reference_spec.md section 3): the targets are computed on the host from
``stop_gradient(probs)`` by :mod:`alcfcn_jax.losses.lcfcn_targets` and come back as dense
per-pixel weights, so the loss itself is a fixed-shape, differentiable jnp expression:

    loss_b = sum_i w_fg[b, i] * -log(p[b, i]) + w_bg[b, i] * -log(1 - p[b, i])

with logs clamped at -100 and the gradient of torch's ``binary_cross_entropy``
(``(p - y) / max(p (1 - p), 1e-12)``), so saturated probabilities behave as in PyTorch.

Sharding: inside a ``jax.jit`` running under ``jax.set_mesh(mesh)`` with a mesh axis ``"data"``
(or with an explicit ``mesh=``), the host callback is wrapped in ``jax.shard_map`` over that axis,
so each device's callback sees only its own images; the global batch is never gathered. Without
such a mesh the callback runs once for the whole batch.

Points are the reference's ``(batch['points'] == 1)``: a {0, 1} map, 1 at annotated fish pixels.
Callers holding the data pipeline's points map (1 fish, 0 sampled background, 255 unlabelled)
pass ``points == 1``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from alcfcn_jax.losses import lcfcn_targets
from alcfcn_jax.losses.lcfcn_targets import CHANNELS, TERM_NAMES
from alcfcn_jax.sharding import DATA_AXIS

_LOG_CLAMP = -100.0  # torch binary_cross_entropy clamps log at -100
_BCE_EPS = 1e-12  # torch binary_cross_entropy backward: (p - y) / max(p (1 - p), eps)


def _host_maps(probs: np.ndarray, points: np.ndarray, *, per_term: bool) -> np.ndarray:
    """Host callback: (..., H, W) probs/points -> float32 (..., C, H, W) weight maps.

    Leading axes are flattened into one batch (vmap adds axes; ``broadcast_all`` gives both inputs
    the same ones). Validation errors raise here, which surfaces as a runtime error under jit.
    """
    probs = np.asarray(probs)
    points = np.asarray(points)
    lead = probs.shape[:-2]
    h, w = probs.shape[-2:]
    maps = lcfcn_targets.batch_maps(
        probs.reshape(-1, h, w), points.reshape(-1, h, w), per_term=per_term
    )
    return maps.reshape(lead + maps.shape[1:])


def _call_host(probs, points, *, per_term: bool):
    # Looked up at call time so tests can wrap `_host_maps` (e.g. to count invocations).
    return _host_maps(probs, points, per_term=per_term)


def _resolve_mesh(mesh):
    """The mesh to shard the callback over, or None for a single global callback."""
    if mesh is not None:
        if DATA_AXIS not in mesh.axis_names:
            raise ValueError(
                f"lcfcn_loss: mesh axes {mesh.axis_names} have no {DATA_AXIS!r} axis to shard the "
                "batch over"
            )
        return mesh
    abstract = jax.sharding.get_abstract_mesh()
    if not abstract.empty and DATA_AXIS in abstract.axis_names:
        return abstract
    return None


def _shard_on_data(x: jax.Array, mesh) -> jax.Array:
    """Reshards ``x`` to batch-on-"data" when the axis is Explicit and ``x`` is laid out otherwise.

    With Explicit axes shard_map insists that the argument's sharding matches ``in_specs`` (a
    replicated batch or one sharded on another axis is an error); Auto axes let the compiler do
    this resharding itself.
    """
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    if types[DATA_AXIS] != jax.sharding.AxisType.Explicit:
        return x
    spec = tuple(jax.typeof(x).sharding.spec)
    if spec[:1] == (DATA_AXIS,) and all(s is None for s in spec[1:]):
        return x
    target = NamedSharding(mesh, P(DATA_AXIS)) if isinstance(mesh, Mesh) else P(DATA_AXIS)
    return jax.reshard(x, target)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_static(probs, points) -> None:
    if probs.ndim != 3:
        raise ValueError(f"lcfcn_loss: probs must be (B, H, W), got shape {probs.shape}")
    if points.shape != probs.shape:
        raise ValueError(
            f"lcfcn_loss: points shape {points.shape} does not match probs shape {probs.shape}"
        )
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise ValueError(f"lcfcn_loss: probs must be floating point, got dtype {probs.dtype}")
    if not (jnp.issubdtype(points.dtype, jnp.integer) or points.dtype == jnp.bool_):
        raise ValueError(
            f"lcfcn_loss: points must be an integer/bool {{0, 1}} map, got dtype {points.dtype}"
        )


def target_maps(probs: jax.Array, points: jax.Array, *, per_term: bool = False, mesh=None):
    """Host-computed LCFCN weight maps (no gradient).

    Args:
      probs: (B, H, W) foreground probabilities.
      points: (B, H, W) integer {0, 1} point map.
      per_term: return the six per-term maps of ``lcfcn_targets.CHANNELS`` instead of
        (w_fg, w_bg).
      mesh: optional mesh with a ``"data"`` axis to shard the callback over (default: the mesh
        set with ``jax.set_mesh``, if it has that axis).

    Returns:
      float32 (B, 2, H, W) or (B, 6, H, W).
    """
    probs = jnp.asarray(probs)
    points = jnp.asarray(points)
    _check_static(probs, points)
    if _is_concrete(probs) and _is_concrete(points):
        # Eager call: fail before any device/host work with the host validator's message.
        lcfcn_targets.validate_inputs(np.asarray(probs), np.asarray(points), batched=True)
    p = jax.lax.stop_gradient(probs).astype(jnp.float32)
    # Non-finite probabilities (diverged weights) never reach the host: the callback would fail
    # with a bare runtime error. They get placeholder targets here, and the loss, computed from
    # the original probabilities, is non-finite, so the train step reports it (``nonfinite``)
    # and the loop stops naming the step.
    p = jnp.where(jnp.isfinite(p), p, 0.0)
    pts = points.astype(jnp.int32)
    n_ch = len(CHANNELS) if per_term else 2

    def callback(p, pts):
        shape = jax.ShapeDtypeStruct(p.shape[:-2] + (n_ch,) + p.shape[-2:], jnp.float32)
        return jax.pure_callback(
            functools.partial(_call_host, per_term=per_term),
            shape,
            p,
            pts,
            vmap_method="broadcast_all",
        )

    mesh = _resolve_mesh(mesh)
    if mesh is not None:
        n_shards = mesh.shape[DATA_AXIS]
        if p.shape[0] % n_shards:
            raise ValueError(
                f"lcfcn_loss: batch of {p.shape[0]} is not divisible by the {n_shards} shards of "
                f"mesh axis {DATA_AXIS!r}"
            )
        p, pts = _shard_on_data(p, mesh), _shard_on_data(pts, mesh)
        callback = jax.shard_map(
            callback, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P(DATA_AXIS)
        )
    return jax.lax.stop_gradient(callback(p, pts))


@jax.custom_vjp
def weighted_bce(probs: jax.Array, w_fg: jax.Array, w_bg: jax.Array) -> jax.Array:
    """Per-image ``sum(w_fg * -log p + w_bg * -log(1 - p))`` with torch BCE semantics.

    Logs are clamped at -100 and the gradient is torch's ``(p - y) / max(p (1 - p), 1e-12)``
    per unit weight. Weights get no gradient.

    Args:
      probs, w_fg, w_bg: (B, H, W).

    Returns:
      (B,) float32.
    """
    return _weighted_bce_fwd(probs, w_fg, w_bg)[0]


def _nll(probs):
    log_p = jnp.maximum(jnp.log(probs), _LOG_CLAMP)
    log_q = jnp.maximum(jnp.log(1.0 - probs), _LOG_CLAMP)
    return -log_p, -log_q


def _weighted_bce_fwd(probs, w_fg, w_bg):
    nlog_p, nlog_q = _nll(probs)
    loss = jnp.sum(w_fg * nlog_p + w_bg * nlog_q, axis=(-2, -1))
    return loss, (probs, w_fg, w_bg)


def _weighted_bce_bwd(res, g):
    probs, w_fg, w_bg = res
    denom = jnp.maximum(probs * (1.0 - probs), _BCE_EPS)
    dp = (w_fg * (probs - 1.0) + w_bg * probs) / denom
    return g[..., None, None] * dp, jnp.zeros_like(w_fg), jnp.zeros_like(w_bg)


weighted_bce.defvjp(_weighted_bce_fwd, _weighted_bce_bwd)


def lcfcn_loss(probs: jax.Array, points: jax.Array, *, mesh=None) -> jax.Array:
    """LCFCN loss of each image, equal to the reference ``compute_loss``.

    Args:
      probs: (B, H, W) foreground probabilities in [0, 1] (e.g. ``softmax(logits)[..., 1]``).
      points: (B, H, W) integer {0, 1} map, 1 at annotated fish pixels.
      mesh: optional mesh with a ``"data"`` axis (see module docstring).

    Returns:
      (B,) float32 losses, differentiable w.r.t. ``probs`` through the BCE terms only.

    Raises:
      ValueError: bad shapes/dtypes (always), or bad values (NaN/inf/out-of-range probs, points
        not in {0, 1}) when called eagerly; under jit the same check runs in the host callback and
        fails the computation.
    """
    probs = jnp.asarray(probs)
    maps = target_maps(probs, points, mesh=mesh)
    return weighted_bce(probs, maps[:, 0], maps[:, 1])


def lcfcn_terms(probs: jax.Array, points: jax.Array, *, mesh=None) -> dict[str, jax.Array]:
    """Per-term LCFCN losses: ``image, point, split_global, split_local, false_pos``, each (B,).

    The terms sum to :func:`lcfcn_loss` (up to float rounding). Same arguments as
    :func:`lcfcn_loss`.
    """
    probs = jnp.asarray(probs)
    maps = target_maps(probs, points, per_term=True, mesh=mesh)
    zeros = jnp.zeros_like(probs)
    out = {}
    for name in TERM_NAMES:
        fg = [c for c, (t, y) in enumerate(CHANNELS) if t == name and y == 1]
        bg = [c for c, (t, y) in enumerate(CHANNELS) if t == name and y == 0]
        w_fg = sum((maps[:, c] for c in fg), zeros)
        w_bg = sum((maps[:, c] for c in bg), zeros)
        out[name] = weighted_bce(probs, w_fg, w_bg)
    return out
