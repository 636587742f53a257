"""experiments/ablations.py end to end on a few iterations of real Fashion-MNIST."""

import json
import os

import numpy as np

from experiments import ablations


def test_ablation_sweep_writes_rows_table_doc_and_heatmaps(fashion_mnist_data_dir, tmp_path):
  doc = tmp_path / "ablations.md"
  doc.write_text("intro\n<!-- ablations:begin -->\nold\n<!-- ablations:end -->\nafter\n")
  out = tmp_path / "sweep"
  argv = [
    f"--out={out}",
    "--steps=2",
    "--only=full,full_seed1,no_rate",
    "--max_train_examples=600",
    "--max_test_examples=200",
    f"--data_dir={fashion_mnist_data_dir}",
    f"--doc={doc}",
  ]
  rows = ablations.main(argv)
  assert [r["name"] for r in rows] == ["full", "full_seed1", "no_rate"]
  for row in rows:
    assert row["steps"] == 2
    for key in (
      "knn/top1",
      "linear_probe/top1",
      "clustering/kmeans_acc",
      "structure/score",
      "reconstruction/psnr",
      "reconstruction/consistency",
      "term/R",
      "term/self",
    ):
      assert np.isfinite(row[key]), key
  # The seeds give different runs; the ablation is recorded without the data_dir override.
  full, seed1, no_rate = rows
  assert full["term/R"] != seed1["term/R"]
  assert no_rate["overrides"] == {"loss.rate_weight": 0.0}
  text = doc.read_text()
  assert "old" not in text and text.startswith("intro\n") and text.endswith("after\n")
  assert "| without R(Z) |" in text and "noise: \\|seed 0 − seed 1\\|" in text
  assert "| *raw pixels* |" in text
  assert os.path.isfile(out / "heatmaps.png")
  # A second invocation reads the finished rows back instead of training again.
  with open(out / "no_rate" / "sweep_row.json") as f:
    saved = json.load(f)
  again = ablations.main(argv)
  assert again[2]["train_seconds"] == saved["train_seconds"]
