"""Experiment configs: each module exposes ``get_config(arg=None) -> ml_collections.ConfigDict``."""
