"""WISE's embedding loss (Laradji et al., "Instance Segmentation with Point Supervision").

The embedding branch gives every pixel a vector ``E_i`` (``model.embedding_dim`` = d); the
similarity of two pixels is ``S(i, j) = exp(-||E_i - E_j||^2)``. Pairs of pixels of one object are
pushed to ``S = 1``, pairs of two different objects, or of an object and the background, to
``S = 0`` (background-background pairs carry no label: the background is not one object):

    L = mean_{same object} ||E_i - E_j||^2  +  mean_{different} -log(1 - S(i, j))

(``-log S`` is exactly the squared distance). Two means rather than WISE's two sums: the numbers
of positive and negative pairs depend on the number of fish, and the sums would make the term's
scale (and the weight ``loss.embedding_weight``) depend on it too, as in ``losses.affinity``.

Proposals (which pixels belong to which clicked fish). WISE takes class-agnostic SharpMask
proposals containing each click. Here: **the model's own blobs** (8-connected components of the
refined map ``p(fish) > 0.5``, with no gradient) **that contain exactly one click** are that click's
object; a click whose blob holds other clicks, or that lies in no blob, is an object of one pixel
(the click itself); background = every labelled pixel in no blob. Why these: (1) after the random
walk, A-LCFCN's blobs are its best estimate of whole fish (the walk's purpose), better on
underwater frames than colour superpixels (felzenszwalb/slic regions follow the turbid water's
colour gradients, not fish outlines, and a fish is often cut into several of them); (2) they need
no image, so the term trains on the frozen trunk's cached taps like the rest of the step, with no
change to the data pipeline or the feature cache; (3) they are what the test-time assignment works
on (the predicted blobs' seeds), so training and test see the same kind of object. Blobs with
several clicks are exactly the touching fish the embedding must separate; their extent per fish
is unknown, so only their clicks take part, as distinct objects: the negative pairs between the
clicks of one blob are the signal that separates touching fish. (Pseudo masks from stage 1 would
be another source, not wired here.)

Pair sampling, O(pairs): on the host (one ``pure_callback`` per data shard, as the LCFCN targets),
each image draws ``per_object`` pixels (with replacement) from each of at most ``max_objects``
objects (a random subset when there are more) and ``background`` pixels from the background,
seeded by ``(seed, image index)``; the device gathers the embedding at those S =
``max_objects * per_object + background`` pixels (bilinearly, from the stride-8 grid) and scores
all S x S pairs. Cost and memory are independent of the image size.

Where the embedding lives: ``aux["embedding"]`` is on the stride-8 grid of the model's input
(:func:`sample_embedding` and :func:`upsample_embedding` read it at pixel ``(y, x)`` at grid
coordinate ``((y + 0.5) / 8 - 0.5, (x + 0.5) / 8 - 0.5)``, bilinear, clamped at the edges: the
half-pixel convention of ``resize_bilinear(align_corners=False)``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi
from jax.sharding import PartitionSpec as P

from alcfcn_jax.losses.lcfcn import _resolve_mesh, _shard_on_data
from alcfcn_jax.models.outputs import IGNORE, STRIDE
from alcfcn_jax.ops.resize import resize_bilinear
from alcfcn_jax.sharding import DATA_AXIS

_EPS = 1e-5  # -log(1 - S) is unbounded as S -> 1
_EIGHT = np.ones((3, 3), bool)
INVALID = -1  # object id of an unused sample slot
BACKGROUND = 0


@dataclasses.dataclass(frozen=True)
class EmbeddingLoss:
    """Settings of the embedding term the train step adds (``loss.embedding_*``)."""

    weight: float
    per_object: int = 8
    background: int = 32
    max_objects: int = 16

    @property
    def num_samples(self) -> int:
        return self.max_objects * self.per_object + self.background


def object_map(prob: np.ndarray, points: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) int32 map of one image: k >= 1 = click k's object, 0 background, -1 unlabelled.

    Clicks (``points == 1``) are numbered 1..n in raster order; see the module docstring for the
    proposals. Pixels of a blob holding several clicks (other than the clicks) and unlabelled
    pixels (``points == 255``, padding) are -1.
    """
    prob = np.asarray(prob)
    points = np.asarray(points)
    blobs, n_blobs = ndi.label(prob > threshold, structure=_EIGHT)
    ys, xs = np.nonzero(points == 1)
    out = np.where(blobs == 0, BACKGROUND, INVALID).astype(np.int32)
    out[points == IGNORE] = INVALID
    if ys.size == 0:
        return out
    click_blob = blobs[ys, xs]
    per_blob = np.bincount(click_blob, minlength=n_blobs + 1)
    for k, b in enumerate(click_blob, start=1):
        if b > 0 and per_blob[b] == 1:
            out[blobs == b] = k
    for k, (y, x) in enumerate(zip(ys, xs), start=1):
        out[y, x] = k
    return out


def sample_pairs_host(
    obj: np.ndarray, rng: np.random.Generator, settings: EmbeddingLoss
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled pixels of one image: (flat indices (S,), object ids (S,), -1 = unused slot)."""
    flat = np.asarray(obj).ravel()
    s = settings.num_samples
    idx = np.zeros(s, np.int32)
    ids = np.full(s, INVALID, np.int32)
    objects = np.unique(flat[flat > 0])
    if len(objects) > settings.max_objects:
        objects = np.sort(rng.choice(objects, settings.max_objects, replace=False))
    m = settings.per_object
    for slot, k in enumerate(objects):
        where = np.flatnonzero(flat == k)
        idx[slot * m : (slot + 1) * m] = rng.choice(where, m, replace=True)
        ids[slot * m : (slot + 1) * m] = k
    bg = np.flatnonzero(flat == BACKGROUND)
    if bg.size and settings.background:
        start = settings.max_objects * m
        idx[start:] = rng.choice(bg, settings.background, replace=bg.size < settings.background)
        ids[start:] = BACKGROUND
    return idx, ids


def _host_samples(prob, points, seed, *, settings: EmbeddingLoss):
    prob = np.asarray(prob)
    points = np.asarray(points)
    lead = prob.shape[:-2]
    h, w = prob.shape[-2:]
    prob = prob.reshape(-1, h, w)
    points = points.reshape(-1, h, w)
    seeds = np.asarray(seed).reshape(-1, 2)
    idx = np.zeros((len(prob), settings.num_samples), np.int32)
    ids = np.zeros_like(idx)
    for b in range(len(prob)):
        rng = np.random.default_rng([int(v) for v in seeds[b]])
        idx[b], ids[b] = sample_pairs_host(object_map(prob[b], points[b]), rng, settings)
    return idx.reshape(lead + idx.shape[1:]), ids.reshape(lead + ids.shape[1:])


def sample_pixels(
    prob: jax.Array,
    points: jax.Array,
    seed: jax.Array,
    settings: EmbeddingLoss,
    *,
    mesh=None,
) -> tuple[jax.Array, jax.Array]:
    """Host-sampled pixels of a batch: ``(flat indices (B, S), object ids (B, S))``, no gradient.

    Args:
      prob: (B, H, W) fish probability (the model's refined map).
      points: (B, H, W) point map (1 = click, 255 = unlabelled).
      seed: uint32 scalar; image b of the global batch draws with ``(seed, b)``.
      settings: the sample sizes.
      mesh: as ``losses.lcfcn.target_maps`` (one callback per data shard).
    """
    b = prob.shape[0]
    p = jax.lax.stop_gradient(prob).astype(jnp.float32)
    p = jnp.where(jnp.isfinite(p), p, 0.0)
    pts = points.astype(jnp.int32)
    seeds = jnp.stack([jnp.full((b,), seed, jnp.uint32), jnp.arange(b, dtype=jnp.uint32)], axis=-1)

    def callback(p, pts, seeds):
        shape = jax.ShapeDtypeStruct(p.shape[:-2] + (settings.num_samples,), jnp.int32)
        return jax.pure_callback(
            functools.partial(_host_samples, settings=settings),
            (shape, shape),
            p,
            pts,
            seeds,
            vmap_method="broadcast_all",
        )

    mesh = _resolve_mesh(mesh)
    if mesh is not None:
        p, pts, seeds = (_shard_on_data(x, mesh) for x in (p, pts, seeds))
        callback = jax.shard_map(
            callback,
            mesh=mesh,
            in_specs=(P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
            out_specs=(P(DATA_AXIS), P(DATA_AXIS)),
        )
    idx, ids = callback(p, pts, seeds)
    return jax.lax.stop_gradient(idx), jax.lax.stop_gradient(ids)


def _grid_coords(pix: jax.Array, n_grid: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lower cell, upper cell and weight of the upper one, for pixel coordinates ``pix``."""
    c = jnp.clip((pix.astype(jnp.float32) + 0.5) / STRIDE - 0.5, 0.0, n_grid - 1)
    lo = jnp.floor(c).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n_grid - 1)
    return lo, hi, c - lo


def sample_embedding(embedding: jax.Array, flat_idx: jax.Array, width: int) -> jax.Array:
    """(B, S, d) embedding at pixels ``flat_idx`` (B, S) (``y * width + x``) of the image.

    ``embedding`` is the (B, h, w, d) stride-8 grid (see the module docstring).
    """
    _, h8, w8, _ = embedding.shape
    y, x = flat_idx // width, flat_idx % width
    y0, y1, wy = _grid_coords(y, h8)
    x0, x1, wx = _grid_coords(x, w8)
    take = jax.vmap(lambda e, yy, xx: e[yy, xx])
    e = embedding.astype(jnp.float32)
    wy, wx = wy[..., None], wx[..., None]
    top = take(e, y0, x0) * (1 - wx) + take(e, y0, x1) * wx
    bottom = take(e, y1, x0) * (1 - wx) + take(e, y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def upsample_embedding(embedding: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B, H, W, d) embedding of every pixel of an (H, W) image, as :func:`sample_embedding`."""
    h, w = (int(v) for v in size)
    h8, w8 = embedding.shape[1:3]
    if h > h8 * STRIDE or w > w8 * STRIDE:
        raise ValueError(f"an embedding grid {(h8, w8)} does not cover an image of {(h, w)}")
    up = resize_bilinear(
        embedding.astype(jnp.float32), (h8 * STRIDE, w8 * STRIDE), align_corners=False
    )
    return up[:, :h, :w]


def pair_loss(samples: jax.Array, ids: jax.Array) -> jax.Array:
    """(B,) loss of all pairs of sampled embeddings (B, S, d) with object ids (B, S)."""
    e = samples.astype(jnp.float32)
    sq = jnp.sum(e * e, axis=-1)
    d2 = jnp.maximum(sq[:, :, None] + sq[:, None, :] - 2 * jnp.einsum("bid,bjd->bij", e, e), 0.0)
    a, b = ids[:, :, None], ids[:, None, :]
    s = ids.shape[1]
    off_diag = ~jnp.eye(s, dtype=bool)[None]
    valid = (a != INVALID) & (b != INVALID) & off_diag
    pos = valid & (a == b) & (a > 0)
    neg = valid & (a != b)
    neg_term = -jnp.log(jnp.maximum(1.0 - jnp.exp(-d2), _EPS))

    def mean(values, mask):
        total = jnp.sum(jnp.where(mask, values, 0.0), axis=(1, 2))
        return total / jnp.maximum(jnp.sum(mask, axis=(1, 2)), 1)

    return mean(d2, pos) + mean(neg_term, neg)


def embedding_loss(
    embedding: jax.Array,
    prob: jax.Array,
    points: jax.Array,
    seed: jax.Array,
    settings: EmbeddingLoss,
    *,
    mesh=None,
) -> jax.Array:
    """(B,) per-image embedding loss (the module docstring): proposals and samples on the host,
    pair scores on the device.

    Args:
      embedding: (B, h, w, d) stride-8 embedding (``aux["embedding"]``).
      prob: (B, H, W) fish probability of the model (no gradient is taken through it).
      points: (B, H, W) point map.
      seed: uint32 scalar (the train step passes its step number folded into its rng).
      settings: sample sizes.
    """
    idx, ids = sample_pixels(prob, points, seed, settings, mesh=mesh)
    return pair_loss(sample_embedding(embedding, idx, prob.shape[-1]), ids)
