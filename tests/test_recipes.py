"""experiments/recipes.py end to end: budgets from timed iterations, rows, table, curve.

About four minutes on 2 CPU cores (five small runs and their evaluations): a slow test,
run with ``pytest -m slow tests/test_recipes.py``.
"""

import json
import os

import jax
import numpy as np
import pytest

from experiments import recipes
import uctrl_jax


@pytest.mark.slow
def test_recipes_train_each_seed_for_the_measured_budget_and_tabulate(
  fashion_mnist_data_dir, tmp_path
):
  out = tmp_path / "recipes"
  common = [
    f"--out={out}",
    "--minutes=0.01",
    "--speed_iterations=1",
    "--max_train_examples=600",
    "--max_test_examples=200",
    "--evaluators=knn,reconstruction",
    f"--data_dir={fashion_mnist_data_dir}",
  ]
  rows = recipes.main(common + ["--only=tcr", "--seeds=0,1"])
  rows += recipes.main(common + ["--only=uctrl", "--seeds=0"])
  assert [r["name"] for r in rows] == ["tcr_seed0", "tcr_seed1", "uctrl_seed0"]
  for name in ("uctrl", "tcr"):
    with open(out / f"{name}_seed0" / "budget.json") as f:
      budget = json.load(f)
    # 0.01 min is below any iteration count: the floor of 10 iterations applies.
    assert budget["steps"] == 10 and budget["seconds_per_iteration"] > 0
  by_name = {r["name"]: r for r in rows}
  for row in rows:
    assert row["steps"] == 10 and row["train_minutes"] > 0 and np.isfinite(row["knn/top1"])
  assert np.isfinite(by_name["uctrl_seed0"]["reconstruction/psnr"])
  assert "reconstruction/psnr" not in by_name["tcr_seed0"]  # encoder only: n/a
  # Two seeds, two runs.
  params = [uctrl_jax.load(str(out / f"tcr_seed{k}")).state.encoder_params for k in (0, 1)]
  assert not all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1]))
  )
  table = (out / "recipes.md").read_text()
  assert "| tcr_seed1 |" in table and "| **uctrl**:" in table and "| *raw pixels* |" in table
  assert "| *untrained encoder* |" in table
  # Read back, not retrained.
  again = recipes.main(common + ["--only=tcr", "--seeds=0,1"])
  assert [r["train_minutes"] for r in again] == [r["train_minutes"] for r in rows[:2]]

  curve = recipes.main(common + ["--curve=tcr", "--multiple=2"])
  assert [r["step"] for r in curve] == [10, 20]
  assert curve[1]["train_minutes"] > curve[0]["train_minutes"]
  assert os.path.isfile(out / "curve_tcr.png") and os.path.isfile(out / "curve_tcr.json")
