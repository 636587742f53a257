"""DataError, the one exception of bad data (names, files, splits), and its messages' lists.

Each message is one line naming the file (and the first bad index): `main.py` prints it as
`error: ...`.
"""

from __future__ import annotations


class DataError(ValueError):
  """The named dataset is missing, malformed, or cannot be read."""


def few(values, k: int = 8) -> str:
  """The first `k` of `values` for a one-line message, and how many there are in all."""
  return ", ".join(map(str, values[:k])) + (
    f", … ({len(values)} in all)" if len(values) > k else ""
  )
