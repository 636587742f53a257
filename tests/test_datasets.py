"""Tests of uctrl_jax/datasets.py: offline Fashion-MNIST, user data, clear errors."""
import gzip
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from uctrl_jax import datasets

DEBIAN = datasets.DEBIAN_FASHION_MNIST_DIR


def _labels(ds):
  return np.concatenate([b["label"] for b in ds.batch(4096).as_numpy_iterator()])


def test_real_fashion_mnist_has_6000_train_images_per_class(
    fashion_mnist_data_dir):
  source = datasets.open_dataset("fashion_mnist", data_dir=fashion_mnist_data_dir)
  assert source.info.num_examples == {"train": 60_000, "test": 10_000}
  assert source.info.image_shape == (28, 28, 1)
  assert source.info.num_classes == 10
  assert source.info.class_names[0] == "T-shirt/top"
  np.testing.assert_array_equal(np.bincount(_labels(source.read("train"))),
                                [6000] * 10)
  first = next(source.read("test").batch(2).as_numpy_iterator())
  assert first["image"].dtype == np.uint8 and first["image"].max() > 200
  # The stock builder reads what was prepared (what `tfds.load` would use).
  stock = tfds.builder("fashion_mnist", data_dir=fashion_mnist_data_dir)
  assert stock.info.splits["test"].num_examples == 10_000


def test_prepare_is_idempotent(fashion_mnist_data_dir):
  version_dir = os.path.join(fashion_mnist_data_dir, "fashion_mnist", "3.0.1")
  before = {f: os.path.getmtime(os.path.join(version_dir, f))
            for f in os.listdir(version_dir)}
  datasets.prepare_fashion_mnist(fashion_mnist_data_dir)
  after = {f: os.path.getmtime(os.path.join(version_dir, f))
           for f in os.listdir(version_dir)}
  assert after == before


def test_failed_prepare_leaves_no_dataset_behind(tmp_path, debian_fashion_mnist):
  source_dir = tmp_path / "idx"
  shutil.copytree(DEBIAN, source_dir)
  with gzip.open(source_dir / "train-labels-idx1-ubyte.gz", "wb") as f:
    f.write(b"not an IDX file")
  data_dir = tmp_path / "tfds"
  with pytest.raises(datasets.DataError, match="not an IDX file"):
    datasets.prepare_fashion_mnist(str(data_dir), source_dir=str(source_dir))
  assert not tfds.builder("fashion_mnist", data_dir=str(data_dir)).is_prepared()
  leftovers = list((data_dir / "fashion_mnist").glob("*")) if (
      data_dir / "fashion_mnist").exists() else []
  assert leftovers == []


def test_fashion_mnist_without_files_or_network_names_both_ways(
    tmp_path, no_network):
  with pytest.raises(datasets.DataError) as e:
    datasets.open_dataset("fashion_mnist", data_dir=str(tmp_path),
                          fashion_mnist_dir=str(tmp_path / "none"))
  assert "apt-get install dataset-fashion-mnist" in str(e.value)
  assert "download" in str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "mnist:3.*.*"])
def test_unprepared_tfds_dataset_fails_at_once(tmp_path, no_network, name):
  message = re.escape(f"'{name}' is not prepared") + ".*tfds build"
  with pytest.raises(datasets.DataError, match=message):
    datasets.open_dataset(name, data_dir=str(tmp_path))


def test_unknown_name():
  with pytest.raises(datasets.DataError, match="Unknown dataset 'cifar11'"):
    datasets.open_dataset("cifar11")


@pytest.mark.parametrize("n,k", [(10, 1), (10, 3), (7, 4), (3, 5), (60_000, 8)])
def test_shard_bounds_are_disjoint_and_cover(n, k):
  bounds = [datasets.shard_bounds(n, i, k) for i in range(k)]
  assert bounds[0][0] == 0 and bounds[-1][1] == n
  for (_, stop), (start, _) in zip(bounds, bounds[1:]):
    assert stop == start
  sizes = [stop - start for start, stop in bounds]
  assert max(sizes) - min(sizes) <= 1


# --- image_folder ---


def _write_png(path, size=(6, 8), value=0, mode="RGB"):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(
      path)


def _image_folder(root, size=(6, 8)):
  """root/{train,test}/{cat,dog}/*.png; pixel red value encodes the file."""
  for split, n in (("train", 3), ("test", 2)):
    for label in ("cat", "dog"):
      for i in range(n):
        _write_png(root / split / label / f"{i}.png", size,
                   value=10 * i + (100 if label == "dog" else 0))
  return root


def test_image_folder_reads_images_and_labels(tmp_path):
  root = _image_folder(tmp_path / "imgs")
  source = datasets.open_dataset(f"image_folder:{root}")
  info = source.info
  assert info.image_shape == (8, 6, 3)  # PIL sizes are (W, H).
  assert info.num_classes == 2 and info.class_names == ("cat", "dog")
  assert info.num_examples == {"train": 6, "test": 4}
  examples = list(source.read("train").as_numpy_iterator())
  pairs = sorted((int(ex["image"][0, 0, 0]), int(ex["label"])) for ex in examples)
  assert pairs == [(0, 0), (10, 0), (20, 0), (100, 1), (110, 1), (120, 1)]
  # Two shards: disjoint, together the split.
  shards = [sorted(int(ex["image"][0, 0, 0]) for ex in source.read(
      "train", process_index=i, process_count=2).as_numpy_iterator())
            for i in range(2)]
  assert sorted(shards[0] + shards[1]) == [p for p, _ in pairs]
  assert len(shards[0]) == len(shards[1]) == 3


def test_image_folder_grayscale_has_one_channel(tmp_path):
  _write_png(tmp_path / "g" / "train" / "a" / "0.png", mode="L", value=77)
  source = datasets.open_dataset(f"image_folder:{tmp_path / 'g'}")
  assert source.info.image_shape == (8, 6, 1)
  ex = next(source.read("train").as_numpy_iterator())
  assert ex["image"].shape == (8, 6, 1) and ex["image"][0, 0, 0] == 77


def test_image_folder_missing(tmp_path):
  with pytest.raises(datasets.DataError, match="no such file or directory"):
    datasets.open_dataset(f"image_folder:{tmp_path / 'absent'}")


def test_image_folder_empty(tmp_path):
  (tmp_path / "train" / "a").mkdir(parents=True)
  with pytest.raises(datasets.DataError, match="holds no images"):
    datasets.open_dataset(f"image_folder:{tmp_path}")


def test_image_folder_mixed_sizes(tmp_path):
  root = _image_folder(tmp_path / "imgs")
  _write_png(root / "test" / "cat" / "big.png", size=(9, 9))
  with pytest.raises(datasets.DataError, match="mixes image sizes.*9x9"):
    datasets.open_dataset(f"image_folder:{root}")


def test_image_folder_non_image_file(tmp_path):
  root = _image_folder(tmp_path / "imgs")
  (root / "train" / "cat" / "notes.txt").write_text("hello")
  with pytest.raises(datasets.DataError, match="notes.txt.*not an image file"):
    datasets.open_dataset(f"image_folder:{root}")


def test_image_folder_corrupt_image(tmp_path):
  root = _image_folder(tmp_path / "imgs")
  (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
  with pytest.raises(datasets.DataError, match="broken.png.*not a readable"):
    datasets.open_dataset(f"image_folder:{root}")


# --- npz ---


def test_npz_file_and_directory(tmp_path):
  x = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
  y = np.array([0, 1, 2, 1, 0])
  np.savez(tmp_path / "train.npz", x=x, y=y)
  np.savez(tmp_path / "test.npz", x=x[:2], y=y[:2])
  single = datasets.open_dataset(f"npz:{tmp_path / 'train.npz'}")
  assert single.info.num_examples == {"train": 5}
  assert single.info.image_shape == (4, 3, 1) and single.info.num_classes == 3
  examples = list(single.read("train").as_numpy_iterator())
  np.testing.assert_array_equal(np.stack([e["image"][..., 0] for e in examples]),
                                x)
  np.testing.assert_array_equal([e["label"] for e in examples], y)
  both = datasets.open_dataset(f"npz:{tmp_path}")
  assert both.info.num_examples == {"test": 2, "train": 5}
  with pytest.raises(datasets.DataError, match="no split 'valid'"):
    both.read("valid")


def test_npz_float_images_are_scaled(tmp_path):
  np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4, 3), 0.5, np.float32),
           y=np.array([0, 1]))
  ex = next(datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}").read(
      "train").as_numpy_iterator())
  assert ex["image"].dtype == np.uint8 and ex["image"][0, 0, 0] == 128


@pytest.mark.parametrize("arrays,match", [
    (dict(y=np.zeros(3, int)), r"lacks array\(s\) \['x'\]"),
    (dict(x=np.zeros((3, 4, 4), np.uint8)), r"lacks array\(s\) \['y'\]"),
    (dict(x=np.zeros((3, 4, 4, 2), np.uint8), y=np.zeros(3, int)), "x has shape"),
    (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(2, int)), "y has shape"),
    (dict(x=np.full((3, 4, 4), 7.0), y=np.zeros(3, int)), r"\[0, 1\]"),
])
def test_npz_bad_arrays(tmp_path, arrays, match):
  np.savez(tmp_path / "d.npz", **arrays)
  with pytest.raises(datasets.DataError, match=match):
    datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_not_an_npz_file(tmp_path):
  (tmp_path / "d.npz").write_text("hello")
  with pytest.raises(datasets.DataError, match="Cannot read"):
    datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_missing(tmp_path):
  with pytest.raises(datasets.DataError, match="no such file"):
    datasets.open_dataset(f"npz:{tmp_path / 'absent.npz'}")
