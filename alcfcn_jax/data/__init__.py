"""Data layer: DeepFish (TFDS), YOLO box folders, click CSVs, synthetic trees, grain pipeline.

Entry points (docs/contracts.md "Data"):
  get_source(data_cfg, split)      a random-access sequence of example dicts (``data.reader``)
  default_data_config(dataset)     every data field with its default (``data.config``)
  pipeline.train_iterator / pipeline.eval_batches   batches for training / evaluation
"""

from alcfcn_jax.data.config import default_data_config
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.data.reader import BOX_DATASETS, SAMPLE_DIR, get_source, has_boxes
from alcfcn_jax.data.source import MappedSource

__all__ = [
    "BOX_DATASETS",
    "DataError",
    "MappedSource",
    "SAMPLE_DIR",
    "default_data_config",
    "get_source",
    "has_boxes",
]
