"""Building blocks shared by every network: frozen weights, frozen BatchNorm, torch-style convs.

The reference freezes all BatchNorm layers (eval statistics, untrained scale/shift) and the first
trunk blocks. Here a frozen weight is simply not an ``nnx.Param``: it is a :class:`Frozen` variable,
so an optimizer built with ``wrt=nnx.Param`` cannot touch it and no gradient is ever computed for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.ops.conv import conv_general_dilated


class Frozen(nnx.Variable):
    """A weight the optimizer never updates (frozen BatchNorm affine, conv1a, b2 blocks, ...)."""


def freeze(module: nnx.Module) -> nnx.Module:
    """Turns every ``nnx.Param`` inside ``module`` (recursively) into a :class:`Frozen` variable.

    Args:
      module: any NNX module; modified in place.

    Returns:
      The same module, for chaining.
    """
    for _, sub in nnx.iter_modules(module):
        for name, value in list(vars(sub).items()):
            if isinstance(value, nnx.Param):
                setattr(sub, name, Frozen(value[...]))
    return module


class FrozenBatchNorm(nnx.Module):
    """BatchNorm that always uses its stored statistics; scale and shift are frozen too.

    Matches torch ``BatchNorm2d`` in eval mode: ``(x - mean) / sqrt(var + eps) * scale + bias``.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, dtype=jnp.float32):
        self.num_features = num_features
        self.eps = eps
        self.dtype = dtype
        self.scale = Frozen(jnp.ones((num_features,), jnp.float32))
        self.bias = Frozen(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Folding into one multiply-add keeps the op cheap; the stats never change.
        mul = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        add = self.bias[...] - self.mean[...] * mul
        return (x * mul.astype(x.dtype) + add.astype(x.dtype)).astype(x.dtype)


def conv2d(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: bool = False,
    rngs: nnx.Rngs,
    kernel_init=None,
    dtype=jnp.float32,
) -> nnx.Conv:
    """A Conv with PyTorch's argument meanings (explicit symmetric padding, dilation)."""
    kwargs = {}
    if kernel_init is not None:
        kwargs["kernel_init"] = kernel_init
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(padding, padding), (padding, padding)],
        kernel_dilation=(dilation, dilation),
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
        **kwargs,
    )


def dropout2d(rate: float, *, rngs: nnx.Rngs) -> nnx.Dropout:
    """torch ``Dropout2d``: drops whole channels (mask shared over H and W of NHWC input)."""
    return nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)


def torch_default_conv_init(fan_in: int):
    """PyTorch's default Conv2d weight init, ``kaiming_uniform_(a=sqrt(5))`` = U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / jnp.sqrt(float(fan_in))

    def init(key, shape: Sequence[int], dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _pow2_draw(sample, shape: Sequence[int], dtype):
    """Draws ``prod(shape)`` iid values from a flat buffer whose length is a power of two.

    Eager initialisation compiles one random-number program per distinct shape, which dominates
    model construction time on CPU (seconds per conv shape). Drawing a power-of-two sized buffer
    and slicing it needs one compiled sampler per size class instead; the values are still iid
    from the same distribution.
    """
    n = math.prod(int(s) for s in shape)
    size = 1 << max(0, (n - 1).bit_length())
    return sample(size, dtype)[:n].reshape(tuple(shape))


def uniform_init(bound: float):
    """Initializer drawing iid U(-bound, bound) (power-of-two buffer, see ``_pow2_draw``)."""
    bound = float(bound)

    def init(key, shape: Sequence[int], dtype=jnp.float32):
        return _pow2_draw(
            lambda n, dt: jax.random.uniform(key, (n,), dt, -bound, bound), shape, dtype
        )

    return init


def normal_init(std: float):
    """Initializer drawing iid N(0, std^2), untruncated (power-of-two buffer)."""
    std = float(std)

    def init(key, shape: Sequence[int], dtype=jnp.float32):
        return _pow2_draw(lambda n, dt: std * jax.random.normal(key, (n,), dt), shape, dtype)

    return init


def torch_conv_init(fan_in: int):
    """Same distribution as :func:`torch_default_conv_init`, U(+-1/sqrt(fan_in)), faster to build."""
    return uniform_init(1.0 / math.sqrt(float(fan_in)))
