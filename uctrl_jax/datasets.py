"""Image-classification datasets by name, read as per-process shards.

Names (`config.data.name`):

- a tensorflow-datasets name: `cifar10`, `cifar100`, `stl10`, `mnist`,
  `fashion_mnist` (any other registered tfds dataset with `image` and `label`
  features works too). The data must be prepared in `data_dir` (None: tfds's
  default, ~/tensorflow_datasets). Nothing is downloaded unless `download=True`,
  so an offline machine fails at once instead of retrying DNS for minutes.
  `fashion_mnist` is prepared from the Debian package `dataset-fashion-mnist`
  (SPEC §5) when it is installed: see `prepare_fashion_mnist`.
- `image_folder:PATH`: `PATH/SPLIT/LABEL/*.{png,jpg,jpeg}`, read through
  `tfds.folder_dataset.ImageFolder`. Every image must have the same size.
- `npz:PATH`: a `.npz` file with arrays `x` (N, H, W[, C]) and `y` (N,) is the
  split `train`; a directory of such files holds one split per file
  (`train.npz`, `test.npz`, ...).

API:

    source = open_dataset(name, data_dir=None, download=False)
    source.info  -> DatasetInfo(name, image_shape, num_classes, num_examples,
                                class_names)
    source.split_size(split) -> examples in `split` (slices like "train[:10%]"
                                for tfds sources)
    source.read(split, process_index=0, process_count=1, shuffle_seed=None)
      -> tf.data.Dataset of {"image": (H, W, C) uint8, "label": () int32},
         this process's shard of `split` (disjoint shards covering the split).
    prepare_fashion_mnist(data_dir=None, source_dir=DEBIAN_FASHION_MNIST_DIR)
    shard_bounds(num_examples, process_index, process_count) -> (start, stop)

Bad input raises `DataError` (a ValueError) naming the problem, before any
tf.data pipeline is built.
"""
from __future__ import annotations

import abc
import dataclasses
import gzip
import os
from typing import Mapping

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# File names shared by the Debian package and the upstream release.
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# ImageFolder decodes only these; anything else in a class folder is an error.
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
  """The named dataset is missing, malformed, or cannot be read."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a trainer or evaluator needs to know about a dataset.

  Attributes:
    name: the dataset name as given (`cifar10`, `npz:/data/x.npz`, ...).
    image_shape: (H, W, C) of one image as stored (`open_dataset`) or as
      batched by the input pipeline (`input_pipeline.get_dataset_info`).
    num_classes: number of labels; labels are in [0, num_classes).
    num_examples: split name -> number of examples in the whole split.
    class_names: label names, `num_classes` of them.
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_examples: Mapping[str, int]
  class_names: tuple[str, ...]


def shard_bounds(num_examples: int, process_index: int,
                 process_count: int) -> tuple[int, int]:
  """[start, stop) of process `process_index`'s contiguous shard.

  Shards are disjoint, cover [0, num_examples) and differ in size by at most
  one, like `tfds.even_splits(..., drop_remainder=False)`.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index {process_index} not in [0, {process_count}).")
  start = num_examples * process_index // process_count
  stop = num_examples * (process_index + 1) // process_count
  return start, stop


class Source(abc.ABC):
  """A dataset opened by name: its `info` and per-process shards of a split."""

  info: DatasetInfo

  def read(self, split: str, *, process_index: int = 0, process_count: int = 1,
           shuffle_seed: int | None = None) -> tf.data.Dataset:
    """This process's shard of `split`, decoded, in a fixed order.

    Args:
      split: a split of `info.num_examples` (tfds sources also accept slices
        such as "train[:10%]").
      process_index: which shard.
      process_count: number of shards.
      shuffle_seed: if set, sources stored in several files may read them in
        an order drawn from this seed (the example order is not shuffled).

    Returns:
      Examples {"image": (H, W, C) uint8, "label": () int32}.
    """
    self._check_split(split)
    shard_bounds(0, process_index, process_count)  # Validates the indices.
    ds = self._read(split, process_index, process_count, shuffle_seed)
    return ds.map(_image_and_label)

  def split_size(self, split: str) -> int:
    """Number of examples in the whole `split` (all processes together)."""
    self._check_split(split)
    return self.info.num_examples[split]

  def _check_split(self, split: str) -> None:
    base = split.split("[", 1)[0]
    if base not in self.info.num_examples:
      raise DataError(
          f"Dataset {self.info.name!r} has no split {split!r}; its splits are "
          f"{sorted(self.info.num_examples)}.")

  @abc.abstractmethod
  def _read(self, split, process_index, process_count, shuffle_seed):
    """Examples {"image": uint8, "label": integer} of the shard."""


def _image_and_label(example):
  """Drops other features (tfds ids, file names); labels as int32."""
  return {"image": example["image"],
          "label": tf.cast(example["label"], tf.int32)}


class _TfdsSource(Source):
  """A prepared tensorflow-datasets dataset."""

  def __init__(self, builder: tfds.core.DatasetBuilder, name: str):
    self._builder = builder
    features = builder.info.features
    if "image" not in features or "label" not in features:
      raise DataError(
          f"tfds dataset {name!r} has no 'image' and 'label' features "
          f"(it has {sorted(features.keys())}); it is not an image "
          "classification dataset.")
    shape = features["image"].shape
    if None in shape:
      raise DataError(
          f"tfds dataset {name!r} stores images of varying size {shape}; "
          "only fixed-size image datasets are supported.")
    label = features["label"]
    self.info = DatasetInfo(
        name=name, image_shape=tuple(shape), num_classes=label.num_classes,
        num_examples={k: v.num_examples for k, v in builder.info.splits.items()},
        class_names=tuple(label.names))

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
        split, process_index=process_index, process_count=process_count)
    return self._builder.as_dataset(
        split=shard, shuffle_files=shuffle_seed is not None,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed))


class _ArraySource(Source):
  """In-memory arrays, one pair (x, y) per split (the `npz:` datasets)."""

  def __init__(self, name: str, arrays: Mapping[str, tuple[np.ndarray, np.ndarray]]):
    self._arrays = arrays
    x0 = next(iter(arrays.values()))[0]
    num_classes = int(max(y.max(initial=-1) for _, y in arrays.values())) + 1
    self.info = DatasetInfo(
        name=name, image_shape=tuple(x0.shape[1:]), num_classes=num_classes,
        num_examples={k: len(x) for k, (x, _) in arrays.items()},
        class_names=tuple(str(i) for i in range(num_classes)))

  def _read(self, split, process_index, process_count, shuffle_seed):
    del shuffle_seed  # One in-memory "file".
    x, y = self._arrays[split]
    start, stop = shard_bounds(len(x), process_index, process_count)
    return tf.data.Dataset.from_tensor_slices(
        {"image": x[start:stop], "label": y[start:stop]})


class _ImageFolderSource(Source):
  """`tfds.folder_dataset.ImageFolder`, checked up front."""

  def __init__(self, name: str, root: str):
    shape = _check_image_folder(root)
    self._builder = tfds.folder_dataset.ImageFolder(root, shape=shape)
    label = self._builder.info.features["label"]
    self.info = DatasetInfo(
        name=name, image_shape=shape, num_classes=label.num_classes,
        num_examples={k: v.num_examples
                      for k, v in self._builder.info.splits.items()},
        class_names=tuple(label.names))

  def _read(self, split, process_index, process_count, shuffle_seed):
    del shuffle_seed  # ImageFolder's own file shuffle is unseeded: never use it.
    # ImageFolder has no sub-split API: shard its (fixed) file order, and
    # decode only this shard's images.
    ds = self._builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()})
    start, stop = shard_bounds(self.info.num_examples[split], process_index,
                               process_count)
    image_feature = self._builder.info.features["image"]

    def decode(example):
      return {**example, "image": image_feature.decode_example(example["image"])}

    return ds.skip(start).take(stop - start).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE)


def open_dataset(name: str, *, data_dir: str | None = None,
                 download: bool = False,
                 fashion_mnist_dir: str = DEBIAN_FASHION_MNIST_DIR) -> Source:
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
        "'image_folder:PATH' or 'npz:PATH'.")
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if base_name == "fashion_mnist" and _has_fashion_mnist_files(
        fashion_mnist_dir):
      prepare_fashion_mnist(data_dir, source_dir=fashion_mnist_dir)
    elif download:
      builder.download_and_prepare(file_format="tfrecord")
    else:
      raise DataError(_not_prepared_message(name, builder, fashion_mnist_dir))
    builder = tfds.builder(name, data_dir=data_dir)
  return _TfdsSource(builder, name)


def _not_prepared_message(name, builder, fashion_mnist_dir) -> str:
  msg = (f"Dataset {name!r} is not prepared in {os.fspath(builder.data_dir)} "
         "and downloading is off (config.data.download=False). ")
  if name == "fashion_mnist":
    return msg + (
        f"No Fashion-MNIST files in {fashion_mnist_dir} either. Get the data "
        "one of two ways: `apt-get install dataset-fashion-mnist` (offline "
        "copy, prepared here automatically), or a networked tfds download "
        "(config.data.download=True, or `tfds build fashion_mnist "
        "--data_dir=DATA_DIR`).")
  return msg + (
      f"Prepare it on a machine with network (`tfds build {name} "
      "--data_dir=DATA_DIR`, or config.data.download=True) and copy DATA_DIR "
      "here.")


def _existing_path(path: str, name: str) -> str:
  path = os.path.expanduser(path)
  if not path or not os.path.exists(path):
    raise DataError(f"Dataset {name!r}: no such file or directory {path!r}.")
  return path


# --- npz ---


def _load_npz(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Split name -> (x (N, H, W, C) uint8, y (N,) int32) from `npz:PATH`."""
  if os.path.isdir(path):
    files = {f[:-len(".npz")]: os.path.join(path, f)
             for f in sorted(os.listdir(path)) if f.endswith(".npz")}
    if not files:
      raise DataError(f"npz directory {path!r} holds no .npz files "
                      "(expected e.g. train.npz, test.npz).")
  else:
    files = {"train": path}
  arrays = {split: _read_npz_file(f) for split, f in files.items()}
  shapes = {split: x.shape[1:] for split, (x, _) in arrays.items()}
  if len(set(shapes.values())) > 1:
    raise DataError(f"npz splits in {path!r} have different image shapes "
                    f"{shapes}.")
  return arrays


def _read_npz_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(x (N, H, W, C) uint8, y (N,) int32) from one .npz file."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = set(npz.files)
      missing = {"x", "y"} - keys
      if missing:
        raise DataError(
            f"npz file {path!r} lacks array(s) {sorted(missing)}: it needs "
            f"'x' (N, H, W[, C]) images and 'y' (N,) labels; it has "
            f"{sorted(keys)}.")
      x, y = npz["x"], npz["y"]
  except DataError:
    raise
  except Exception as e:  # np.load raises several types for non-npz files.
    raise DataError(f"Cannot read {path!r} as a .npz file: {e}") from e
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
    raise DataError(f"npz {path!r}: x has shape {x.shape}; expected "
                    "(N, H, W), (N, H, W, 1) or (N, H, W, 3) with N > 0.")
  if np.issubdtype(x.dtype, np.floating):
    if x.min() < 0 or x.max() > 1:
      raise DataError(f"npz {path!r}: float x must lie in [0, 1] (it spans "
                      f"[{x.min()}, {x.max()}]); or store uint8 in [0, 255].")
    x = np.round(x * 255).astype(np.uint8)
  elif x.dtype != np.uint8:
    raise DataError(f"npz {path!r}: x has dtype {x.dtype}; expected uint8 or "
                    "float in [0, 1].")
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise DataError(f"npz {path!r}: y has shape {y.shape} and dtype {y.dtype}; "
                    f"expected ({len(x)},) integers.")
  if y.min() < 0:
    raise DataError(f"npz {path!r}: labels y must be >= 0.")
  return x, y.astype(np.int32)


# --- image folder ---


def _check_image_folder(root: str) -> tuple[int, int, int]:
  """(H, W, C) shared by all images of `root/SPLIT/LABEL/`, or DataError.

  Reads only the image headers (PIL opens lazily), so it is cheap next to
  decoding the images.
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(root):
    raise DataError(f"image_folder {root!r} is not a directory.")
  sizes: dict[tuple[int, int], str] = {}
  colour = False
  for split in _subdirs(root):
    for label in _subdirs(os.path.join(root, split)):
      label_dir = os.path.join(root, split, label)
      for f in sorted(os.listdir(label_dir)):
        path = os.path.join(label_dir, f)
        if f.startswith(".") or os.path.isdir(path):
          continue  # Hidden files (.DS_Store) and nested folders are ignored.
        if not f.lower().endswith(_IMAGE_EXTENSIONS):
          raise DataError(
              f"image_folder: {path!r} is not an image file; class folders "
              f"may hold only {', '.join(_IMAGE_EXTENSIONS)} files.")
        try:
          with Image.open(path) as img:
            size, mode = img.size, img.mode
        except (UnidentifiedImageError, OSError) as e:
          raise DataError(
              f"image_folder: {path!r} is not a readable image: {e}") from e
        sizes.setdefault(size, path)
        colour |= mode not in ("1", "L", "I", "I;16", "F")
  if not sizes:
    raise DataError(f"image_folder {root!r} holds no images; expected "
                    "PATH/SPLIT/LABEL/IMAGE.png (e.g. PATH/train/cat/1.png).")
  if len(sizes) > 1:
    examples = ", ".join(f"{w}x{h} ({p})" for (w, h), p in
                         list(sizes.items())[:3])
    raise DataError(
        f"image_folder {root!r} mixes image sizes: {examples}; resize them to "
        "one size first.")
  (w, h), = sizes
  return (h, w, 3 if colour else 1)


def _subdirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path)
                if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


# --- offline Fashion-MNIST ---


def _has_fashion_mnist_files(source_dir: str) -> bool:
  return all(os.path.isfile(os.path.join(source_dir, f))
             for pair in _FASHION_MNIST_FILES.values() for f in pair)


def _read_idx(path: str) -> np.ndarray:
  """An IDX array (uint8 data: images (N, H, W), labels (N,)) from a .gz file."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  zero, dtype_code, ndim = data[0:2], data[2], data[3]
  if zero != b"\0\0" or dtype_code != 0x08:
    raise DataError(f"{path!r} is not an IDX file of uint8 data.")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise DataError(f"{path!r} is truncated: header says {shape}.")
  return array.reshape(shape)


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST,
                         skip_registration=True):
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
            gen_kwargs=dict(images=os.path.join(self._source_dir, images),
                            labels=os.path.join(self._source_dir, labels)))
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
    data_dir: str | None = None, *,
    source_dir: str = DEBIAN_FASHION_MNIST_DIR) -> None:
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
        "`apt-get install dataset-fashion-mnist` installs them.")
  builder = _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir)
  if builder.is_prepared():
    return
  try:
    builder.download_and_prepare(
        file_format="tfrecord",
        # try_download_gcs=False: the GCS probe would hang on an offline machine.
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception:
    # Another process may have prepared it concurrently; its rename won.
    if not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared():
      raise
