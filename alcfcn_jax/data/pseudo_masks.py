"""Pseudo masks on disk: the folder stage 1 writes and stage 2 reads, and their checks.

Layout (written by ``alcfcn_jax.train.mask_writer``)::

    <stage-1 workdir>/pseudo_masks/<id>.png     # 0 background, 255 fish; ids with '/' nest
    <stage-1 workdir>/pseudo_masks/manifest.json # written last: checkpoint step, ids, quality

A folder is complete when its manifest exists and every listed mask does (:func:`is_complete`);
stage 2 also requires the manifest's step to be stage 1's current best checkpoint (the trainer
resolves that step) and a mask for every training image (:func:`check_coverage`).
:class:`PseudoMaskSource` puts the masks into the training examples.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.data.source import example_count

MANIFEST = "manifest.json"
PROGRESS = ".in_progress.json"
FORMAT_VERSION = 1
PSEUDO_MASK_SUBDIR = "pseudo_masks"
Example = dict[str, Any]


class PseudoMaskError(ValueError):
    """The pseudo-mask folder is missing, incomplete or from another checkpoint."""


def mask_path(out_dir: str | os.PathLike, example_id: str) -> pathlib.Path:
    """``<out_dir>/<id>.png``, refusing ids that would escape the folder."""
    rel = pathlib.PurePosixPath(str(example_id))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise PseudoMaskError(f"example id {example_id!r} cannot be used as a file name")
    return pathlib.Path(out_dir).joinpath(*rel.parts).with_name(rel.name + ".png")


def load_manifest(
    out_dir: str | os.PathLike, *, expected_step: int | None = None
) -> dict[str, Any]:
    """Reads and checks a pseudo-mask folder's manifest (for stage 2).

    Args:
      out_dir: the pseudo-mask folder (``<stage-1 workdir>/pseudo_masks``).
      expected_step: the stage-1 checkpoint step the masks must come from (e.g. the current best
        step); ``None`` skips that check.

    Raises:
      PseudoMaskError: no folder, no manifest (never generated, or interrupted), unreadable
        manifest, masks from another step, or a listed mask file missing.
    """
    out_dir = pathlib.Path(out_dir)
    hint = "run `python evaluate.py --config=<stage-1 config> --workdir=<stage-1 workdir> "
    hint += "--mode=pseudo_masks`"
    if not out_dir.is_dir():
        raise PseudoMaskError(f"{out_dir}: pseudo-mask folder not found; {hint}")
    path = out_dir / MANIFEST
    if not path.exists():
        state = " (an unfinished run left it incomplete)" if (out_dir / PROGRESS).exists() else ""
        raise PseudoMaskError(f"{path}: no manifest{state}; {hint}")
    try:
        manifest = json.loads(path.read_text())
        step = int(manifest["checkpoint_step"])
        ids = list(manifest["ids"])
    except (ValueError, KeyError, TypeError) as e:
        raise PseudoMaskError(f"{path}: unreadable manifest ({e}); {hint}") from e
    if expected_step is not None and step != int(expected_step):
        raise PseudoMaskError(
            f"{path}: pseudo masks come from checkpoint step {step}, but step {expected_step} "
            f"is expected (stale masks); {hint}"
        )
    missing = [i for i in ids if not mask_path(out_dir, i).exists()]
    if missing:
        raise PseudoMaskError(
            f"{out_dir}: {len(missing)} mask(s) listed in the manifest are missing, "
            f"e.g. {missing[0]!r}; {hint}"
        )
    return manifest


class StalePseudoMasksError(RuntimeError):
    """The pseudo masks are missing, incomplete, or were written from another checkpoint."""


def pseudo_mask_dir(config: Any) -> pathlib.Path | None:
    """The pseudo-mask folder a config trains on, or None for ordinary training.

    ``data.pseudo_mask_dir`` wins when set; otherwise ``<stage1.workdir>/pseudo_masks`` when the
    config has a ``stage1`` block with a workdir.
    """
    explicit = str(config.data.pseudo_mask_dir or "")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    stage1_dir = stage1_workdir(config)
    return None if stage1_dir is None else stage1_dir / PSEUDO_MASK_SUBDIR


def stage1_workdir(config: Any) -> pathlib.Path | None:
    """``config.stage1.workdir`` (stage 2 of the pseudo-mask pipeline), or None."""
    if "stage1" not in config or not str(config.stage1.workdir or ""):
        return None
    return pathlib.Path(str(config.stage1.workdir)).expanduser()


def stale_reason(
    manifest: Mapping[str, Any] | None,
    step: int | None,
    out_dir: pathlib.Path,
    ids: Sequence[str] | None = None,
    n_images: int | None = None,
) -> str | None:
    """The one definition of "up to date", shared by the writer and stage 2: why the masks in
    ``out_dir`` are not up to date, or None when they are.

    Up to date = a manifest from checkpoint ``step`` (None: any step) that lists every id of
    ``ids`` (the training images now; None: not checked) with each listed mask on disk. When a
    reader cannot list ids without decoding, ``n_images`` (the training images now) is compared
    with the number of masks instead.
    """
    if manifest is None:
        return "no manifest"
    saved = int(manifest.get("checkpoint_step", -1))
    if step is not None and saved != int(step):
        return f"the masks come from checkpoint step {saved}, not {step}"
    listed = [str(i) for i in manifest.get("ids", [])]
    if ids is not None:
        have = set(listed)
        new = [i for i in ids if str(i) not in have]
        if new:
            return (
                f"{len(new)} training image(s) have no mask (the training set changed since the "
                f"masks were written), e.g. {new[0]!r}"
            )
    elif n_images is not None and len(listed) < int(n_images):
        return (
            f"the manifest lists {len(listed)} pseudo masks but the training split has "
            f"{n_images} images (the training set changed since the masks were written)"
        )
    missing = [i for i in listed if not mask_path(out_dir, i).exists()]
    if missing:
        return (
            f"{len(missing)} mask file(s) listed in the manifest are missing, e.g. {missing[0]!r}"
        )
    return None


def is_complete(
    manifest: Mapping[str, Any] | None,
    step: int,
    out_dir: pathlib.Path,
    ids: Sequence[str] | None = None,
    n_images: int | None = None,
) -> bool:
    """The masks are up to date (:func:`stale_reason` is None)."""
    return stale_reason(manifest, step, out_dir, ids, n_images) is None


def read_mask(path: pathlib.Path) -> np.ndarray:
    """A mask PNG as a 0/1 int64 array."""
    from PIL import Image

    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.int64)


def check_coverage(
    n_train: int,
    manifest: dict[str, Any] | None,
    mask_dir: Any,
    ids: Sequence[str] | None = None,
) -> None:
    """Raises StalePseudoMasksError when the masks do not cover the training images: by
    :func:`stale_reason` with the training ``ids`` when known, else by count.

    A cheap early check (no image is read); a single missing file would otherwise only surface
    when its example is first drawn, possibly hours into training.
    """
    if manifest is None:
        return
    reason = stale_reason(manifest, None, pathlib.Path(mask_dir), ids, n_train)
    if reason:
        raise StalePseudoMasksError(
            f"{mask_dir}: the pseudo masks are not up to date: {reason}; regenerate them with "
            "evaluate.py --mode=pseudo_masks"
        )


class PseudoMaskSource(Sequence):
    """Replaces each example's ``mask`` by ``<mask_dir>/<id>.png`` (0/255, nearest-resized).

    Used for stage-2 training on pseudo masks (reference spec 7: 'L', Resize NEAREST, 255->1).

    Raises (on access):
      DataError: the mask file is missing or has values other than 0/1/255.
    """

    def __init__(self, source: Sequence[Example], mask_dir: str | pathlib.Path) -> None:
        self.source = source
        self.mask_dir = pathlib.Path(mask_dir).expanduser()
        if not self.mask_dir.is_dir():
            raise DataError(f"{self.mask_dir}: pseudo-mask folder not found")

    def __len__(self) -> int:
        return len(self.source)

    # The images, their ids and counts are the wrapped source's: its content fingerprints and
    # settings still identify them (so a feature cache built for stage 1 is reused) and its
    # label counts need no decoding.
    @property
    def settings(self) -> Any:
        """The wrapped source's preprocessing settings (None when it has none)."""
        return getattr(self.source, "settings", None)

    def fingerprint(self, index: int) -> str | None:
        """The wrapped source's fingerprint of the example's image (None when it has none)."""
        fingerprint = getattr(self.source, "fingerprint", None)
        return fingerprint(index) if callable(fingerprint) else None

    def label_count(self, index: int) -> int | None:
        """The example's click count, from the wrapped source."""
        return example_count(self.source, index)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        ex = dict(self.source[index])
        path = mask_path(self.mask_dir, ex["id"])
        raw = pp.load_gray(path, "pseudo mask")
        h, w = ex["image"].shape[:2]
        ex["mask"] = pp.binarize_mask(pp.resize_nearest(raw, (h, w)), str(path)).astype(np.int32)
        return ex
