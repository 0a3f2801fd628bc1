"""Pure jax.numpy building blocks: resizing, pixel affinities and the affinity random walk."""

from alcfcn_jax.ops.affinity import (
    dense_affinity,
    effective_radius,
    neighbor_offsets,
    pair_indices,
    sparse_affinity,
)
from alcfcn_jax.ops.random_walk import refine
from alcfcn_jax.ops.resize import avg_pool, pad_to_multiple, resize_bilinear

__all__ = [
    "avg_pool",
    "dense_affinity",
    "effective_radius",
    "neighbor_offsets",
    "pad_to_multiple",
    "pair_indices",
    "refine",
    "resize_bilinear",
    "sparse_affinity",
]
