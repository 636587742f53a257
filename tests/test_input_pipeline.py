"""Tests of uctrl_jax/input_pipeline.py: batch format, seeds, process shards."""

import numpy as np
import pytest

from configs import default
from uctrl_jax import datasets
from uctrl_jax import input_pipeline


def _config(name, *, batch_size, image_size, num_views=2, seed=0):
  config = default.get_config()
  config.seed = seed
  config.data.name = name
  config.data.image_size = image_size
  config.data.num_views = num_views
  config.data.shuffle_buffer = 64
  config.train.batch_size = batch_size
  return config


def _batches(config, split, n=None, **kwargs):
  kwargs = {"process_index": 0, "process_count": 1, **kwargs}
  it = input_pipeline.create_dataset(config, split, **kwargs).as_numpy_iterator()
  return list(it) if n is None else [next(it) for _ in range(n)]


def test_cifar10_batches_shapes_dtypes_and_range(mock_cifar10):
  config = _config("cifar10", batch_size=16, image_size=32, num_views=2)
  info = input_pipeline.get_dataset_info(config)
  assert info.image_shape == (32, 32, 3) and info.num_classes == 10
  (batch,) = _batches(config, "train", 1)
  assert set(batch) == {"image", "views", "label"}
  assert batch["image"].shape == (16, 32, 32, 3)
  assert batch["views"].shape == (2, 16, 32, 32, 3)
  assert batch["label"].shape == (16,)
  assert batch["image"].dtype == batch["views"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  assert 0 <= batch["label"].min() and batch["label"].max() < 10
  for key in ("image", "views"):
    # Uniform random uint8 pixels map onto the whole of [-1, 1].
    assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
    assert batch[key].min() < -0.95 and batch[key].max() > 0.95


def test_views_differ_from_image_and_each_other(mock_cifar10):
  config = _config("cifar10", batch_size=16, image_size=32, num_views=3)
  (batch,) = _batches(config, "train", 1)
  image, views = batch["image"], batch["views"]

  def differs(a, b):
    """Examples whose pixels differ by > 0.01 on average, and the mean gap."""
    per_example = np.abs(a - b).mean(axis=(1, 2, 3))
    return (per_example > 0.01).sum(), per_example.mean()

  # A view can equal its image by chance (whole-image crop, no flip, no
  # colour op: < 1 %); the seed is fixed, so this test is deterministic.
  for v in range(3):
    count, gap = differs(views[v], image)
    assert count >= 15 and gap > 0.2
    for w in range(v):
      count, gap = differs(views[v], views[w])
      assert count >= 15 and gap > 0.2


def test_same_seed_same_batches_other_seed_other_views(mock_cifar10):
  config = _config("cifar10", batch_size=16, image_size=32)
  first, again = _batches(config, "train", 4), _batches(config, "train", 4)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = _batches(_config("cifar10", batch_size=16, image_size=32, seed=1), "train", 1)[0]
  assert np.abs(other["views"] - first[0]["views"]).mean() > 0.01


def test_epochs_get_fresh_augmentations(tmp_path):
  # 16 examples, batch 16: batch k is epoch k. Same images, new views.
  np.savez(
    tmp_path / "d.npz",
    x=np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), np.uint8),
    y=np.arange(16),
  )
  config = _config(f"npz:{tmp_path / 'd.npz'}", batch_size=16, image_size=8)
  epoch0, epoch1 = _batches(config, "train", 2)
  order0, order1 = np.argsort(epoch0["label"]), np.argsort(epoch1["label"])
  np.testing.assert_array_equal(epoch0["image"][order0], epoch1["image"][order1])
  assert (
    np.abs(epoch0["views"][:, order0] - epoch1["views"][:, order1]).mean(axis=(0, 2, 3, 4)).min()
    > 0.01
  )
  assert not np.array_equal(epoch0["label"], epoch1["label"])  # Reshuffled.


def _ids_npz(tmp_path, n, shape=(6, 6)):
  """npz whose label is the example's index, and whose pixels encode it too."""
  x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, *shape)).copy()
  path = tmp_path / "ids.npz"
  np.savez(path, x=x, y=np.arange(n))
  return f"npz:{path}"


def test_training_shards_of_two_processes_are_disjoint_and_cover(tmp_path):
  config = _config(_ids_npz(tmp_path, 32), batch_size=8, image_size=6)
  seen = []
  for p in range(2):  # Per-process batch 4; 16 examples per shard = 4 batches.
    batches = _batches(config, "train", 4, process_index=p, process_count=2)
    seen.append(np.concatenate([b["label"] for b in batches]))
    assert batches[0]["image"].shape == (4, 6, 6, 1)
  assert sorted(seen[0]) == list(range(16)) and sorted(seen[1]) == list(range(16, 32))


def test_training_on_a_slice_never_reads_the_held_out_part(tmp_path):
  config = _config(_ids_npz(tmp_path, 40), batch_size=8, image_size=6)
  batches = _batches(config, "train[:75%]", 12, training=True)  # 96 examples: 3+ epochs
  seen = set(np.concatenate([b["label"] for b in batches]).tolist())
  held_out = set(np.random.RandomState(datasets.SLICE_SHUFFLE_SEED).permutation(40)[30:].tolist())
  assert seen == set(range(40)) - held_out


def test_eval_counts_every_example_once_with_padding(tmp_path):
  # 25 examples, 3 processes (shards 8, 8, 9), per-process batch 4:
  # every process yields ceil(9 / 4) = 3 batches.
  config = _config(_ids_npz(tmp_path, 25), batch_size=12, image_size=6)
  seen = []
  for p in range(3):
    batches = _batches(config, "train", training=False, process_index=p, process_count=3)
    assert len(batches) == 3
    for b in batches:
      assert set(b) == {"image", "views", "label", "mask"}
      assert b["views"].shape == (2, 4, 6, 6, 1)
      assert b["mask"].dtype == bool
      assert (b["label"][~b["mask"]] == -1).all()
      # The image still encodes the id: mask and label line up with it.
      ids = np.round((b["image"][b["mask"], 0, 0, 0] + 1) * 127.5)
      np.testing.assert_array_equal(ids, b["label"][b["mask"]])
      seen.extend(b["label"][b["mask"]])
  assert sorted(seen) == list(range(25))


def test_eval_without_views(tmp_path):
  config = _config(_ids_npz(tmp_path, 5), batch_size=4, image_size=6)
  batches = _batches(config, "train", training=False, num_views=0)
  assert [set(b) for b in batches] == [{"image", "label", "mask"}] * 2
  assert [b["mask"].sum() for b in batches] == [4, 1]


def test_images_are_resized_to_image_size(tmp_path):
  config = _config(_ids_npz(tmp_path, 4), batch_size=4, image_size=10)
  assert input_pipeline.get_dataset_info(config).image_shape == (10, 10, 1)
  (batch,) = _batches(config, "train", 1)
  assert batch["image"].shape == (4, 10, 10, 1)
  assert batch["views"].shape == (2, 4, 10, 10, 1)


def test_real_fashion_mnist_test_split_over_two_processes(fashion_mnist_data_dir):  # pylint: disable=redefined-outer-name
  config = _config("fashion_mnist", batch_size=1000, image_size=28)
  config.data.data_dir = fashion_mnist_data_dir
  labels = []
  for p in range(2):
    batches = _batches(config, "test", num_views=0, process_index=p, process_count=2)
    assert len(batches) == 10 and all(b["mask"].all() for b in batches)
    labels.append(np.concatenate([b["label"] for b in batches]))
  np.testing.assert_array_equal(np.bincount(np.concatenate(labels)), [1000] * 10)
  (batch,) = _batches(config, "train", 1)
  assert batch["views"].shape == (2, 1000, 28, 28, 1)
  assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0


def test_batch_size_must_divide_over_processes(tmp_path):
  config = _config(_ids_npz(tmp_path, 8), batch_size=10, image_size=6)
  with pytest.raises(ValueError, match="not divisible by the number of processes, 3"):
    input_pipeline.create_dataset(config, "train", process_index=0, process_count=3)


def test_training_needs_a_view(tmp_path):
  config = _config(_ids_npz(tmp_path, 8), batch_size=4, image_size=6, num_views=0)
  with pytest.raises(ValueError, match="num_views"):
    input_pipeline.create_dataset(config, "train", process_index=0, process_count=1)


def test_bad_name_raises_data_error():
  config = _config("imagenet_foo", batch_size=4, image_size=6)
  with pytest.raises(datasets.DataError, match="Unknown dataset"):
    input_pipeline.create_dataset(config, "train", process_index=0, process_count=1)


def test_skip_batches_resumes_the_same_stream(mock_cifar10):
  # 48 examples at batch 16: batch 5 is in the second epoch (reshuffled, new views).
  config = _config("cifar10", batch_size=16, image_size=32, num_views=2)
  uninterrupted = _batches(config, "train", 6)
  resumed = _batches(config, "train", 2, skip_batches=4)
  for want, got in zip(uninterrupted[4:], resumed):
    for key in ("image", "views", "label"):
      np.testing.assert_array_equal(got[key], want[key])
  with pytest.raises(ValueError, match="skip_batches is for resuming a training stream"):
    _batches(config, "test", skip_batches=1, training=False)
