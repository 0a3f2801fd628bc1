"""TFDS builder for a manually downloaded DeepFish tree (no TensorFlow needed).

Prepare with ``file_format="array_record"`` and read with ``tfds.data_source`` /
``builder.as_data_source``; the default tfrecord format needs TensorFlow to finalise.
Images are stored already resized (PNG, lossless, so the stored pixels equal the reference's
PIL-resized ones); ImageNet normalisation happens at load (:func:`tree.record_to_example`).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from alcfcn_jax.data.deepfish import tree as tree_lib
from alcfcn_jax.data.errors import BadExamples, DataError

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download DeepFish (https://alzayats.github.io/DeepFish/, MIT licence) and unpack it so that
`manual_dir` holds:
  Segmentation/{train,val,test}.csv  (columns ID, labels)
  Segmentation/images/<ID>.jpg  Segmentation/masks/<ID>.png  (fish = 255)
  Localization/{train,val,test}.csv  (columns ID, labels, counts)
  Localization/images/<ID>.jpg  Localization/masks/<ID>.png  (one non-zero pixel per fish)
Then pass that folder as `data_cfg.data_dir` (alcfcn_jax prepares it on first use), or prepare
ahead of time (e.g. once before a multi-host run) with
`python -c "from alcfcn_jax.data.deepfish.source import prepare; prepare('<folder>',
'<tfds_dir>', 'fish_loc'); prepare('<folder>', '<tfds_dir>', 'fish_seg')"`.
"""


@dataclasses.dataclass
class DeepFishConfig(tfds.core.BuilderConfig):
    """Which subset and which preprocessing the prepared files hold.

    Attributes:
      subset: ``"fish_seg"`` (images, masks, points from masks) or ``"fish_loc"`` (images,
        clicked points, counts).
      short_side: short side of the stored images (256 = the reference); None keeps 1920x1080.
      point_placement: FishSeg point per blob, ``"centroid"`` (reference) or ``"edt_max"``.
    """

    subset: str = "fish_seg"
    short_side: int | None = 256
    point_placement: str = "centroid"


def config_for(subset: str, short_side: int | None = 256, placement: str = "centroid"):
    """The builder config for a subset and preprocessing; the two defaults keep their names."""
    if subset not in tree_lib.SUBSETS:
        raise DataError(f"config_name must be one of {tuple(tree_lib.SUBSETS)}, got {subset!r}")
    if placement not in ("centroid", "edt_max"):
        raise DataError(f"point_placement must be 'centroid' or 'edt_max', got {placement!r}")
    name = subset
    if short_side != 256:
        name += f"_s{short_side if short_side is not None else 'full'}"
    if subset == "fish_seg" and placement != "centroid":
        name += f"_{placement}"
    return DeepFishConfig(
        name=name,
        subset=subset,
        short_side=short_side,
        point_placement=placement,
        description=f"DeepFish {subset}, short side {short_side}, points {placement}",
    )


class DeepFish(tfds.core.GeneratorBasedBuilder):
    """DeepFish FishSeg / FishLoc, prepared from a manual download.

    Args (besides TFDS's): ``skip_bad_examples`` - warn about and skip undecodable or
    inconsistent examples instead of raising (the count is logged at the end of each split).
    """

    name = "deepfish"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [config_for("fish_seg"), config_for("fish_loc")]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup of a packaged builder's path needs the `importlib_resources`
        # backport, which tensorflow-datasets does not declare; the file path is all it needs.
        return epath.Path(__file__)

    def __init__(self, *, skip_bad_examples: bool = False, **kwargs) -> None:
        self._skip_bad = skip_bad_examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        feats = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "points": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            "count": tfds.features.Scalar(dtype=np.int32),
            "habitat": tfds.features.Text(),
            "id": tfds.features.Text(),
        }
        if self.builder_config.subset == "fish_seg":
            feats["mask"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
        return tfds.core.DatasetInfo(
            builder=self,
            description="DeepFish underwater fish frames (Saleh et al. 2020) for A-LCFCN.",
            features=tfds.features.FeaturesDict(feats),
            homepage="https://alzayats.github.io/DeepFish/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        tree = tree_lib.DeepFishTree(dl_manager.manual_dir)
        return {s: self._generate_examples(tree, s) for s in tree_lib.SPLITS}

    def _generate_examples(self, tree: tree_lib.DeepFishTree, split: str):
        cfg = self.builder_config
        rows = tree.ids(cfg.subset, split)
        bad = BadExamples(self._skip_bad, f"DeepFish {cfg.name}/{split}")
        for image_id, count in rows:
            try:
                rec = tree.record(
                    cfg.subset,
                    image_id,
                    count=count,
                    short_side=cfg.short_side,
                    placement=cfg.point_placement,
                )
            except DataError as e:
                bad.handle(e)
                continue
            out = {
                "image": _png(rec["image"]),
                "points": rec["points"],
                "count": np.int32(rec["count"]),
                "habitat": rec["habitat"],
                "id": rec["id"],
            }
            if "mask" in rec:
                out["mask"] = _png(rec["mask"][..., None])
            yield image_id, out
        bad.summarize()


def _png(arr: np.ndarray) -> io.BytesIO:
    """PNG-encodes with PIL (TFDS would need TensorFlow to encode numpy arrays)."""
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(
        buf, format="PNG", compress_level=1
    )
    buf.seek(0)
    return buf


_CITATION = """\
@article{saleh2020realistic,
  title={A realistic fish-habitat dataset to evaluate algorithms for underwater visual analysis},
  author={Saleh, Alzayat and Laradji, Issam H and Konovalov, Dmitry A and Bradley, Michael and
          Vazquez, David and Sheaves, Marcus},
  journal={Scientific Reports}, volume={10}, number={1}, pages={14671}, year={2020}
}
"""
