"""Training without labels and scoring on held-out slices, end to end (issue 17).

- an unlabelled npz file and an unlabelled image folder train (labels are never read)
  and evaluate with the label-free evaluators; the others are skipped with one line;
- a single labelled npz trains on ``train[:80%]`` and is scored on ``train[80%:]``;
- evaluation warns when the scored images are not held out.

The runs share the tiny config's steps, so a module-wide persistent compilation cache
compiles them once (as in test_reliability.py).
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

from configs import tiny
from uctrl_jax import config_checks
from uctrl_jax import evaluate
from uctrl_jax import figures
from uctrl_jax import input_pipeline
from uctrl_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL_FREE = {
  "reconstruction/mse",
  "reconstruction/psnr",
  "conditional_generation/explained_variance",
  "fid/frechet_z_zhat",
}
NEED_LABELS = ["knn", "linear_probe", "nearest_subspace", "clustering", "structure"]
_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("jax_cache"))
  previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield path
  for name, value in previous.items():
    jax.config.update(name, value)


def _images(n, seed=0):
  """(n, 28, 28) uint8, 3 kinds (a bright band at rows 9c..9c+8), and the kinds."""
  rng = np.random.default_rng(seed)
  kinds = np.arange(n) % 3
  x = rng.normal(30, 10, (n, 28, 28))
  for c in range(3):
    x[kinds == c, 9 * c : 9 * c + 9] += 180
  return np.clip(x, 0, 255).astype(np.uint8), kinds


def _config(name, **evals):
  config = tiny.get_config()
  config.data.name = name
  config.train.num_steps = 1
  config.evals.names = (
    "knn",
    "linear_probe",
    "nearest_subspace",
    "clustering",
    "structure",
    "reconstruction",
    "conditional_generation",
    "fid",
  )
  config.evals.linear_probe.steps = 20
  config.evals.clustering.update(num_restarts=2, mcr2_steps=10)
  config.evals.conditional_generation.num_clusters_without_labels = 3
  config.evals.batch_size = 16
  config.evals.update(evals)
  return config


def _train_and_evaluate(config, workdir, caplog):
  with caplog.at_level(logging.INFO, logger="absl"):
    train.train_and_evaluate(config, workdir)
    results = evaluate.evaluate(config, workdir)
  return results, [r.getMessage() for r in caplog.records if "no labels" in r.getMessage()]


def _assert_label_free(results, workdir, lines):
  metrics = results["metrics"]
  assert LABEL_FREE <= set(metrics) and all(
    np.isfinite(metrics[k]) for k in LABEL_FREE if k != "reconstruction/psnr"
  )
  assert not any(k.split("/")[0] in NEED_LABELS for k in metrics)
  assert "reconstruction/consistency" not in metrics
  assert "conditional_generation/sample_consistency" not in metrics
  assert results["skipped_without_labels"] == NEED_LABELS and results["baselines"] == {}
  # One line from the in-training evaluation (kNN skipped), one from evaluate.
  assert len(lines) == 2, lines
  assert "knn skipped" in lines[0] and "reconstruction without label-based metrics" in lines[0]
  assert lines[1].startswith(
    "no labels in the evaluation's train and test split: " + ", ".join(NEED_LABELS) + " skipped"
  )
  assert set(results["figures"]) == {
    "reconstructions",
    "pca",
    "training_curves",
    "conditional_generation",
  }
  with open(os.path.join(workdir, "results.md")) as f:
    assert "| knn | skipped: no labels |" in f.read()
  # The in-training evaluation logged the label-free reconstruction metrics only.
  scalars = figures.read_scalars(workdir)
  assert "eval/reconstruction/mse" in scalars and "eval/knn/top1" not in scalars


def test_unlabelled_npz_trains_and_evaluates_without_labels(tmp_path, caplog):
  x, _ = _images(40)
  np.savez(tmp_path / "x.npz", x=x)  # no y
  config = _config(f"npz:{tmp_path / 'x.npz'}", train_split="train[:80%]", test_split="train[80%:]")
  config.data.train_split = "train[:80%]"
  workdir = str(tmp_path / "run")
  results, lines = _train_and_evaluate(config, workdir, caplog)
  _assert_label_free(results, workdir, lines)
  assert results["num_train"] == 32 and results["num_test"] == 8


def test_unlabelled_image_folder_trains_and_evaluates_without_labels(tmp_path, caplog):
  x, _ = _images(40)
  root = tmp_path / "imgs"
  for i, image in enumerate(x):  # images directly in PATH and one nested folder
    path = root / ("nested" if i % 2 else "") / f"{i:02d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
  config = _config(f"image_folder:{root}", train_split="train[:80%]", test_split="train[80%:]")
  config.data.train_split = "train[:80%]"
  workdir = str(tmp_path / "run")
  results, lines = _train_and_evaluate(config, workdir, caplog)
  _assert_label_free(results, workdir, lines)
  assert results["num_train"] == 32 and results["num_test"] == 8


def test_single_labelled_npz_trains_on_a_slice_and_scores_the_rest(tmp_path, caplog, monkeypatch):
  x, y = _images(60)
  np.savez(tmp_path / "d.npz", x=x, y=y)
  config = _config(f"npz:{tmp_path / 'd.npz'}", train_split="train[:80%]", test_split="train[80%:]")
  config.data.train_split = "train[:80%]"
  read = []
  original = input_pipeline.create_dataset

  def spy(config, split, **kwargs):
    read.append((split, kwargs.get("training")))
    return original(config, split, **kwargs)

  monkeypatch.setattr(input_pipeline, "create_dataset", spy)
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING, logger="absl"):
    results, lines = _train_and_evaluate(config, workdir, caplog)
  assert ("train[:80%]", True) in read  # the training stream: the slice only
  assert {s for s, training in read if training} == {"train[:80%]"}
  assert results["num_train"] == 48 and results["num_test"] == 12 and lines == []
  assert not any("not held out" in r.getMessage() for r in caplog.records)
  metrics = results["metrics"]
  for key in (
    "knn/top1",
    "linear_probe/top1",
    "clustering/kmeans_acc",
    "structure/score",
    "reconstruction/consistency",
    "conditional_generation/sample_consistency",
  ):
    assert np.isfinite(metrics[key]), key
  # The bands tell the kinds apart: the held-out images are classified perfectly on pixels.
  assert results["baselines"]["raw_pixels"]["knn/top1"] == 100.0
  scalars = figures.read_scalars(workdir)
  assert "eval/knn/top1" in scalars  # the in-training evaluation ran on the held-out slice


def test_evaluation_warns_when_scored_images_are_not_held_out(tmp_path, caplog):
  x, y = _images(20)
  np.savez(tmp_path / "d.npz", x=x, y=y)
  config = _config(f"npz:{tmp_path / 'd.npz'}", train_split="train", test_split="train[80%:]")
  with caplog.at_level(logging.WARNING, logger="absl"):
    data = evaluate.load_data(config)
  assert len(data.x_train) == 20 and len(data.x_test) == 4
  warnings = [r.getMessage() for r in caplog.records if "not held out" in r.getMessage()]
  assert len(warnings) == 2, warnings
  assert "shares 4 of its images with config.evals.train_split 'train'" in warnings[0]
  assert "shares 4 of its images with config.data.train_split 'train'" in warnings[1]


def test_supervised_mode_refuses_an_unlabelled_training_split(tmp_path, monkeypatch):
  np.savez(tmp_path / "x.npz", x=_images(20)[0])
  config = _config(f"npz:{tmp_path / 'x.npz'}")
  config.loss.mode = "ctrl_multi"

  def refuse(*args, **kwargs):
    raise AssertionError("reached model initialisation")

  monkeypatch.setattr(train, "create_train_state", refuse)
  with pytest.raises(
    config_checks.ConfigError,
    match=r"'ctrl_multi' is supervised, but config.data."
    r"train_split 'train' of 'npz:.*x.npz' has no labels",
  ):
    train.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["npz", "image_folder"])
def test_cli_trains_and_evaluates_unlabelled_data(tmp_path, compilation_cache, kind):
  """The command lines of the README on unlabelled data: `x`-only npz, a folder of
  images (PATH/train/*.png). About a minute each on 2 busy cores."""
  x, _ = _images(40)
  if kind == "npz":
    np.savez(tmp_path / "x.npz", x=x)
    name = f"npz:{tmp_path / 'x.npz'}"
  else:
    root = tmp_path / "imgs" / "train"
    root.mkdir(parents=True)
    for i, image in enumerate(x):
      Image.fromarray(image).save(root / f"{i:02d}.png")
    name = f"image_folder:{tmp_path / 'imgs'}"
  flags = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.name={name}",
    "--config.data.train_split=train[:80%]",
    "--config.evals.train_split=train[:80%]",
    "--config.evals.test_split=train[80%:]",
    "--config.train.num_steps=2",
    "--config.evals.batch_size=16",
    "--config.evals.linear_probe.steps=20",
  ]
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=compilation_cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
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
  with open(tmp_path / "run" / "results.json") as f:
    results = json.load(f)
  assert results["step"] == 2 and results["num_test"] == 8
  assert LABEL_FREE <= set(results["metrics"]) and "knn/top1" not in results["metrics"]
  assert results["skipped_without_labels"] == NEED_LABELS
