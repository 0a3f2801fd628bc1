"""Input pipeline on grain: deterministic shuffling, per-process sharding, batching, prefetch.

Training: :func:`train_iterator` returns a grain ``DatasetIterator``; ``get_state()`` is a small
JSON-serialisable dict (e.g. ``{"next_index": 12}``) and ``set_state()`` makes a resumed run
yield exactly the batch that would have come next. Each process reads only its slice
``source[process_index::process_count]``; the order is a function of (seed, process_index,
process_count) only, reshuffled each epoch; flips are drawn per example from the seed, so they
are reproduced on resume too.

Evaluation: :func:`eval_batches` yields every example of the process's slice exactly once, the
last batch padded with copies marked ``valid=False``; all processes yield the same number of
batches (needed for multi-host collectives).

A batch is a dict of numpy arrays: ``image`` (B,H,W,3) float32, ``points`` (B,H,W) int32,
``mask`` (B,H,W) int32, ``pad`` (B,H,W) bool (True on real picture pixels), ``count`` (B,)
int32, ``habitat`` and ``id`` (B,) str; eval batches add ``valid`` (B,) bool and, when the
examples have boxes, ``boxes`` (B,K,4) float32 padded with NaN.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from alcfcn_jax.data import preprocess as pp

Batch = dict[str, np.ndarray]


def flip_example(ex: dict[str, Any]) -> dict[str, Any]:
    """Horizontal mirror of an example (image, points, mask, pad and boxes).

    An example of the feature cache (``tap_cache.TapSource``) carries its mirror, computed with
    the mirrored image's own taps, as ``_flipped``: that is returned.
    """
    if "_flipped" in ex:
        return ex["_flipped"]
    out = dict(ex)
    for k in ("image", "points", "mask", "pad"):
        if k in ex:
            out[k] = np.ascontiguousarray(ex[k][:, ::-1])
    if "boxes" in ex and len(ex["boxes"]):
        w = ex["points"].shape[1]
        b = ex["boxes"]
        out["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1).astype(np.float32)
    return out


def _random_flip(ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return flip_example(ex) if rng.random() < 0.5 else ex


def resize_example(ex: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """Resizes an example to (H, W): image bilinear, mask/pad nearest, points by coordinates.

    Points are moved (``int(y * h / H)``), not resampled, so none is lost.
    """
    H, W = ex["image"].shape[:2]
    h, w = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return ex
    out = dict(ex)
    img = ex["image"].astype(np.float32)
    out["image"] = np.stack(
        [np.asarray(Image.fromarray(img[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)],
        -1,
    )
    out["mask"] = pp.resize_nearest(ex["mask"].astype(np.uint8), (h, w)).astype(np.int32)
    if "pad" in ex:
        out["pad"] = pp.resize_nearest(ex["pad"].astype(np.uint8), (h, w)).astype(bool)
    bg = np.argwhere(ex["points"] == 0)
    fish = np.argwhere(ex["points"] == 1)
    out["points"] = pp.point_map(
        (h, w), pp.scale_points(fish, (H, W), (h, w)), pp.scale_points(bg, (H, W), (h, w))
    )
    if "boxes" in ex:
        out["boxes"] = (ex["boxes"] * np.array([w / W, h / H, w / W, h / H])).astype(np.float32)
    return out


def collate(
    examples: Sequence[dict[str, Any]],
    *,
    pad_or_resize: str = "pad",
    bucket_multiple: int = 32,
    fixed_size: tuple[int, int] | None = None,
    keep_boxes: bool = False,
) -> Batch:
    """Stacks examples into a batch, padding (or resizing) them to a common size.

    In "pad" mode the batch size is ``fixed_size`` if given; else, if all examples have the
    same size, that size (no padding, as the reference); else the largest height and width
    rounded up to ``bucket_multiple`` (few distinct shapes -> few recompilations). Padding is
    bottom/right: image 0 (the ImageNet mean), points and mask 255, ``pad`` False.

    Raises:
      ValueError: an example larger than ``fixed_size``, or "resize" without ``fixed_size``.
    """
    if any("taps" in e for e in examples):
        return _collate_taps(examples, keep_boxes=keep_boxes)
    if pad_or_resize == "resize":
        if fixed_size is None:
            raise ValueError("data.pad_or_resize='resize' needs data.fixed_size=(H, W)")
        examples = [resize_example(e, fixed_size) for e in examples]
    elif pad_or_resize != "pad":
        raise ValueError(f"data.pad_or_resize must be 'pad' or 'resize', got {pad_or_resize!r}")
    sizes = [e["image"].shape[:2] for e in examples]
    if fixed_size is not None:
        th, tw = int(fixed_size[0]), int(fixed_size[1])
    elif len(set(sizes)) == 1:
        th, tw = sizes[0]
    else:
        m = int(bucket_multiple)
        th = -(-max(s[0] for s in sizes) // m) * m
        tw = -(-max(s[1] for s in sizes) // m) * m
    B = len(examples)
    batch: Batch = {
        "image": np.zeros((B, th, tw, 3), np.float32),
        "points": np.full((B, th, tw), pp.IGNORE, np.int32),
        "mask": np.full((B, th, tw), pp.IGNORE, np.int32),
        "pad": np.zeros((B, th, tw), bool),
    }
    for i, (e, (h, w)) in enumerate(zip(examples, sizes)):
        if h > th or w > tw:
            raise ValueError(f"example {e['id']} is {h}x{w}, larger than data.fixed_size {th}x{tw}")
        batch["image"][i, :h, :w] = e["image"]
        batch["points"][i, :h, :w] = e["points"]
        batch["mask"][i, :h, :w] = e["mask"]
        batch["pad"][i, :h, :w] = e["pad"] if "pad" in e else True
    _add_labels(batch, examples, keep_boxes)
    return batch


# Batches of the frozen-trunk feature cache carry ``taps/<name>`` arrays instead of ``image``.
TAPS_PREFIX = "taps/"


def split_taps(batch: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``taps/<name>`` entries of a batch as ``{name: array}``, or None if it has none."""
    taps = {k[len(TAPS_PREFIX) :]: v for k, v in batch.items() if k.startswith(TAPS_PREFIX)}
    return taps or None


def _collate_taps(examples: Sequence[dict[str, Any]], *, keep_boxes: bool) -> Batch:
    """Stacks examples of the feature cache: ``taps/<name>`` (float32) instead of ``image``.

    Their sizes are final already (``tap_cache.shape_example``) and must be equal.
    """
    sizes = {e["points"].shape[:2] for e in examples}
    if len(sizes) != 1 or not all("taps" in e for e in examples):
        raise ValueError(f"cached examples of one batch must share one size, got {sorted(sizes)}")
    batch: Batch = {
        f"{TAPS_PREFIX}{k}": np.stack([np.asarray(e["taps"][k], np.float32) for e in examples])
        for k in examples[0]["taps"]
    }
    batch["points"] = np.stack([e["points"] for e in examples]).astype(np.int32)
    batch["mask"] = np.stack([e["mask"] for e in examples]).astype(np.int32)
    batch["pad"] = np.stack([e["pad"] for e in examples]).astype(bool)
    _add_labels(batch, examples, keep_boxes)
    return batch


def _add_labels(batch: Batch, examples: Sequence[dict[str, Any]], keep_boxes: bool) -> None:
    """Adds ``count``, ``habitat``, ``id`` and (with ``keep_boxes``) NaN-padded ``boxes``."""
    B = len(examples)
    batch["count"] = np.asarray([e["count"] for e in examples], np.int32)
    batch["habitat"] = np.asarray([e["habitat"] for e in examples], np.str_)
    batch["id"] = np.asarray([e["id"] for e in examples], np.str_)
    if keep_boxes and all("boxes" in e for e in examples):
        k = max(1, max(len(e["boxes"]) for e in examples))
        boxes = np.full((B, k, 4), np.nan, np.float32)
        for i, e in enumerate(examples):
            boxes[i, : len(e["boxes"])] = e["boxes"]
        batch["boxes"] = boxes


def _slice(source: Sequence, process_index: int, process_count: int) -> grain.MapDataset:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    ds = grain.MapDataset.source(source)
    if len(ds) < process_count:
        raise ValueError(
            f"source has {len(ds)} examples, fewer than the {process_count} processes reading it"
        )
    return ds[process_index::process_count]


def train_iterator(
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    seed: int,
    flip: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    pad_or_resize: str = "pad",
    bucket_multiple: int = 32,
    fixed_size: tuple[int, int] | None = None,
    worker_threads: int = 4,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """Endless shuffled training batches of this process's slice (see module doc).

    Args:
      source: a random-access source of examples.
      batch_size: per-process batch size (the global batch / process_count).
      seed: shuffle and flip seed (the config's seed).
      flip: random horizontal flips (p = 0.5 per example).
      process_index, process_count: this process and how many read the source.
      pad_or_resize, bucket_multiple, fixed_size: see :func:`collate`.
      worker_threads, prefetch: grain read threads and prefetched batches.

    Returns:
      A grain iterator of batch dicts with JSON-serialisable ``get_state``/``set_state``.
    """
    ds = _slice(source, process_index, process_count)
    if batch_size > len(ds):
        raise ValueError(f"batch_size {batch_size} exceeds this process's {len(ds)} examples")
    ds = ds.shuffle(seed=seed).repeat(None)
    if flip:
        ds = ds.random_map(_random_flip, seed=seed + 1)
    ds = ds.batch(
        batch_size,
        drop_remainder=True,
        batch_fn=functools.partial(
            collate,
            pad_or_resize=pad_or_resize,
            bucket_multiple=bucket_multiple,
            fixed_size=fixed_size,
        ),
    )
    opts = grain.ReadOptions(num_threads=worker_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


def eval_batches(
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    pad_or_resize: str = "pad",
    bucket_multiple: int = 32,
    fixed_size: tuple[int, int] | None = None,
    worker_threads: int = 4,
    prefetch: int = 2,
) -> Iterator[Batch]:
    """Every example of this process's slice once, in order, in padded batches.

    The number of batches, ``ceil(ceil(len(source) / process_count) / batch_size)``, is the
    same on every process; padding entries repeat the slice's first example (or the source's
    first) with ``valid`` False.
    """
    n = len(source)
    if n == 0:
        raise ValueError("eval_batches: the source is empty")
    mine = list(range(process_index, n, process_count))
    per_process = -(-n // process_count)
    n_batches = -(-per_process // batch_size)
    filler = mine[0] if mine else 0
    idx = mine + [-1] * (n_batches * batch_size - len(mine))

    def load(i: int) -> dict[str, Any]:
        ex = dict(source[filler if i < 0 else i])
        ex["_valid"] = i >= 0
        return ex

    def batch_fn(exs):
        b = collate(
            exs,
            pad_or_resize=pad_or_resize,
            bucket_multiple=bucket_multiple,
            fixed_size=fixed_size,
            keep_boxes=True,
        )
        b["valid"] = np.asarray([e["_valid"] for e in exs], bool)
        return b

    ds = grain.MapDataset.source(idx).map(load).batch(batch_size, batch_fn=batch_fn)
    opts = grain.ReadOptions(num_threads=worker_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


def batching(data_cfg: Any) -> dict[str, Any]:
    """The batching options of a (complete) data config, as keyword arguments of the iterators."""
    cfg = data_cfg
    fs = cfg.fixed_size
    return {
        "pad_or_resize": cfg.pad_or_resize,
        "bucket_multiple": int(cfg.bucket_multiple),
        "fixed_size": tuple(fs) if fs is not None else None,
        "worker_threads": int(cfg.worker_threads),
        "prefetch": int(cfg.prefetch),
    }


def train_iterator_from_config(
    data_cfg: Any,
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """:func:`train_iterator` with flip and batching options read from ``data_cfg``."""
    return train_iterator(
        source,
        batch_size=batch_size,
        seed=seed,
        flip=bool(data_cfg.flip),
        process_index=process_index,
        process_count=process_count,
        **batching(data_cfg),
    )


def eval_batches_from_config(
    data_cfg: Any,
    source: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """:func:`eval_batches` with batching options read from ``data_cfg``."""
    return eval_batches(
        source,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        **batching(data_cfg),
    )
