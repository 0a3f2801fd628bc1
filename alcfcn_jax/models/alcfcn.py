"""A-LCFCN: a stride-8 trunk, an activation branch and an affinity random walk.

Forward pass (``ALCFCN.__call__``), for an image batch of size (H, W) and ``Hp, Wp`` = H, W rounded
up to multiples of 8 (zero padding at the bottom/right, as the reference's ``F.pad``):

``trunk_mode="two_pass"`` (the reference, ``FCN8VGG16.forward`` with ``shared=True``):
  * ``cam`` = activation logits of the trunk run on the *unpadded* image (stride-8 grid
    ``ceil(H/8) x ceil(W/8)``), bilinearly upsampled with ``align_corners=True`` to (H, W);
  * ``aff_feats`` = affinity features of a *second* trunk run on the padded image; in training the
    two runs draw independent dropout masks. (In eval mode with H, W already multiples of 8 the
    second run would repeat the first exactly, so it is skipped.)
``trunk_mode="single_pass"`` (about half the cost):
  * one trunk run on the padded image gives both branches; ``cam`` = its stride-8 logits upsampled
    (``align_corners=True``) to (Hp, Wp) and cropped to ``[:H, :W]``. When H, W are multiples of 8
    both modes compute the same function (in eval mode).

Then ``logits = random_walk.refine(cam, aff_feats, beta, logt, radius, method)``. With
``with_affinity=False`` (the LCFCN baseline) there is no affinity branch and no random walk:
``logits = cam`` from one trunk run on the unpadded image, whatever ``trunk_mode`` says.

Mixed precision: with ``dtype=bfloat16`` the parameters stay float32 and the trunk and heads compute
in bfloat16; activation logits, affinity features, the random walk and all outputs are float32.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.heads import ActivationHead, AffinityHead
from alcfcn_jax.ops import random_walk
from alcfcn_jax.ops.resize import pad_to_multiple, resize_bilinear

TrunkMode = Literal["two_pass", "single_pass"]
_STRIDE = 8


class ALCFCN(nnx.Module):
    """A-LCFCN segmentation model (or the LCFCN baseline with ``with_affinity=False``).

    Args:
      trunk: a stride-8 trunk module: ``trunk(x, *, train) -> {"conv4", "conv5", "conv6"}`` with a
        ``tap_channels`` attribute, a (conv4, conv5, conv6) tuple or a mapping with those keys
        (ResNet38d, EfficientNetLite0Trunk, TinyTrunk).
      n_classes: output classes (2: background, fish).
      with_affinity: build the affinity branch and refine the logits by the random walk.
      trunk_mode: ``"two_pass"`` (reference) or ``"single_pass"``; see the module docstring.
      beta: Hadamard power of the affinity matrix.
      logt: number of squarings of the transition matrix (t = 2**logt).
      radius: neighbourhood radius of the affinity graph (reduced on small maps by ``refine``).
      rw_method: ``"dense"``, ``"sparse"`` or ``"auto"`` random-walk implementation.
      affinity_widths: f8_3/f8_4/f8_5 widths (reference 64/128/256 -> 448 features).
      dtype: compute dtype of trunk and heads (float32 or bfloat16).
      rngs: ``params`` and ``dropout`` streams.
    """

    def __init__(
        self,
        trunk: nnx.Module,
        n_classes: int = 2,
        *,
        with_affinity: bool = True,
        trunk_mode: TrunkMode = "two_pass",
        beta: float = 8.0,
        logt: int = 4,
        radius: int = 5,
        rw_method: str = "dense",
        affinity_widths: tuple[int, int, int] = (64, 128, 256),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if trunk_mode not in ("two_pass", "single_pass"):
            raise ValueError(f"trunk_mode must be 'two_pass' or 'single_pass', got {trunk_mode!r}")
        if rw_method not in ("dense", "sparse", "auto"):
            raise ValueError(f"rw_method must be 'dense', 'sparse' or 'auto', got {rw_method!r}")
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        tap_channels = getattr(trunk, "tap_channels", ())
        if hasattr(tap_channels, "keys"):  # a {"conv4": c4, "conv5": c5, "conv6": c6} mapping
            tap_channels = tuple(tap_channels.get(k) for k in ("conv4", "conv5", "conv6"))
        tap_channels = tuple(tap_channels)
        if len(tap_channels) != 3 or not all(isinstance(c, int) for c in tap_channels):
            raise ValueError(
                f"trunk {type(trunk).__name__} must expose tap_channels (conv4, conv5, conv6), "
                f"got {tap_channels}"
            )
        self.n_classes = n_classes
        self.with_affinity = with_affinity
        self.trunk_mode = trunk_mode
        self.beta = float(beta)
        self.logt = int(logt)
        self.radius = int(radius)
        self.rw_method = rw_method
        self.dtype = dtype
        self.trunk = trunk
        self.cam_head = ActivationHead(tap_channels[2], n_classes, dtype=dtype, rngs=rngs)
        if with_affinity:
            self.aff_head = AffinityHead(tap_channels, affinity_widths, dtype=dtype, rngs=rngs)

    def _cam_logits(self, taps: dict[str, jax.Array], *, train: bool) -> jax.Array:
        return self.cam_head(taps["conv6"], train=train)

    def features(
        self, images: jax.Array, *, train: bool = False
    ) -> tuple[jax.Array, jax.Array | None]:
        """Computes the activation logits and (if enabled) the affinity features.

        Args:
          images: (B, H, W, 3) normalised images.
          train: enables dropout.

        Returns:
          ``(cam (B,H,W,n_classes) float32, aff_feats (B,ceil(H/8),ceil(W/8),F) float32 or None)``.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
        h, w = images.shape[1:3]
        x = images.astype(self.dtype)
        if not self.with_affinity:
            cam8 = self._cam_logits(self.trunk(x, train=train), train=train)
            return resize_bilinear(cam8, (h, w), align_corners=True), None
        x_pad = pad_to_multiple(x, _STRIDE)
        if self.trunk_mode == "two_pass":
            taps = self.trunk(x, train=train)
            cam8 = self._cam_logits(taps, train=train)
            cam = resize_bilinear(cam8, (h, w), align_corners=True)
            # Without padding and without dropout the second run would repeat the first exactly.
            if train or x_pad.shape != x.shape:
                taps = self.trunk(x_pad, train=train)
        else:
            taps = self.trunk(x_pad, train=train)
            cam8 = self._cam_logits(taps, train=train)
            hp, wp = x_pad.shape[1:3]
            cam = resize_bilinear(cam8, (hp, wp), align_corners=True)[:, :h, :w]
        aff = self.aff_head(taps).astype(jnp.float32)
        return cam, aff

    def __call__(
        self, images: jax.Array, *, train: bool = False, return_aux: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Segments a batch.

        Args:
          images: (B, H, W, 3) ImageNet-normalised images, any H, W.
          train: enables dropout (BatchNorm is always frozen).
          return_aux: also return ``{"cam": raw activation logits, "aff_feats": ...}``.

        Returns:
          logits (B, H, W, n_classes) float32, or ``(logits, aux)``.
        """
        cam, aff = self.features(images, train=train)
        aux: dict[str, jax.Array] = {"cam": cam}
        if aff is None:
            logits = cam
        else:
            logits = random_walk.refine(
                cam,
                aff,
                beta=self.beta,
                logt=self.logt,
                radius=self.radius,
                method=self.rw_method,
            )
            aux["aff_feats"] = aff
        if return_aux:
            return logits, aux
        return logits
