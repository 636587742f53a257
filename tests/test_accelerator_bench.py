"""benchmarks/accelerator_bench.py in its CI-size form, as on an accelerator image.

The accelerator images this project targets have jax, flax, optax and numpy but no
TensorFlow, tfds, clu or ml_collections: the script runs here with those made
unimportable (conftest's ``env_without``, which reaches the script's per-case child
processes too), on CPU, one tiny case (DCGAN, float32, global batch 16 over the 8
simulated devices, w = 8, d = 16).
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT_ON_ACCELERATOR_IMAGES = (
  "tensorflow",
  "tensorflow_datasets",
  "clu",
  "ml_collections",
  "threadpoolctl",
)


def test_ci_case_runs_without_tensorflow_clu_or_ml_collections(env_without, tmp_path):
  out = tmp_path / "rows.json"
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.accelerator_bench", "--ci", "--json", str(out)],
    cwd=REPO,
    env=env_without(*ABSENT_ON_ACCELERATOR_IMAGES),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert any(
    line.startswith("| pair | dtype | global batch | iteration ms | images/s") for line in lines
  )
  [row_line] = [line for line in lines if line.startswith("| dcgan |")]
  result = json.loads(out.read_text())
  assert result["platform"] == "cpu" and result["devices"] == 8
  [row] = result["rows"]
  assert row["status"] == "ok", row
  assert (row["pair"], row["dtype"], row["batch"], row["encoder_steps"]) == (
    "dcgan",
    "float32",
    16,
    2,
  )
  assert row["iteration_ms"] > 0 and row["first_iteration_s"] > 0
  assert abs(row["images_per_s"] - 16e3 / row["iteration_ms"]) < 1e-6 * row["images_per_s"]
  assert 0 < row["rate_share"] < 1
  assert (
    abs(row["rate_share"] * row["iteration_ms"] - row["rate_terms_ms"]) < 1e-9 * row["iteration_ms"]
  )
  assert row["params"]["encoder"] > 0 and row["params"]["decoder"] > 0
  assert row["peak_memory_bytes"] is None  # XLA:CPU reports no memory statistics
  assert row_line.endswith("| n/a |")
