"""PL-FCN point-level loss (the reference's ``point_level`` loss, docs/reference_spec.md section 4).

Per image: ``multilabel_soft_margin_loss(max over pixels of logits, image class labels)`` plus the
mean NLL of ``log_softmax(logits)`` over annotated pixels. A class is present in an image when
some annotated pixel carries it (fish points = 1, sampled background points = 0); 255 marks
unannotated pixels. The reference builds the same map from its ``point_list``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alcfcn_jax.models.outputs import IGNORE


def point_level_loss(logits: jax.Array, points: jax.Array) -> jax.Array:
    """PL-FCN loss per image.

    Args:
      logits: (B, H, W, C) class logits.
      points: (B, H, W) integer map: class id at annotated pixels, 255 elsewhere.

    Returns:
      (B,) float32. The point term is 0 for an image without annotated pixels (torch's NLL mean
      over zero pixels would be NaN); the image-level term then treats every class as absent.
    """
    if logits.ndim != 4 or points.shape != logits.shape[:3]:
        raise ValueError(
            f"point_level_loss: expected logits (B,H,W,C) and points (B,H,W), got {logits.shape} "
            f"and {points.shape}"
        )
    logits = logits.astype(jnp.float32)
    n_classes = logits.shape[-1]
    valid = points != IGNORE
    safe = jnp.where(valid, points, 0).astype(jnp.int32)
    onehot = jax.nn.one_hot(safe, n_classes) * valid[..., None]
    present = (jnp.sum(onehot, axis=(1, 2)) > 0).astype(jnp.float32)  # (B, C)

    # multilabel_soft_margin_loss: mean over classes of -(y log s(x) + (1 - y) log s(-x)).
    x = jnp.max(logits, axis=(1, 2))
    region = -jnp.mean(
        present * jax.nn.log_sigmoid(x) + (1.0 - present) * jax.nn.log_sigmoid(-x), axis=-1
    )

    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    count = jnp.sum(valid, axis=(1, 2))
    point = jnp.where(
        count > 0, jnp.sum(jnp.where(valid, nll, 0.0), axis=(1, 2)) / jnp.maximum(count, 1), 0.0
    )
    return region + point
