"""Equal-budget sweeps on Fashion-MNIST: train each variant, evaluate it, tabulate.

    .venv/bin/python -m experiments.sweep --sweep=defaults --out=/tmp/uctrl_sweep
    .venv/bin/python -m experiments.sweep --sweep=defaults --out=/tmp/uctrl_sweep --steps=500 --only=base,exact

Every variant is ``configs/fashion_mnist.py`` plus a few overrides (``SWEEPS``), trained
for the same number of iterations (``--steps``) with the same seed in ``OUT/NAME`` and
then evaluated on the test split: kNN top-1 of ``encode(x)`` (k = 20, T = 0.07, the
whole train split as reference), reconstruction class consistency (the same kNN fit
on real training pixels labels ``g(f(x_test))``), MSE and PSNR, and the final value of
each objective term on the last training batch. Rows go to ``OUT/NAME/sweep_row.json``
and the whole table to ``OUT/sweep.md`` after each variant.

Interrupted sweeps resume: finished variants are skipped, and an interrupted variant
resumes from its latest checkpoint (``train.train_and_evaluate`` does that).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

import uctrl_jax  # noqa: E402
from configs import fashion_mnist  # noqa: E402
from uctrl_jax import evaluate  # noqa: E402
from uctrl_jax import evaluators  # noqa: E402
from uctrl_jax import rate_reduction as rr  # noqa: E402
from uctrl_jax import train  # noqa: E402

# name -> overrides of configs/fashion_mnist.py ("section.key": value).
SWEEPS = {
  # The settings behind configs/fashion_mnist.py (the trainer issue): each row
  # changes one of them.
  "defaults": {
    "base": {},
    "pixel_shuffle": {"model.upsample": "pixel_shuffle"},
    "conv_transpose": {"model.upsample": "conv_transpose"},
    "exact": {"loss.sample_distance": "exact"},
    "lambda_aug=2": {"loss.lambda_aug": 2.0},
    "lambda_self=2": {"loss.lambda_self": 2.0},
    "eps_sq=0.1": {"loss.eps_sq": 0.1},
    "encoder_steps=2": {"train.encoder_steps": 2},
    "lr=5e-4": {"train.encoder_lr": 5e-4, "train.decoder_lr": 5e-4},
  },
}
# (column label, format) of each metric in the experiments' tables: one name per metric.
METRICS = {
  "knn/top1": ("kNN", "{:.2f}"),
  "linear_probe/top1": ("linear", "{:.2f}"),
  "nearest_subspace/top1": ("nearest subspace", "{:.2f}"),
  "clustering/kmeans_acc": ("k-means ACC", "{:.1f}"),
  "clustering/kmeans_nmi": ("k-means NMI", "{:.3f}"),
  "clustering/mcr2_acc": ("MCR² ACC", "{:.1f}"),
  "reconstruction/psnr": ("PSNR", "{:.2f}"),
  "reconstruction/consistency": ("pixel-kNN consistency", "{:.1f}"),
  "judge/recon_consistency": ("judge consistency", "{:.1f}"),
  "judge/recon_fd": ("recon FD", "{:.1f}"),
  "judge/cond_fd": ("cond FD", "{:.1f}"),
  "judge/cond_purity": ("purity", "{:.1f}"),
  "judge/cond_consistency": ("cond consistency", "{:.1f}"),
  "judge/uncond_fd": ("uncond FD", "{:.1f}"),
  "judge/prior_fd": ("prior FD", "{:.1f}"),
}


def columns(*keys: str) -> tuple:
  """``(label, key, format)`` table columns of the ``METRICS`` named ``keys``."""
  return tuple((METRICS[k][0], k, METRICS[k][1]) for k in keys)


def add_data_arguments(parser) -> None:
  """The experiments' data flags: first examples of each split (smoke runs), tfds dir."""
  parser.add_argument("--max_train_examples", type=int, default=None, help="smoke runs")
  parser.add_argument("--max_test_examples", type=int, default=None, help="smoke runs")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (None: the config's)")


# Terms reported from the last training iteration (decoder step's view of the game).
TERMS = ("R", "delta_R_z_zhat", "aug", "self")


def variant_config(overrides: dict, steps: int):
  """``configs/fashion_mnist.py`` with ``overrides`` (``"section.key"`` or ``"key"``), for
  ``steps`` iterations, evaluated afterwards by the sweep (not during training)."""
  config = fashion_mnist.get_config()
  for key, value in overrides.items():
    *path, name = key.split(".")
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  config.train.num_steps = steps
  config.train.checkpoint_every = min(config.train.checkpoint_every, steps)
  config.train.image_every = steps
  config.evals.during_training.names = ()
  return config


def run_variant(
  name: str, overrides: dict, steps: int, workdir: str, data, names=("knn", "reconstruction")
) -> tuple[dict, "evaluators.Context"]:
  """Trains (or resumes) one variant and evaluates it: its row and the evaluation context."""
  config = variant_config(overrides, steps)
  start = time.time()
  state = train.train_and_evaluate(config, workdir)
  seconds = time.time() - start
  loop = uctrl_jax.load(workdir)
  # One context: the terms below reuse the features and reconstructions the evaluators made.
  context = evaluators.Context(data, loop.encode, loop.decode)
  metrics = evaluators.run_context(evaluators.build(config, names=names), context)
  row = {
    "name": name,
    "overrides": overrides,
    "steps": int(state.step),
    "train_seconds": seconds,
    **{k: v for k, v in metrics.items() if "seconds" not in k},
  }
  row.update(_final_terms(context, config.loss.eps_sq))
  return row, context


def run_sweep(
  variants: dict,
  names: list,
  out: str,
  steps,
  run,
  table,
  *,
  row_file: str = "sweep_row.json",
  table_file: str = "sweep.md",
) -> list[dict]:
  """Runs ``run(name, overrides, workdir) -> row`` for each of ``names`` not yet done.

  A finished variant's row is ``OUT/NAME/<row_file>`` (read back instead of rerun);
  ``table(rows)`` is rewritten to ``OUT/<table_file>`` and printed after each variant.
  ``steps`` is for the progress line only (None: each variant's own).
  """
  unknown = sorted(set(names) - set(variants))
  if unknown:
    raise SystemExit(f"unknown variants {unknown}; known: {', '.join(variants)}")
  rows = []
  for name in names:
    workdir = os.path.join(out, name.replace("=", "_"))
    row_path = os.path.join(workdir, row_file)
    if os.path.exists(row_path):
      with open(row_path) as f:
        row = json.load(f)
    else:
      print(
        f"--- {name}: {variants[name]}" + (f" ({steps} iterations)" if steps else ""), flush=True
      )
      row = run(name, variants[name], workdir)
      with open(row_path, "w") as f:
        json.dump(row, f, indent=1)
    rows.append(row)
    text = table(rows)
    with open(os.path.join(out, table_file), "w") as f:
      f.write(text)
    print(text, flush=True)
  return rows


def _final_terms(context, eps_sq: float, n: int = 512) -> dict:
  """R(Z), ΔR(Z, Ẑ) and cos(z, ẑ) on the first ``n`` test images, eval mode."""
  Z, Zhat = context.z_test[:n], context.zhat_test[:n]
  return {
    "test/R": float(rr.coding_rate(Z, eps_sq)),
    "test/delta_R_z_zhat": float(rr.rate_distance(Z, Zhat, eps_sq)),
    "test/cos_z_zhat": float(np.mean(np.sum(Z * Zhat, axis=1))),
  }


def markdown(rows: list[dict], raw_knn: float) -> str:
  lines = [
    f"raw-pixel kNN top-1 (same protocol): {raw_knn:.2f}",
    "",
    "| variant | iters | train min | kNN | consistency | MSE | PSNR | R(Z) | ΔR(Z,Ẑ) | cos(z,ẑ) |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['name']} | {r['steps']} | {r['train_seconds'] / 60:.1f} | {r['knn/top1']:.2f} | "
      f"{r['reconstruction/consistency']:.2f} | {r['reconstruction/mse']:.3f} | "
      f"{r['reconstruction/psnr']:.2f} | {r['test/R']:.1f} | {r['test/delta_R_z_zhat']:.2f} | "
      f"{r['test/cos_z_zhat']:.3f} |"
    )
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep", default="defaults", choices=sorted(SWEEPS))
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--only", default="", help="comma-separated variant names")
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  variants = SWEEPS[args.sweep]
  base = variant_config({}, args.steps)
  data = evaluate.load_data(base)
  raw = evaluators.run_all(evaluators.build(base, names=("knn",)), evaluate.raw_pixels, None, data)
  run_sweep(
    variants,
    [n for n in args.only.split(",") if n] or list(variants),
    args.out,
    args.steps,
    lambda name, overrides, workdir: run_variant(name, overrides, args.steps, workdir, data)[0],
    lambda rows: markdown(rows, raw["knn/top1"]),
  )


if __name__ == "__main__":
  main()
