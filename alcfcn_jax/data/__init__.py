"""Data layer: DeepFish (TFDS), YOLO box folders, click CSVs, synthetic trees, grain pipeline.

Entry points (docs/contracts.md "Data"):
  get_source(data_cfg, split)      a random-access sequence of example dicts
  default_data_config(dataset)     every data field with its default
  pipeline.train_iterator / pipeline.eval_batches   batches for training / evaluation
"""

from __future__ import annotations

import pathlib
from typing import Any

from alcfcn_jax.data.config import DATASETS, default_data_config, field
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.data.pseudo_masks import PseudoMaskSource
from alcfcn_jax.data.source import MappedSource

SAMPLE_DIR = pathlib.Path(__file__).parent / "sample"
# Datasets whose ground truth is boxes (counts = boxes, points = box centres).
BOX_DATASETS = ("sample", "boxes")

__all__ = [
    "BOX_DATASETS",
    "DataError",
    "MappedSource",
    "SAMPLE_DIR",
    "default_data_config",
    "get_source",
    "has_boxes",
]


def has_boxes(data_cfg: Any) -> bool:
    """Whether ``data_cfg``'s dataset is labelled with boxes (box hit rate and precision apply)."""
    return str(data_cfg.dataset) in BOX_DATASETS


def _deepfish_root_and_tfds(data_cfg: Any) -> tuple[pathlib.Path, pathlib.Path]:
    from alcfcn_jax.data import synthetic

    ds = field(data_cfg, "dataset")
    data_dir = field(data_cfg, "data_dir")
    if ds == "synthetic":
        spec_fields = dict(field(data_cfg, "synthetic"))
        for k in ("seg_sizes", "loc_sizes"):
            spec_fields[k] = tuple(spec_fields[k])
        spec = synthetic.SyntheticSpec(**spec_fields)
        root = synthetic.ensure_tree(data_dir or synthetic.default_cache_dir(), spec)
    else:
        if not data_dir:
            raise DataError(
                "data.data_dir is empty: set it to the DeepFish folder holding Segmentation/ and "
                "Localization/ (see alcfcn_jax/data/deepfish/README.md)"
            )
        root = pathlib.Path(data_dir).expanduser()
    tfds_dir = field(data_cfg, "tfds_dir")
    if not tfds_dir:
        tfds_dir = synthetic.default_cache_dir() / "tensorflow_datasets"
        if ds == "synthetic":
            tfds_dir = root / "tensorflow_datasets"
    return root, pathlib.Path(tfds_dir).expanduser()


def get_source(data_cfg: Any, split: str):
    """The source of ``split`` for the dataset named by ``data_cfg.dataset``.

    Args:
      data_cfg: an ``ml_collections.ConfigDict`` from :func:`default_data_config` (or any
        attribute object; missing fields take their defaults).
      split: "train", "val", "test" (DeepFish layouts; also "<subset>:<split>"), "train"/"val"
        /"all" (box and click folders; "test" = "val").

    Returns:
      A random-access sequence of example dicts.

    Raises:
      DataError: missing data, bad layout or bad files (see the readers).
    """
    ds = field(data_cfg, "dataset")
    if ds not in DATASETS:
        raise DataError(f"data.dataset must be one of {DATASETS}, got {ds!r}")
    if ds in ("deepfish", "synthetic"):
        from alcfcn_jax.data.deepfish import source as df

        root, tfds_dir = _deepfish_root_and_tfds(data_cfg)
        reader = field(data_cfg, "reader")
        if reader == "tfds":
            src = df.tfds_source(data_cfg, root, str(tfds_dir), split)
        elif reader == "raw":
            src = df.raw_source(data_cfg, root, split)
        else:
            raise DataError(f"data.reader must be 'tfds' or 'raw', got {reader!r}")
    else:
        if split == "test":
            split = "val"
        data_dir = field(data_cfg, "data_dir")
        if ds == "sample":
            from alcfcn_jax.data.boxes import box_source

            src = box_source(data_cfg, data_dir or SAMPLE_DIR, split)
        elif ds == "boxes":
            from alcfcn_jax.data.boxes import box_source

            if not data_dir:
                raise DataError(
                    "data.data_dir is empty: set it to a folder with images/ and labels/"
                )
            src = box_source(data_cfg, data_dir, split)
        else:
            from alcfcn_jax.data.points import click_source

            if not data_dir:
                raise DataError(
                    "data.data_dir is empty: set it to a folder with images/ and points.csv"
                )
            src = click_source(data_cfg, data_dir, split)
    mask_dir = field(data_cfg, "pseudo_mask_dir")
    if mask_dir and split.split(":")[-1] == "train":
        src = PseudoMaskSource(src, mask_dir)
    return src
