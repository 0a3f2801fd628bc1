"""Data errors and the skip-or-raise policy for bad examples.

Every bad input (missing file, wrong CSV columns, undecodable image, size mismatch, point outside
the image, malformed box line) raises :class:`DataError` naming the file and what was expected.
When a config sets ``skip_bad_examples=True`` the reader instead logs one warning per bad file
and a summary count at the end via :class:`BadExamples`; nothing is ever dropped silently.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("alcfcn_jax.data")


class DataError(ValueError):
    """A data file is missing, malformed or inconsistent; the message names the file."""


class BadExamples:
    """Collects bad examples: raises at once, or warns and counts when skipping is allowed.

    Args:
      skip: if False, :meth:`handle` re-raises the error; if True it logs a warning naming the
        file and remembers it, and :meth:`summarize` logs the total.
      what: a short name of the data being read, used in the summary line.
    """

    def __init__(self, skip: bool, what: str) -> None:
        self.skip = bool(skip)
        self.what = what
        self.skipped: list[str] = []

    def handle(self, err: DataError) -> None:
        """Raises ``err`` unless skipping; otherwise logs it and counts it."""
        if not self.skip:
            raise DataError(
                f"{err} (or set --config.data.skip_bad_examples=True to leave bad files out)"
            ) from err
        self.skipped.append(str(err))
        logger.warning("skipping bad example (%s): %s", self.what, err)

    def summarize(self) -> int:
        """Logs how many examples were skipped; returns that number."""
        if self.skipped:
            logger.warning(
                "%s: skipped %d bad example(s) (skip_bad_examples=True); first: %s",
                self.what,
                len(self.skipped),
                self.skipped[0],
            )
        return len(self.skipped)
