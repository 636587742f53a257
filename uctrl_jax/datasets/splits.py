"""The split grammar NAME[START:STOP]: its one parser (`parse_split`), a split's name, the
positions a slice selects, and each process's shard of a split.

Splits may be sliced as in tfds: `train[:90%]`, `train[90%:]`, `train[100:200]`,
`train[-1000:]` (percentages round to the nearest example; out-of-range indices
and empty slices are errors). tfds sources slice in their stored order; `npz:`
and `image_folder:` sources slice after a fixed shuffle, the permutation
`numpy.random.RandomState(SLICE_SHUFFLE_SEED).permutation(n)` of the split's n
examples (the same for every run and process), so that a file sorted by class
gives representative held-out slices and `train[:90%]`, `train[90%:]` are
disjoint and cover `train`.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from uctrl_jax.datasets.errors import DataError

# Seed of the fixed permutation that `npz:` and `image_folder:` slices are taken
# from. Changing it changes every held-out split: never do.
SLICE_SHUFFLE_SEED = 0

_SPLIT = re.compile(r"(?P<base>[^\[\]]+)(?:\[(?P<start>[^:\[\]]*):(?P<stop>[^:\[\]]*)\])?")
_BOUND = re.compile(r"(-?\d+)(%?)")


# One slice bound: (value, is_percent); None for an open bound.
_Bound = Optional[tuple[int, bool]]


def split_name(split: str) -> str:
  """The NAME of `split`: the split it is read from ("train" for "train[:90%]").

  The text before the first "[", unchecked, so that it also names the first split of a
  tfds expression ("train[:50%]+test"), which is more than this grammar; for every
  split `parse_split` accepts, it is the NAME that `parse_split` returns.
  """
  return split.split("[", 1)[0]


def parse_split(split: str) -> tuple[str, Optional[tuple[_Bound, _Bound]]]:
  """`split` ("train", "train[:90%]", "train[10:20]") as (NAME, (START, STOP)).

  Checks the syntax only (ranges need the split's size: `split_positions`), so a
  config's splits can be checked before any data is opened.
  Returns:
    NAME, and None when `split` is not sliced, else its two bounds (`_Bound`).
  Raises:
    DataError: `split` is not NAME or NAME[START:STOP] with integer or percent bounds.
  """
  match = _SPLIT.fullmatch(split) if isinstance(split, str) else None
  if not match:
    raise DataError(
      f"Bad split {split!r}: expected NAME or NAME[START:STOP], e.g. "
      "train[:90%], train[90%:], train[100:200]."
    )
  if match.group("start") is None:
    return match.group("base"), None
  bounds = []
  for text in (match.group("start").strip(), match.group("stop").strip()):
    if not text:
      bounds.append(None)
      continue
    bound = _BOUND.fullmatch(text)
    if not bound:
      raise DataError(
        f"Bad split {split!r}: slice bound {text!r} is not an integer or a percentage like 90%."
      )
    value, percent = int(bound.group(1)), bool(bound.group(2))
    if percent and not -100 <= value <= 100:
      raise DataError(f"Bad split {split!r}: {text} is outside [-100%, 100%].")
    bounds.append((value, percent))
  return match.group("base"), tuple(bounds)


def _index(bound: _Bound, n: int, split: str) -> Optional[int]:
  """One parsed slice bound of `split` as an index into n examples (None: open)."""
  if bound is None:
    return None
  value, percent = bound
  if percent:
    return int(round(value * n / 100))  # tfds's "closest" rounding
  if not -n <= value <= n:
    raise DataError(f"Bad split {split!r}: index {value} is out of range for its {n} examples.")
  return value


def split_positions(
  split: str, num_examples: int, *, shuffled: bool = True
) -> Optional[np.ndarray]:
  """Positions in the stored split of the examples of `split`, in reading order.

  Args:
    split: "train", or a slice "train[:90%]", "train[10:20]", "train[-5%:]".
    num_examples: n, the size of the stored split.
    shuffled: slice the fixed permutation (`npz:`, `image_folder:`; see the
      module docstring) or the stored order (tfds).
  Returns:
    (k,) int64 positions in [0, n); None when `split` is not sliced (all n, in
    stored order).
  Raises:
    DataError: a malformed bound, an index out of range, or an empty slice.
  """
  base, bounds = parse_split(split)
  if bounds is None:
    return None
  start, stop = (_index(bound, num_examples, split) for bound in bounds)
  order = (
    np.random.RandomState(SLICE_SHUFFLE_SEED).permutation(num_examples)
    if shuffled
    else np.arange(num_examples)
  )
  positions = order[start:stop].astype(np.int64)
  if not len(positions):
    raise DataError(f"Split {split!r} is empty (its split {base!r} has {num_examples} examples).")
  return positions


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of process `process_index`'s contiguous shard.

  Shards are disjoint, cover [0, num_examples) and differ in size by at most
  one, like `tfds.even_splits(..., drop_remainder=False)`.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  start = num_examples * process_index // process_count
  stop = num_examples * (process_index + 1) // process_count
  return start, stop
