"""Image datasets by name, read as per-process shards; labels are optional.

Names (`config.data.name`):

- a tensorflow-datasets name: `cifar10`, `cifar100`, `stl10`, `mnist`,
  `fashion_mnist` (any other registered tfds dataset with `image` and `label`
  features works too). The data must be prepared in `data_dir` (None: tfds's
  default, ~/tensorflow_datasets). Nothing is downloaded unless `download=True`,
  so an offline machine fails at once instead of retrying DNS for minutes.
  `fashion_mnist` is prepared from the Debian package `dataset-fashion-mnist`
  (docs/method.md#data-without-network) when it is installed: see `prepare_fashion_mnist`.
- `image_folder:PATH`, `.png`/`.jpg`/`.jpeg` files (hidden files and folders are
  ignored), laid out one of three ways:
    - `PATH/*.png` (images directly in PATH): one unlabelled split `train`, every
      image under PATH, sub-folders included (they carry no class meaning);
    - `PATH/SPLIT/*.png` (images directly in a split folder): the unlabelled split
      SPLIT, every image under PATH/SPLIT, sub-folders included;
    - `PATH/SPLIT/LABEL/...` (a split folder holding only folders): the labelled
      split SPLIT, class LABEL for every image under PATH/SPLIT/LABEL. Classes are
      numbered in sorted order of their names over all splits; folders named by
      numbers only must be exactly 0..C-1 and keep their number.
  Splits may differ in layout (e.g. an unlabelled `train`, a labelled `test`).
  Every image must have the same size and 1 or 3 channels; grayscale images in a
  folder that also holds colour ones are read as RGB (gray copied to the three
  channels), palette PNGs as RGB, 16-bit PNGs scaled to 8 bits, each logged once.
- `npz:PATH`: a `.npz` file with arrays `x` (N, H, W[, C]) and, optionally, `y`
  (N,) integer labels 0..C-1 is the split `train`; a directory of such files
  holds one split per file (`train.npz`, `test.npz`, ...). `x` is uint8, or
  float in [0, 1] (stored as uint8 `round(255 x)`), or integers in [0, 255].

Splits may be sliced as in tfds: `train[:90%]`, `train[90%:]`, `train[100:200]`,
`train[-1000:]` (percentages round to the nearest example; out-of-range indices
and empty slices are errors). tfds sources slice in their stored order; `npz:`
and `image_folder:` sources slice after a fixed shuffle, the permutation
`numpy.random.RandomState(SLICE_SHUFFLE_SEED).permutation(n)` of the split's n
examples (the same for every run and process), so that a file sorted by class
gives representative held-out slices and `train[:90%]`, `train[90%:]` are
disjoint and cover `train`.

API:

    source = open_dataset(name, data_dir=None, download=False)
    source.info  -> DatasetInfo(name, image_shape, num_classes, num_examples,
                                class_names, unlabelled_splits)
    source.split_size(split) -> examples in `split` (slices included)
    source.shared_examples(split_a, split_b) -> examples in both (held-out check)
    source.read(split, process_index=0, process_count=1, shuffle_seed=None)
      -> tf.data.Dataset of {"image": (H, W, C) uint8, "label": () int32},
         this process's shard of `split` (disjoint shards covering the split);
         label -1 in an unlabelled split.
    has_labels(info, split) -> whether `split` carries labels
    split_positions(split, num_examples) -> positions in the stored split
    prepare_fashion_mnist(data_dir=None, source_dir=DEBIAN_FASHION_MNIST_DIR)
    shard_bounds(num_examples, process_index, process_count) -> (start, stop)

Bad input raises `DataError` (a ValueError) with a one-line message naming the
file (and the first bad index), before any tf.data pipeline is built.
"""

from __future__ import annotations

import abc
import dataclasses
import gzip
import os
import re
from typing import Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# File names shared by the Debian package and the upstream release.
_FASHION_MNIST_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# tf.io.decode_image reads only these; anything else in an image folder is an error.
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Seed of the fixed permutation that `npz:` and `image_folder:` slices are taken
# from. Changing it changes every held-out split: never do.
SLICE_SHUFFLE_SEED = 0


class DataError(ValueError):
  """The named dataset is missing, malformed, or cannot be read."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trainer or evaluator needs to know about a dataset.

  Attributes:
    name: the dataset name as given (`cifar10`, `npz:/data/x.npz`, ...).
    image_shape: (H, W, C) of one image as stored (`open_dataset`) or as
      batched by the input pipeline (`input_pipeline.get_dataset_info`).
    num_classes: number of labels; labels are in [0, num_classes). 0 when no
      split has labels.
    num_examples: split name -> number of examples in the whole split.
    class_names: label names, `num_classes` of them.
    unlabelled_splits: the splits without labels (their examples' label is -1).
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_examples: Mapping[str, int]
  class_names: tuple[str, ...]
  unlabelled_splits: tuple[str, ...] = ()


def has_labels(info: DatasetInfo, split: str) -> bool:
  """Whether `split` (slices included: "train[:10%]") carries labels."""
  return split.split("[", 1)[0] not in info.unlabelled_splits


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


_SPLIT = re.compile(r"(?P<base>[^\[\]]+)(?:\[(?P<start>[^:\[\]]*):(?P<stop>[^:\[\]]*)\])?")
_BOUND = re.compile(r"(-?\d+)(%?)")


# One slice bound: (value, is_percent); None for an open bound.
_Bound = Optional[tuple[int, bool]]


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
    slices cannot be told apart here, e.g. a tfds expression this module does
    not parse)."""
    base_a, base_b = split_a.split("[", 1)[0], split_b.split("[", 1)[0]
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

  _SHUFFLED_SLICES = False  # slices of the stored order (tfds)

  def _check_split(self, split: str) -> None:
    base = split.split("[", 1)[0]
    if base not in self.info.num_examples:
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


class _TfdsSource(Source):
  """A prepared tensorflow-datasets dataset."""

  def __init__(self, builder: tfds.core.DatasetBuilder, name: str):
    self._builder = builder
    features = builder.info.features
    if "image" not in features or "label" not in features:
      raise DataError(
        f"tfds dataset {name!r} has no 'image' and 'label' features "
        f"(it has {sorted(features.keys())}); it is not an image "
        "classification dataset."
      )
    shape = features["image"].shape
    if None in shape:
      raise DataError(
        f"tfds dataset {name!r} stores images of varying size {shape}; "
        "only fixed-size image datasets are supported."
      )
    label = features["label"]
    self.info = DatasetInfo(
      name=name,
      image_shape=tuple(shape),
      num_classes=label.num_classes,
      num_examples={k: v.num_examples for k, v in builder.info.splits.items()},
      class_names=tuple(label.names),
    )

  def split_size(self, split):
    self._check_split(split)
    return self._builder.info.splits[split].num_examples

  def _check_split(self, split):
    super()._check_split(split)
    try:  # Validates slices such as "train[:120%]" now, not inside tf.data.
      self._builder.info.splits[split]  # pylint: disable=pointless-statement
    except (ValueError, KeyError, AssertionError) as e:
      raise DataError(f"Bad split {split!r} for {self.info.name!r}: {e}") from e

  def _read(self, split, process_index, process_count, shuffle_seed):
    shard = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count
    )
    return self._builder.as_dataset(
      split=shard,
      shuffle_files=shuffle_seed is not None,
      read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
    )


class _IndexedSource(Source):
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
    n = self.info.num_examples[split.split("[", 1)[0]]
    positions = split_positions(split, n, shuffled=self._SHUFFLED_SLICES)
    return np.arange(n) if positions is None else positions

  def _read(self, split, process_index, process_count, shuffle_seed):
    del shuffle_seed  # One in-memory index.
    base = split.split("[", 1)[0]
    positions = self._positions(split)
    start, stop = shard_bounds(len(positions), process_index, process_count)
    return self._examples(base, positions[start:stop])

  @abc.abstractmethod
  def _examples(self, split: str, positions: np.ndarray) -> tf.data.Dataset:
    """Examples at `positions` (int64 (k,)) of the stored `split`, in that order."""


def _unlabelled(n: int) -> np.ndarray:
  return np.full((n,), -1, np.int32)


class _ArraySource(_IndexedSource):
  """In-memory arrays, one pair (x, y or None) per split (the `npz:` datasets)."""

  def __init__(self, name: str, arrays: Mapping[str, tuple[np.ndarray, Optional[np.ndarray]]]):
    self._arrays = arrays
    x0 = next(iter(arrays.values()))[0]
    num_classes = int(max((y.max() for _, y in arrays.values() if y is not None), default=-1)) + 1
    self.info = DatasetInfo(
      name=name,
      image_shape=tuple(x0.shape[1:]),
      num_classes=num_classes,
      num_examples={k: len(x) for k, (x, _) in arrays.items()},
      class_names=tuple(str(i) for i in range(num_classes)),
      unlabelled_splits=tuple(k for k, (_, y) in arrays.items() if y is None),
    )

  def _examples(self, split, positions):
    x, y = self._arrays[split]
    if len(positions) and np.array_equal(
      positions, np.arange(positions[0], positions[0] + len(positions))
    ):
      positions = slice(positions[0], positions[0] + len(positions))  # A view, no copy.
    images = x[positions]
    labels = _unlabelled(len(images)) if y is None else y[positions]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})


class _ImageFolderSource(_IndexedSource):
  """Image files listed and checked up front (`_scan_image_folder`), decoded by tf."""

  def __init__(self, name: str, root: str):
    self._files, class_names, self._shape = _scan_image_folder(root)
    self.info = DatasetInfo(
      name=name,
      image_shape=self._shape,
      num_classes=len(class_names),
      num_examples={k: len(paths) for k, (paths, _) in self._files.items()},
      class_names=class_names,
      unlabelled_splits=tuple(k for k, (_, y) in self._files.items() if y is None),
    )

  def _examples(self, split, positions):
    paths, labels = self._files[split]
    paths = paths[positions]
    labels = _unlabelled(len(paths)) if labels is None else labels[positions]
    shape = self._shape

    def decode(example):
      image = tf.io.decode_image(
        tf.io.read_file(example["path"]), channels=shape[-1], expand_animations=False
      )
      return {"image": tf.ensure_shape(image, shape), "label": example["label"]}

    return tf.data.Dataset.from_tensor_slices({"path": paths, "label": labels}).map(
      decode, num_parallel_calls=tf.data.AUTOTUNE
    )


def open_dataset(
  name: str,
  *,
  data_dir: str | None = None,
  download: bool = False,
  fashion_mnist_dir: str = DEBIAN_FASHION_MNIST_DIR,
) -> Source:
  """Opens a dataset by name (see the module docstring).

  Args:
    name: tfds name, `image_folder:PATH` or `npz:PATH`.
    data_dir: tfds data directory; None is tfds's default.
    download: whether a tfds dataset missing from `data_dir` may be downloaded
      (needs network). `fashion_mnist` is prepared offline from
      `fashion_mnist_dir` first if those files exist.
    fashion_mnist_dir: where the Fashion-MNIST IDX `.gz` files are.

  Returns:
    The opened `Source`.

  Raises:
    DataError: unknown name, data missing or malformed.
  """
  kind, sep, path = name.partition(":")
  if sep and kind == "image_folder":
    return _ImageFolderSource(name, _existing_path(path, name))
  if sep and kind == "npz":
    return _ArraySource(name, _load_npz(_existing_path(path, name)))
  # tfds names may carry a config and version: "cifar10_corrupted/fog_1:1.*.*".
  base_name = name.split("/", 1)[0].split(":", 1)[0]
  if base_name not in tfds.list_builders(with_community_datasets=False):
    raise DataError(
      f"Unknown dataset {name!r}: expected a tensorflow-datasets name "
      "(cifar10, cifar100, stl10, mnist, fashion_mnist, ...), "
      "'image_folder:PATH' or 'npz:PATH'."
    )
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if base_name == "fashion_mnist" and _has_fashion_mnist_files(fashion_mnist_dir):
      prepare_fashion_mnist(data_dir, source_dir=fashion_mnist_dir)
    elif download:
      builder.download_and_prepare(file_format="tfrecord")
    else:
      raise DataError(_not_prepared_message(name, builder, fashion_mnist_dir))
    builder = tfds.builder(name, data_dir=data_dir)
  return _TfdsSource(builder, name)


def _not_prepared_message(name, builder, fashion_mnist_dir) -> str:
  msg = (
    f"Dataset {name!r} is not prepared in {os.fspath(builder.data_dir)} "
    "and downloading is off (config.data.download=False). "
  )
  if name == "fashion_mnist":
    return msg + (
      f"No Fashion-MNIST files in {fashion_mnist_dir} either. Get the data "
      "one of two ways: `apt-get install dataset-fashion-mnist` (offline "
      "copy, prepared here automatically), or a networked tfds download "
      "(config.data.download=True, or `tfds build fashion_mnist "
      "--data_dir=DATA_DIR`)."
    )
  return msg + (
    f"Prepare it on a machine with network (`tfds build {name} "
    "--data_dir=DATA_DIR`, or config.data.download=True) and copy DATA_DIR "
    "here."
  )


def _existing_path(path: str, name: str) -> str:
  path = os.path.expanduser(path)
  if not path or not os.path.exists(path):
    raise DataError(f"Dataset {name!r}: no such file or directory {path!r}.")
  return path


def _check_label_ids(present, where: str) -> None:
  """Label ids (an iterable of ints over all labelled splits) are exactly 0..C-1."""
  present = set(int(v) for v in present)
  if not present:
    return
  missing = sorted(set(range(max(present) + 1)) - present)
  if missing:
    raise DataError(
      f"{where}: label ids must be 0..C-1, each used; the labels are "
      f"{_few(sorted(present))}, so {_few(missing)} never occur (first missing: "
      f"{missing[0]}); renumber the {len(present)} classes 0..{len(present) - 1}."
    )


def _few(values, k: int = 8) -> str:
  return ", ".join(map(str, values[:k])) + (
    f", … ({len(values)} in all)" if len(values) > k else ""
  )


# --- npz ---


def _load_npz(path: str) -> dict[str, tuple[np.ndarray, Optional[np.ndarray]]]:
  """Split name -> (x (N, H, W, C) uint8, y (N,) int32 or None) from `npz:PATH`."""
  if os.path.isdir(path):
    files = {
      f[: -len(".npz")]: os.path.join(path, f)
      for f in sorted(os.listdir(path))
      if f.endswith(".npz")
    }
    if not files:
      raise DataError(
        f"npz directory {path!r} holds no .npz files (expected e.g. train.npz, test.npz)."
      )
  else:
    files = {"train": path}
  arrays = {split: _read_npz_file(f) for split, f in files.items()}
  shapes = {split: x.shape[1:] for split, (x, _) in arrays.items()}
  if len(set(shapes.values())) > 1:
    raise DataError(f"npz splits in {path!r} have different image shapes {shapes}.")
  _check_label_ids(
    np.unique(
      np.concatenate([y for _, y in arrays.values() if y is not None] or [np.zeros(0, np.int32)])
    ),
    f"npz {path!r}",
  )
  return arrays


def _first(bad: np.ndarray) -> int:
  """Index of the first image (axis 0) with a True anywhere in `bad`."""
  return int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))


def _read_npz_file(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """(x (N, H, W, C) uint8, y (N,) int32 or None) from one .npz file."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = set(npz.files)
      if "x" not in keys:
        raise DataError(
          f"npz file {path!r} lacks array(s) ['x']: it needs 'x' (N, H, W[, C]) "
          f"images and optionally 'y' (N,) labels; it has {sorted(keys)}."
        )
      x = npz["x"]
      y = npz["y"] if "y" in keys else None
  except DataError:
    raise
  except Exception as e:  # np.load raises several types for non-npz files.
    raise DataError(
      f"Cannot read {path!r} as a .npz file: "
      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
    ) from e
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise DataError(
      f"npz {path!r}: x has shape {x.shape}; expected (N, H, W), "
      "(N, H, W, 1) or (N, H, W, 3) (1 or 3 channels)."
    )
  if len(x) == 0:
    raise DataError(f"npz {path!r}: x holds no images (shape {x.shape}): the split is empty.")
  if np.issubdtype(x.dtype, np.floating):
    bad = ~np.isfinite(x)
    if bad.any():
      i = _first(bad)
      raise DataError(
        f"npz {path!r}: x[{i}] holds a non-finite value "
        f"({x[i][bad[i]].flat[0]}); pixels must be finite, in [0, 1]."
      )
    bad = (x < 0) | (x > 1)
    if bad.any():
      i = _first(bad)
      raise DataError(
        f"npz {path!r}: float x must lie in [0, 1]; x[{i}] holds "
        f"{x[i][bad[i]].flat[0]} (x spans [{x.min()}, {x.max()}]); or "
        "store uint8 in [0, 255]."
      )
    logging.info("npz %s: float x in [0, 1] is stored as uint8 round(255 x)", path)
    x = np.round(x * 255).astype(np.uint8)
  elif np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
    bad = (x < 0) | (x > 255)
    if bad.any():
      i = _first(bad)
      raise DataError(
        f"npz {path!r}: integer x must lie in [0, 255]; x[{i}] holds {x[i][bad[i]].flat[0]}."
      )
    logging.info("npz %s: x of dtype %s (values in [0, 255]) is read as uint8", path, x.dtype)
    x = x.astype(np.uint8)
  elif x.dtype != np.uint8:
    raise DataError(
      f"npz {path!r}: x has dtype {x.dtype}; expected uint8, integers "
      "in [0, 255] or float in [0, 1]."
    )
  if y is None:
    return x, None
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise DataError(
      f"npz {path!r}: y has shape {y.shape} and dtype {y.dtype}; "
      f"expected ({len(x)},) integer class ids 0..C-1 (map names or "
      "strings to ids first)."
    )
  if (y < 0).any():
    i = int(np.argmax(y < 0))
    raise DataError(f"npz {path!r}: labels y must be >= 0; y[{i}] = {y[i]}.")
  return x, y.astype(np.int32)


# --- image folder ---

_GRAY_MODES = {
  "1": None,
  "L": None,
  "I;16": "16-bit",
  "I;16B": "16-bit",
  "I;16L": "16-bit",
  "I": "16-bit",
}  # mode -> conversion (None: none)
_COLOUR_MODES = {"RGB": None, "P": "palette"}


def _walk_images(folder: str) -> list[str]:
  """Paths of the image files under `folder`, sub-folders included, sorted;
  hidden files and folders skipped, any other file a DataError."""
  paths = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if f.startswith("."):
        continue  # .DS_Store and the like
      path = os.path.join(dirpath, f)
      if not f.lower().endswith(_IMAGE_EXTENSIONS):
        raise DataError(
          f"image_folder: {path!r} is not an image file; image folders may hold "
          f"only {', '.join(_IMAGE_EXTENSIONS)} files."
        )
      paths.append(path)
  return paths


def _entries(path: str) -> tuple[list[str], bool]:
  """(visible sub-folders, sorted; whether `path` holds visible files directly)."""
  names = [n for n in sorted(os.listdir(path)) if not n.startswith(".")]
  dirs = [n for n in names if os.path.isdir(os.path.join(path, n))]
  return dirs, len(dirs) < len(names)


def _class_ids(names: set[str], root: str) -> dict[str, int]:
  """Class folder name -> id: numbers keep their value (and must be 0..C-1),
  names are numbered in sorted order."""
  if not names:
    return {}
  numbered = {n for n in names if n.isdigit()}
  if numbered and numbered != names:
    raise DataError(
      f"image_folder {root!r}: class folders mix numbers and names "
      f"({_few(sorted(numbered, key=int)[:3] + sorted(names - numbered)[:3])}); "
      "name them all by number 0..C-1 or all by name."
    )
  if numbered:
    _check_label_ids((int(n) for n in names), f"image_folder {root!r} class folders")
    return {n: int(n) for n in names}
  ids = {n: i for i, n in enumerate(sorted(names))}
  logging.info(
    "image_folder %s: classes numbered by sorted name: %s",
    root,
    _few([f"{i} {n}" for n, i in ids.items()]),
  )
  return ids


def _scan_image_folder(root: str):
  """Lists and checks the images of `image_folder:root` (layouts: module docstring).

  Reads only the image headers (PIL opens lazily), so it is cheap next to
  decoding the images.

  Returns:
    ({split: (paths (n,) str, labels (n,) int32 or None)}, class_names,
     (H, W, C)).
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(root):
    raise DataError(f"image_folder {root!r} is not a directory.")
  dirs, has_files = _entries(root)
  layout = {}  # split -> [(class name or None, image paths)]
  if has_files:
    layout["train"] = [(None, _walk_images(root))]
  for split in [] if has_files else dirs:
    split_dir = os.path.join(root, split)
    classes, split_has_files = _entries(split_dir)
    if split_has_files or not classes:
      layout[split] = [(None, _walk_images(split_dir))]
    else:
      layout[split] = [(c, _walk_images(os.path.join(split_dir, c))) for c in classes]
    for label, paths in layout[split]:
      if not paths:
        where = split_dir if label is None else os.path.join(split_dir, label)
        raise DataError(
          f"image_folder: {where!r} holds no images; expected "
          "PATH/SPLIT/LABEL/*.png (labelled), PATH/SPLIT/*.png or "
          "PATH/*.png (unlabelled)."
        )
  if not layout:
    raise DataError(
      f"image_folder {root!r} holds no images; expected "
      "PATH/SPLIT/LABEL/*.png (labelled), PATH/SPLIT/*.png or "
      "PATH/*.png (unlabelled)."
    )
  ids = _class_ids({c for groups in layout.values() for c, _ in groups if c is not None}, root)

  first_of_size: dict[tuple[int, int], str] = {}
  conversions: dict[str, list[str]] = {}  # kind -> paths converted
  gray, colour = [], []
  for groups in layout.values():
    for _, paths in groups:
      for path in paths:
        try:
          with Image.open(path) as img:
            size, mode, info = img.size, img.mode, img.info
        except (UnidentifiedImageError, OSError) as e:
          raise DataError(f"image_folder: {path!r} is not a readable image: {e}") from e
        if mode in _GRAY_MODES:
          gray.append(path)
          kind = _GRAY_MODES[mode]
        elif mode in _COLOUR_MODES and "transparency" not in info:
          colour.append(path)
          kind = _COLOUR_MODES[mode]
        else:
          bands = Image.getmodebands(mode) + ("transparency" in info)
          raise DataError(
            f"image_folder: {path!r} has {bands} channels (mode {mode}"
            f"{' with transparency' if 'transparency' in info else ''}); expected 1 "
            "(grayscale) or 3 (RGB): convert it first, e.g. PIL's "
            "Image.convert('RGB')."
          )
        if kind:
          conversions.setdefault(kind, []).append(path)
        if first_of_size and size not in first_of_size:
          (w0, h0), first = next(iter(first_of_size.items()))
          raise DataError(
            f"image_folder {root!r} mixes image sizes: {path!r} is "
            f"{size[0]}x{size[1]}, {first!r} is {w0}x{h0}; resize them to one "
            "size first."
          )
        first_of_size.setdefault(size, path)
  if colour and gray:
    conversions["grayscale"] = gray
  notes = {
    "16-bit": "16-bit images are scaled to 8 bits",
    "palette": "palette images are read as RGB",
    "grayscale": "grayscale images are read as RGB (gray in all 3 channels), "
    "as the folder holds colour images too",
  }
  for kind, paths in conversions.items():
    logging.info(
      "image_folder %s: %s: %d image(s), the first %s", root, notes[kind], len(paths), paths[0]
    )
  ((w, h),) = first_of_size
  files = {}
  for split, groups in layout.items():
    paths = np.array([p for _, ps in groups for p in ps])
    labels = (
      None
      if groups[0][0] is None
      else np.concatenate([np.full(len(ps), ids[c], np.int32) for c, ps in groups])
    )
    files[split] = (paths, labels)
  class_names = tuple(sorted(ids, key=ids.get))
  return files, class_names, (h, w, 3 if colour else 1)


# --- offline Fashion-MNIST ---


def _has_fashion_mnist_files(source_dir: str) -> bool:
  return all(
    os.path.isfile(os.path.join(source_dir, f))
    for pair in _FASHION_MNIST_FILES.values()
    for f in pair
  )


def _read_idx(path: str) -> np.ndarray:
  """An IDX array (uint8 data: images (N, H, W), labels (N,)) from a .gz file."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = data[0:2], data[2], data[3]
  if zero != b"\0\0" or dtype_code != 0x08:
    raise DataError(f"{path!r} is not an IDX file of uint8 data.")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise DataError(f"{path!r} is truncated: header says {shape}.")
  return array.reshape(shape)


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST, skip_registration=True):
  """tfds's FashionMNIST (same name, version, features, example keys) built
  from local IDX files instead of downloaded ones, so the stock
  `tfds.builder("fashion_mnist", data_dir=...)` reads the result."""

  name = "fashion_mnist"

  def __init__(self, *, source_dir: str, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return [
      tfds.core.SplitGenerator(
        name=split,
        gen_kwargs=dict(
          images=os.path.join(self._source_dir, images),
          labels=os.path.join(self._source_dir, labels),
        ),
      )
      for split, (images, labels) in _FASHION_MNIST_FILES.items()
    ]

  def _generate_examples(self, images, labels):  # pylint: disable=arguments-differ
    images, labels = _read_idx(images), _read_idx(labels)
    if len(images) != len(labels):
      raise DataError(f"{len(images)} images but {len(labels)} labels.")
    # Index keys, as upstream: the prepared order matches a networked build.
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image[..., None], "label": int(label)}


def prepare_fashion_mnist(
  data_dir: str | None = None, *, source_dir: str = DEBIAN_FASHION_MNIST_DIR
) -> None:
  """Prepares tfds `fashion_mnist` in `data_dir` from local IDX files, offline.

  Idempotent: a prepared dataset is left alone. tfds writes into a temporary
  directory and renames it when complete, so an interrupted run leaves nothing
  that a later `tfds.builder(...).is_prepared()` accepts. Writes TFRecords
  (tf.data cannot read array_record).

  Args:
    data_dir: tfds data directory; None is tfds's default.
    source_dir: folder with the four Fashion-MNIST IDX `.gz` files (the Debian
      package `dataset-fashion-mnist` installs them in the default).
  """
  if not _has_fashion_mnist_files(source_dir):
    raise DataError(
      f"No Fashion-MNIST IDX files in {source_dir!r} (expected "
      f"{[f for pair in _FASHION_MNIST_FILES.values() for f in pair]}); "
      "`apt-get install dataset-fashion-mnist` installs them."
    )
  builder = _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir)
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare(
      file_format="tfrecord",
      # try_download_gcs=False: the GCS probe would hang on an offline machine.
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  except Exception:
    # Another process may have prepared it concurrently; its rename won.
    if not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared():
      raise
