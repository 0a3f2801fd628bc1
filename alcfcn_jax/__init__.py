"""alcfcn_jax: A-LCFCN (affinity LCFCN) point-supervised segmentation in JAX/Flax."""

__version__ = "0.1.0"
