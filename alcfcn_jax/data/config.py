"""The data config: every field the data layer reads, with its default.

``default_data_config(dataset)`` returns the ``ml_collections.ConfigDict`` that the config files
embed as ``config.data``. ``train.config.resolve`` fills the fields a config lacks from
:func:`defaults` (once per entry point); the data layer's entry points (``get_source``, the
pipeline's ``*_from_config``, ``Preprocessing.from_data_config``) read a complete config and hand
explicit values to the readers. :func:`complete` does the filling for code that holds a data
config of its own (tests, tools).

Fields (all datasets):
  dataset: "deepfish" | "synthetic" | "sample" | "boxes" | "points".
  data_dir: the data folder ("" = the package sample, or the synthetic cache).
  train_split, val_split, test_split: split names passed to ``get_source``.
  image_short_side: resize so the short side is this (PIL bilinear, as torchvision's
    ``Resize``); None keeps the stored size. 256 for DeepFish (the reference).
  skip_bad_examples: warn about and skip bad files (with a final count) instead of raising.
  flip: random horizontal flip in the training pipeline (the reference uses none).
  pad_or_resize: "pad" (pad each batch to its bucket size, with a ``pad`` valid-pixel mask) or
    "resize" (resize every example to ``fixed_size``).
  bucket_multiple: in "pad" mode, round a batch's padded height/width up to this multiple.
  fixed_size: (H, W) to pad or resize every example to; None = per-batch bucket (pad mode).
  worker_threads, prefetch: grain read threads and prefetch buffer (batches).
  pseudo_mask_dir: "" or a folder of ``<id>.png`` masks that replace the training split's
    masks (stage-2 training on pseudo masks; read as 0/255, resized nearest).

DeepFish-layout datasets ("deepfish", "synthetic"):
  config_name: training subset, "fish_loc" (clicked points; A-LCFCN) or "fish_seg" (points
    from masks). Evaluation splits always read FishSeg val/test masks.
  eval_config: subset of the evaluation splits ("fish_seg").
  tfds_dir: where TFDS prepares array_record files ("" = ``<cache>/tensorflow_datasets/
    deepfish-<key>``, keyed by the source tree's path and file listing). A folder records the
    tree it was prepared from (``alcfcn_source.json``) and refuses another one.
  reader: "tfds" (prepare once, read with ``tfds.data_source``) or "raw" (read the tree
    directly; same preprocessing, no preparation step).
  point_placement: "centroid" (reference) or "edt_max" for points derived from masks.
  bg_points: background points added to mask-derived points: -1 = as many as fish
    (reference), 0 = none.
  synthetic: the synthetic tree's size (height, width, n_habitats, seg_sizes, loc_sizes,
    empty_every, max_fish, seed); "synthetic" only.

Box and click folders ("sample", "boxes", "points"):
  val_percent: share of images in "val" under the fixed hash rule (folders without split
    subfolders).
  letterbox: "crop" (detect black bars and cut them off), "mask" (keep them, mark them invalid
    in ``pad``) or "none".
  points_csv: the clicks CSV for "points" ("" = ``<data_dir>/points.csv``).
"""

from __future__ import annotations

from typing import Any

import ml_collections

DATASETS = ("deepfish", "synthetic", "sample", "boxes", "points")

_COMMON: dict[str, Any] = {
    "data_dir": "",
    "train_split": "train",
    "val_split": "val",
    "test_split": "test",
    "image_short_side": None,
    "skip_bad_examples": False,
    "flip": False,
    "pad_or_resize": "pad",
    "bucket_multiple": 32,
    "fixed_size": None,
    "worker_threads": 4,
    "prefetch": 4,
    "pseudo_mask_dir": "",
}
_DEEPFISH: dict[str, Any] = {
    "config_name": "fish_loc",
    "eval_config": "fish_seg",
    "tfds_dir": "",
    "reader": "tfds",
    "point_placement": "centroid",
    "bg_points": -1,
}
_FOLDERS: dict[str, Any] = {"val_percent": 20, "letterbox": "crop", "points_csv": ""}
_SYNTHETIC: dict[str, Any] = {
    "height": 96,
    "width": 160,
    "n_habitats": 3,
    "seg_sizes": (8, 4, 4),
    "loc_sizes": (10, 4, 4),
    "empty_every": 4,
    "max_fish": 4,
    "seed": 0,
}


_NONE_TYPES = {"image_short_side": int, "fixed_size": tuple}


def defaults(dataset: str) -> dict[str, Any]:
    """The default value of every field for ``dataset`` (a plain dict)."""
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {dataset!r}")
    d = {"dataset": dataset, **_COMMON}
    if dataset in ("deepfish", "synthetic"):
        d.update(_DEEPFISH)
    if dataset == "deepfish":
        d["image_short_side"] = 256
    if dataset == "synthetic":
        d["synthetic"] = dict(_SYNTHETIC)
        d["test_split"] = "test"
    if dataset in ("sample", "boxes", "points"):
        d.update(_FOLDERS)
        d["test_split"] = "val"  # these folders have no separate test split
    return d


def default_data_config(dataset: str = "deepfish") -> ml_collections.ConfigDict:
    """The data config for ``dataset`` with every field at its default (see module doc)."""
    cfg = ml_collections.ConfigDict(defaults(dataset))
    # Fields whose default is None are typed, so a command line can override them
    # (``--config.data.image_short_side=32``); None stays a valid value.
    for key, kind in _NONE_TYPES.items():
        if key in cfg and cfg[key] is None:
            cfg[key] = ml_collections.config_dict.placeholder(kind)
    return cfg


def complete(cfg: Any) -> ml_collections.ConfigDict:
    """A copy of a data config (ConfigDict or mapping) with every field of its dataset, the
    missing ones at their defaults: what the data layer reads, once, at its entry points."""
    given = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    if "dataset" not in given:
        raise ValueError("data config has no 'dataset'")
    out = defaults(str(given["dataset"]))
    out.update(given)
    return ml_collections.ConfigDict(out)


def with_preprocessing(cfg: Any, preprocessing: Any) -> ml_collections.ConfigDict:
    """A copy of a (complete) data config whose preprocessing fields say ``preprocessing``
    (``data.preprocess.Preprocessing``): what a checkpoint was trained with."""
    out = ml_collections.ConfigDict(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg))
    out.image_short_side = preprocessing.short_side
    if "letterbox" in out:
        out.letterbox = preprocessing.letterbox
    return out
