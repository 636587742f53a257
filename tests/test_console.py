"""The console and the pictures a user reads: third-party INFO lines filtered, the
progress line, PNG grids large enough to see, results.md tables that line up.

The console line count of a real run is checked in tests/test_configs.py (tiny).
"""

import logging
import os

import numpy as np

from uctrl_jax import console
from uctrl_jax import evaluate
from uctrl_jax import image_grid


def _record(pathname, level=logging.INFO):
  return logging.LogRecord("absl", level, pathname, 1, "message %d", (7,), None)


def test_project_info_passes_third_party_info_does_not():
  keep = console._ProjectOnly()  # pylint: disable=protected-access
  ours = os.path.join(os.path.dirname(console.__file__), "train.py")
  theirs = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert keep.filter(_record(ours))
  assert not keep.filter(_record(theirs))
  assert keep.filter(_record(theirs, logging.WARNING))  # everyone's warnings stay
  line = console._Short().format(_record(theirs, logging.WARNING))  # pylint: disable=protected-access
  assert line.endswith(" warning: message 7") and line[2] == ":"


def test_progress_line_has_the_terms_and_an_eta():
  line = console.progress_line(10, 1500, {"encoder/R": 56.349, "decoder/recon_mse": 0.19}, 0.5)
  assert line == "step 10/1500 | R 56.35 mse 0.19 | 2.00 it/s, ETA 0:12:25"
  assert console.progress_line(1, 2, {}, None) == "step 1/2 | "


def test_png_grids_of_small_images_are_enlarged_by_whole_pixels():
  x = np.linspace(-1, 1, 2 * 28 * 28).reshape(2, 28, 28, 1)
  grid = image_grid.image_grid([x], pad=1)
  assert grid.shape == (1 + 3 * 28 + 1, 1 + 2 * (3 * 28 + 1), 1)  # 3× → 84 px a tile
  tile = grid[1:85, 1:85, 0]
  assert (tile[::3, ::3] == tile[2::3, 2::3]).all()  # nearest neighbour
  assert image_grid.image_grid([np.zeros((1, 96, 96, 3))]).shape == (98, 98, 3)  # not shrunk


def _results(baselines):
  return {
    "workdir": "/w",
    "step": 4,
    "dataset": "d",
    "num_train": 8,
    "num_test": 4,
    "hardware": "cpu",
    "wall_time_s": 1.0,
    "training": None,
    "metrics": {"knn/top1": 50.0, "eval_seconds/knn": 0.1},
    "baselines": baselines,
    "not_applicable": ["reconstruction"],
    "skipped_without_labels": [],
    "figures": {},
    "evals_config": {},
    "config": {},
  }


def test_results_md_rows_have_as_many_columns_as_the_header():
  for baselines in ({}, {"raw_pixels": {"knn/top1": 40.0, "eval_seconds/knn": 0.2}}):
    text = evaluate.results_markdown(_results(baselines))
    tables = [l for l in text.splitlines() if l.startswith("|")]
    assert tables
    header_cells = None
    for line in tables:
      cells = line.count("|")
      if not line.startswith("|---") and ("| metric |" in line or "| part |" in line):
        header_cells = cells
      assert cells == header_cells, (line, text)
