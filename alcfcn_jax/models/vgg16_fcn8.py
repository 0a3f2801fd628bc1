"""FCN8s on a VGG-16 trunk, as the reference's ``FCN8VGG16`` (FS-FCN and the older LCFCN runs).

Layout follows the reference exactly (``src/models/networks/fcn8_vgg16.py``):

* VGG-16 convs (3x3, pad 1, bias, ReLU) except ``conv1_1`` which pads by **100** so that every
  input size survives the five poolings and the 7x7 ``fc6``; ``MaxPool(2, 2, ceil_mode=True)``
  after each block.
* ``fc6`` = 7x7 valid conv 512->4096, ReLU, Dropout(0.5); ``fc7`` = 1x1 4096->4096, ReLU,
  Dropout(0.5) (element-wise dropout, torch ``nn.Dropout``).
* Zero-initialised 1x1 scorers (``score_fr`` on fc7, ``score_pool4``, ``score_pool3``) and
  bias-free transposed convolutions (``upscore2``, ``upscore_pool4``, ``upscore8``) initialised with
  per-class bilinear kernels and trained.
* Fusion with the classic hard-coded crops (offsets 5, 9 and 31) so the output has the input size.

Everything is NHWC. Transposed-conv kernels are stored as ``(k, k, in, out)`` with the torch
``ConvTranspose2d`` orientation (``kernel[ky, kx, i, o] == torch_weight[i, o, ky, kx]``); the spatial
flip needed to express a transposed conv as a dilated forward conv happens in ``__call__``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alcfcn_jax.models.layers import conv2d, torch_default_conv_init
from alcfcn_jax.ops.conv import conv_general_dilated

# (block, number of convs) of VGG-16; conv names are conv{block}_{i}.
VGG16_BLOCKS: tuple[int, ...] = (2, 2, 3, 3, 3)
VGG16_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)

# Pixel formats pretrained weights expect. The data pipeline always delivers ImageNet-normalised RGB
# (docs/contracts.md); a model built with another ``input_format`` converts that input to the format
# of its weights as its first operation. ``mean``/``std`` are in the format's channel order and apply
# to pixel values in ``[0, pixel_scale]``.
INPUT_FORMATS: dict[str, dict] = {
    # torchvision ImageNet weights (and everything trained in this project).
    "imagenet": {
        "name": "imagenet",
        "channel_order": "RGB",
        "pixel_scale": 1.0,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    },
    # Caffe / Keras VGG16 weights (keras.applications.vgg16 "caffe" mode, HED): BGR, 0-255, mean only.
    "caffe_bgr": {
        "name": "caffe_bgr",
        "channel_order": "BGR",
        "pixel_scale": 255.0,
        "mean": (103.939, 116.779, 123.68),
        "std": (1.0, 1.0, 1.0),
    },
    # TensorFlow EfficientNet-Lite weights: RGB, (x - 127) / 128 on 0-255 pixels.
    "tf_lite": {
        "name": "tf_lite",
        "channel_order": "RGB",
        "pixel_scale": 255.0,
        "mean": (127.0, 127.0, 127.0),
        "std": (128.0, 128.0, 128.0),
    },
}


def convert_input(x: jax.Array, input_format: str) -> jax.Array:
    """Converts ImageNet-normalised RGB images to the pixel format named ``input_format``.

    Args:
      x: (..., 3) ImageNet-normalised RGB (``(rgb01 - mean) / std``), as the data pipeline delivers.
      input_format: a key of :data:`INPUT_FORMATS`.

    Returns:
      float32 array in the requested format (``x`` unchanged for ``"imagenet"``).
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"unknown input_format {input_format!r}; expected one of {list(INPUT_FORMATS)}"
        )
    if input_format == "imagenet":
        return x
    src = INPUT_FORMATS["imagenet"]
    fmt = INPUT_FORMATS[input_format]
    x = x.astype(jnp.float32)
    rgb01 = x * jnp.asarray(src["std"], jnp.float32) + jnp.asarray(src["mean"], jnp.float32)
    v = rgb01 * fmt["pixel_scale"]
    if fmt["channel_order"] == "BGR":
        v = v[..., ::-1]
    return (v - jnp.asarray(fmt["mean"], jnp.float32)) / jnp.asarray(fmt["std"], jnp.float32)


# Crop offsets of the reference (they undo the padding of 100 of conv1_1 at each scale).
_CROP_POOL4 = 5
_CROP_POOL3 = 9
_CROP_OUT = 31


def vgg16_conv_names() -> list[str]:
    """Names of the 13 VGG-16 conv layers in forward order (``conv1_1`` ... ``conv5_3``)."""
    return [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG16_BLOCKS) for i in range(n)]


def bilinear_upsampling_kernel(channels: int, kernel_size: int) -> np.ndarray:
    """The classic FCN bilinear-interpolation kernel for a per-channel transposed convolution.

    Channel ``c`` only feeds output channel ``c`` (a diagonal ``in x out`` matrix per tap), so a
    freshly initialised transposed conv performs bilinear upsampling of every score map.

    Args:
      channels: number of input (= output) channels.
      kernel_size: spatial size ``k`` of the square kernel (``2 * stride`` for the FCN upsamplers).

    Returns:
      float32 array of shape ``(k, k, channels, channels)`` in the torch ConvTranspose2d orientation
      (no spatial flip), i.e. ``out[ky, kx, c, c] = f(ky) * f(kx)``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(kernel_size, dtype=np.float64) - center) / factor
    filt = np.outer(taps, taps).astype(np.float32)
    kernel = np.zeros((kernel_size, kernel_size, channels, channels), np.float32)
    idx = np.arange(channels)
    kernel[:, :, idx, idx] = filt[:, :, None]
    return kernel


def conv_transpose_torch(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """torch ``ConvTranspose2d`` (padding 0, no bias, no output_padding) on NHWC input.

    A transposed convolution scatters every input pixel times the kernel into a
    ``stride``-spaced output grid. Equivalently: dilate the input by ``stride`` (``lhs_dilation``),
    pad it by ``k - 1`` on each side and run a regular correlation with the spatially flipped kernel.
    The output side is ``(n - 1) * stride + k``, as in torch.

    Args:
      x: (B, H, W, Cin).
      kernel: (k, k, Cin, Cout) in torch orientation (``kernel[ky, kx, i, o] = W_torch[i, o, ky, kx]``).
      stride: the upsampling factor.

    Returns:
      (B, (H-1)*stride + k, (W-1)*stride + k, Cout).
    """
    k = kernel.shape[0]
    flipped = kernel[::-1, ::-1, :, :]
    return jax.lax.conv_general_dilated(
        x,
        flipped.astype(x.dtype),
        window_strides=(1, 1),
        padding=((k - 1, k - 1), (k - 1, k - 1)),
        lhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """``MaxPool2d(2, 2, ceil_mode=True)``: odd sides keep their last row/column as a 1-wide window.

    The ragged last window is emulated by padding the bottom/right with ``-inf`` (which never wins a
    max), giving an output of ``ceil(H / 2) x ceil(W / 2)`` exactly like torch.
    """
    h, w = x.shape[1], x.shape[2]
    return jax.lax.reduce_window(
        x,
        # A concrete numpy init value lets JAX recognise the max monoid (differentiable reducer).
        np.array(-np.inf, dtype=x.dtype),
        jax.lax.max,
        window_dimensions=(1, 2, 2, 1),
        window_strides=(1, 2, 2, 1),
        padding=((0, 0), (0, h % 2), (0, w % 2), (0, 0)),
    )


class TorchConvTranspose(nnx.Module):
    """Bias-free, trainable torch-style ``ConvTranspose2d`` with bilinear initialisation."""

    def __init__(self, channels: int, kernel_size: int, stride: int):
        self.stride = stride
        self.kernel = nnx.Param(jnp.asarray(bilinear_upsampling_kernel(channels, kernel_size)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv_transpose_torch(x, self.kernel[...], self.stride)


def _torch_conv(
    in_ch: int, out_ch: int, kernel: int, *, padding: int, rngs: nnx.Rngs, dtype
) -> nnx.Conv:
    """Conv with bias and torch's default init (weights ``U(+-1/sqrt(fan_in))``, same for bias)."""
    fan_in = in_ch * kernel * kernel
    conv = conv2d(
        in_ch,
        out_ch,
        kernel,
        padding=padding,
        bias=True,
        rngs=rngs,
        kernel_init=torch_default_conv_init(fan_in),
        dtype=dtype,
    )
    conv.bias = nnx.Param(torch_default_conv_init(fan_in)(rngs.params(), (out_ch,)))
    return conv


def _zero_conv(in_ch: int, out_ch: int, *, rngs: nnx.Rngs, dtype) -> nnx.Conv:
    """1x1 scorer with zero weight and bias (as the reference initialises all three scorers)."""
    return nnx.Conv(
        in_ch,
        out_ch,
        (1, 1),
        padding="VALID",
        use_bias=True,
        kernel_init=nnx.initializers.zeros_init(),
        bias_init=nnx.initializers.zeros_init(),
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


class FCN8VGG16(nnx.Module):
    """FCN8s with a VGG-16 trunk (all weights trainable; VGG-16 has no BatchNorm).

    Attributes ``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7`` hold the trunk; ``score_fr``,
    ``score_pool4``, ``score_pool3``, ``upscore2``, ``upscore_pool4``, ``upscore8`` the FCN8 head.
    Use :func:`alcfcn_jax.weights.vgg16.load_torchvision_vgg16` (torchvision ImageNet weights) or
    :func:`alcfcn_jax.weights.vgg16.load_keras_vgg16` (Keras ``.weights.h5``) to import weights.
    """

    def __init__(
        self,
        n_classes: int = 2,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        channels: Sequence[int] = VGG16_CHANNELS,
        fc_width: int = 4096,
        dropout_rate: float = 0.5,
        input_format: str = "imagenet",
    ):
        """Builds the network.

        Args:
          n_classes: number of output classes ``C``.
          rngs: ``nnx.Rngs`` with a ``params`` stream (init) and a ``dropout`` stream (training).
          dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.
          channels: output channels of the five VGG blocks. The default is VGG-16; smaller values
            only exist so tests can run the full network quickly on CPU.
          fc_width: width of fc6/fc7 (4096 in VGG-16; smaller only for tests).
          dropout_rate: dropout after fc6 and fc7 (0.5 in the reference).
          input_format: pixel format the weights expect (key of :data:`INPUT_FORMATS`):
            ``"imagenet"`` for torchvision weights, ``"caffe_bgr"`` for Keras/Caffe (HED) weights.
            The input is always ImageNet-normalised RGB; the model converts it.
        """
        if len(channels) != len(VGG16_BLOCKS):
            raise ValueError(f"channels must have {len(VGG16_BLOCKS)} entries, got {channels!r}")
        if input_format not in INPUT_FORMATS:
            raise ValueError(
                f"unknown input_format {input_format!r}; expected one of {list(INPUT_FORMATS)}"
            )
        self.input_format = input_format
        self.n_classes = n_classes
        self.dtype = dtype
        self.channels = tuple(int(c) for c in channels)
        self.fc_width = int(fc_width)
        names = vgg16_conv_names()
        in_ch = 3
        idx = 0
        for block, n_convs in enumerate(VGG16_BLOCKS):
            out_ch = self.channels[block]
            for _ in range(n_convs):
                pad = 100 if idx == 0 else 1
                setattr(
                    self,
                    names[idx],
                    _torch_conv(in_ch, out_ch, 3, padding=pad, rngs=rngs, dtype=dtype),
                )
                in_ch = out_ch
                idx += 1
        self.fc6 = _torch_conv(in_ch, fc_width, 7, padding=0, rngs=rngs, dtype=dtype)
        self.fc7 = _torch_conv(fc_width, fc_width, 1, padding=0, rngs=rngs, dtype=dtype)
        self.drop6 = nnx.Dropout(dropout_rate, rngs=rngs)
        self.drop7 = nnx.Dropout(dropout_rate, rngs=rngs)
        self.score_fr = _zero_conv(fc_width, n_classes, rngs=rngs, dtype=dtype)
        self.score_pool4 = _zero_conv(self.channels[3], n_classes, rngs=rngs, dtype=dtype)
        self.score_pool3 = _zero_conv(self.channels[2], n_classes, rngs=rngs, dtype=dtype)
        self.upscore2 = TorchConvTranspose(n_classes, 4, 2)
        self.upscore_pool4 = TorchConvTranspose(n_classes, 4, 2)
        self.upscore8 = TorchConvTranspose(n_classes, 16, 8)

    def features(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """VGG-16 conv trunk: returns ``(pool3, pool4, pool5)``."""
        names = iter(vgg16_conv_names())
        pools = []
        for n_convs in VGG16_BLOCKS:
            for _ in range(n_convs):
                x = jax.nn.relu(getattr(self, next(names))(x))
            x = max_pool_ceil(x)
            pools.append(x)
        return pools[2], pools[3], pools[4]

    def __call__(
        self, x: jax.Array, *, train: bool = False, return_aux: bool = False
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Segmentation logits at input resolution.

        Args:
          x: (B, H, W, 3) ImageNet-normalised RGB images (any H, W >= 1).
          train: enables dropout after fc6/fc7 (randomness from the module's ``dropout`` stream).
          return_aux: also return ``{"cam": logits}`` (the FCN has no separate activation map).

        Returns:
          float32 logits (B, H, W, n_classes), or ``(logits, aux)`` with ``return_aux=True``.
        """
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FCN8VGG16 expects (B, H, W, 3) images, got shape {x.shape}")
        h, w = x.shape[1], x.shape[2]
        pool3, pool4, pool5 = self.features(convert_input(x, self.input_format).astype(self.dtype))
        fc6 = self.drop6(jax.nn.relu(self.fc6(pool5)), deterministic=not train)
        fc7 = self.drop7(jax.nn.relu(self.fc7(fc6)), deterministic=not train)

        up2 = self.upscore2(self.score_fr(fc7))
        s4 = self.score_pool4(pool4)
        s4 = s4[
            :, _CROP_POOL4 : _CROP_POOL4 + up2.shape[1], _CROP_POOL4 : _CROP_POOL4 + up2.shape[2]
        ]
        up4 = self.upscore_pool4(s4 + up2)
        s3 = self.score_pool3(pool3)
        s3 = s3[
            :, _CROP_POOL3 : _CROP_POOL3 + up4.shape[1], _CROP_POOL3 : _CROP_POOL3 + up4.shape[2]
        ]
        out = self.upscore8(s3 + up4)
        logits = out[:, _CROP_OUT : _CROP_OUT + h, _CROP_OUT : _CROP_OUT + w].astype(jnp.float32)
        if return_aux:
            return logits, {"cam": logits}
        return logits
