"""Connected components and watershed helpers (host numpy/scipy) plus a pure-JAX labelling.

Host helpers serve the LCFCN targets and the metrics:

* :func:`label8` - 8-connected components (the partition of ``skimage.measure.label``'s default).
* :func:`blob_sizes` - pixel count per label.
* :func:`black_tophat_square` - ``scipy.ndimage.black_tophat(x, size)`` bit for bit, computed with
  log-step sliding extrema (a few whole-array ``np.maximum`` calls instead of a per-pixel window).
* :func:`thick_boundaries` - ``skimage.segmentation.find_boundaries(seg)`` (mode 'thick',
  connectivity 1) from array shifts.
* :func:`marker_image` - the reference's watershed markers (non-zero pixels relabelled 1..n in
  row-major order).

:func:`label_jax` is a jit-able 8-connected labelling (hooking + pointer jumping) for runs that
must stay on device; it returns the same partition as :func:`label8` with different label values
(min flat index + 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

try:  # private pieces of skimage.segmentation.watershed (optional fast path, self-checked)
    from skimage.segmentation import _watershed_cy
    from skimage.segmentation._watershed import _offsets_to_raveled_neighbors
except ImportError:  # pragma: no cover - depends on the scikit-image build
    _watershed_cy = _offsets_to_raveled_neighbors = None

_EIGHT = np.ones((3, 3), dtype=bool)


def label8(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels the 8-connected components of a 2-D mask.

    Args:
      mask: (H, W) array, non-zero = foreground.

    Returns:
      ``(labels, n)``: int32 (H, W) labels 1..n in raster order of each component's first pixel
      (0 = background), and the number of components.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"label8 expects a 2-D mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask != 0, structure=_EIGHT)
    return labels.astype(np.int32, copy=False), int(n)


def blob_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel count of each label 0..n (index 0 = background) as int64 (n+1,)."""
    return np.bincount(labels.ravel(), minlength=n + 1)


def _sliding_extreme(x: np.ndarray, size: int, axis: int, op) -> np.ndarray:
    """Centred sliding max/min of odd ``size`` along ``axis`` with scipy 'reflect' borders.

    scipy's 'reflect' mode repeats the edge sample (d c b a | a b c d | d c b a), which is numpy's
    'symmetric' padding. The window extreme is built by doubling spans (1, 2, 4, ...) and a final
    overlapping combine; max/min are exact, so the result equals scipy's filter bit for bit.
    """
    r = size // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    y = np.pad(x, pad, mode="symmetric")
    n_out = x.shape[axis]

    def cut(a: np.ndarray, start: int, stop: int) -> np.ndarray:
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(start, stop)
        return a[tuple(sl)]

    span = 1
    while 2 * span <= size:
        m = y.shape[axis] - span
        y = op(cut(y, 0, m), cut(y, span, m + span))
        span *= 2
    if span < size:
        shift = size - span
        y = op(cut(y, 0, n_out), cut(y, shift, n_out + shift))
    return cut(y, 0, n_out)


def black_tophat_square(x: np.ndarray, size: int = 7) -> np.ndarray:
    """``scipy.ndimage.black_tophat(x, size)`` for 2-D arrays (flat square, mode 'reflect').

    grey closing (dilation then erosion with a ``size`` x ``size`` square) minus the input, in the
    input's dtype, identical to scipy's result.

    Args:
      x: (H, W) float array.
      size: odd side of the square structuring element.
    """
    if size % 2 != 1:
        raise ValueError(f"black_tophat_square needs an odd size, got {size}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"black_tophat_square expects a 2-D array, got shape {x.shape}")
    dil = _sliding_extreme(_sliding_extreme(x, size, 0, np.maximum), size, 1, np.maximum)
    clo = _sliding_extreme(_sliding_extreme(dil, size, 0, np.minimum), size, 1, np.minimum)
    return np.subtract(clo, x, dtype=x.dtype)


def thick_boundaries(seg: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.find_boundaries(seg, connectivity=1, mode='thick')``.

    A pixel is a boundary pixel when one of its 4-neighbours inside the image carries a different
    label (so both sides of every label change are marked; the image border adds nothing).

    Args:
      seg: (H, W) integer label image.

    Returns:
      (H, W) bool boundaries.
    """
    seg = np.asarray(seg)
    out = np.zeros(seg.shape, dtype=bool)
    dv = seg[1:, :] != seg[:-1, :]
    dh = seg[:, 1:] != seg[:, :-1]
    out[1:, :] |= dv
    out[:-1, :] |= dv
    out[:, 1:] |= dh
    out[:, :-1] |= dh
    return out


def marker_image(points: np.ndarray) -> np.ndarray:
    """The reference's watershed markers: non-zero pixels numbered 1..n in row-major order.

    Args:
      points: (H, W) array, non-zero at marker pixels.

    Returns:
      int32 (H, W) markers (0 elsewhere).
    """
    markers = np.zeros(points.shape, dtype=np.int32)
    flat = np.flatnonzero(points)
    markers.ravel()[flat] = np.arange(1, flat.size + 1, dtype=np.int32)
    return markers


class Watershed:
    """``skimage.segmentation.watershed(image, markers)`` (connectivity 1, no mask) for one image
    and several marker sets.

    The image is converted to float64 and zero-padded once (scikit-image repeats this, plus a mask
    allocation, on every call). Where the installed scikit-image exposes the Cython kernel with the
    expected signature, it is called directly; a one-time self-check against the public function
    on a small problem with ties guards this, and any mismatch or error falls back to the public
    ``watershed`` for the rest of the process. Results are identical either way.
    """

    def __init__(self, image: np.ndarray):
        self.image = np.asarray(image)
        if self.image.ndim != 2:
            raise ValueError(f"Watershed expects a 2-D image, got shape {self.image.shape}")
        self._flat = None
        if _kernel_ok():
            h, w = self.image.shape
            self._flat = np.pad(self.image.astype(np.float64), 1).ravel()
            self._mask = np.pad(np.ones((h, w), np.int8), 1).ravel()
            self._structure = _neighbours(h, w)
            self._strides = np.array([w + 2, 1], dtype=np.intp)

    def __call__(self, markers: np.ndarray) -> np.ndarray:
        """Labels (int32, (H, W)) flooded from ``markers`` (int32, non-zero = seed label)."""
        markers = np.asarray(markers, dtype=np.int32)
        if self._flat is None:
            return watershed(self.image, markers)
        return _run_kernel(self._flat, self._mask, self._structure, self._strides, markers)


def _neighbours(h: int, w: int) -> np.ndarray:
    """Raveled 4-neighbour offsets in the padded image, in scikit-image's own order."""
    return _offsets_to_raveled_neighbors(
        (h + 2, w + 2), ndimage.generate_binary_structure(2, 1), center=(1, 1)
    )


def _run_kernel(flat, mask, structure, strides, markers):
    h, w = markers.shape
    out = np.zeros((h + 2, w + 2), np.int32)
    out[1:-1, 1:-1] = markers
    _watershed_cy.watershed_raveled(
        flat, np.flatnonzero(out), structure, mask, strides, 0.0, out.ravel(), False
    )
    return out[1:-1, 1:-1].copy()


_KERNEL_STATE: list[bool] = []


def _kernel_ok() -> bool:
    """Whether the direct kernel call reproduces ``watershed`` here (checked once)."""
    if not _KERNEL_STATE:
        ok = False
        try:
            rng = np.random.default_rng(0)
            img = np.round(rng.random((13, 17)) * 4).astype(np.float32) / 4
            pts = np.zeros(img.shape, bool)
            pts[[0, 6, 12, 3], [0, 8, 16, 15]] = True
            markers = marker_image(pts)
            h, w = img.shape
            got = _run_kernel(
                np.pad(img.astype(np.float64), 1).ravel(),
                np.pad(np.ones((h, w), np.int8), 1).ravel(),
                _neighbours(h, w),
                np.array([w + 2, 1], dtype=np.intp),
                markers,
            )
            ok = bool(np.array_equal(got, watershed(img, markers)))
        except Exception:  # any signature/behaviour change: use the public function
            ok = False
        _KERNEL_STATE.append(ok)
    return _KERNEL_STATE[0]


# ---------------------------------------------------------------------------------------------
# Pure-JAX 8-connected labelling.

# Each undirected 8-neighbour edge is visited once through these four offsets (dy, dx).
_HALF_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


def _edge_slices(h: int, w: int, dy: int, dx: int):
    """(source, target) slices of a (H, W) array pairing each pixel with its (dy, dx) neighbour."""
    src_y, dst_y = slice(0, h - dy), slice(dy, h)
    if dx >= 0:
        src_x, dst_x = slice(0, w - dx), slice(dx, w)
    else:
        src_x, dst_x = slice(-dx, w), slice(0, w + dx)
    return (src_y, src_x), (dst_y, dst_x)


def label_jax(mask: jax.Array) -> jax.Array:
    """8-connected component labelling in pure JAX (jit-able, static shapes).

    Union-find by hooking and pointer jumping: every pixel starts as its own root; each round
    hooks, for every 8-neighbour edge between two foreground pixels, the larger root onto the
    smaller one (scatter-min), then compresses all paths to their roots. Roots only ever point to
    smaller indices, so there are no cycles, and the final root of a component is its smallest flat
    index. The number of rounds grows with the logarithm of the component diameter in practice.

    Args:
      mask: (H, W) boolean (or 0/1) array.

    Returns:
      int32 (H, W) labels: 1 + the smallest row-major flat index of the pixel's component, 0 on the
      background. The partition equals :func:`label8`'s; the values do not (they are not 1..n).
    """
    mask = jnp.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"label_jax expects a 2-D mask, got shape {mask.shape}")
    fg = mask.astype(bool)
    h, w = fg.shape
    n = h * w
    idx = jnp.arange(n, dtype=jnp.int32).reshape(h, w)

    def compress(par: jax.Array) -> jax.Array:
        def cond(c):
            return c[1]

        def body(c):
            p, _ = c
            q = p[p]
            return q, jnp.any(q != p)

        return jax.lax.while_loop(cond, body, (par, jnp.array(True)))[0]

    def hook(par: jax.Array) -> jax.Array:
        root = par.reshape(h, w)
        for dy, dx in _HALF_NEIGHBOURS:
            (sy, sx), (ty, tx) = _edge_slices(h, w, dy, dx)
            a, b = root[sy, sx], root[ty, tx]
            valid = fg[sy, sx] & fg[ty, tx] & (a != b)
            hi = jnp.where(valid, jnp.maximum(a, b), n).ravel()
            lo = jnp.where(valid, jnp.minimum(a, b), n).ravel()
            # Out-of-range index n marks "no edge"; mode="drop" ignores those updates.
            par = par.at[hi].min(lo, mode="drop")
        return par

    def cond(c):
        return c[1]

    def body(c):
        par, _ = c
        new = compress(hook(par))
        return new, jnp.any(new != par)

    par0 = idx.ravel()
    par, _ = jax.lax.while_loop(cond, body, (par0, jnp.array(True)))
    return jnp.where(fg, par.reshape(h, w) + 1, 0).astype(jnp.int32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label images define the same partition (0 = background in both)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    # A bijection between the two label sets: each label pairs with exactly one label.
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
