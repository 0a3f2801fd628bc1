"""Import of PyTorch / numpy checkpoints into model state (and export back, for round trips).

``torch_pickle`` reads ``torch.save`` files without torch; ``common`` applies a checked name/shape
mapping; ``resnet38`` (and the VGG16 / EfficientNet importers) hold the per-network mappings.
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

__all__ = [
    "CONV_OIHW_TO_HWIO",
    "IDENTITY",
    "LINEAR_OI_TO_IO",
    "Transform",
    "WeightImportError",
    "apply_mapping",
    "export_arrays",
    "load_arrays",
    "save_npz",
]
