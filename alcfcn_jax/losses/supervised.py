"""Fully-supervised baseline losses: pixel cross-entropy and the F3Net structure loss.

* :func:`cross_entropy` is the reference's ``F.nll_loss(F.log_softmax(logits, 1), mask,
  reduction='mean', ignore_index=255)`` (FS-FCN and pseudo-mask training), returned per image:
  the reference trains with batch size 1, where its batch mean is exactly this per-image mean.
  Averaging the (B,) result weights images equally; torch's batch 'mean' instead weights pixels
  equally across the batch (identical when every image has the same number of valid pixels).
* :func:`joint_loss` is Wei et al.'s (F3Net) weighted BCE + weighted IoU (the reference's
  ``joint_loss`` in ``src/utils.py``, docs/reference_spec.md section 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = 255) -> jax.Array:
    """Mean negative log-likelihood of ``log_softmax(logits)`` over non-ignored pixels, per image.

    Args:
      logits: (B, H, W, C).
      labels: (B, H, W) integer class ids in [0, C) or ``ignore_index``.
      ignore_index: label value excluded from the mean.

    Returns:
      (B,) float32; 0 for an image without any valid pixel (torch would return NaN).
    """
    if logits.ndim != 4 or labels.shape != logits.shape[:3]:
        raise ValueError(
            f"cross_entropy: expected logits (B,H,W,C) and labels (B,H,W), got {logits.shape} "
            f"and {labels.shape}"
        )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0), axis=(1, 2))
    count = jnp.sum(valid, axis=(1, 2))
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def _fish_logit(logits: jax.Array) -> jax.Array:
    """(B,H,W) fish logit from 1-channel logits, or fish minus background for 2 channels.

    ``sigmoid(l1 - l0) == softmax([l0, l1])[1]``, so a 2-class head is scored exactly as its
    softmax fish probability.
    """
    if logits.ndim != 4 or logits.shape[-1] not in (1, 2):
        raise ValueError(f"joint_loss: logits must be (B,H,W,1) or (B,H,W,2), got {logits.shape}")
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        return logits[..., 0]
    return logits[..., 1] - logits[..., 0]


def joint_loss(logits: jax.Array, mask: jax.Array, ignore_index: int = 255) -> jax.Array:
    """F3Net structure loss (weighted BCE + weighted IoU) per image.

    ``w = 1 + 5 |avg_pool(mask, 31, stride 1, pad 15, count_include_pad) - mask|``;
    ``wbce = sum(w * bce_with_logits) / sum(w)``; ``s = sigmoid(pred)``;
    ``wiou = 1 - (sum(s m w) + 1) / (sum((s + m) w) - sum(s m w) + 1)``; loss = wbce + wiou
    (the reference averages this over the batch).

    Args:
      logits: (B, H, W, 1) fish logits, or (B, H, W, 2) two-class logits (fish minus
        background logit is used).
      mask: (B, H, W) binary ground truth in {0, 1}; ``ignore_index`` pixels (unknown) get
        weight 0 and count as background in the 31x31 average (the reference has no ignore
        value; without such pixels the result is the reference formula).
      ignore_index: mask value to ignore.

    Returns:
      (B,) float32.
    """
    pred = _fish_logit(logits)
    if mask.shape != pred.shape:
        raise ValueError(f"joint_loss: mask shape {mask.shape} != logits spatial {pred.shape}")
    valid = mask != ignore_index
    m = jnp.where(valid, mask, 0).astype(jnp.float32)
    # avg_pool2d(31, stride 1, pad 15, count_include_pad=True) = zero-padded box sum / 31^2.
    box = jax.lax.reduce_window(
        m, 0.0, jax.lax.add, (1, 31, 31), (1, 1, 1), ((0, 0), (15, 15), (15, 15))
    )
    w = (1.0 + 5.0 * jnp.abs(box / 961.0 - m)) * valid
    bce = jnp.maximum(pred, 0.0) - pred * m + jnp.log1p(jnp.exp(-jnp.abs(pred)))
    wbce = jnp.sum(w * bce, axis=(1, 2)) / jnp.sum(w, axis=(1, 2))
    s = jax.nn.sigmoid(pred)
    inter = jnp.sum(s * m * w, axis=(1, 2))
    union = jnp.sum((s + m) * w, axis=(1, 2))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return wbce + wiou
