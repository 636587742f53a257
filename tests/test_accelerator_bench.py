"""benchmarks/accelerator_bench.py in its CI-size form, as on an accelerator image.

The accelerator images this project targets have jax, flax, optax and numpy but no
TensorFlow, tfds, clu or ml_collections: the script runs here with those made
unimportable (conftest's ``env_without``, which reaches the script's per-case child
processes too), on CPU, one tiny case (DCGAN, float32, global batch 16 over the 8
simulated devices, w = 8, d = 16) with the shipped config's views.
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
    line.startswith("| pair | dtype | global batch | views | iteration ms | images/s")
    for line in lines
  )
  [row_line] = [line for line in lines if line.startswith("| dcgan |")]
  result = json.loads(out.read_text())
  assert result["platform"] == "cpu" and result["devices"] == 8
  [row] = result["rows"]
  assert row["status"] == "ok", row
  # configs/cifar.py as shipped: 8 views (configs/default.py's), 2 encoder steps.
  assert (row["pair"], row["dtype"], row["batch"], row["views"], row["encoder_steps"]) == (
    "dcgan",
    "float32",
    16,
    8,
    2,
  )
  assert row["iteration_ms"] > 0 and row["first_iteration_s"] > 0
  assert abs(row["images_per_s"] - 16e3 / row["iteration_ms"]) < 1e-6 * row["images_per_s"]
  assert 0 < row["rate_share"] < 1
  assert (
    abs(row["rate_share"] * row["iteration_ms"] - row["rate_terms_ms"]) < 1e-9 * row["iteration_ms"]
  )
  assert row["params"]["encoder"] > 0 and row["params"]["decoder"] > 0
  # XLA's FLOPs, counted for one device's program: per iteration at least the encoder's
  # convs on [X; X_a] (9 × 16 images) forward and backward (≈ 3× forward) in two encoder
  # steps, 2·k²·C_in·C_out·H_out² FLOPs per image each forward.
  convs = [(3, 8, 16), (8, 16, 8), (16, 32, 4)]  # (C_in, C_out, H_out), 4×4 kernels
  forward = 144 * sum(2 * 16 * c * o * h * h for c, o, h in convs)
  per_device = row["flops_per_iteration_per_device"]
  assert row["flops_per_iteration"] == 8 * per_device
  assert 2 * 2.5 * forward < row["flops_per_iteration"] < 2 * 10 * forward
  assert abs(row["achieved_flops_per_s"] * row["iteration_ms"] / 1e3 - per_device) < (
    1e-6 * per_device
  )
  peak = row["matmul_peak"]
  assert peak["dtype"] == "float32" and peak["flops_per_s"] == 2 * peak["n"] ** 3 / peak["seconds"]
  assert row["utilisation"] == row["achieved_flops_per_s"] / peak["flops_per_s"]
  assert 0 < row["rate_flops_share"] < 1
  assert row["rate_flops_share"] == row["rate_terms_flops"] / per_device
  assert row["peak_memory_bytes"] is None  # XLA:CPU reports no memory statistics
  assert row_line.endswith("| n/a |")
