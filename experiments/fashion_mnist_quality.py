"""Fashion-MNIST quality benchmark: train configs/fashion_mnist.py, evaluate, print a table.

    .venv/bin/python -m experiments.fashion_mnist_quality --workdir=/tmp/fm_quality

trains from scratch (about 12 minutes on 2 CPU cores; an existing workdir resumes, so
the training time printed is that of the remaining steps), then runs
``uctrl_jax.evaluate`` on the full 60 000 / 10 000 split and prints a markdown table:
hardware, wall times, kNN, linear probe, nearest subspace, clustering ACC/NMI (k-means
and MCR²), PSNR and reconstruction class consistency, each beside the raw-pixel and
initial-encoder baselines. ``results.json``, ``results.md`` and ``figures/`` land in
the workdir. Config overrides work as for main.py; a smoke run:

    .venv/bin/python -m experiments.fashion_mnist_quality --workdir=/tmp/fm_smoke \\
        --config.train.num_steps=2 --config.evals.max_train_examples=2000 \\
        --config.evals.max_test_examples=500

``--skip_training`` evaluates the workdir as it is.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it has checkpoints).")
flags.DEFINE_bool("skip_training", False, "Only evaluate the latest checkpoint of --workdir.")
config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "configs", "fashion_mnist.py"),
  "Experiment config.",
)
flags.mark_flags_as_required(["workdir"])

# (row label, metric key) of the table, in order.
ROWS = (
  ("kNN top-1 (%)", "knn/top1"),
  ("linear probe top-1 (%)", "linear_probe/top1"),
  ("nearest subspace top-1 (%)", "nearest_subspace/top1"),
  ("k-means ACC (%)", "clustering/kmeans_acc"),
  ("k-means NMI", "clustering/kmeans_nmi"),
  ("MCR² clustering ACC (%)", "clustering/mcr2_acc"),
  ("MCR² clustering NMI", "clustering/mcr2_nmi"),
  ("reconstruction PSNR (dB)", "reconstruction/psnr"),
  ("reconstruction MSE", "reconstruction/mse"),
  ("class consistency of g(f(x)) (%)", "reconstruction/consistency"),
  ("pixel kNN on real test images (%)", "reconstruction/real_top1"),
  ("structure score: within- over between-class mean abs(cos)", "structure/score"),
)


def table(results, train_seconds) -> str:
  """The markdown summary of ``evaluate``'s results."""

  def fmt(value):
    return "—" if value is None else (f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}")

  base = results["baselines"]
  lines = [
    f"- hardware: {results['hardware']}",
    f"- training: {'skipped' if train_seconds is None else f'{train_seconds / 60:.1f} min'}"
    f" (step {results['step']})",
    f"- evaluation: {results['wall_time_s'] / 60:.1f} min on {results['num_train']} train / "
    f"{results['num_test']} test examples",
    "",
    "| metric | uCTRL | raw pixels | random encoder |",
    "|---|---:|---:|---:|",
  ]
  for label, key in ROWS:
    if key in results["metrics"]:
      cells = [results["metrics"][key]] + [
        base.get(b, {}).get(key) for b in ("raw_pixels", "random_encoder")
      ]
      lines.append(f"| {label} | " + " | ".join(fmt(c) for c in cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  from uctrl_jax import evaluate  # pylint: disable=import-outside-toplevel  (after flags)
  from uctrl_jax import train  # pylint: disable=import-outside-toplevel

  config = FLAGS.config
  train_seconds = None
  if not FLAGS.skip_training:
    start = time.time()
    train.train_and_evaluate(config, FLAGS.workdir)
    train_seconds = time.time() - start
  results = evaluate.evaluate(config, FLAGS.workdir)
  print(table(results, train_seconds))


if __name__ == "__main__":
  app.run(main)
