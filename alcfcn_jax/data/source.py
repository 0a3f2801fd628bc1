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
    ) -> None:
        self.items = list(items)
        self._load = load
        self.name = name
        self._fingerprint = fingerprint
        self.settings = settings
        self._label_count = label_count

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
