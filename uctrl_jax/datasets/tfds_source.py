"""tensorflow-datasets sources: a prepared tfds dataset by name, never downloaded unless
asked, `fashion_mnist` prepared offline first (`fashion_mnist_offline`).

`cifar10`, `cifar100`, `stl10`, `mnist`, `fashion_mnist` (any other registered
tfds dataset with `image` and `label` features works too). The data must be
prepared in `data_dir` (None: tfds's default, ~/tensorflow_datasets). Nothing is
downloaded unless `download=True`, so an offline machine fails at once instead of
retrying DNS for minutes. Splits are tfds's own split expressions (`train[:50%]+test`,
...); slices are taken in the stored order. Datasets whose images vary in size
(`tf_flowers`, ...) have image_shape (None, None, C): the input pipeline resizes them.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from uctrl_jax.datasets import fashion_mnist_offline
from uctrl_jax.datasets.errors import DataError
from uctrl_jax.datasets.source import DatasetInfo, Source


class TfdsSource(Source):
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
    if shape[-1] is None:
      raise DataError(
        f"tfds dataset {name!r} stores images of shape {shape}, with no fixed channel "
        "count; only datasets of 1 or 3 channels are supported."
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


def _builder_name(name: str) -> str:
  """The registered builder of `name`, which may carry a config and version:
  "cifar10_corrupted/fog_1:1.*.*" -> "cifar10_corrupted"."""
  return name.split("/", 1)[0].split(":", 1)[0]


def is_tfds_name(name: str) -> bool:
  """Whether `name` names a registered tensorflow-datasets builder."""
  return _builder_name(name) in tfds.list_builders(with_community_datasets=False)


def open_tfds(
  name: str, *, data_dir: str | None, download: bool, fashion_mnist_dir: str
) -> TfdsSource:
  """The tfds dataset `name` (`is_tfds_name`), prepared in `data_dir` if it is not yet:
  `fashion_mnist` from `fashion_mnist_dir`'s files if they exist, others by a download
  if `download` (a DataError otherwise)."""
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if _builder_name(name) == "fashion_mnist" and fashion_mnist_offline.has_fashion_mnist_files(
      fashion_mnist_dir
    ):
      fashion_mnist_offline.prepare_fashion_mnist(data_dir, source_dir=fashion_mnist_dir)
    elif download:
      builder.download_and_prepare(file_format="tfrecord")
    else:
      raise DataError(_not_prepared_message(name, builder, fashion_mnist_dir))
    builder = tfds.builder(name, data_dir=data_dir)
  return TfdsSource(builder, name)


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
