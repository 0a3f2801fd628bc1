"""Import of PyTorch / Keras / numpy weight files into model state (and export back, for round trips).

``pretrained.build_pretrained(model_cfg, rngs=...)`` builds the network of a config and loads its
weights with the importer of its backbone (``load_weights``). ``torch_pickle`` reads
``torch.save`` files without torch; ``common`` applies a checked name/shape mapping; ``resnet38``
(and the VGG16 / EfficientNet importers) hold the per-network mappings.
"""

from alcfcn_jax.weights.common import (
    CONV_OIHW_TO_HWIO,
    IDENTITY,
    LINEAR_OI_TO_IO,
    Transform,
    WeightImportError,
    apply_mapping,
    export_arrays,
    load_arrays,
    save_npz,
)
from alcfcn_jax.weights.pretrained import build_pretrained, load_weights

__all__ = [
    "CONV_OIHW_TO_HWIO",
    "IDENTITY",
    "LINEAR_OI_TO_IO",
    "Transform",
    "WeightImportError",
    "apply_mapping",
    "build_pretrained",
    "export_arrays",
    "load_arrays",
    "load_weights",
    "save_npz",
]
