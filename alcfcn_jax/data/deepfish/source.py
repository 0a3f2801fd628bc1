"""Sources over a DeepFish-layout tree: through the TFDS builder, or read directly.

Split names: ``"train"`` reads ``config_name``'s training split (FishLoc with the FishSeg
val/test IDs removed, or FishSeg); ``"val"``/``"test"`` read ``eval_config``'s split (FishSeg
masks, as every reference run). ``"<subset>:<split>"`` (e.g. ``"fish_loc:val"``) names a subset
explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib

from alcfcn_jax.data.deepfish import tree as tree_lib
from alcfcn_jax.data.errors import BadExamples, DataError
from alcfcn_jax.data.source import MappedSource
from alcfcn_jax.io import write_text_atomic

logger = logging.getLogger("alcfcn_jax.data")


def resolve_split(split: str, *, config_name: str, eval_config: str) -> tuple[str, str]:
    """(subset, split) that a split name reads (see module doc): ``train`` reads the training
    subset ``config_name``, the other splits ``eval_config``, ``<subset>:<split>`` says both."""
    if ":" in split:
        subset, split = split.split(":", 1)
    elif split == "train":
        subset = config_name
    else:
        subset = eval_config
    if subset not in tree_lib.SUBSETS:
        raise DataError(f"DeepFish subset must be one of {tuple(tree_lib.SUBSETS)}, got {subset!r}")
    if split not in tree_lib.SPLITS:
        raise DataError(f"DeepFish split must be one of {tree_lib.SPLITS}, got {split!r}")
    return subset, split


SOURCE_MARKER = "alcfcn_source.json"


def source_fingerprint(root: str | pathlib.Path) -> str:
    """A key of a DeepFish tree: its resolved path and the listing (relative path and size) of
    every file under ``Segmentation/`` and ``Localization/`` (sha256 hex). Stat only, no file
    is read; a changed, added or removed file (or another folder) gives another key."""
    root = pathlib.Path(root).expanduser().resolve()
    h = hashlib.sha256(str(root).encode())
    for sub in tree_lib.SUBSETS.values():
        base = root / sub
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = pathlib.Path(dirpath).relative_to(root)
            for name in sorted(filenames):
                size = os.stat(os.path.join(dirpath, name)).st_size
                h.update(f"{rel / name}\t{size}\n".encode())
    return h.hexdigest()


def check_source_marker(tfds_dir: str | pathlib.Path, root: str | pathlib.Path, key: str) -> None:
    """Refuses a ``tfds_dir`` prepared from another DeepFish tree; marks a fresh one.

    Prepared data does not record its source inside TFDS (the builder's name and version do not
    depend on it), so ``<tfds_dir>/alcfcn_source.json`` records the tree's path and
    :func:`source_fingerprint`.

    Raises:
      DataError: the folder holds data prepared from another tree (or from this tree before its
        files changed).
    """
    tfds_dir = pathlib.Path(tfds_dir).expanduser()
    marker = tfds_dir / SOURCE_MARKER
    root = pathlib.Path(root).expanduser().resolve()
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            saved = {}
        if saved.get("fingerprint") == key:
            return
        raise DataError(
            f"data.tfds_dir {tfds_dir} holds DeepFish data prepared from "
            f"{saved.get('root', '<unknown>')} (fingerprint {str(saved.get('fingerprint'))[:12]}), "
            f"not from {root} as it is now (fingerprint {key[:12]}): a different folder or "
            "changed files. Set data.tfds_dir to another folder (or leave it empty: the default "
            "is keyed by the source), or delete this one to prepare it again"
        )
    tfds_dir.mkdir(parents=True, exist_ok=True)
    if any((tfds_dir / "deepfish").glob("*")):
        logger.warning(
            "%s holds prepared DeepFish data with no record of its source; assuming it was "
            "prepared from %s",
            tfds_dir,
            root,
        )
    write_text_atomic(marker, json.dumps({"root": str(root), "fingerprint": key}) + "\n")


def prepare(
    root: str | pathlib.Path,
    tfds_dir: str | pathlib.Path,
    subset: str,
    *,
    short_side: int | None = 256,
    placement: str = "centroid",
    skip_bad_examples: bool = False,
):
    """Prepares (once; idempotent) a subset as array_record files and returns the builder.

    Raises:
      DataError: a bad layout, or ``tfds_dir`` prepared from another tree
        (:func:`check_source_marker`).
    """
    import tensorflow_datasets as tfds  # deferred: importing TFDS costs ~1 s

    from alcfcn_jax.data.deepfish.deepfish_dataset_builder import DeepFish, config_for

    # Check the layout first so a wrong path is a DataError, not a TFDS traceback.
    tree_lib.DeepFishTree(root)
    check_source_marker(tfds_dir, root, source_fingerprint(root))
    config = config_for(subset, short_side, placement)
    registered = {c.name for c in DeepFish.BUILDER_CONFIGS}
    builder = DeepFish(
        # TFDS refuses a config object named like a registered one: pass the name then.
        config=config.name if config.name in registered else config,
        data_dir=str(tfds_dir),
        file_format="array_record",
        skip_bad_examples=skip_bad_examples,
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    return builder


@dataclasses.dataclass(frozen=True)
class Reading:
    """How examples are read: short side after resizing (None: kept), point placement for
    mask-derived points, skip-or-raise on bad files, background points added (-1: as many as
    fish)."""

    short_side: int | None
    placement: str
    skip_bad_examples: bool
    bg_points: int


def tfds_source(
    root: str | pathlib.Path, tfds_dir: str, subset: str, split: str, reading: Reading
) -> MappedSource:
    """A source over a TFDS-prepared subset's split (prepared on first use).

    In a multi-process job process 0 prepares while the others wait, then they open the
    finished files (or prepare their own where storage is not shared): TFDS's own staging
    directory does not survive two concurrent builders. Every process must call this.
    """
    from alcfcn_jax import sharding as shd  # deferred: the readers import no JAX until here

    builder = shd.process_zero_first(
        "deepfish_tfds_prepare",
        lambda: prepare(
            root,
            tfds_dir,
            subset,
            short_side=reading.short_side,
            placement=reading.placement,
            skip_bad_examples=reading.skip_bad_examples,
        ),
    )
    sp = split
    ds = builder.as_data_source(split=sp)
    bg = int(reading.bg_points)
    return MappedSource(
        range(len(ds)),
        lambda i: tree_lib.record_to_example(ds[i], bg_points=bg),
        f"deepfish[{builder.builder_config.name}/{sp}] via TFDS at {tfds_dir}",
    )


def raw_source(root: str | pathlib.Path, subset: str, split: str, reading: Reading) -> MappedSource:
    """A source reading the tree directly, with exactly the builder's preprocessing.

    With ``skip_bad_examples`` every example is loaded once up front so bad ones can be
    reported and left out before training starts; otherwise a bad file raises on access.
    """
    sp = split
    tree = tree_lib.DeepFishTree(root)
    rows = tree.ids(subset, sp)
    short, placement, bg = reading.short_side, reading.placement, int(reading.bg_points)

    def load(row):
        rec = tree.record(subset, row[0], count=row[1], short_side=short, placement=placement)
        return tree_lib.record_to_example(rec, bg_points=bg)

    if reading.skip_bad_examples:
        bad = BadExamples(True, f"DeepFish {subset}/{sp}")
        good = []
        for row in rows:
            try:
                load(row)
            except DataError as e:
                bad.handle(e)
                continue
            good.append(row)
        bad.summarize()
        rows = good
    return MappedSource(
        rows, load, f"deepfish[{subset}/{sp}] read from {root}", example_id=lambda row: row[0]
    )
