"""Folders of images as users have them (issue 23): mixed sizes (16×16 to 512×512, some
not square), modes (RGB, RGBA, LA, L, P with and without transparency), PNG and JPEG,
some grayscale; labelled and unlabelled layouts.

Checked: the conversions (pixel for pixel against PIL's own compositing and conversion),
the channel rule, the resize rule (shorter side to S, centre crop) and its note, the
one-line errors; training and evaluation in-process at 32, and from the command line at
32 and 64. The folders come from tests/user_images.py.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from configs import tiny
from uctrl_jax import datasets
from uctrl_jax import evaluate
from uctrl_jax import input_pipeline
from uctrl_jax import train
from uctrl_jax.datasets import image_folder
from user_images import MODES, write_user_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(path: str, channels: int) -> np.ndarray:
  """What the folder's rules make of `path`, from PIL alone: transparency composited over
  white by Image.alpha_composite, then Image.convert."""
  img = Image.open(path)
  if "A" in img.getbands() or "transparency" in img.info:
    img = Image.alpha_composite(
      Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA")
    )
  pixels = np.asarray(img.convert("RGB" if channels == 3 else "L"))
  return pixels.reshape(*pixels.shape[:2], channels)


# --- conversions ---


def test_every_mode_is_read_as_pil_composites_and_converts_it(tmp_path):
  root = write_user_images(tmp_path / "imgs", labelled=False, n=16)
  source = datasets.open_dataset(f"image_folder:{root}")
  assert source.info.image_shape == (None, None, 3)  # colour images: every image RGB
  paths = source._files["train"][0]  # pylint: disable=protected-access
  read = list(source.read("train").as_numpy_iterator())
  for path, example in zip(paths, read):
    np.testing.assert_array_equal(example["image"], _reference(path, 3), err_msg=path)
  modes = {Image.open(p).mode for p in paths}
  assert {"RGB", "RGBA", "LA", "L", "P"} <= modes


def test_rgba_over_white_pixel_values():
  # Independent of the folder code: the composite is the one image viewers show.
  rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 128]]], np.uint8)
  img = Image.fromarray(rgba)
  out = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
  expected = np.asarray(out.convert("RGB"))
  np.testing.assert_array_equal(expected[0, :2], [[200, 100, 0], [255, 255, 255]])
  np.testing.assert_allclose(expected[0, 2], [227.5, 177.5, 127.5], atol=1)  # 50 % white


def test_transparent_pixels_become_white_not_their_stored_colour(tmp_path):
  rgba = np.zeros((4, 4, 4), np.uint8)  # black, fully transparent (PIL's convert: black)
  rgba[0, 0] = (10, 20, 30, 255)
  os.makedirs(tmp_path / "f")
  Image.fromarray(rgba).save(tmp_path / "f" / "a.png")
  Image.fromarray(rgba[..., [0, 3]].copy(), "LA").save(tmp_path / "f" / "b.png")
  pixels = image_folder.load_pixels(str(tmp_path / "f" / "a.png"), 3)
  assert tuple(pixels[0, 0]) == (10, 20, 30) and (pixels[1:] == 255).all()
  gray = image_folder.load_pixels(str(tmp_path / "f" / "b.png"), 1)
  assert gray.shape == (4, 4, 1) and gray[0, 0, 0] == 10 and (gray[1:] == 255).all()
  # Both grayscale-or-alpha folders: LA alone gives one channel.
  source = datasets.open_dataset(f"image_folder:{tmp_path / 'f'}")
  assert source.info.image_shape == (4, 4, 3)
  os.remove(tmp_path / "f" / "a.png")
  source = datasets.open_dataset(f"image_folder:{tmp_path / 'f'}")
  assert source.info.image_shape == (4, 4, 1)
  assert source.info.notes == (
    f"image_folder {tmp_path / 'f'}: 1 LA image(s) with transparency composited over a white "
    f"background, made grayscale (the first: {tmp_path / 'f' / 'b.png'})",
  )


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
  values = np.array([[0, 257, 32768, 65535]], np.uint16)
  os.makedirs(tmp_path / "f")
  Image.fromarray(values).save(tmp_path / "f" / "a.png")
  assert Image.open(tmp_path / "f" / "a.png").mode == "I;16"
  source = datasets.open_dataset(f"image_folder:{tmp_path / 'f'}")
  [example] = source.read("train").as_numpy_iterator()
  np.testing.assert_array_equal(example["image"][..., 0], np.round(values / 257))
  assert "scaled from 16 to 8 bits" in source.info.notes[0]


def test_notes_count_each_conversion_once(tmp_path):
  root = write_user_images(tmp_path / "imgs", labelled=True, n=16, test=8)
  info = datasets.open_dataset(f"image_folder:{root}").info
  assert info.image_shape == (None, None, 3) and sum(info.size_counts.values()) == 24
  modes = [MODES[i % len(MODES)] for i in range(24)]
  expected = {
    "with transparency composited over a white background, made RGB": (
      "LA/P/RGBA",
      sum(m in ("RGBA", "LA", "PT") for m in modes),
    ),
    "made RGB (gray copied to the 3 channels), as the folder holds colour images": (
      "L",
      modes.count("L"),
    ),
    "converted to RGB by PIL": ("P", modes.count("P")),
  }
  note = re.compile(
    rf"image_folder {re.escape(root)}: (\d+) (\S+) image\(s\) (.*) \(the first: (.*)\)"
  )
  found = {}
  for line in info.notes:
    count, mode_list, what, first = note.fullmatch(line).groups()
    found[what] = (mode_list, int(count))
    assert Image.open(first).mode in mode_list.split("/")
  assert found == expected


# --- sizes ---


def _config(name, image_size, **data):
  config = tiny.get_config()
  config.data.name = name
  config.data.image_size = image_size
  config.data.update(data)
  return config


def test_resize_keeps_the_aspect_and_crops_the_centre():
  # 64 (H) × 32 (W): the top 8 rows black, the rest white, a black band at x < 4. To 16:
  # the shorter side 32 → 16, so 32 × 16, then the centre rows 8..24 (the original's rows
  # 16..48, away from the black top) and every column: only the left band stays dark.
  image = np.ones((64, 32, 1), np.float32)
  image[:8] = 0.0
  image[:, :4] = 0.0
  out = input_pipeline.resize_image(tf.constant(image), 16).numpy()[..., 0]
  assert out.shape == (16, 16)
  np.testing.assert_allclose(out[:, 3:], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-6)
  # Wide images crop left and right alike; a square image is only resized.
  wide = np.zeros((10, 30, 1), np.float32)
  wide[:, 10:20] = 1.0
  np.testing.assert_allclose(input_pipeline.resize_image(tf.constant(wide), 10).numpy(), 1.0)
  square = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(
    input_pipeline.resize_image(tf.constant(square), 4).numpy(),
    tf.image.resize(square, (4, 4), antialias=True).numpy(),
  )


def test_mixed_sizes_batch_at_image_size_and_evaluate_every_image(tmp_path):
  root = write_user_images(tmp_path / "imgs", labelled=False, n=20)
  config = _config(f"image_folder:{root}", 32)
  info = input_pipeline.get_dataset_info(config)
  assert info.image_shape == (32, 32, 3)
  resized = sum(c for hw, c in info.size_counts.items() if hw != (32, 32))
  assert info.notes[-1] == (
    f"image_folder:{root}: {resized} of 20 images are not 32×32: resized (shorter side to "
    "32, centre crop)"
  )
  batch = next(
    input_pipeline.create_dataset(
      config, "train", process_index=0, process_count=1
    ).as_numpy_iterator()
  )
  assert batch["image"].shape == (16, 32, 32, 3) and batch["views"].shape == (2, 16, 32, 32, 3)
  assert -1 <= batch["views"].min() and batch["views"].max() <= 1
  batches = list(
    input_pipeline.create_dataset(
      config, "train", process_index=0, process_count=1, training=False, num_views=0
    ).as_numpy_iterator()
  )
  assert sum(int(b["mask"].sum()) for b in batches) == 20 and len(batches) == 2


def test_mixed_sizes_without_image_size_ask_for_it(tmp_path):
  root = write_user_images(tmp_path / "imgs", labelled=False, n=8)
  with pytest.raises(datasets.DataError) as e:
    input_pipeline.get_dataset_info(_config(f"image_folder:{root}", None))
  assert str(e.value) == (
    f"image_folder:{root} holds images of different sizes (from 16×16 to 512×512): set "
    "config.data.image_size (e.g. --config.data.image_size=64) to resize each to S×S "
    "(shorter side to S, centre crop)."
  )


def test_tfds_images_of_varying_size_are_resized(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  builder = tfds.builder("tf_flowers", data_dir=str(tmp_path))
  assert builder.info.features["image"].shape == (None, None, 3)
  builder.info.set_splits(
    tfds.core.SplitDict([tfds.core.SplitInfo(name="train", shard_lengths=[20], num_bytes=0)])
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  config = _config("tf_flowers", 16, data_dir=str(tmp_path))
  with tfds.testing.mock_data(
    num_examples=20, data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
  ):
    info = input_pipeline.get_dataset_info(config)
    assert info.image_shape == (16, 16, 3)
    assert info.notes == (
      "tf_flowers: images vary in size: each resized to 16×16 (shorter side to 16, centre crop)",
    )
    batch = next(
      input_pipeline.create_dataset(
        config, "train", process_index=0, process_count=1
      ).as_numpy_iterator()
    )
    assert batch["image"].shape == (16, 16, 16, 3)
    config.data.image_size = None
    with pytest.raises(datasets.DataError, match="tf_flowers holds images of different sizes: "):
      input_pipeline.get_dataset_info(config)


# --- training and evaluation ---


def _eval_overrides(config):
  config.evals.names = ("knn", "reconstruction")
  config.evals.batch_size = 16
  config.evals.baselines = False
  return config


def test_labelled_folder_of_mixed_images_trains_and_evaluates(tmp_path):
  root = write_user_images(tmp_path / "imgs", labelled=True)
  config = _eval_overrides(_config(f"image_folder:{root}", 32))
  config.train.num_steps = 2
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  results = evaluate.evaluate(config, workdir)
  assert results["step"] == 2 and results["num_train"] == 40 and results["num_test"] == 10
  assert np.isfinite(results["metrics"]["knn/top1"])
  assert np.isfinite(results["metrics"]["reconstruction/mse"])


def _cli(flags, compilation_cache, tmp_path):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=1",
    JAX_COMPILATION_CACHE_DIR=compilation_cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  procs = []
  for mode in ("train", "eval"):
    proc = subprocess.run(
      [sys.executable, "main.py", f"--mode={mode}", *flags],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    procs.append(proc)
  with open(tmp_path / "run" / "results.json") as f:
    return json.load(f), procs


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_compilation_cache"))


_FAST = [
  "--config.train.num_steps=2",
  "--config.evals.names=('knn','reconstruction')",
  "--config.evals.batch_size=16",
  "--config.evals.baselines=False",
]


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [32, 64])
def test_cli_trains_and_evaluates_a_folder_of_mixed_images(image_size, tmp_path, compilation_cache):
  """The done-when of issue 23: RGBA and palette PNGs of mixed sizes, some grayscale, train
  from the command line at 32 (labelled) and 64 (unlabelled, 10 % held out) and
  evaluate. About a minute each on 2 busy cores."""
  labelled = image_size == 32
  root = write_user_images(tmp_path / "imgs", labelled=labelled)
  flags = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.name=image_folder:{root}",
    f"--config.data.image_size={image_size}",
    *_FAST,
  ]
  if not labelled:
    flags += [
      "--config.data.train_split=train[:90%]",
      "--config.evals.train_split=train[:90%]",
      "--config.evals.test_split=train[90%:]",
    ]
  results, (training, _) = _cli(flags, compilation_cache, tmp_path)
  assert results["step"] == 2
  assert (results["num_train"], results["num_test"]) == ((40, 10) if labelled else (36, 4))
  assert ("knn/top1" in results["metrics"]) == labelled
  # The start-up summary: the architecture at this size, the conversions, the resizing.
  log = training.stderr
  assert f"encoder dcgan: {image_size}→" in log
  assert "with transparency composited over a white background, made RGB" in log
  assert f"images are not {image_size}×{image_size}: resized (shorter side to" in log
