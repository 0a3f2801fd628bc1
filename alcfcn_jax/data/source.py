"""Random-access example sources shared by every reader.

A source is a sequence of example dicts (docs/contracts.md "Data"): ``image`` (H,W,3) float32
ImageNet-normalised, ``points`` (H,W) int32 (1 fish, 0 background point, 255 unlabelled),
``mask`` (H,W) int32 (0/1, 255 unknown), ``count`` int32, ``habitat`` str, ``id`` str, and
optionally ``boxes`` (K,4) float32 and ``pad`` (H,W) bool (False on pixels that are not picture,
e.g. letterbox bars kept in "mask" mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Example = dict[str, Any]


class MappedSource(Sequence):
    """``len(items)`` examples, the i-th built by ``load(items[i])`` on access.

    Args:
      items: one light descriptor per example (a path, an ID, a record key...).
      load: builds the example dict from a descriptor.
      name: a short description used in messages and ``repr``.
      fingerprint: optional ``descriptor -> str`` identifying an example's image content without
        decoding it (e.g. a hash of the file's bytes); with ``settings`` (the preprocessing, a
        JSON-able dict) it stands for the decoded image (the feature cache's key).
      settings: see ``fingerprint``.
      label_count: optional ``descriptor -> int``, the example's ``count`` without loading it
        (e.g. the number of boxes in its label file); see :func:`example_count`.
      check: optional ``descriptor -> (h, w) | None`` that checks an example's files cheaply and
        raises DataError (see :func:`validate_source`).
      example_id: optional ``descriptor -> str``, the example's ``id`` without loading it.
    """

    def __init__(
        self,
        items: Sequence[Any],
        load: Callable[[Any], Example],
        name: str,
        *,
        fingerprint: Callable[[Any], str] | None = None,
        settings: dict[str, Any] | None = None,
        label_count: Callable[[Any], int] | None = None,
        check: Callable[[Any], tuple[int, int] | None] | None = None,
        example_id: Callable[[Any], str] | None = None,
    ) -> None:
        self.items = list(items)
        self._load = load
        self.name = name
        self._fingerprint = fingerprint
        self.settings = settings
        self._label_count = label_count
        self._check = check
        self._example_id = example_id

    def check(self, index: int) -> tuple[int, int] | None:
        """Checks the example's files without building it (cheap: headers, labels, clicks in
        bounds); returns the model-input (h, w) when known. Raises DataError naming the file."""
        return None if self._check is None else self._check(self.items[index])

    def fingerprint(self, index: int) -> str | None:
        """The example's content fingerprint (see the class doc), or None if it has none."""
        return None if self._fingerprint is None else self._fingerprint(self.items[index])

    def label_count(self, index: int) -> int | None:
        """The example's ``count`` without decoding it, or None when the reader cannot tell."""
        return None if self._label_count is None else int(self._label_count(self.items[index]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range (size {len(self)})")
        return self._load(self.items[index])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {len(self)} examples>"


def example_count(source: Sequence[Example], index: int) -> int:
    """``source[index]["count"]``, read without decoding the image when the source can.

    Sources that wrap another one (a subset, cached taps) expose ``source`` and keep its order,
    or offer ``label_count(index)`` themselves.
    """
    label_count = getattr(source, "label_count", None)
    if callable(label_count):
        n = label_count(index)
        if n is not None:
            return int(n)
    return int(source[index]["count"])


# Above this many model-input pixels an image warns: activations (and peak memory) grow with it.
LARGE_IMAGE_PIXELS = 4_000_000
SKIP_HINT = "set --config.data.skip_bad_examples=True to leave bad files out (with a warning each)"


def validate_source(source: Sequence[Example], what: str) -> int:
    """Checks every file a source will read, before training starts (issue: a corrupt file
    found hours into a run).

    Walks down wrapping sources (``.source``: budget subsets, pseudo masks) to the reader's
    :class:`MappedSource` and calls its ``check`` on every item, logging progress on large
    folders; warns once about images above :data:`LARGE_IMAGE_PIXELS` model-input pixels.
    Sources without checks (TFDS-prepared data, decoded when prepared) pass.

    Returns:
      The number of items checked.

    Raises:
      DataError: the first bad file, with the count checked so far and the
        ``data.skip_bad_examples`` hint.
    """
    from alcfcn_jax.data.errors import DataError, logger

    base = source
    while not isinstance(base, MappedSource) and hasattr(base, "source"):
        base = base.source
    if not isinstance(base, MappedSource) or base._check is None:
        return 0
    n = len(base)
    large: list[str] = []
    every = max(1, n // 10)
    for i in range(n):
        try:
            size = base.check(i)
        except DataError as err:
            raise DataError(
                f"{err} (found checking {what} before training, file {i + 1} of {n}; fix or "
                f"remove it, or {SKIP_HINT})"
            ) from err
        if size is not None and size[0] * size[1] > LARGE_IMAGE_PIXELS:
            large.append(
                f"{base.items[i][0] if isinstance(base.items[i], tuple) else i} "
                f"({size[1]}x{size[0]})"
            )
        if n >= 500 and (i + 1) % every == 0:
            logger.info("%s: checked %d of %d files (%d%%)", what, i + 1, n, 100 * (i + 1) // n)
    if large:
        logger.warning(
            "%s: %d image(s) are over %.0f MP as the model sees them, e.g. %s: peak memory grows "
            "with image size; set data.image_short_side (e.g. 512) to resize them",
            what,
            len(large),
            LARGE_IMAGE_PIXELS / 1e6,
            large[0],
        )
    return n


def example_ids(source: Sequence[Example]) -> list[str] | None:
    """Every example's ``id`` in order, read without decoding images where the reader can
    (through budget subsets and pseudo-mask wrappers); None when it cannot."""
    if isinstance(source, MappedSource):
        if source._example_id is None:
            return None
        return [str(source._example_id(it)) for it in source.items]
    inner = getattr(source, "source", None)
    if inner is None:
        return None
    ids = example_ids(inner)
    if ids is None:
        return None
    indices = getattr(source, "indices", None)
    return ids if indices is None else [ids[i] for i in indices]
