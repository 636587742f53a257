"""figures.py and evaluate.py: the pictures, and a trained tiny run evaluated end to end."""

import json
import os

from clu import metric_writers
import numpy as np
from PIL import Image
import pytest

from configs import tiny
import uctrl_jax
from uctrl_jax import checkpointing
from uctrl_jax import config_checks
from uctrl_jax import evaluate
from uctrl_jax import evaluators
from uctrl_jax import figures
from uctrl_jax import train


def test_read_scalars_reads_what_clu_wrote(tmp_path):
  writer = metric_writers.create_default_writer(str(tmp_path))
  for step in (1, 2, 3):
    writer.write_scalars(step, {"encoder/R": 10.0 + step, "decoder/recon_mse": 1.0 / step})
  writer.flush()
  series = figures.read_scalars(str(tmp_path))
  steps, values = series["encoder/R"]
  np.testing.assert_array_equal(steps, [1, 2, 3])
  np.testing.assert_allclose(values, [11, 12, 13])
  np.testing.assert_allclose(series["decoder/recon_mse"][1], [1, 0.5, 1 / 3], rtol=1e-6)
  assert os.path.isfile(figures.training_curves(str(tmp_path), str(tmp_path / "curves.png")))
  assert figures.training_curves(str(tmp_path / "empty"), str(tmp_path / "none.png")) is None


def test_balanced_subset_sorts_by_label():
  labels = np.array([2, 0, 1, 0, 2, 1, 0])
  idx = figures.balanced_subset(labels, 2)
  np.testing.assert_array_equal(labels[idx], [0, 0, 1, 1, 2, 2])


def _npz_dir(tmp_path):
  """A 3-class dataset dir (npz: train.npz, test.npz): class c has a bright band at rows 9c-9c+8."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 48), ("test", 24)):
    y = np.arange(n) % 3
    x = rng.normal(30, 10, (n, 28, 28))
    for c in range(3):
      x[y == c, 9 * c : 9 * c + 9] += 180
    x = np.clip(x, 0, 255)
    np.savez(tmp_path / f"{split}.npz", x=x.astype(np.uint8)[..., None], y=y)
  return f"npz:{tmp_path}"


def test_evaluate_writes_results_and_figures(tmp_path):
  config = tiny.get_config()
  config.data.name = _npz_dir(tmp_path)
  config.train.num_steps = 1
  config.evals.clustering.num_restarts = 2
  config.evals.clustering.mcr2_steps = 20
  config.evals.linear_probe.steps = 100
  config.evals.max_test_examples = 20  # exercises the subset path
  config.evals.batch_size = 16  # one batch shape everywhere: fewer compilations
  config.evals.judge.recipe.update(widths=(4,), hidden=16, epochs=4)  # the judge in seconds
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)

  results = evaluate.evaluate(config, workdir)
  metrics = results["metrics"]
  assert results["step"] == 1 and results["num_train"] == 48 and results["num_test"] == 20
  for key in (
    "knn/top1",
    "linear_probe/top1",
    "nearest_subspace/top1",
    "clustering/kmeans_acc",
    "clustering/mcr2_nmi",
    "reconstruction/psnr",
    "reconstruction/consistency",
    "conditional_generation/explained_variance",
    "fid/frechet_z_zhat",
    "judge/top1",
    "judge/recon_consistency",
    "judge/cond_fd",
    "judge/cond_precision",
    "judge/uncond_recall",
    "judge/cond_purity",
  ):
    assert np.isfinite(metrics[key]), key
  assert "judge/cond_fd" not in results["baselines"]["raw_pixels"]  # it needs a decoder
  for baseline in ("raw_pixels", "random_encoder"):
    assert set(results["baselines"][baseline]) >= {"knn/top1", "clustering/kmeans_nmi"}
    assert "reconstruction/psnr" not in results["baselines"][baseline]
  # The bands separate the classes: the pixel kNN is perfect.
  assert results["baselines"]["raw_pixels"]["knn/top1"] == 100.0
  assert metrics["reconstruction/real_top1"] == 100.0

  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["metrics"] == metrics
  # Evaluated again: the baselines come from the cache (eval_cache.py), equal, untimed;
  # another seed of the initial encoder is another key.
  assert results["baselines_cached"] == []
  config.evals.figures = False
  again = evaluate.evaluate(config, workdir)
  assert again["baselines_cached"] == ["raw_pixels", "random_encoder"]
  for name, values in results["baselines"].items():
    untimed = {k: v for k, v in values.items() if not k.startswith("eval_seconds/")}
    assert again["baselines"][name] == untimed, name
  config.evals.knn.k = 3
  assert evaluate.evaluate(config, workdir)["baselines_cached"] == []
  with open(os.path.join(workdir, "results.md")) as f:
    markdown = f.read()
  assert "| knn/top1 |" in markdown and "random encoder" in markdown
  for name in (
    "reconstructions",
    "similarity",
    "spectra",
    "pca",
    "training_curves",
    "conditional_generation",
  ):
    path = os.path.join(workdir, "figures", f"{name}.png")
    assert results["figures"][name] == path and os.path.isfile(path), name
  # One row per cluster (3), the mean and 10 samples per row, 28 × 28 images enlarged 3× to
  # 84 px tiles, 1 px padding.
  with Image.open(results["figures"]["conditional_generation"]) as grid:
    assert grid.size == (11 * 85 + 1, 3 * 85 + 1)


def test_encoder_only_run_is_evaluated_and_compared_beside_a_game_run(tmp_path):
  config = tiny.get_config()
  config.data.name = _npz_dir(tmp_path)
  config.train.num_steps = 2
  config.evals.names = ("knn", "linear_probe", "reconstruction", "structure")
  config.evals.linear_probe.steps = 50
  config.evals.batch_size = 16
  config.evals.figures = False
  game_dir, tcr_dir = str(tmp_path / "game"), str(tmp_path / "tcr")
  train.train_and_evaluate(config, game_dir)
  tcr = config.copy_and_resolve_references()
  tcr.loss.mode = "tcr"
  train.train_and_evaluate(tcr, tcr_dir)

  # The encoder-only run alone: what needs g is n/a, the rest is scored.
  results = evaluate.evaluate(tcr, tcr_dir)
  assert results["not_applicable"] == ["reconstruction"]
  assert "reconstruction/psnr" not in results["metrics"]
  assert np.isfinite(results["metrics"]["knn/top1"])
  assert results["training"]["loss_mode"] == "tcr" and results["training"]["step"] == 2
  assert results["training"]["train_minutes"] > 0

  # The game run with the encoder-only run as one more column, without baselines.
  config.evals.baselines = False
  config.evals.compare_workdirs = (tcr_dir,)
  results = evaluate.evaluate(config, game_dir)
  assert list(results["baselines"]) == ["tcr: tcr"]
  compared = uctrl_jax.load(tcr_dir)
  expected = evaluators.run_all(
    evaluators.build(config, names=("knn",)),
    compared.encode,
    None,
    evaluate.load_data(config),
    batch_size=16,
  )
  assert results["baselines"]["tcr: tcr"]["knn/top1"] == expected["knn/top1"]
  assert "reconstruction/psnr" in results["metrics"]
  with open(os.path.join(game_dir, "results.md")) as f:
    lines = f.read().splitlines()
  header = lines.index("| metric | trained | tcr: tcr |")
  assert lines[header + 1] == "|---|---:|---:|"  # as many columns as the header
  assert any(line.startswith("- tcr: tcr: `") and "loss.mode tcr, step 2" in line for line in lines)

  # A compared run must be on the run's data.
  saved = checkpointing.load_config(tcr_dir)
  saved.data.name = "npz:/elsewhere"
  checkpointing.save_config(tcr_dir, saved)
  with pytest.raises(
    config_checks.ConfigError, match="compare_workdirs: .* was trained on 'npz:/elsewhere'"
  ):
    evaluate.evaluate(config, game_dir)
