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
``walk=False`` in a call skips the walk of an A-LCFCN model (``train.walk_warmup_steps``).

Trunks whose taps are not all at stride 8 (EfficientNet-Lite without dilation: strides 8, 16, 32)
declare ``input_multiple`` (32): their input is zero-padded bottom/right to it (with the affinity
branch, to a multiple of 8 as well), and the heads resample the taps onto the stride-8 grid of the
padded input (``heads.align``). For the trunks of the reference (``input_multiple`` 1) nothing
changes.

Frozen-trunk feature cache: in every mode but ``two_pass`` with affinity, the trunk runs once, on
``trunk_input(images)``; ``from_taps(taps, size)`` computes everything after it. So
``model(images) == model.from_taps(trunk(trunk_input(images)), images.shape[1:3])`` (the trunk in
eval mode), which is what training on cached taps relies on (``alcfcn_jax.data.tap_cache``).

Embedding branch (WISE; ``embedding_dim`` > 0, off by default): an
:class:`~alcfcn_jax.models.heads.EmbeddingHead` on the same taps as the activation branch gives
``aux["embedding"]`` (B, ceil(H/8), ceil(W/8), embedding_dim) float32 on the stride-8 grid of the
input (read at pixels by ``losses.embedding.sample_embedding`` / ``upsample_embedding``). It does
not change the logits.

Mixed precision: with ``dtype=bfloat16`` the parameters stay float32 and the trunk and heads compute
in bfloat16; activation logits, affinity features, the random walk and all outputs are float32.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.heads import ActivationHead, AffinityHead, DecoderHead, EmbeddingHead
from alcfcn_jax.ops import random_walk
from alcfcn_jax.ops.resize import pad_to_multiple, resize_bilinear

TrunkMode = Literal["two_pass", "single_pass"]
TRUNK_MODES = ("two_pass", "single_pass")
RW_METHODS = ("dense", "sparse", "auto")
CAM_HEADS = ("fc8", "decoder")
_STRIDE = random_walk.STRIDE


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class ALCFCN(nnx.Module):
    """A-LCFCN segmentation model (or the LCFCN baseline with ``with_affinity=False``).

    Args:
      trunk: a trunk module: ``trunk(x, *, train) -> {"conv4", "conv5", "conv6"}`` with a
        ``tap_channels`` attribute, a (conv4, conv5, conv6) tuple or a mapping with those keys
        (ResNet38d, EfficientNetLite0Trunk, TinyTrunk), and optionally ``input_multiple``.
      n_classes: output classes (2: background, fish).
      with_affinity: build the affinity branch and refine the logits by the random walk.
      trunk_mode: ``"two_pass"`` (reference) or ``"single_pass"``; see the module docstring.
      beta: Hadamard power of the affinity matrix.
      logt: number of squarings of the transition matrix (t = 2**logt).
      radius: neighbourhood radius of the affinity graph (reduced on small maps by ``refine``).
      rw_method: ``"dense"``, ``"sparse"`` or ``"auto"`` random-walk implementation.
      affinity_widths: f8_3/f8_4/f8_5 widths (reference 64/128/256 -> 448 features).
      cam_head: ``"fc8"`` (reference: dropout + 1x1 on conv6) or ``"decoder"``
        (:class:`~alcfcn_jax.models.heads.DecoderHead` over all three taps).
      decoder_width: channels of the decoder head.
      decoder_dropout: its Dropout2d rate (0: training sees the function evaluation sees).
      embedding_dim: channels of the WISE embedding branch (0: no branch).
      embedding_width: its hidden channels.
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
        cam_head: str = "fc8",
        decoder_width: int = 96,
        decoder_dropout: float = 0.0,
        embedding_dim: int = 0,
        embedding_width: int = 64,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if trunk_mode not in TRUNK_MODES:
            raise ValueError(f"trunk_mode must be one of {TRUNK_MODES}, got {trunk_mode!r}")
        if rw_method not in RW_METHODS:
            raise ValueError(f"rw_method must be one of {RW_METHODS}, got {rw_method!r}")
        if cam_head not in CAM_HEADS:
            raise ValueError(f"cam_head must be one of {CAM_HEADS}, got {cam_head!r}")
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
        # The trunk's own input multiple (1 for stride-8 trunks); the single trunk pass pads to
        # a multiple of 8 too when the affinity branch is on (the reference pads for it).
        self.trunk_multiple = int(getattr(trunk, "input_multiple", 1) or 1)
        self.input_multiple = (
            math.lcm(_STRIDE, self.trunk_multiple) if with_affinity else self.trunk_multiple
        )
        if cam_head == "fc8":
            self.cam_head = ActivationHead(tap_channels[2], n_classes, dtype=dtype, rngs=rngs)
        else:
            self.cam_head = DecoderHead(
                tap_channels,
                n_classes,
                width=decoder_width,
                dropout=decoder_dropout,
                dtype=dtype,
                rngs=rngs,
            )
        if with_affinity:
            self.aff_head = AffinityHead(tap_channels, affinity_widths, dtype=dtype, rngs=rngs)
        if embedding_dim < 0:
            raise ValueError(f"embedding_dim must be >= 0, got {embedding_dim}")
        self.embedding_dim = int(embedding_dim)
        if self.embedding_dim:
            self.emb_head = EmbeddingHead(
                tap_channels, self.embedding_dim, width=embedding_width, dtype=dtype, rngs=rngs
            )

    @property
    def cacheable(self) -> bool:
        """True when one trunk pass on ``trunk_input(images)`` feeds both branches."""
        return not (self.with_affinity and self.trunk_mode == "two_pass")

    def trunk_input(self, images: jax.Array) -> jax.Array:
        """The (padded) input of the single trunk pass, in the compute dtype."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
        return pad_to_multiple(images.astype(self.dtype), self.input_multiple)

    def _cam(self, taps, padded: tuple[int, int], size: tuple[int, int], *, train: bool):
        """Activation logits at ``size`` from the taps of a trunk run on a ``padded`` input."""
        grid = (_ceil_div(padded[0], _STRIDE), _ceil_div(padded[1], _STRIDE))
        head_input = taps if isinstance(self.cam_head, DecoderHead) else taps["conv6"]
        cam8 = self.cam_head(head_input, train=train, grid=grid)
        h, w = size
        return resize_bilinear(cam8, padded, align_corners=True)[:, :h, :w]

    def _aff(self, taps, padded: tuple[int, int], size: tuple[int, int]) -> jax.Array:
        """Affinity features on the ceil(size/8) grid from the taps of a ``padded`` input."""
        grid = (padded[0] // _STRIDE, padded[1] // _STRIDE)
        aff = self.aff_head(taps, grid=grid).astype(jnp.float32)
        return aff[:, : _ceil_div(size[0], _STRIDE), : _ceil_div(size[1], _STRIDE)]

    def _emb(self, taps, padded: tuple[int, int], size: tuple[int, int]) -> jax.Array | None:
        """The embedding on the ceil(size/8) grid, or None without the branch."""
        if not self.embedding_dim:
            return None
        grid = (_ceil_div(padded[0], _STRIDE), _ceil_div(padded[1], _STRIDE))
        e = self.emb_head(taps, grid=grid)
        return e[:, : _ceil_div(size[0], _STRIDE), : _ceil_div(size[1], _STRIDE)]

    def from_taps(
        self,
        taps: dict[str, jax.Array],
        size: tuple[int, int],
        *,
        train: bool = False,
        return_aux: bool = False,
        walk: bool = True,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Everything after the trunk: ``model(x) == from_taps(trunk(trunk_input(x)), size)``.

        Args:
          taps: the trunk's ``{"conv4", "conv5", "conv6"}`` on ``trunk_input(images)``.
          size: (H, W) of the images.
          train, return_aux, walk: as in ``__call__``.
        """
        if not self.cacheable:
            raise ValueError(
                "trunk_mode='two_pass' with the affinity branch runs the trunk twice on different "
                "inputs; use trunk_mode='single_pass' to run the heads on precomputed taps"
            )
        h, w = (int(v) for v in size)
        padded = (
            _ceil_div(h, self.input_multiple) * self.input_multiple,
            _ceil_div(w, self.input_multiple) * self.input_multiple,
        )
        cam = self._cam(taps, padded, (h, w), train=train)
        aff = self._aff(taps, padded, (h, w)) if self.with_affinity else None
        emb = self._emb(taps, padded, (h, w))
        return self._finish(cam, aff, return_aux=return_aux, walk=walk, emb=emb)

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
        cam, aff, _ = self._features(images, train=train)
        return cam, aff

    def _features(self, images: jax.Array, *, train: bool):
        """``(cam, aff_feats or None, embedding or None)``; see :meth:`features`."""
        x = self.trunk_input(images)
        size = tuple(images.shape[1:3])
        padded = tuple(x.shape[1:3])
        if self.cacheable:
            taps = self.trunk(x, train=train)
            cam = self._cam(taps, padded, size, train=train)
            aff = self._aff(taps, padded, size) if self.with_affinity else None
            return cam, aff, self._emb(taps, padded, size)
        # two_pass: the activation branch sees the image padded only as far as the trunk needs
        # (unpadded for the reference's trunks), the affinity branch a second run on ``x``.
        x_cam = pad_to_multiple(images.astype(self.dtype), self.trunk_multiple)
        taps = self.trunk(x_cam, train=train)
        cam = self._cam(taps, tuple(x_cam.shape[1:3]), size, train=train)
        emb = self._emb(taps, tuple(x_cam.shape[1:3]), size)
        # Without padding and without dropout the second run would repeat the first exactly.
        if train or x.shape != x_cam.shape:
            taps = self.trunk(x, train=train)
        return cam, self._aff(taps, padded, size), emb

    def _finish(self, cam, aff, *, return_aux: bool, walk: bool, emb=None):
        aux: dict[str, jax.Array] = {"cam": cam}
        if emb is not None:
            aux["embedding"] = emb
        if aff is None or not walk:
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
        if aff is not None:
            aux["aff_feats"] = aff
        if return_aux:
            return logits, aux
        return logits

    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool = False,
        return_aux: bool = False,
        walk: bool = True,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Segments a batch.

        Args:
          images: (B, H, W, 3) ImageNet-normalised images, any H, W.
          train: enables dropout (BatchNorm is always frozen).
          return_aux: also return ``{"cam": raw activation logits, "aff_feats": ...,
            "embedding": ...}`` (the last two with their branches).
          walk: refine by the random walk (A-LCFCN); ``False`` returns the activation logits.

        Returns:
          logits (B, H, W, n_classes) float32, or ``(logits, aux)``.
        """
        cam, aff, emb = self._features(images, train=train)
        return self._finish(cam, aff, return_aux=return_aux, walk=walk, emb=emb)


class WithoutWalk(nnx.Module):
    """An A-LCFCN model evaluated without its random walk: its activation branch alone.

    ``WithoutWalk(model)(x) == model(x, walk=False)`` (and the same for ``from_taps``), so the
    evaluation and overlay code can measure what the walk adds (``evaluate.py --nowalk``).
    """

    def __init__(self, model: ALCFCN):
        """Wraps ``model`` (an :class:`ALCFCN` with its affinity branch)."""
        if not isinstance(model, ALCFCN) or not model.with_affinity:
            raise ValueError("WithoutWalk needs an A-LCFCN model with its affinity branch")
        self.model = model

    @property
    def cacheable(self) -> bool:
        return self.model.cacheable

    def from_taps(self, taps, size, *, train: bool = False, return_aux: bool = False):
        """``model.from_taps(..., walk=False)``."""
        return self.model.from_taps(taps, size, train=train, return_aux=return_aux, walk=False)

    def __call__(self, images, *, train: bool = False, return_aux: bool = False):
        """``model(images, walk=False)``."""
        return self.model(images, train=train, return_aux=return_aux, walk=False)
