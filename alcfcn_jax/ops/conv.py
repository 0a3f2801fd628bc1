"""A drop-in ``lax.conv_general_dilated`` whose gradients are fast on XLA:CPU.

Measured on the 2-core CPU (``python -m benchmarks.conv``): XLA:CPU computes the *kernel* gradient
of a 1x1 convolution far below its matrix-product speed (a 1x1 2048->4096 conv at the stride-8
grid of a 256x455 image, forward + backward: 91 GFLOP/s against 400 written as below), and that of
ResNet-38d's wide 3x3 convolutions 1.1-1.5x slower. The kernel gradient is a sum over pixels of
outer products, so it can be written as one matrix product per kernel tap::

    dK[i, j] = sum_{n,h,w} x_pad[n, h*s + i*d, w*s + j*d, :]^T  g[n, h, w, :]

This module computes it that way (``kernel_grad_by_taps``) and leaves the input gradient to XLA.
A 1x1 convolution is a matrix product outright, so its forward pass is written as one. Same
mathematics, same numbers up to float32 summation order.

The taps cost one copy of the input window per tap, which does not pay on narrow kxk kernels: on
the decoder's 3x3 convolutions (64-128 channels on the stride-8 grid of a batch of 8) XLA's own
gradient is 1.2-1.5x faster. So under ``"auto"`` a kxk kernel (k > 1) with fewer than
``SMALL_KXK_PAIRS`` channel pairs (Cin * Cout) keeps XLA's convolution and its gradient.

Depthwise convolutions (one group per channel, as in EfficientNet's MBConv blocks) are worse still
on XLA:CPU: 2-5 GFLOP/s forward. ``depthwise_by_shifts`` writes them as a sum over the kh*kw
kernel taps of a strided window of the input times that tap's per-channel weights, which XLA fuses
into one elementwise loop: 7-20x faster forward and 4-10x faster forward + backward on the shapes
of EfficientNet-Lite0 at 224x384 to 320x544 (``python -m benchmarks.conv``).

Only XLA:CPU benefits; on GPU/TPU (cuDNN, the TPU convolution unit) the plain convolution is used
unchanged. ``conv_general_dilated`` picks the path at trace time from ``jax.default_backend()``;
``set_conv_impl`` overrides that (for tests and benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "depthwise_by_shifts", "kernel_grad_by_taps", "set_conv_impl"]

_IMPL = "auto"  # "auto" (taps on CPU only), "taps" (always), "xla" (never)

# Under "auto", kxk (k > 1) kernels with fewer channel pairs Cin * Cout than this keep XLA's own
# convolution gradient (faster there: module docstring). 3x3 128 -> 128 (16,384 pairs) and
# 288 -> 96 (27,648) measured faster with XLA's, 192 -> 192 (36,864) with the taps.
SMALL_KXK_PAIRS = 32768


def set_conv_impl(impl: str) -> str:
    """Selects the convolution path: ``"auto"``, ``"taps"`` or ``"xla"``; returns the previous one.

    The choice is read when a function is traced, so it applies to functions traced afterwards;
    jitted functions already traced keep the path they were traced with.
    """
    global _IMPL
    if impl not in ("auto", "taps", "xla"):
        raise ValueError(f"conv impl must be 'auto', 'taps' or 'xla', got {impl!r}")
    previous, _IMPL = _IMPL, impl
    return previous


def _use_taps() -> bool:
    if _IMPL == "auto":
        return jax.default_backend() == "cpu"
    return _IMPL == "taps"


def _pairs(v, n: int = 2) -> tuple[int, ...]:
    if v is None:
        return (1,) * n
    if isinstance(v, int):
        return (v,) * n
    return tuple(int(a) for a in v)


def _is_nhwc_hwio(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def _forward(x, k, strides, padding, dilation):
    if k.shape[0] == 1 and k.shape[1] == 1:
        # A 1x1 convolution is a matrix product; XLA:CPU runs it as one at full speed.
        (pt, pb), (pl, pr) = padding
        if pt or pb or pl or pr:
            x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        sh, sw = strides
        if sh != 1 or sw != 1:
            x = x[:, ::sh, ::sw, :]
        return jnp.einsum("nhwc,co->nhwo", x, k[0, 0])
    return lax.conv_general_dilated(
        x,
        k,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _replicated_if_explicitly_sharded(x: jax.Array):
    """Under an Explicit mesh, a product contracting a sharded axis must name its output
    sharding; the kernel gradient is replicated. None (let XLA decide) otherwise."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None or all(s is None for s in spec):
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())


def kernel_grad_by_taps(
    x: jax.Array,
    g: jax.Array,
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
    padding: Sequence[tuple[int, int]],
    dilation: tuple[int, int],
) -> jax.Array:
    """d loss / d kernel of an NHWC/HWIO convolution, one matrix product per kernel tap.

    Args:
      x: the convolution's input, (N, H, W, Cin).
      g: the cotangent of its output, (N, Ho, Wo, Cout).
      kernel_hw, strides, padding, dilation: the convolution's geometry (explicit padding pairs).

    Returns:
      (kh, kw, Cin, Cout), in ``x``'s dtype promoted with ``g``'s.
    """
    kh, kw = kernel_hw
    _, ho, wo, _ = g.shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    out_sharding = _replicated_if_explicitly_sharded(x)
    taps = []
    for i in range(kh):
        for j in range(kw):
            patch = _window(xp, i, j, strides, dilation, (ho, wo))
            # (Cout, Cin) = g^T patch: XLA then transposes g once for all taps instead of each
            # tap's patch (measured 1.0-1.5x faster). Written as "nhwo,nhwc->noc" followed by a
            # sum over n, XLA:CPU (jax 0.10.2) miscompiled the single-device step of the smoke
            # model now and then (garbage gradients under CPU load): contract n inside the dot.
            taps.append(jnp.einsum("nhwo,nhwc->oc", g, patch, out_sharding=out_sharding))
    dk_t = jnp.stack(taps)  # (kh*kw, Cout, Cin)
    return jnp.transpose(dk_t, (0, 2, 1)).reshape(kh, kw, x.shape[-1], g.shape[-1])


def _window(xp, i, j, strides, dilation, out_hw):
    """The strided window of padded input ``xp`` that kernel tap (i, j) reads."""
    (sh, sw), (dh, dw), (ho, wo) = strides, dilation, out_hw
    return lax.slice(
        xp,
        (0, i * dh, j * dw, 0),
        (xp.shape[0], i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, xp.shape[3]),
        (1, sh, sw, 1),
    )


def depthwise_by_shifts(
    x: jax.Array,
    k: jax.Array,
    strides: tuple[int, int],
    padding: Sequence[tuple[int, int]],
    dilation: tuple[int, int],
) -> jax.Array:
    """A depthwise NHWC convolution (kernel (kh, kw, 1, C)) as a sum of shifted products.

    ``y = sum_{i,j} x_pad[:, i*dh + s*h, j*dw + s*w, :] * k[i, j, 0, :]``: elementwise work that
    XLA fuses into one loop. Plain ``jnp`` code, so autodiff gives the gradients.
    """
    kh, kw = k.shape[:2]
    (sh, sw), (dh, dw) = strides, dilation
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            term = _window(xp, i, j, strides, dilation, (ho, wo)) * k[i, j, 0]
            out = term if out is None else out + term
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_taps(x, k, strides, padding, dilation):
    return _forward(x, k, strides, padding, dilation)


def _conv_taps_fwd(x, k, strides, padding, dilation):
    return _forward(x, k, strides, padding, dilation), (x, k)


def _conv_taps_bwd(strides, padding, dilation, residuals, g):
    x, k = residuals
    _, input_vjp = jax.vjp(lambda xx: _forward(xx, k, strides, padding, dilation), x)
    (dx,) = input_vjp(g)
    dk = kernel_grad_by_taps(x, g, k.shape[:2], strides, padding, dilation)
    return dx, dk.astype(k.dtype)


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
):
    """``lax.conv_general_dilated`` with the same signature; see the module docstring.

    The fast paths need NHWC/HWIO layout, no input dilation, one feature group (or one per
    channel: depthwise) and no ``out_sharding``/``precision``; anything else (or a non-CPU
    backend) goes to lax unchanged.
    """
    strides, dilation = _pairs(window_strides), _pairs(rhs_dilation)
    plain = (
        _use_taps()
        and _is_nhwc_hwio(dimension_numbers)
        and _pairs(lhs_dilation) == (1, 1)
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and out_sharding is None
        and lhs.ndim == 4
    )
    depthwise = (
        plain
        and feature_group_count > 1
        and feature_group_count == lhs.shape[-1] == rhs.shape[-1]
        and rhs.shape[2] == 1
    )
    small_kxk = (
        _IMPL == "auto"
        and feature_group_count == 1
        and rhs.shape[0] * rhs.shape[1] > 1
        and rhs.shape[2] * rhs.shape[3] < SMALL_KXK_PAIRS
    )
    if small_kxk or not (plain and (feature_group_count == 1 or depthwise)):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
        )
    if isinstance(padding, str):
        extent = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], extent, strides, padding)
    pad = tuple((int(a), int(b)) for a, b in padding)
    if depthwise:
        return depthwise_by_shifts(lhs, rhs, strides, pad, dilation)
    return _conv_taps(lhs, rhs, strides, pad, dilation)
