"""The branches on top of a trunk: activation logits (``fc8`` or a decoder) and affinity features.

Names follow the reference (``resnet38_aff.Net``): ``dropout7``/``fc8`` for the activation branch,
``f8_3``/``f8_4``/``f8_5``/``f9`` for the affinity branch.

Every head takes an optional ``grid`` (h8, w8): the stride-8 grid its output must be on. Taps of a
dilated trunk are already there; taps at stride 16 or 32 (EfficientNet-Lite without dilation) are
brought to it by a bilinear resize *after* the head's first 1x1 convolution. A 1x1 convolution (and
channel dropout) commutes with a bilinear resize, whose weights sum to 1, so this equals resizing
the wide taps first, at a fraction of the cost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.layers import conv2d, dropout2d, normal_init, torch_conv_init, uniform_init
from alcfcn_jax.ops.resize import resize_bilinear

Grid = tuple[int, int] | None


def align(x: jax.Array, grid: Grid) -> jax.Array:
    """``x`` (B, h, w, C) bilinearly resized (half-pixel centres) to ``grid``; as is if it fits."""
    if grid is None or tuple(x.shape[1:3]) == tuple(grid):
        return x
    return resize_bilinear(x, grid, align_corners=False)


def kaiming_normal(fan_in: int):
    """torch ``kaiming_normal_`` defaults (fan_in, gain sqrt(2)): N(0, 2 / fan_in), untruncated."""
    return normal_init(math.sqrt(2.0 / fan_in))


def xavier_uniform(fan_in: int, fan_out: int, gain: float):
    """torch ``xavier_uniform_(gain)``: U(-b, b) with ``b = gain * sqrt(6 / (fan_in + fan_out))``."""
    return uniform_init(gain * math.sqrt(6.0 / (fan_in + fan_out)))


class ActivationHead(nnx.Module):
    """``fc8(Dropout2d(0.5)(conv6))``: bias-free 1x1 conv to class logits at stride 8.

    ``fc8`` is absent from the SEAM checkpoint, so its init is PyTorch's default Conv2d init,
    U(+-1/sqrt(fan_in)).
    Upsampling to image size is done by the model (it differs between trunk modes).
    """

    def __init__(
        self,
        in_ch: int,
        n_classes: int,
        *,
        dropout: float = 0.5,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dropout7 = dropout2d(dropout, rngs=rngs)
        self.fc8 = conv2d(
            in_ch,
            n_classes,
            1,
            kernel_init=torch_conv_init(in_ch),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, conv6: jax.Array, *, train: bool = False, grid: Grid = None) -> jax.Array:
        """Returns stride-8 logits (B, h, w, n_classes) in float32."""
        logits = self.fc8(self.dropout7(conv6, deterministic=not train))
        return align(logits.astype(jnp.float32), grid)


def _same_conv(cin: int, cout: int, k: int, *, dtype, rngs: nnx.Rngs, **kw) -> nnx.Module:
    """A k x k "same" convolution with bias and He-normal init (the decoder-style heads)."""
    return conv2d(
        cin,
        cout,
        k,
        padding=k // 2,
        bias=True,
        kernel_init=kaiming_normal(cin * k * k),
        dtype=dtype,
        rngs=rngs,
        **kw,
    )


def _layer_norm(width: int, *, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over ``width`` channels, float32 parameters."""
    return nnx.LayerNorm(width, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class DecoderHead(nnx.Module):
    """Activation logits from all three taps (not in the reference; ``model.cam_head="decoder"``).

    ``p_k = relu(norm_k(align(proj_k(tap_k))))`` for conv4/conv5/conv6 (1x1 conv to ``width``
    channels, LayerNorm over channels), then ``Dropout2d``, a 1x1 conv fusing the three, two 3x3
    convs (all with ReLU) and a 1x1 conv to class logits (zero-initialised: every pixel starts at
    p(fish) = 0.5), at stride 8.

    Cost: about 2 * 9 * width^2 + 3 * width^2 multiply-adds per stride-8 cell (0.19 M for width
    96); a first 3x3 conv over the concatenated 3 * width channels instead costs 2.5x more and,
    at 304x541 and batch 8, made the head's forward + backward take 1 s on the 2-core CPU.

    The LayerNorms make the head independent of the taps' scale: the undilated Lite0 taps have a
    standard deviation of about 5 (stage outputs are linear projections), and without them the
    first logits are so large that the LCFCN loss saturates (torch's BCE clamps log p at -100,
    whose gradient is 0) and training stops at step 1 (measured: grad_norm exactly 0 from step
    ~150 on, every pixel background).

    Why: the reference's ``fc8`` is one linear map of the last tap. On DeepFish frames with a
    frozen ImageNet EfficientNet-Lite0 trunk, that map cannot find fish (the last tap separates
    fish-centre cells from water with AUC 0.875; stages 4-5 reach 0.96, all stages together
    0.98), and the small fish need the stride-8 tap's detail: a few convolutions over all taps
    are the least that learns from clicks (docs/results.md).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        n_classes: int,
        *,
        width: int = 96,
        dropout: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(in_channels) != 3:
            raise ValueError(f"DecoderHead needs 3 input taps, got {in_channels}")
        c4, c5, c6 = (int(c) for c in in_channels)
        w = int(width)

        conv = functools.partial(_same_conv, dtype=dtype, rngs=rngs)
        norm = functools.partial(_layer_norm, w, dtype=dtype, rngs=rngs)

        self.proj4, self.norm4 = conv(c4, w, 1), norm()
        self.proj5, self.norm5 = conv(c5, w, 1), norm()
        self.proj6, self.norm6 = conv(c6, w, 1), norm()
        self.dropout = dropout2d(dropout, rngs=rngs)
        self.fuse = conv(3 * w, w, 1)
        self.conv1 = conv(w, w, 3)
        self.conv2 = conv(w, w, 3)
        self.cls = conv2d(
            w, n_classes, 1, bias=True, kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs
        )

    def __call__(
        self, taps: dict[str, jax.Array], *, train: bool = False, grid: Grid = None
    ) -> jax.Array:
        """Returns stride-8 logits (B, h, w, n_classes) in float32."""
        if grid is None:
            grid = tuple(taps["conv4"].shape[1:3])
        f = jnp.concatenate(
            [
                jax.nn.relu(self.norm4(align(self.proj4(taps["conv4"]), grid))),
                jax.nn.relu(self.norm5(align(self.proj5(taps["conv5"]), grid))),
                jax.nn.relu(self.norm6(align(self.proj6(taps["conv6"]), grid))),
            ],
            axis=-1,
        )
        f = self.dropout(f, deterministic=not train)
        f = jax.nn.relu(self.fuse(f))
        f = jax.nn.relu(self.conv1(f))
        f = jax.nn.relu(self.conv2(f))
        return self.cls(f).astype(jnp.float32)


class EmbeddingHead(nnx.Module):
    """WISE's embedding branch (E-Net; ``model.embedding_dim`` > 0): a ``dim``-vector per pixel
    of the stride-8 grid, from all three taps (not in the reference).

    ``p_k = relu(norm_k(align(proj_k(tap_k))))`` (1x1 conv to ``width``, LayerNorm) for
    conv4/conv5/conv6, a 1x1 conv fusing the three, one 3x3 conv (both with ReLU) and a linear
    1x1 conv to ``dim`` channels, float32. The similarity of two pixels is
    ``exp(-||E_i - E_j||^2)`` (``losses.embedding``). Stride 8, as the other heads: a fish of the
    real frames spans several cells, and the test-time assignment reads the embedding at every
    pixel by bilinear upsampling (``losses.embedding.upsample_embedding``), which costs nothing
    in training, where the loss reads it at a few sampled pixels only.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        dim: int = 64,
        *,
        width: int = 64,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(in_channels) != 3:
            raise ValueError(f"EmbeddingHead needs 3 input taps, got {in_channels}")
        if dim < 1:
            raise ValueError(f"EmbeddingHead dim must be >= 1, got {dim}")
        c4, c5, c6 = (int(c) for c in in_channels)
        w = int(width)

        conv = functools.partial(_same_conv, dtype=dtype, rngs=rngs)
        norm = functools.partial(_layer_norm, w, dtype=dtype, rngs=rngs)

        self.dim = int(dim)
        self.proj4, self.norm4 = conv(c4, w, 1), norm()
        self.proj5, self.norm5 = conv(c5, w, 1), norm()
        self.proj6, self.norm6 = conv(c6, w, 1), norm()
        self.fuse = conv(3 * w, w, 1)
        self.conv1 = conv(w, w, 3)
        self.out = conv2d(
            w,
            self.dim,
            1,
            bias=True,
            kernel_init=xavier_uniform(w, self.dim, 1.0),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, taps: dict[str, jax.Array], *, grid: Grid = None) -> jax.Array:
        """Returns the embedding (B, h, w, dim) in float32 on ``grid``."""
        if grid is None:
            grid = tuple(taps["conv4"].shape[1:3])
        f = jnp.concatenate(
            [
                jax.nn.relu(self.norm4(align(self.proj4(taps["conv4"]), grid))),
                jax.nn.relu(self.norm5(align(self.proj5(taps["conv5"]), grid))),
                jax.nn.relu(self.norm6(align(self.proj6(taps["conv6"]), grid))),
            ],
            axis=-1,
        )
        f = jax.nn.relu(self.fuse(f))
        f = jax.nn.relu(self.conv1(f))
        return self.out(f).astype(jnp.float32)


class AffinityHead(nnx.Module):
    """``elu(f9(concat[elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6))]))``.

    Args:
      in_channels: channels of the trunk taps (conv4, conv5, conv6) - the trunk's
        ``tap_channels``.
      widths: output widths of f8_3/f8_4/f8_5; the reference's (64, 128, 256) give 448 features.
      dtype: compute dtype.
      rngs: init stream.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        widths: Sequence[int] = (64, 128, 256),
        *,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(in_channels) != 3 or len(widths) != 3:
            raise ValueError(
                f"AffinityHead needs 3 input taps and 3 widths, got {in_channels} and {widths}"
            )
        c4, c5, c6 = (int(c) for c in in_channels)
        w3, w4, w5 = (int(w) for w in widths)
        self.out_channels = w3 + w4 + w5
        self.f8_3 = conv2d(c4, w3, 1, kernel_init=kaiming_normal(c4), dtype=dtype, rngs=rngs)
        self.f8_4 = conv2d(c5, w4, 1, kernel_init=kaiming_normal(c5), dtype=dtype, rngs=rngs)
        self.f8_5 = conv2d(c6, w5, 1, kernel_init=kaiming_normal(c6), dtype=dtype, rngs=rngs)
        self.f9 = conv2d(
            self.out_channels,
            self.out_channels,
            1,
            kernel_init=xavier_uniform(self.out_channels, self.out_channels, 4.0),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, taps: dict[str, jax.Array], *, grid: Grid = None) -> jax.Array:
        """Returns affinity features (B, h, w, sum(widths)) in the compute dtype."""
        f = jnp.concatenate(
            [
                jax.nn.elu(align(self.f8_3(taps["conv4"]), grid)),
                jax.nn.elu(align(self.f8_4(taps["conv5"]), grid)),
                jax.nn.elu(align(self.f8_5(taps["conv6"]), grid)),
            ],
            axis=-1,
        )
        return jax.nn.elu(self.f9(f))
