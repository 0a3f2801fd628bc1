"""Which reader serves a data config: ``get_source(data_cfg, split)`` and ``has_boxes``.

The data config (``data.config``) names a dataset; this module hands its fields, read once, to
that dataset's reader (DeepFish through TFDS or raw, YOLO box folders, click CSVs, synthetic
trees, the frames shipped in the package) and wraps the training split in the stage-2 pseudo
masks when ``pseudo_mask_dir`` is set.
"""

from __future__ import annotations

import pathlib
from typing import Any

from alcfcn_jax.data.config import DATASETS
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.data.pseudo_masks import PseudoMaskSource

SAMPLE_DIR = pathlib.Path(__file__).parent / "sample"
# Datasets whose ground truth is boxes (counts = boxes, points = box centres).
BOX_DATASETS = ("sample", "boxes")


def has_boxes(data_cfg: Any) -> bool:
    """Whether ``data_cfg``'s dataset is labelled with boxes (box hit rate and precision apply)."""
    return str(data_cfg.dataset) in BOX_DATASETS


def _deepfish_root_and_tfds(cfg: Any) -> tuple[pathlib.Path, pathlib.Path]:
    from alcfcn_jax.data import synthetic

    if cfg.dataset == "synthetic":
        spec_fields = dict(cfg.synthetic)
        for k in ("seg_sizes", "loc_sizes"):
            spec_fields[k] = tuple(spec_fields[k])
        spec = synthetic.SyntheticSpec(**spec_fields)
        from alcfcn_jax import sharding as shd

        # Process 0 writes the tree while the others wait (ensure_tree is also safe alone).
        root = shd.process_zero_first(
            "synthetic_tree",
            lambda: synthetic.ensure_tree(cfg.data_dir or synthetic.default_cache_dir(), spec),
        )
    else:
        if not cfg.data_dir:
            raise DataError(
                "data.data_dir is empty: set it to the DeepFish folder holding Segmentation/ and "
                "Localization/ (see alcfcn_jax/data/deepfish/README.md)"
            )
        root = pathlib.Path(cfg.data_dir).expanduser()
    tfds_dir = cfg.tfds_dir
    if not tfds_dir:
        if cfg.dataset == "synthetic":
            tfds_dir = root / "tensorflow_datasets"
        elif cfg.reader == "tfds":
            # Keyed by the source tree (path + file listing): another folder, or this one after
            # its files changed, is prepared anew instead of reusing data of another tree.
            from alcfcn_jax.data.deepfish.source import source_fingerprint

            key = source_fingerprint(root)[:16]
            tfds_dir = synthetic.default_cache_dir() / "tensorflow_datasets" / f"deepfish-{key}"
        else:
            tfds_dir = synthetic.default_cache_dir() / "tensorflow_datasets"
    return root, pathlib.Path(tfds_dir).expanduser()


def get_source(data_cfg: Any, split: str):
    """The source of ``split`` for the dataset named by ``data_cfg.dataset``.

    Args:
      data_cfg: a complete data config (every field: ``default_data_config`` or a resolved
        experiment config's ``data``, ``train.config.resolve``).
      split: "train", "val", "test" (DeepFish layouts; also "<subset>:<split>"), "train"/"val"
        /"all" (box and click folders; "test" = "val").

    Returns:
      A random-access sequence of example dicts.

    Raises:
      DataError: missing data, bad layout or bad files (see the readers).
    """
    ds = (data_cfg.get("dataset") if hasattr(data_cfg, "get") else None) or ""
    if ds not in DATASETS:
        raise DataError(f"data.dataset must be one of {DATASETS}, got {ds!r}")
    cfg = data_cfg
    preprocessing = {
        "short_side": cfg.image_short_side,
        "skip_bad_examples": bool(cfg.skip_bad_examples),
    }
    if ds in ("deepfish", "synthetic"):
        from alcfcn_jax.data.deepfish import source as df

        root, tfds_dir = _deepfish_root_and_tfds(cfg)
        subset, sp = df.resolve_split(
            split, config_name=cfg.config_name, eval_config=cfg.eval_config
        )
        reading = df.Reading(
            placement=cfg.point_placement, bg_points=int(cfg.bg_points), **preprocessing
        )
        if cfg.reader == "tfds":
            src = df.tfds_source(root, str(tfds_dir), subset, sp, reading)
        elif cfg.reader == "raw":
            src = df.raw_source(root, subset, sp, reading)
        else:
            raise DataError(f"data.reader must be 'tfds' or 'raw', got {cfg.reader!r}")
    else:
        if split == "test":
            split = "val"
        data_dir = cfg.data_dir
        if ds in ("sample", "boxes"):
            from alcfcn_jax.data.boxes import box_source

            if ds == "sample":
                data_dir = data_dir or SAMPLE_DIR
            elif not data_dir:
                raise DataError(
                    "data.data_dir is empty: set it to a folder with images/ and labels/"
                )
            src = box_source(
                data_dir,
                split,
                val_percent=float(cfg.val_percent),
                letterbox=cfg.letterbox,
                **preprocessing,
            )
        else:
            from alcfcn_jax.data.points import click_source

            if not data_dir:
                raise DataError(
                    "data.data_dir is empty: set it to a folder with images/ and points.csv"
                )
            src = click_source(
                data_dir,
                split,
                points_csv=cfg.points_csv,
                val_percent=float(cfg.val_percent),
                **preprocessing,
            )
    if cfg.pseudo_mask_dir and split.split(":")[-1] == "train":
        src = PseudoMaskSource(src, cfg.pseudo_mask_dir)
    return src
