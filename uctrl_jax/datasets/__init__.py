"""Image datasets by name, read as per-process shards; labels are optional.

Names (`config.data.name`), one module per kind of source:

- a tensorflow-datasets name: `cifar10`, `cifar100`, `stl10`, `mnist`,
  `fashion_mnist`, ... (`tfds_source`); nothing is downloaded unless
  `download=True`. `fashion_mnist` is prepared from the Debian package
  `dataset-fashion-mnist` when it is installed (`fashion_mnist_offline`).
- `image_folder:PATH`: `.png`/`.jpg`/`.jpeg` files of any size and mode,
  `PATH/SPLIT/LABEL/*.png` labelled, `PATH/*.png` or `PATH/SPLIT/*.png` unlabelled
  (`image_folder`: its docstring states the mode and channel rules).
- `npz:PATH`: a `.npz` file of images `x` and optional labels `y`, or a directory
  of them, one split per file (`npz`).

Splits are NAME or NAME[START:STOP] as in tfds (`train[:90%]`, `train[100:200]`);
`npz:` and `image_folder:` slices are taken from a fixed shuffle (`splits`).
`source` holds the interface below; `errors` the exception.

API:

    source = open_dataset(name, data_dir=None, download=False)
    source.info  -> DatasetInfo(name, image_shape, num_classes, num_examples,
                                class_names, unlabelled_splits, size_counts, notes)
                    (image_shape (None, None, C) where images differ in size)
    source.split_size(split) -> examples in `split` (slices included)
    source.example_paths(split) -> each example's file, in reading order (image
                                   folders; None for other sources)
    source.shared_examples(split_a, split_b) -> examples in both (held-out check)
    source.read(split, process_index=0, process_count=1, shuffle_seed=None)
      -> tf.data.Dataset of {"image": (H, W, C) uint8, "label": () int32},
         this process's shard of `split` (disjoint shards covering the split);
         label -1 in an unlabelled split.
    has_labels(info, split) -> whether `split` carries labels
    parse_split(split) -> (NAME, None or (START, STOP)); split_name(split) -> NAME
    split_positions(split, num_examples) -> positions in the stored split
    prepare_fashion_mnist(data_dir=None, source_dir=DEBIAN_FASHION_MNIST_DIR)
    shard_bounds(num_examples, process_index, process_count) -> (start, stop)

Bad input raises `DataError` (a ValueError) with a one-line message naming the
file (and the first bad index), before any tf.data pipeline is built.
"""

from __future__ import annotations

import os

from uctrl_jax.datasets import image_folder, npz, tfds_source
from uctrl_jax.datasets.errors import DataError
from uctrl_jax.datasets.fashion_mnist_offline import (
  DEBIAN_FASHION_MNIST_DIR,
  prepare_fashion_mnist,
)
from uctrl_jax.datasets.source import DatasetInfo, Source, has_labels
from uctrl_jax.datasets.splits import (
  SLICE_SHUFFLE_SEED,
  parse_split,
  shard_bounds,
  split_name,
  split_positions,
)

__all__ = [
  "DEBIAN_FASHION_MNIST_DIR",
  "SLICE_SHUFFLE_SEED",
  "DataError",
  "DatasetInfo",
  "Source",
  "has_labels",
  "open_dataset",
  "parse_split",
  "prepare_fashion_mnist",
  "shard_bounds",
  "split_name",
  "split_positions",
]


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
    return image_folder.ImageFolderSource(name, _existing_path(path, name))
  if sep and kind == "npz":
    return npz.NpzSource(name, npz.load_npz(_existing_path(path, name)))
  if not tfds_source.is_tfds_name(name):
    raise DataError(
      f"Unknown dataset {name!r}: expected a tensorflow-datasets name "
      "(cifar10, cifar100, stl10, mnist, fashion_mnist, ...), "
      "'image_folder:PATH' or 'npz:PATH'."
    )
  return tfds_source.open_tfds(
    name, data_dir=data_dir, download=download, fashion_mnist_dir=fashion_mnist_dir
  )


def _existing_path(path: str, name: str) -> str:
  """`path` (of the dataset `name`), `~` expanded, if it exists; a DataError otherwise."""
  path = os.path.expanduser(path)
  if not path or not os.path.exists(path):
    raise DataError(f"Dataset {name!r}: no such file or directory {path!r}.")
  return path
