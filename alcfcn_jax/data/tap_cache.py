"""Frozen-trunk feature cache: the trunk's taps, computed once per image (and per flip).

When the trunk is frozen (``optim.trunk_lr_mult=0``) and deterministic, its taps for a training
image never change, so the train step only needs the heads: ``model.from_taps(taps, size)``
instead of ``model(image)`` (``models/alcfcn.py``). :func:`build_tap_store` runs the trunk once
over a source, for the image and, with flips on, its mirror, and keeps the taps:

* in memory when they fit in ``memory_mb``, else on disk as one flat ``.npy`` per tap name,
  memory-mapped (reads of a batch touch only its entries; the OS page cache does the rest);
* in ``float16`` by default (half the size; the taps of the ImageNet trunks are bounded, e.g.
  ReLU6 in EfficientNet-Lite) or ``float32`` (bitwise the trunk's output).

The disk cache lives in ``<cache_dir>/<key>/`` and is reused by every later run whose key is the
same. The key is a SHA-256 over the trunk's weights and structure, the storage dtype, the number of
variants (1, or 2 with flips), the batching options that shape an example, and every example's
image: for sources over files that fingerprint them (``MappedSource.fingerprint``: the YOLO box
folders) the hash of each file's bytes plus the source's preprocessing settings (no decoding,
under a second for 4,000 frames); otherwise the preprocessed image itself (the float32 array the
model would see), decoded and hashed. A change of any of them gives another folder, which is built
afresh. A build writes into a temporary folder that is renamed into place when complete, so a
killed build is never read; two processes building the same key at once both succeed.

:class:`TapSource` wraps an example source: each example loses its ``image`` and gains ``taps``
({name: array}) and, with flips, ``_flipped`` (the whole mirrored example with its own taps),
which :func:`alcfcn_jax.data.pipeline.flip_example` picks. Every example is first shaped exactly as
a batch would shape it (``pipeline.collate`` of that example alone), so a batch of cached examples
equals the taps of the batch of images whenever the examples share one size (DeepFish, the frame
folders, ``data.fixed_size``); the cache refuses sources of mixed sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from alcfcn_jax.data import pipeline
from alcfcn_jax.data.source import example_count

FORMAT_VERSION = 1
Extract = Callable[[np.ndarray], Mapping[str, np.ndarray]]
_DTYPES = {"float16": np.float16, "float32": np.float32}


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/alcfcn_jax/tap_cache`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "alcfcn_jax" / "tap_cache"


def shape_example(ex: Mapping[str, Any], batching: Mapping[str, Any]) -> dict[str, Any]:
    """An example as a batch of one built with ``batching`` (``pipeline.collate`` options) holds it.

    Sizes, padding and resizing are then final; ``boxes`` keeps its real rows.
    """
    batch = pipeline.collate([dict(ex)], keep_boxes="boxes" in ex, **batching)
    out = {k: v[0] for k, v in batch.items() if k not in ("habitat", "id")}
    out["habitat"], out["id"] = str(batch["habitat"][0]), str(batch["id"][0])
    if "boxes" in out:
        boxes = np.asarray(out["boxes"], np.float32).reshape(-1, 4)
        out["boxes"] = boxes[np.isfinite(boxes).all(axis=1)]
    return out


def _variants(ex: Mapping[str, Any], n: int, batching: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The shaped example and (n = 2) its shaped mirror: flipped before shaping, as the
    training pipeline flips examples before batching them."""
    raw = [dict(ex)] + ([pipeline.flip_example(dict(ex))] if n == 2 else [])
    return [shape_example(e, batching) for e in raw]


@dataclasses.dataclass
class TapStore:
    """Ragged storage of named float arrays, one entry per (example, variant).

    ``data[name]`` is a flat array (in memory or a read-only memmap); entry ``e`` of ``name`` is
    ``data[name][offsets[name][e]:offsets[name][e + 1]]`` reshaped to ``shapes[name][e]``.
    """

    names: tuple[str, ...]
    offsets: dict[str, np.ndarray]
    shapes: dict[str, np.ndarray]
    data: dict[str, np.ndarray]
    variants: int
    key: str
    directory: pathlib.Path | None

    def __len__(self) -> int:
        return len(self.shapes[self.names[0]])

    def get(self, entry: int) -> dict[str, np.ndarray]:
        """The taps of one entry (views into the store)."""
        out = {}
        for name in self.names:
            a, b = self.offsets[name][entry], self.offsets[name][entry + 1]
            out[name] = self.data[name][a:b].reshape(tuple(self.shapes[name][entry]))
        return out

    @property
    def nbytes(self) -> int:
        return int(sum(d.nbytes for d in self.data.values()))


def _digest(h: Any, arrays: Mapping[str, np.ndarray]) -> None:
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())


def trunk_digest(state_arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a trunk's weights (a flat ``{path: array}`` dict)."""
    h = hashlib.sha256()
    _digest(h, state_arrays)
    return h.hexdigest()


def _fingerprints(source: Any) -> list[str] | None:
    """The source's own content fingerprints (file hashes) when it has them for every example."""
    if getattr(source, "settings", None) is None or not hasattr(source, "fingerprint"):
        return None
    prints = [source.fingerprint(i) for i in range(len(source))]
    return None if any(p is None for p in prints) else prints


def _example_digests(
    source: Sequence[Mapping[str, Any]], batching: Mapping[str, Any], log_every: int
) -> tuple[list[str], tuple[int, int]]:
    """Per-example SHA-256 of the shaped image, and the one size they all share."""
    digests, sizes = [], set()
    t0 = time.perf_counter()
    for i in range(len(source)):
        ex = shape_example(source[i], batching)
        img = np.ascontiguousarray(ex["image"], np.float32)
        sizes.add(img.shape[:2])
        digests.append(hashlib.sha256(img.tobytes()).hexdigest())
        if log_every and (i + 1) % log_every == 0:
            logging.info(
                "Feature cache: checked %d/%d images (%.0f/s)",
                i + 1,
                len(source),
                (i + 1) / (time.perf_counter() - t0),
            )
    if len(sizes) != 1:
        raise ValueError(_mixed_sizes_message(sizes))
    return digests, sizes.pop()


def _mixed_sizes_message(sizes) -> str:
    return (
        f"the feature cache needs images of one size, got {len(sizes)} sizes "
        f"(e.g. {sorted(sizes)[:3]}); set data.fixed_size=(H, W) (padding or, with "
        "data.pad_or_resize='resize', resizing) or turn the cache off "
        "(train.feature_cache='off')"
    )


def cache_key(key_parts: Mapping[str, Any], digests: Sequence[str]) -> str:
    """The store's key: SHA-256 over the settings and the per-example image digests."""
    h = hashlib.sha256(json.dumps(dict(key_parts), sort_keys=True, default=str).encode())
    for d in digests:
        h.update(d.encode())
    return h.hexdigest()


def _load_dir(directory: pathlib.Path) -> TapStore:
    meta = json.loads((directory / "meta.json").read_text())
    index = np.load(directory / "index.npz")
    names = tuple(meta["names"])
    data = {n: np.load(directory / f"{n}.npy", mmap_mode="r") for n in names}
    return TapStore(
        names=names,
        offsets={n: index[f"{n}.offsets"] for n in names},
        shapes={n: index[f"{n}.shapes"] for n in names},
        data=data,
        variants=int(meta["variants"]),
        key=str(meta["key"]),
        directory=directory,
    )


def build_tap_store(
    source: Sequence[Mapping[str, Any]],
    extract: Extract,
    *,
    key_parts: Mapping[str, Any],
    flips: bool,
    batching: Mapping[str, Any],
    mode: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    dtype: str = "float16",
    memory_mb: float = 256.0,
    batch_size: int = 8,
    name: str = "",
) -> TapStore:
    """The taps of every example of ``source`` (and of its mirror when ``flips``).

    Args:
      source: the example source (e.g. a training split).
      extract: ``images (B,H,W,3) float32 -> {tap name: (B,h,w,c)}``, the frozen trunk.
      key_parts: JSON-able settings that determine the taps besides the images (the trunk's
        weight digest and structure); see the module docstring.
      flips: also store the taps of each mirrored image.
      batching: the ``pipeline.collate`` options (``pad_or_resize``, ``bucket_multiple``,
        ``fixed_size``) the training batches use.
      mode: ``"memory"``, ``"disk"`` or ``"auto"`` (memory when the store fits in
        ``memory_mb``).
      cache_dir: folder of disk stores (None: :func:`default_cache_dir`).
      dtype: ``"float16"`` or ``"float32"`` storage.
      memory_mb: the "auto" threshold.
      batch_size: images per trunk call while building.
      name: what the source is, for log lines.

    Returns:
      The :class:`TapStore`, entry ``i * variants + v`` = example ``i``, variant ``v`` (1 = mirror).

    Raises:
      ValueError: unknown mode or dtype, an empty source, or examples of different sizes.
    """
    if mode not in ("auto", "memory", "disk"):
        raise ValueError(f"feature cache mode must be 'auto', 'memory' or 'disk', got {mode!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"feature cache dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    n = len(source)
    if n == 0:
        raise ValueError(f"feature cache {name}: the source is empty")
    variants = 2 if flips else 1
    log_every = max(n // 10, 100)
    # Sources over files fingerprint them without decoding (the preprocessing settings join the
    # key); others are decoded and their shaped images hashed, which also checks their sizes.
    digests = _fingerprints(source)
    size = None
    if digests is None:
        digests, size = _example_digests(source, batching, log_every)
    parts = {
        **dict(key_parts),
        "source_settings": getattr(source, "settings", None) if size is None else None,
        "format": FORMAT_VERSION,
        "dtype": dtype,
        "variants": variants,
        "batching": {k: batching[k] for k in sorted(batching)},
    }
    key = cache_key(parts, digests)
    root = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    final = root / key[:32]
    if (final / "meta.json").is_file():
        store = _load_dir(final)
        if store.key == key:
            logging.info("Feature cache %s: reusing %s (%d entries)", name, final, len(store))
            return store

    # Shapes of one entry, to size the store before computing it.
    first = shape_example(source[0], batching)["image"]
    size = first.shape[:2] if size is None else size
    probe = extract(first[None].astype(np.float32))
    names = tuple(sorted(probe))
    entry_shapes = {k: tuple(np.asarray(probe[k]).shape[1:]) for k in names}
    per_entry = {k: int(np.prod(entry_shapes[k])) for k in names}
    store_dtype = _DTYPES[dtype]
    total_bytes = sum(per_entry.values()) * n * variants * np.dtype(store_dtype).itemsize
    on_disk = mode == "disk" or (mode == "auto" and total_bytes > memory_mb * 2**20)
    logging.info(
        "Feature cache %s: computing the taps of %d images x %d variant(s) at %dx%d "
        "(%s, %.2f GB) %s",
        name,
        n,
        variants,
        size[0],
        size[1],
        dtype,
        total_bytes / 1e9,
        f"into {final}" if on_disk else "in memory",
    )
    tmp = None
    if on_disk:
        tmp = root / f"{key[:32]}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        data = {
            k: np.lib.format.open_memmap(
                tmp / f"{k}.npy", mode="w+", dtype=store_dtype, shape=(per_entry[k] * n * variants,)
            )
            for k in names
        }
    else:
        data = {k: np.empty((per_entry[k] * n * variants,), store_dtype) for k in names}

    t0 = time.perf_counter()
    pending: list[np.ndarray] = []
    written = 0

    def flush() -> None:
        nonlocal written
        taps = extract(np.stack(pending).astype(np.float32))
        for k in names:
            t = np.asarray(taps[k])
            if t.shape[1:] != entry_shapes[k]:
                raise ValueError(f"tap {k} has shape {t.shape[1:]}, expected {entry_shapes[k]}")
            a = written * per_entry[k]
            data[k][a : a + t.size] = t.reshape(-1).astype(store_dtype)
        written += len(pending)
        pending.clear()

    for i in range(n):
        for ex in _variants(source[i], variants, batching):
            if ex["image"].shape[:2] != size:
                raise ValueError(_mixed_sizes_message({size, ex["image"].shape[:2]}))
            pending.append(ex["image"])
            if len(pending) == batch_size:
                flush()
        if (i + 1) % log_every == 0 or i + 1 == n:
            rate = (i + 1) / (time.perf_counter() - t0)
            logging.info(
                "Feature cache %s: %d/%d images (%.1f/s, ETA %.0f s)",
                name,
                i + 1,
                n,
                rate,
                (n - i - 1) / rate,
            )
    if pending:
        flush()
    seconds = time.perf_counter() - t0
    entries = n * variants
    offsets = {k: np.arange(entries + 1, dtype=np.int64) * per_entry[k] for k in names}
    shapes = {k: np.tile(np.asarray(entry_shapes[k], np.int64), (entries, 1)) for k in names}
    store = TapStore(names, offsets, shapes, data, variants, key, None)
    if tmp is None:
        return store
    for arr in data.values():
        arr.flush()
    np.savez(tmp / "index.npz", **{f"{k}.offsets": offsets[k] for k in names},
             **{f"{k}.shapes": shapes[k] for k in names})  # fmt: skip
    meta = {
        "key": key,
        "names": list(names),
        "variants": variants,
        "entries": entries,
        "size": list(size),
        "build_seconds": round(seconds, 1),
        "settings": parts,
        "source": name,
    }
    # meta.json last: a folder without it is incomplete.
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    try:
        os.replace(tmp, final)
    except OSError:
        # Another process finished the same store first (or an old one is in the way).
        if (final / "meta.json").is_file() and _load_dir(final).key == key:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    return _load_dir(final)


class TapSource(Sequence):
    """An example source whose examples carry the trunk's taps instead of the image.

    Args:
      source: the example source the store was built from (same order).
      store: its :class:`TapStore`.
      batching: the ``pipeline.collate`` options the store was built with.
    """

    def __init__(
        self, source: Sequence[Mapping[str, Any]], store: TapStore, batching: Mapping[str, Any]
    ) -> None:
        if len(store) != len(source) * store.variants:
            raise ValueError(
                f"feature cache has {len(store)} entries for {len(source)} examples x "
                f"{store.variants} variant(s)"
            )
        self.source = source
        self.store = store
        self.batching = dict(batching)

    def __len__(self) -> int:
        return len(self.source)

    def label_count(self, index: int) -> int:
        """The example's ``count``, from the wrapped source (no image decoded when it can)."""
        return example_count(self.source, index)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"TapSource: index {index} out of range (size {len(self)})")
        index %= len(self)
        exs = _variants(self.source[index], self.store.variants, self.batching)
        out = []
        for v, ex in enumerate(exs):
            ex.pop("image")
            ex["taps"] = self.store.get(index * self.store.variants + v)
            out.append(ex)
        if len(out) == 2:
            out[0]["_flipped"] = out[1]
        return out[0]

    def __repr__(self) -> str:
        return f"<TapSource {len(self)} examples, {self.store.variants} variant(s)>"
