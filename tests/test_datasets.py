"""Tests of uctrl_jax/datasets/: offline Fashion-MNIST, user data, clear errors."""

import gzip
import logging
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


def test_real_fashion_mnist_has_6000_train_images_per_class(fashion_mnist_data_dir):
  source = datasets.open_dataset("fashion_mnist", data_dir=fashion_mnist_data_dir)
  assert source.info.num_examples == {"train": 60_000, "test": 10_000}
  assert source.info.image_shape == (28, 28, 1)
  assert source.info.num_classes == 10
  assert source.info.class_names[0] == "T-shirt/top"
  np.testing.assert_array_equal(np.bincount(_labels(source.read("train"))), [6000] * 10)
  first = next(source.read("test").batch(2).as_numpy_iterator())
  assert first["image"].dtype == np.uint8 and first["image"].max() > 200
  # The stock builder reads what was prepared (what `tfds.load` would use).
  stock = tfds.builder("fashion_mnist", data_dir=fashion_mnist_data_dir)
  assert stock.info.splits["test"].num_examples == 10_000


def test_prepare_is_idempotent(fashion_mnist_data_dir):
  version_dir = os.path.join(fashion_mnist_data_dir, "fashion_mnist", "3.0.1")
  before = {f: os.path.getmtime(os.path.join(version_dir, f)) for f in os.listdir(version_dir)}
  datasets.prepare_fashion_mnist(fashion_mnist_data_dir)
  after = {f: os.path.getmtime(os.path.join(version_dir, f)) for f in os.listdir(version_dir)}
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
  leftovers = (
    list((data_dir / "fashion_mnist").glob("*")) if (data_dir / "fashion_mnist").exists() else []
  )
  assert leftovers == []


def test_fashion_mnist_without_files_or_network_names_both_ways(tmp_path, no_network):
  with pytest.raises(datasets.DataError) as e:
    datasets.open_dataset(
      "fashion_mnist", data_dir=str(tmp_path), fashion_mnist_dir=str(tmp_path / "none")
    )
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
  Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


def _image_folder(root, size=(6, 8)):
  """root/{train,test}/{cat,dog}/*.png; pixel red value encodes the file."""
  for split, n in (("train", 3), ("test", 2)):
    for label in ("cat", "dog"):
      for i in range(n):
        _write_png(
          root / split / label / f"{i}.png", size, value=10 * i + (100 if label == "dog" else 0)
        )
  return root


def test_image_folder_reads_images_and_labels(tmp_path, caplog):
  root = _image_folder(tmp_path / "imgs")
  with caplog.at_level(logging.INFO, logger="absl"):
    source = datasets.open_dataset(f"image_folder:{root}")
  # Named class folders get ids by a documented rule (sorted names), logged once.
  notes = [r.getMessage() for r in caplog.records if "classes numbered" in r.getMessage()]
  assert notes == [f"image_folder {root}: classes numbered by sorted name: 0 cat, 1 dog"]
  info = source.info
  assert info.image_shape == (8, 6, 3)  # PIL sizes are (W, H).
  assert info.num_classes == 2 and info.class_names == ("cat", "dog")
  assert info.num_examples == {"train": 6, "test": 4}
  examples = list(source.read("train").as_numpy_iterator())
  pairs = sorted((int(ex["image"][0, 0, 0]), int(ex["label"])) for ex in examples)
  assert pairs == [(0, 0), (10, 0), (20, 0), (100, 1), (110, 1), (120, 1)]
  # Two shards: disjoint, together the split.
  shards = [
    sorted(
      int(ex["image"][0, 0, 0])
      for ex in source.read("train", process_index=i, process_count=2).as_numpy_iterator()
    )
    for i in range(2)
  ]
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


def test_image_folder_mixed_sizes_are_read_as_stored(tmp_path):
  # The input pipeline resizes each to config.data.image_size (test_own_images.py).
  root = _image_folder(tmp_path / "imgs")
  _write_png(root / "test" / "cat" / "big.png", size=(9, 10))
  source = datasets.open_dataset(f"image_folder:{root}")
  assert source.info.image_shape == (None, None, 3)
  assert source.info.size_counts == {(8, 6): 10, (10, 9): 1}  # (H, W)
  shapes = sorted(e["image"].shape for e in _read_all(source, "test"))
  assert shapes == [(8, 6, 3)] * 4 + [(10, 9, 3)]


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
  np.testing.assert_array_equal(np.stack([e["image"][..., 0] for e in examples]), x)
  np.testing.assert_array_equal([e["label"] for e in examples], y)
  both = datasets.open_dataset(f"npz:{tmp_path}")
  assert both.info.num_examples == {"test": 2, "train": 5}
  with pytest.raises(datasets.DataError, match="no split 'valid'"):
    both.read("valid")


def test_npz_float_images_are_scaled(tmp_path):
  np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4, 3), 0.5, np.float32), y=np.array([0, 1]))
  ex = next(datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}").read("train").as_numpy_iterator())
  assert ex["image"].dtype == np.uint8 and ex["image"][0, 0, 0] == 128


@pytest.mark.parametrize(
  "arrays,match",
  [
    (dict(y=np.zeros(3, int)), r"lacks array\(s\) \['x'\]"),
    (dict(x=np.zeros((3, 4, 4, 2), np.uint8), y=np.zeros(3, int)), "x has shape"),
    (dict(x=np.zeros((3, 4, 4), np.uint8), y=np.zeros(2, int)), "y has shape"),
    (dict(x=np.full((3, 4, 4), 7.0), y=np.zeros(3, int)), r"\[0, 1\]"),
  ],
)
def test_npz_bad_arrays(tmp_path, arrays, match):
  np.savez(tmp_path / "d.npz", **arrays)
  with pytest.raises(datasets.DataError, match=match) as e:
    datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}")
  assert str(tmp_path / "d.npz") in str(e.value) and "\n" not in str(e.value)


def test_npz_not_an_npz_file(tmp_path):
  (tmp_path / "d.npz").write_text("hello")
  with pytest.raises(datasets.DataError, match="Cannot read"):
    datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_npz_missing(tmp_path):
  with pytest.raises(datasets.DataError, match="no such file"):
    datasets.open_dataset(f"npz:{tmp_path / 'absent.npz'}")


# --- unlabelled data (issue 17) ---


def _read_all(source, split, **kwargs):
  return list(source.read(split, **kwargs).as_numpy_iterator())


def test_npz_without_labels_is_an_unlabelled_split(tmp_path):
  x = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
  np.savez(tmp_path / "d.npz", x=x)
  source = datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}")
  info = source.info
  assert info.unlabelled_splits == ("train",) and info.num_classes == 0
  assert not datasets.has_labels(info, "train") and not datasets.has_labels(info, "train[:50%]")
  examples = _read_all(source, "train")
  np.testing.assert_array_equal(np.stack([e["image"][..., 0] for e in examples]), x)
  assert [int(e["label"]) for e in examples] == [-1] * 6


def test_npz_directory_with_labels_for_the_test_split_only(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (8, 4, 4), dtype=np.uint8))
  np.savez(
    tmp_path / "test.npz",
    x=rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
    y=np.array([0, 2, 1, 2]),
  )
  info = datasets.open_dataset(f"npz:{tmp_path}").info
  assert info.unlabelled_splits == ("train",) and info.num_classes == 3
  assert datasets.has_labels(info, "test") and not datasets.has_labels(info, "train")


def _write_tree(root, files, size=(6, 8)):
  """PNG files at `root/<relative path>`, the red value of each from its position."""
  for i, rel in enumerate(files):
    _write_png(root / rel, size, value=10 * i)
  return root


def test_image_folder_of_images_directly_is_one_unlabelled_train_split(tmp_path):
  # Nested folders under an image-holding folder carry no class meaning: all read.
  root = _write_tree(tmp_path / "imgs", ["a.png", "b.png", "more/c.png", "more/deeper/d.png"])
  source = datasets.open_dataset(f"image_folder:{root}")
  info = source.info
  assert info.num_examples == {"train": 4} and info.unlabelled_splits == ("train",)
  assert info.num_classes == 0 and info.class_names == ()
  examples = _read_all(source, "train")
  assert sorted(int(e["image"][0, 0, 0]) for e in examples) == [0, 10, 20, 30]
  assert {int(e["label"]) for e in examples} == {-1}


def test_image_folder_unlabelled_train_and_labelled_test(tmp_path):
  root = _write_tree(
    tmp_path / "imgs",
    [
      "train/0.png",
      "train/x/1.png",
      "train/2.png",
      "test/cat/0.png",
      "test/dog/0.png",
      "test/dog/1.png",
    ],
  )
  source = datasets.open_dataset(f"image_folder:{root}")
  info = source.info
  assert info.num_examples == {"train": 3, "test": 3}
  assert info.unlabelled_splits == ("train",) and info.class_names == ("cat", "dog")
  pairs = sorted((int(e["image"][0, 0, 0]), int(e["label"])) for e in _read_all(source, "test"))
  assert pairs == [(30, 0), (40, 1), (50, 1)]


def test_numbered_class_folders_keep_their_number(tmp_path):
  # Sorted as strings, "10" would come before "2" and take its id: a silent relabelling.
  root = _write_tree(tmp_path / "imgs", [f"train/{c}/0.png" for c in range(11)])
  source = datasets.open_dataset(f"image_folder:{root}")
  assert source.info.class_names == tuple(str(c) for c in range(11))
  pairs = {int(e["image"][0, 0, 0]) // 10: int(e["label"]) for e in _read_all(source, "train")}
  assert pairs == {c: c for c in range(11)}  # file i was written into folder i


# --- bad inputs: one line naming the file (issue 17) ---


def _npz_error(tmp_path, **arrays):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(datasets.DataError) as e:
    datasets.open_dataset(f"npz:{path}")
  message = str(e.value)
  assert str(path) in message and "\n" not in message, message
  return message


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_pixel_names_the_first_bad_image(tmp_path, value):
  x = np.full((5, 4, 4), 0.5, np.float32)
  x[3, 1, 2] = value
  x[4, 0, 0] = value
  message = _npz_error(tmp_path, x=x, y=np.zeros(5, int))
  assert "x[3] holds a non-finite value" in message and str(value) in message


def test_npz_float_out_of_range_names_the_first_bad_image(tmp_path):
  x = np.full((4, 4, 4), 0.5, np.float32)
  x[2, 0, 0] = 1.5
  assert "x[2] holds 1.5" in _npz_error(tmp_path, x=x)


def test_npz_integer_pixels_out_of_range(tmp_path):
  x = np.zeros((3, 4, 4), np.int64)
  x[1, 1, 1] = 256
  assert "x[1] holds 256" in _npz_error(tmp_path, x=x)


def test_npz_integer_pixels_in_range_are_read_as_uint8(tmp_path):
  np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4), 200, np.int64))
  ex = _read_all(datasets.open_dataset(f"npz:{tmp_path / 'd.npz'}"), "train")[0]
  assert ex["image"].dtype == np.uint8 and ex["image"][0, 0, 0] == 200


def test_npz_four_channels(tmp_path):
  assert "1 or 3 channels" in _npz_error(tmp_path, x=np.zeros((2, 4, 4, 4), np.uint8))


def test_npz_empty_split(tmp_path):
  assert "the split is empty" in _npz_error(tmp_path, x=np.zeros((0, 4, 4), np.uint8))


def test_npz_label_ids_not_0_to_c_minus_1(tmp_path):
  message = _npz_error(tmp_path, x=np.zeros((4, 4, 4), np.uint8), y=np.array([3, 7, 7, 3]))
  assert "labels are 3, 7" in message and "first missing: 0" in message
  assert "renumber the 2 classes 0..1" in message


def test_npz_string_labels(tmp_path):
  message = _npz_error(tmp_path, x=np.zeros((2, 4, 4), np.uint8), y=np.array(["cat", "dog"]))
  assert "dtype <U3" in message and "integer class ids" in message


def test_npz_negative_label_names_its_index(tmp_path):
  message = _npz_error(tmp_path, x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, -1]))
  assert "y[2] = -1" in message


def test_npz_label_ids_are_checked_over_all_splits(tmp_path):
  # The test file lacks class 1, the training file has it: fine together.
  np.savez(tmp_path / "train.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 2]))
  np.savez(tmp_path / "test.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 2]))
  assert datasets.open_dataset(f"npz:{tmp_path}").info.num_classes == 3
  np.savez(tmp_path / "train.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 0, 2]))
  with pytest.raises(datasets.DataError, match=re.escape(f"npz {str(tmp_path)!r}: label ids")):
    datasets.open_dataset(f"npz:{tmp_path}")


def _folder_error(root):
  with pytest.raises(datasets.DataError) as e:
    datasets.open_dataset(f"image_folder:{root}")
  assert "\n" not in str(e.value)
  return str(e.value)


@pytest.mark.parametrize(
  "mode,value",
  [("RGBA", (10, 20, 30, 255)), ("LA", (40, 255)), ("CMYK", (0, 0, 0, 0)), ("1", 1)],
)
def test_image_folder_modes_are_converted_as_pil_converts_them(tmp_path, mode, value):
  # Opaque pixels: exactly PIL's convert("RGB"); transparency: test_own_images.py.
  root = _write_tree(tmp_path / "imgs", ["train/a/0.png"])
  path = root / "train" / "a" / ("1.jpg" if mode == "CMYK" else "1.png")
  Image.new(mode, (6, 8), value).save(path)
  source = datasets.open_dataset(f"image_folder:{root}")
  assert source.info.image_shape == (8, 6, 3)
  [note] = [n for n in source.info.notes if f" {mode} image(s)" in n]
  assert note.startswith(f"image_folder {root}: 1 {mode} image(s) ") and str(path) in note
  pixels = {tuple(e["image"][0, 0]) for e in _read_all(source, "train")}
  assert tuple(np.asarray(Image.open(path).convert("RGB"))[0, 0]) in pixels


def test_image_folder_truncated_image_names_the_file(tmp_path):
  # A header PIL reads, data cut short: found by the scan, not in the middle of training.
  root = _write_tree(tmp_path / "imgs", ["train/a/0.png"])
  for name in ("cut.png", "cut.jpg"):
    rng = np.random.default_rng(0)
    full = tmp_path / name
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (root / "train" / "a" / name).write_bytes(data[: len(data) // 2])
    message = _folder_error(root)
    assert f"{str(root / 'train' / 'a' / name)!r} is not a readable image" in message
    (root / "train" / "a" / name).unlink()


def test_image_folder_empty_split_folder(tmp_path):
  root = _write_tree(tmp_path / "imgs", ["train/0.png"])
  (root / "test").mkdir()
  assert f"{str(root / 'test')!r} holds no images" in _folder_error(root)


def test_image_folder_numbered_classes_not_0_to_c_minus_1(tmp_path):
  root = _write_tree(tmp_path / "imgs", ["train/3/0.png", "train/7/0.png"])
  message = _folder_error(root)
  assert f"image_folder {str(root)!r} class folders" in message and "first missing: 0" in message


def test_image_folder_classes_mixing_numbers_and_names(tmp_path):
  root = _write_tree(tmp_path / "imgs", ["train/0/0.png", "train/1/0.png", "train/cat/0.png"])
  message = _folder_error(root)
  assert f"image_folder {str(root)!r}: class folders mix numbers and names" in message


def test_grayscale_images_in_a_colour_folder_become_rgb_noted_once(tmp_path):
  root = tmp_path / "imgs"
  _write_png(root / "train" / "a" / "0.png", value=40)  # RGB (40, 0, 215)
  _write_png(root / "train" / "a" / "1.png", mode="L", value=77)
  _write_png(root / "train" / "b" / "2.png", mode="L", value=99)
  source = datasets.open_dataset(f"image_folder:{root}")
  assert source.info.image_shape == (8, 6, 3)
  assert source.info.notes == (
    f"image_folder {root}: 2 L image(s) made RGB (gray copied to the 3 channels), as the "
    f"folder holds colour images (the first: {root / 'train' / 'a' / '1.png'})",
  )
  pixels = sorted(tuple(e["image"][0, 0]) for e in _read_all(source, "train"))
  assert pixels == [(40, 0, 215), (77, 77, 77), (99, 99, 99)]


# --- slices (issue 17) ---


def _ids_file(tmp_path, n, labels=None):
  """npz whose pixels hold each example's index (0..n-1)."""
  path = tmp_path / "ids.npz"
  x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 2, 2)).copy()
  np.savez(path, x=x, **({} if labels is None else {"y": labels}))
  return datasets.open_dataset(f"npz:{path}")


def _ids(source, split, **kwargs):
  return [int(e["image"][0, 0, 0]) for e in _read_all(source, split, **kwargs)]


def test_npz_slices_come_from_a_fixed_permutation(tmp_path):
  source = _ids_file(tmp_path, 20)
  permutation = np.random.RandomState(datasets.SLICE_SHUFFLE_SEED).permutation(20)
  head, tail = _ids(source, "train[:90%]"), _ids(source, "train[90%:]")
  assert head == list(permutation[:18]) and tail == list(permutation[18:])
  assert sorted(head + tail) == list(range(20))
  assert _ids(source, "train[2:5]") == list(permutation[2:5])
  assert _ids(source, "train[-3:]") == list(permutation[-3:])
  assert _ids(source, "train") == list(range(20))  # unsliced: the stored order
  assert source.split_size("train[:90%]") == 18 and source.split_size("train[-3:]") == 3
  # Two processes split a slice into disjoint shards that cover it.
  shards = [_ids(source, "train[:90%]", process_index=p, process_count=2) for p in range(2)]
  assert shards[0] + shards[1] == head


def test_percent_slices_round_as_tfds_does(tmp_path):
  from tensorflow_datasets.core import splits as tfds_splits  # pylint: disable=import-outside-toplevel

  for n in (7, 10, 33):
    info = {"train": tfds_splits.SplitInfo(name="train", shard_lengths=[n], num_bytes=0)}
    for spec in ("train[:33%]", "train[33%:67%]", "train[50%:]", "train[:-25%]", "train[3:-2]"):
      (absolute,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(info)
      expected = np.arange(n)[absolute.from_ : absolute.to]
      np.testing.assert_array_equal(
        datasets.split_positions(spec, n, shuffled=False), expected, err_msg=f"{spec} of {n}"
      )


def test_slice_of_a_class_sorted_file_is_representative(tmp_path):
  labels = np.repeat([0, 1], 50)  # sorted by class
  source = _ids_file(tmp_path, 100, labels)
  held_out = [int(e["label"]) for e in _read_all(source, "train[80%:]")]
  assert len(held_out) == 20 and 5 <= sum(held_out) <= 15


def test_image_folder_slices_come_from_the_same_permutation(tmp_path):
  root = _write_tree(tmp_path / "imgs", [f"train/{i:02d}.png" for i in range(10)])
  source = datasets.open_dataset(f"image_folder:{root}")
  permutation = np.random.RandomState(datasets.SLICE_SHUFFLE_SEED).permutation(10)
  assert _ids(source, "train[70%:]") == [10 * i for i in permutation[7:]]


def test_split_name_is_the_name_parse_split_returns():
  for split in ("train", "test", "train[:90%]", "train[90%:]", "valid[-3:]", "my split[1:2]"):
    assert datasets.split_name(split) == datasets.parse_split(split)[0], split
  # tfds expressions are more than the grammar: their first split's name, unchecked.
  assert datasets.split_name("train[:50%]+test") == "train"
  with pytest.raises(datasets.DataError, match="expected NAME or NAME"):
    datasets.parse_split("train[:50%]+test")


def test_shared_examples_of_two_slices(tmp_path):
  source = _ids_file(tmp_path, 20)
  assert source.shared_examples("train[:90%]", "train[90%:]") == 0
  assert source.shared_examples("train", "train[90%:]") == 2
  assert source.shared_examples("train[:50%]", "train[40%:]") == 2


@pytest.mark.parametrize(
  "split,match",
  [
    ("train[5:5]", r"Split 'train\[5:5\]' is empty"),
    ("train[:120%]", r"120% is outside \[-100%, 100%\]"),
    ("train[3:21]", r"index 21 is out of range for its 20 examples"),
    ("train[:half]", r"slice bound 'half' is not an integer"),
    ("train[1]", r"expected NAME or NAME\[START:STOP\]"),
    ("valid[:10%]", r"has no split 'valid\[:10%\]'"),
  ],
)
def test_bad_slices(tmp_path, split, match):
  source = _ids_file(tmp_path, 20)
  with pytest.raises(datasets.DataError, match=match):
    source.split_size(split)
