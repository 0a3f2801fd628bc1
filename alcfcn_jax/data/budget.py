"""A fixed annotation budget: a seeded subset of background-only and fish training images.

The paper compares A-LCFCN against a fully supervised FCN trained on the masks one could annotate
in the time the point labels took: 161 background and 11 fish images of FishSeg train
(``configs/deepfish.py:fsfcn,budget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from alcfcn_jax.data.source import example_count


class SubsetSource(Sequence):
    """The examples ``indices`` of ``source``, in that order."""

    def __init__(self, source: Sequence[dict[str, Any]], indices: Sequence[int]) -> None:
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def label_count(self, index: int) -> int:
        """The example's ``count``, from the wrapped source (see ``data.source.example_count``)."""
        return example_count(self.source, self.indices[index])

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return self.source[self.indices[index]]


def budget_subset(
    source: Sequence[dict[str, Any]], *, n_background: int, n_fish: int, seed: int
) -> Sequence[dict[str, Any]]:
    """Draws ``n_background`` fish-free and ``n_fish`` fish images (without replacement).

    Args:
      source: the training source (each example has an int ``count``).
      n_background, n_fish: images to keep of each kind; 0 and 0 returns ``source`` unchanged.
      seed: the draw's seed (the same seed always picks the same images).

    Raises:
      ValueError: the source has fewer images of a kind than requested.
    """
    if n_background == 0 and n_fish == 0:
        return source
    counts = np.asarray([example_count(source, i) for i in range(len(source))])
    background = np.flatnonzero(counts == 0)
    fish = np.flatnonzero(counts > 0)
    if len(background) < n_background or len(fish) < n_fish:
        raise ValueError(
            f"config.budget asks for {n_background} background and {n_fish} fish images, but the "
            f"training split has {len(background)} and {len(fish)}"
        )
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [
            rng.choice(background, size=n_background, replace=False),
            rng.choice(fish, size=n_fish, replace=False),
        ]
    )
    keep.sort()
    logging.info(
        "Annotation budget: %d background + %d fish of %d training images",
        n_background,
        n_fish,
        len(source),
    )
    return SubsetSource(source, keep)
