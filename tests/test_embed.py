"""A trained run used alone (issue 23): ``Loaded.encode_images``/``reconstruct_images`` on
images as users hold them, ``--mode=embed`` files (one row per image, in the split's
order), ``--mode=eval`` with nothing but ``--workdir``, and TensorBoard's share of both.

One tiny run (conftest's ``tiny_folder_run``: 28×28 grayscale, d = 16) serves every test.
"""

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import uctrl_jax
from uctrl_jax import datasets
from uctrl_jax import embed
from uctrl_jax import figures
from uctrl_jax import loading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `uctrl ARGS` without the console script: the function it calls (pyproject.toml).
UCTRL = [
  sys.executable,
  "-c",
  "import sys; sys.argv[0] = 'uctrl'; from uctrl_jax import cli; cli.run_uctrl()",
]


def _run(cmd, cwd=REPO):
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def loaded(tiny_folder_run):
  return uctrl_jax.load(tiny_folder_run[0])


def _uint8(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ------------------------------------------------------------------ to_model_input


def test_to_model_input_resizes_as_the_input_pipeline():
  x = _uint8((3, 40, 36, 3))
  ours = np.asarray(loading.to_model_input(x, (28, 28, 3)))
  # input_pipeline._preprocess: [0, 1], tf.image.resize(antialias=True), clip, to [-1, 1].
  theirs = tf.clip_by_value(
    tf.image.resize(tf.image.convert_image_dtype(x, tf.float32), (28, 28), antialias=True), 0, 1
  )
  np.testing.assert_allclose(ours, theirs.numpy() * 2 - 1, atol=2e-5)
  # Upsampling too (a 16×16 image for a 28×28 run).
  small = _uint8((2, 16, 16, 1), seed=1)
  theirs = tf.image.resize(
    tf.image.convert_image_dtype(small, tf.float32), (28, 28), antialias=True
  )
  np.testing.assert_allclose(
    loading.to_model_input(small, (28, 28, 1)), np.clip(theirs.numpy(), 0, 1) * 2 - 1, atol=2e-5
  )


def test_to_model_input_converts_range_and_channels():
  x = _uint8((2, 8, 8, 3))
  signed = x / 127.5 - 1
  np.testing.assert_allclose(loading.to_model_input(x, (8, 8, 3)), signed, atol=1e-6)
  np.testing.assert_allclose(  # floats in [-1, 1] are taken as they are
    loading.to_model_input(signed.astype(np.float32), (8, 8, 3)), signed, atol=1e-6
  )
  luma = signed @ np.array([0.299, 0.587, 0.114])  # PIL's convert("L") weights
  np.testing.assert_allclose(loading.to_model_input(x, (8, 8, 1))[..., 0], luma, atol=1e-5)
  gray = x[..., :1]
  np.testing.assert_allclose(
    loading.to_model_input(gray, (8, 8, 3)), np.repeat(gray / 127.5 - 1, 3, axis=-1), atol=1e-6
  )


@pytest.mark.parametrize(
  "images, message",
  [
    (np.full((2, 8, 8), 200.0, np.float32), r"float images must be in \[-1, 1\].*\[200, 200\]"),
    (np.zeros((2, 8, 8, 4), np.uint8), "C 1 or 3; got .* convert\\('RGB'\\)"),
    (np.zeros((0, 8, 8), np.uint8), "n ≥ 1"),
    (np.zeros((2, 8, 8), np.int64), "uint8 in \\[0, 255\\] or floats"),
    (np.zeros((8, 8), np.uint8), "got \\(8, 8\\)"),
  ],
  ids=["0-255-floats", "rgba", "empty", "int64", "one-image"],
)
def test_as_image_batch_refuses_what_it_cannot_read(images, message):
  with pytest.raises(ValueError, match=message):
    loading.as_image_batch(images)


# ------------------------------------------------------------------ Loaded.encode_images


class _Compilations(logging.Handler):
  """Counts XLA compilations while ``jax.log_compiles`` is on."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def emit(self, record):
    self.count += record.getMessage().startswith("Compiling ")


def test_encode_images_any_count_one_compilation(loaded):
  images = _uint8((13, 28, 28))
  expected = np.asarray(loaded.encode(images[..., None] / 127.5 - 1.0))  # one call, all 13
  first = loaded.encode_images(images[:1], batch_size=4)  # compiles the batch of 4
  counter = _Compilations()
  logging.getLogger("jax").addHandler(counter)
  try:
    with jax.log_compiles():
      by_count = {n: loaded.encode_images(images[:n], batch_size=4) for n in (1, 3, 4, 5, 13)}
  finally:
    logging.getLogger("jax").removeHandler(counter)
  assert counter.count == 0  # no size recompiles
  np.testing.assert_allclose(first, expected[:1], atol=1e-5)
  for n, Z in by_count.items():
    assert Z.shape == (n, 16) and Z.dtype == np.float32
    np.testing.assert_allclose(Z, expected[:n], atol=1e-5)
  # Floats in [-1, 1], and images of another size, resized as the pipeline would.
  np.testing.assert_allclose(
    loaded.encode_images(images / 127.5 - 1.0, batch_size=4), expected, atol=1e-5
  )
  big = _uint8((5, 56, 56, 1), seed=3)
  np.testing.assert_allclose(
    loaded.encode_images(big, batch_size=4),
    loaded.encode(loading.to_model_input(big, (28, 28, 1))),
    atol=1e-5,
  )


def test_reconstruct_images(loaded):
  images = _uint8((6, 28, 28, 3))  # RGB into a grayscale run
  xhat = loaded.reconstruct_images(images, batch_size=4)
  x = loading.to_model_input(images, (28, 28, 1))
  assert xhat.shape == (6, 28, 28, 1) and np.abs(xhat).max() <= 1.0
  np.testing.assert_allclose(xhat, loaded.decode(loaded.encode(x)), atol=1e-5)


# ------------------------------------------------------------------ --mode=embed


def _read_folder(folder, relative_paths):
  return np.stack([np.asarray(Image.open(os.path.join(folder, p))) for p in relative_paths])


def test_embed_writes_the_evaluation_splits_in_order(tiny_folder_run, loaded):
  workdir, folder = tiny_folder_run
  _run([sys.executable, "main.py", "--mode=embed", f"--workdir={workdir}"])
  source = datasets.open_dataset(f"image_folder:{folder}")
  for split, n in (("test", 6), ("train", 12)):
    with np.load(os.path.join(workdir, "embeddings", f"{split}.npz")) as f:
      arrays = dict(f)
    assert set(arrays) == {"features", "labels", "paths", "split", "step"}
    assert arrays["features"].shape == (n, 16) and arrays["features"].dtype == np.float32
    assert str(arrays["split"]) == split and int(arrays["step"]) == 2
    # The split's order, each row its file's image and label.
    expected_paths = [os.path.relpath(p, folder) for p in source.example_paths(split)]
    assert list(arrays["paths"]) == expected_paths
    assert sorted(expected_paths) == sorted(
      f"{split}/{c}/{i:02d}.png" for c in "ab" for i in range(n // 2)
    )
    np.testing.assert_array_equal(
      arrays["labels"], [p.split("/")[1] == "b" for p in expected_paths]
    )
    np.testing.assert_allclose(
      arrays["features"], loaded.encode_images(_read_folder(folder, expected_paths)), atol=1e-5
    )


def test_embed_of_other_data_at_the_runs_preprocessing(tiny_folder_run, loaded, tmp_path):
  workdir, _ = tiny_folder_run
  x = _uint8((20, 32, 32, 3), seed=5)  # RGB at 32×32, for a 28×28 grayscale run
  np.savez(tmp_path / "other.npz", x=x)
  out = tmp_path / "out" / "half.npz"
  _run(
    UCTRL
    + ["embed", f"--workdir={workdir}", f"--data=npz:{tmp_path / 'other.npz'}"]
    + ["--split=train[:50%]", f"--out={out}"]
  )
  with np.load(out) as f:
    arrays = dict(f)
  assert set(arrays) == {"features", "split", "step"}  # no labels, no files
  # The slice's order: the fixed shuffle's first half.
  order = datasets.split_positions("train[:50%]", 20)
  np.testing.assert_allclose(arrays["features"], loaded.encode_images(x[order]), atol=1e-4)
  # Without --out: WORKDIR/embeddings/<data>/<split>.npz.
  _run(UCTRL + ["embed", f"--workdir={workdir}", f"--data=npz:{tmp_path / 'other.npz'}"])
  with np.load(os.path.join(workdir, "embeddings", "other", "train.npz")) as f:
    np.testing.assert_allclose(f["features"], loaded.encode_images(x), atol=1e-4)


def test_file_stems_of_slices_differ():
  stems = {embed.file_stem(s) for s in ("train", "train[:80%]", "train[80%:]", "train[10:20]")}
  assert stems == {"train", "train_to80pct", "train_80pctto", "train_10to20"}
  assert embed.data_label("image_folder:/data/photos/") == "photos"
  assert embed.data_label("npz:~/x.npz") == "x"


# ------------------------------------------------------------------ --mode=eval alone


def test_eval_with_only_the_workdir_reaches_tensorboard(tiny_folder_run):
  workdir, _ = tiny_folder_run
  _run(
    UCTRL
    + ["eval", f"--workdir={workdir}", "--config.evals.names=('knn',)"]
    + ["--config.evals.baselines=False", "--config.evals.figures=False"]
  )
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["evals_config"]["names"] == ["knn"]
  assert results["config"]["data"]["name"].startswith("image_folder:")  # the run's own
  top1 = results["metrics"]["knn/top1"]
  steps, values = figures.read_scalars(workdir)["eval_full/knn/top1"]
  np.testing.assert_array_equal(steps, [results["step"]])
  np.testing.assert_allclose(values, [top1], rtol=1e-6)
  assert not any(k.startswith("eval_full/eval_seconds") for k in figures.read_scalars(workdir))


def test_training_writes_the_reconstruction_grid_to_tensorboard(tiny_folder_run):
  from tensorboard.backend.event_processing import event_accumulator as ea

  workdir, _ = tiny_folder_run
  grids = []
  for path in sorted(os.listdir(workdir)):
    if path.startswith("events.out.tfevents."):
      acc = ea.EventAccumulator(os.path.join(workdir, path), size_guidance={ea.TENSORS: 0})
      acc.Reload()
      if "reconstructions" in acc.Tags()["tensors"]:
        grids += acc.Tensors("reconstructions")
  assert [e.step for e in grids] == [2]  # image_every 2, num_steps 2
  # TF2 image summaries: width, height, then the PNG; the PNG equals the one on disk.
  width, height, png = tf.make_ndarray(grids[0].tensor_proto)
  on_disk = os.path.join(workdir, "reconstructions", "step_0000002.png")
  with open(on_disk, "rb") as f:
    disk = np.asarray(Image.open(f))
  decoded = tf.io.decode_png(png).numpy()
  assert (int(width), int(height)) == (disk.shape[1], disk.shape[0])
  np.testing.assert_array_equal(decoded[..., 0], disk)
