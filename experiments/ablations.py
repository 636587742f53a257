"""What each term of the uCTRL game does (issue 9): equal-budget ablations on Fashion-MNIST.

    .venv/bin/python -m experiments.ablations --out=/tmp/uctrl_ablations \\
        --doc=docs/ablations.md --figure=docs/ablation_heatmaps.png

Each variant is ``configs/fashion_mnist.py`` with one change (``VARIANTS``), trained for
``--steps`` iterations (default: the config's own) with seed 0 (the full objective also
with seed 1: the noise level) in ``OUT/NAME``, then evaluated on the whole Fashion-MNIST split (60 000 train /
10 000 test) with the library's evaluators:

- kNN top-1 (k = 20, T = 0.07) and linear-probe top-1 of ``f(x)``;
- clustering of the test features: k-means and MCR² ACC (Hungarian) and NMI;
- reconstruction PSNR and class consistency (a kNN on real training pixels labels
  ``g(f(x_test))``);
- the judge's view of the generation (``evaluators/judge.py``): its class consistency
  of reconstructions, the Fréchet distance (FD) of reconstructions and of
  cluster-conditional samples, and the samples' cluster purity;
- structure score: mean ``|cos|`` of same-class test feature pairs over different-class
  pairs (``evaluators/structure.py``; 1 = no class structure);
- the final value of each term, ``R(Z)``, ``ΔR(Z, Ẑ)``, ``Σ ΔR(zᵢ, z_aᵢ)``,
  ``Σ ΔR(zᵢ, ẑᵢ)`` (as logged by the last decoder step, in the run's own sample distance).

Outputs: ``OUT/NAME/sweep_row.json`` per variant, ``OUT/sweep.md`` (the table, rewritten
after each variant), ``OUT/heatmaps.png`` (``|Z Zᵀ|`` of the full run beside the
ablation with the lowest structure score), and with ``--doc`` the table replaces the
block between ``<!-- ablations:begin -->`` and ``<!-- ablations:end -->`` of that file.
An interrupted sweep resumes: finished variants are read back, an interrupted one
resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from configs import fashion_mnist  # noqa: E402
from experiments import sweep  # noqa: E402  (configs, training, resume)
from uctrl_jax import evaluate  # noqa: E402
from uctrl_jax import evaluators  # noqa: E402
from uctrl_jax import figures  # noqa: E402

# name -> (label in the table, overrides of configs/fashion_mnist.py).
VARIANTS = {
  "full": ("full objective (seed 0)", {}),
  "full_seed1": ("full objective (seed 1)", {"seed": 1}),
  "no_rate": ("without R(Z)", {"loss.rate_weight": 0.0}),
  "no_delta": ("without ΔR(Z,Ẑ)", {"loss.delta_weight": 0.0}),
  "no_aug": ("λ₁ = 0 (no invariance)", {"loss.lambda_aug": 0.0}),
  "no_self": ("λ₂ = 0 (no self-consistency)", {"loss.lambda_self": 0.0}),
  "exact": ("exact ΔR(zᵢ, z'ᵢ) sample terms", {"loss.sample_distance": "exact"}),
  "ctrl_binary": ("ctrl_binary (ΔR(Z,Ẑ) only)", {"loss.mode": "ctrl_binary"}),
  "eps_sq_0.1": ("ε² = 0.1", {"loss.eps_sq": 0.1}),
  "eps_sq_2": ("ε² = 2", {"loss.eps_sq": 2.0}),
  "d_64": ("d = 64", {"model.feature_dim": 64}),
  "d_256": ("d = 256", {"model.feature_dim": 256}),
}
EVALUATORS = ("knn", "linear_probe", "clustering", "reconstruction", "judge", "structure")
# (column, row key, format) of the table.
COLUMNS = sweep.columns(
  "knn/top1",
  "linear_probe/top1",
  "clustering/kmeans_acc",
  "clustering/kmeans_nmi",
  "clustering/mcr2_acc",
  "reconstruction/psnr",
  "reconstruction/consistency",
  "judge/recon_consistency",
  "judge/recon_fd",
  "judge/cond_fd",
  "judge/cond_purity",
) + (
  ("structure", "structure/score", "{:.2f}"),
  ("R(Z)", "term/R", "{:.1f}"),
  ("ΔR(Z,Ẑ)", "term/delta_R_z_zhat", "{:.2f}"),
  ("aug", "term/aug", "{:.3f}"),
  ("self", "term/self", "{:.3f}"),
  ("train min", "train_seconds", "{:.1f}"),
)
TERMS = ("R", "delta_R_z_zhat", "aug", "self")
HEATMAP_FEATURES = "structure_features.npz"  # per run: a balanced subset of test features


def final_terms(workdir: str) -> dict:
  """The last logged value of each term of the game: the decoder step's, or the encoder
  step's where the decoder step has none (it reads no views: no augmentation term)."""
  scalars = figures.read_scalars(workdir)
  out = {}
  for t in TERMS:
    for player in ("decoder", "encoder"):
      if f"{player}/{t}" in scalars:
        out[f"term/{t}"] = float(scalars[f"{player}/{t}"][1][-1])
        break
  return out


def run(name: str, overrides: dict, workdir: str, steps: int, data) -> dict:
  row, context = sweep.run_variant(name, overrides, steps, workdir, data, names=EVALUATORS)
  row["overrides"] = {k: v for k, v in overrides.items() if k != "data.data_dir"}
  row["label"] = VARIANTS[name][0]
  row.update(final_terms(workdir))
  idx = figures.balanced_subset(data.y_test, 50)
  np.savez(os.path.join(workdir, HEATMAP_FEATURES), z=context.z_test[idx], y=data.y_test[idx])
  return row


def _cell(row: dict, key: str, fmt: str) -> str:
  value = row.get(key)
  if value is None:
    return "—"
  if key == "train_seconds":
    value = value / 60
  return fmt.format(value) if np.isfinite(value) else str(value)


def markdown(rows: list[dict], config, raw: dict, data) -> str:
  """The table; the last line gives |seed 0 − seed 1| of the full objective."""
  lines = [
    "| variant | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
    "|---|" + "---:|" * len(COLUMNS),
  ]
  for row in rows:
    lines.append(
      f"| {row['label']} | " + " | ".join(_cell(row, k, f) for _, k, f in COLUMNS) + " |"
    )
  by_name = {r["name"]: r for r in rows}
  if "full" in by_name and "full_seed1" in by_name:
    a, b = by_name["full"], by_name["full_seed1"]
    diff = {k: abs(a[k] - b[k]) for _, k, _ in COLUMNS if k in a and k in b}
    lines.append(
      "| *noise: \\|seed 0 − seed 1\\|* | "
      + " | ".join(_cell(diff, k, f) if k != "train_seconds" else "" for _, k, f in COLUMNS)
      + " |"
    )
  # The feature-only evaluators on raw pixels; the other columns stay empty.
  lines.append(
    "| *raw pixels* | "
    + " | ".join(_cell(raw, k, f) if k in raw else "" for _, k, f in COLUMNS)
    + " |"
  )
  return (
    f"{config.train.num_steps} iterations each (batch {config.train.batch_size}, "
    f"{config.data.num_views} views unless the row changes them), Fashion-MNIST, evaluated on "
    f"{len(data.x_train)} train / {len(data.x_test)} test images. Accuracies, "
    "consistencies and purity in %, PSNR in dB, FD in the judge's features; terms as "
    "logged at the last decoder step (aug: at the last encoder step).\n\n" + "\n".join(lines) + "\n"
  )


def heatmaps(rows: list[dict], out: str) -> str | None:
  """``OUT/heatmaps.png``: the full run beside the ablation with the lowest structure score."""
  done = {r["name"]: r for r in rows if "structure/score" in r}
  others = [r for n, r in done.items() if not n.startswith("full")]
  if "full" not in done or not others:
    return None
  worst = min(others, key=lambda r: r["structure/score"])
  runs = []
  for row in (done["full"], worst):
    with np.load(os.path.join(out, row["name"], HEATMAP_FEATURES)) as f:
      z, y = f["z"], f["y"]
    runs.append((f"{row['label']}: structure {row['structure/score']:.2f}", z))
  return figures.similarity_runs(runs, y, os.path.join(out, "heatmaps.png"))


def update_doc(path: str, table: str, marker: str = "ablations") -> None:
  """Replaces the block between ``<!-- MARKER:begin -->`` and ``<!-- MARKER:end -->``."""
  with open(path) as f:
    text = f.read()
  pattern = re.compile(rf"(<!-- {marker}:begin -->\n).*?(<!-- {marker}:end -->)", re.S)
  if not pattern.search(text):
    raise SystemExit(f"{path} has no <!-- {marker}:begin --> ... <!-- {marker}:end --> block")
  with open(path, "w") as f:
    f.write(pattern.sub(lambda m: m.group(1) + table + m.group(2), text))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=None, help="None: the config's num_steps")
  parser.add_argument("--only", default="", help="comma-separated variant names")
  parser.add_argument(
    "--doc", default=None, help="page whose ablations block gets the table (docs/ablations.md)"
  )
  parser.add_argument("--figure", default=None, help="also copy heatmaps.png here")
  sweep.add_data_arguments(parser)
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  data_dir = {"data.data_dir": args.data_dir} if args.data_dir else {}
  steps = args.steps or fashion_mnist.get_config().train.num_steps
  base = sweep.variant_config(data_dir, steps)
  base.evals.max_train_examples = args.max_train_examples
  base.evals.max_test_examples = args.max_test_examples
  data = evaluate.load_data(base)
  raw = evaluators.run_all(
    evaluators.build(base, names=("knn", "linear_probe", "clustering", "structure")),
    lambda x: x.reshape(len(x), -1),
    None,
    data,
  )
  names = [n for n in args.only.split(",") if n] or list(VARIANTS)
  overrides = {name: {**v[1], **data_dir} for name, v in VARIANTS.items()}
  rows = sweep.run_sweep(
    overrides,
    names,
    args.out,
    steps,
    lambda name, o, workdir: run(name, o, workdir, steps, data),
    lambda rows: markdown(rows, base, raw, data),
  )
  table = markdown(rows, base, raw, data)
  path = heatmaps(rows, args.out)
  if path and args.figure:
    shutil.copyfile(path, args.figure)
  if args.doc:
    update_doc(args.doc, table)
  print(
    f"sweep wall time this invocation: {(time.time() - start) / 60:.1f} min "
    f"(training: {sum(r['train_seconds'] for r in rows) / 60:.1f} min over {len(rows)} runs)"
  )
  return rows


if __name__ == "__main__":
  main()
