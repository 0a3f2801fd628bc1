"""Independent implementations of the PyTorch reference, kept outside the package.

``lcfcn_numpy``: a statement-by-statement numpy port of the reference's LCFCN targets and loss;
``torch_replica``: a PyTorch replica of the reference network and training step, written from
docs/reference_spec.md. The tests compare the package against both, and ``benchmarks/`` times
the replica beside the JAX step; nothing in ``alcfcn_jax`` imports them.
"""
