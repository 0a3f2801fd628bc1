"""Networks: ResNet-38d / EfficientNet-Lite0 / tiny trunks, A-LCFCN heads and model, FCN8-VGG16.

``build_model(model_cfg, rngs=...)`` (``models.build``) builds the model a config names, freshly
initialised; ``models.outputs`` is how every model's logits are read. Loading pretrained weights
is the job of ``alcfcn_jax.weights``.
"""

from alcfcn_jax.models.alcfcn import ALCFCN
from alcfcn_jax.models.build import (
    BACKBONES,
    CAM_HEADS,
    DTYPES,
    MODEL_DEFAULTS,
    MODEL_NAMES,
    RW_METHODS,
    TRUNK_MODES,
    TRUNKS,
    build_model,
    build_trunk,
    complete_config,
)
from alcfcn_jax.models.heads import ActivationHead, AffinityHead, EmbeddingHead
from alcfcn_jax.models.resnet38 import ResNet38d
from alcfcn_jax.models.tiny import TinyTrunk

__all__ = [
    "BACKBONES",
    "CAM_HEADS",
    "DTYPES",
    "MODEL_DEFAULTS",
    "MODEL_NAMES",
    "RW_METHODS",
    "TRUNKS",
    "TRUNK_MODES",
    "ALCFCN",
    "ActivationHead",
    "AffinityHead",
    "EmbeddingHead",
    "ResNet38d",
    "TinyTrunk",
    "build_model",
    "build_trunk",
    "complete_config",
]
