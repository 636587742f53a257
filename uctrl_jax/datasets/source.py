"""The interface every dataset implements (`Source`, `DatasetInfo`) and what the sources
indexed in memory (`npz:`, `image_folder:`) share: slices of a fixed permutation, labels
checked to be 0..C-1, label -1 in an unlabelled split.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf

from uctrl_jax.datasets.errors import DataError, few
from uctrl_jax.datasets.splits import shard_bounds, split_name, split_positions


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trainer or evaluator needs to know about a dataset.

  Attributes:
    name: the dataset name as given (`cifar10`, `npz:/data/x.npz`, ...).
    image_shape: (H, W, C) of one image as stored (`open_dataset`; H = W = None
      when the images differ in size) or as batched by the input pipeline
      (`input_pipeline.get_dataset_info`).
    num_classes: number of labels; labels are in [0, num_classes). 0 when no
      split has labels.
    num_examples: split name -> number of examples in the whole split.
    class_names: label names, `num_classes` of them.
    unlabelled_splits: the splits without labels (their examples' label is -1).
    size_counts: (H, W) -> how many images have that size, where the images differ in
      size and the source knows them (image folders); None otherwise.
    notes: one line per conversion the source applies to some images (modes,
      channels), printed once by the start-up summary.
  """

  name: str
  image_shape: tuple[Optional[int], Optional[int], int]
  num_classes: int
  num_examples: Mapping[str, int]
  class_names: tuple[str, ...]
  unlabelled_splits: tuple[str, ...] = ()
  size_counts: Optional[Mapping[tuple[int, int], int]] = None
  notes: tuple[str, ...] = ()


def has_labels(info: DatasetInfo, split: str) -> bool:
  """Whether `split` (slices included: "train[:10%]") carries labels."""
  return split_name(split) not in info.unlabelled_splits


class Source(abc.ABC):
  """A dataset opened by name: its `info` and per-process shards of a split."""

  info: DatasetInfo

  def read(
    self,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    shuffle_seed: int | None = None,
  ) -> tf.data.Dataset:
    """This process's shard of `split`, decoded, in a fixed order.

    Args:
      split: a split of `info.num_examples`, or a slice of one ("train[:10%]").
      process_index: which shard.
      process_count: number of shards.
      shuffle_seed: if set, sources stored in several files may read them in
        an order drawn from this seed (the example order is not shuffled).

    Returns:
      Examples {"image": (H, W, C) uint8, "label": () int32}; label -1 in an
      unlabelled split.
    """
    self._check_split(split)
    shard_bounds(0, process_index, process_count)  # Validates the indices.
    ds = self._read(split, process_index, process_count, shuffle_seed)
    return ds.map(_image_and_label)

  def split_size(self, split: str) -> int:
    """Number of examples in the whole `split` (all processes together)."""
    self._check_split(split)
    return self.info.num_examples[split]

  def shared_examples(self, split_a: str, split_b: str) -> Optional[int]:
    """How many examples `split_a` and `split_b` have in common (None: the
    slices cannot be told apart here, e.g. a tfds expression this package does
    not parse)."""
    base_a, base_b = split_name(split_a), split_name(split_b)
    if base_a != base_b:
      return 0
    self._check_split(split_a)
    self._check_split(split_b)
    n = self.info.num_examples[base_a]
    try:
      a, b = (split_positions(s, n, shuffled=self._SHUFFLED_SLICES) for s in (split_a, split_b))
    except DataError:
      return None
    return len(np.intersect1d(np.arange(n) if a is None else a, np.arange(n) if b is None else b))

  def example_paths(self, split: str) -> Optional[np.ndarray]:
    """(k,) str: the file of each of `split`'s examples, in reading order, for a source
    of one file per image (`image_folder:`); None for others."""
    del split
    return None

  _SHUFFLED_SLICES = False  # slices of the stored order (tfds)

  def _check_split(self, split: str) -> None:
    if split_name(split) not in self.info.num_examples:
      raise DataError(
        f"Dataset {self.info.name!r} has no split {split!r}; its splits are "
        f"{sorted(self.info.num_examples)}."
      )

  @abc.abstractmethod
  def _read(self, split, process_index, process_count, shuffle_seed):
    """Examples {"image": uint8, "label": integer} of the shard."""


def _image_and_label(example):
  """Drops other features (tfds ids, file names); labels as int32."""
  return {"image": example["image"], "label": tf.cast(example["label"], tf.int32)}


class IndexedSource(Source):
  """A source whose splits are indexed in memory (`npz:`, `image_folder:`):
  slices are taken from the fixed permutation (`split_positions`)."""

  _SHUFFLED_SLICES = True

  def split_size(self, split):
    self._check_split(split)
    return len(self._positions(split))

  def _check_split(self, split):
    super()._check_split(split)
    self._positions(split)  # Malformed or empty slices fail here.

  def _positions(self, split) -> np.ndarray:
    """(k,) positions of `split`'s examples in its stored split, in reading order."""
    n = self.info.num_examples[split_name(split)]
    positions = split_positions(split, n, shuffled=self._SHUFFLED_SLICES)
    return np.arange(n) if positions is None else positions

  def example_paths(self, split: str) -> Optional[np.ndarray]:
    self._check_split(split)
    stored = self._stored_paths(split_name(split))
    return None if stored is None else stored[self._positions(split)]

  def _stored_paths(self, split: str) -> Optional[np.ndarray]:
    """(n,) the file of each example of the stored `split`, if one per image."""
    del split
    return None

  def _read(self, split, process_index, process_count, shuffle_seed):
    del shuffle_seed  # One in-memory index.
    base = split_name(split)
    positions = self._positions(split)
    start, stop = shard_bounds(len(positions), process_index, process_count)
    return self._examples(base, positions[start:stop])

  @abc.abstractmethod
  def _examples(self, split: str, positions: np.ndarray) -> tf.data.Dataset:
    """Examples at `positions` (int64 (k,)) of the stored `split`, in that order."""


def unlabelled(n: int) -> np.ndarray:
  """(n,) int32 labels of an unlabelled split: all -1."""
  return np.full((n,), -1, np.int32)


def check_label_ids(present, where: str) -> None:
  """Label ids (an iterable of ints over all labelled splits) are exactly 0..C-1."""
  present = set(int(v) for v in present)
  if not present:
    return
  missing = sorted(set(range(max(present) + 1)) - present)
  if missing:
    raise DataError(
      f"{where}: label ids must be 0..C-1, each used; the labels are "
      f"{few(sorted(present))}, so {few(missing)} never occur (first missing: "
      f"{missing[0]}); renumber the {len(present)} classes 0..{len(present) - 1}."
    )
