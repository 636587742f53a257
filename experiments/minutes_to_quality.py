"""Minutes to quality on Fashion-MNIST: how many iterations (and views) the default needs.

    .venv/bin/python -m experiments.minutes_to_quality --out=/tmp/uctrl_mtq \\
        --doc=docs/minutes_to_quality.md --figure=docs/figures/minutes_to_quality.png

Each point is ``configs/fashion_mnist.py`` with ``data.num_views = V`` trained for N
iterations, its own cosine schedule over those N (a shorter run, not an early checkpoint
of a longer one), seeds 0 and 1, scored on the whole split (60 000 / 10 000) with kNN,
the linear probe, reconstruction (PSNR, pixel-kNN consistency) and the judge
(its consistency of reconstructions, FD of conditional samples).

The x axis is *idle* training minutes: N times the seconds per iteration of V views,
measured once in this process with every variant interleaved (``recipes.SpeedProbe``,
the fastest of ``SPEED_ROUNDS`` rounds, real input pipeline, kept in ``OUT/speed.json``),
so that runs that shared the machine with other work still sit where an idle machine
would put them. Start-up, compilation and checkpoints are not in it (the README's
minutes are the whole command's).

A point passes when the mean of its seeds meets the quality the default must keep
(``THRESHOLDS``). Outputs: ``OUT/V<v>_<n>_seed<k>/mtq_row.json`` per run (an interrupted
invocation resumes), ``OUT/minutes_to_quality.md`` and ``.png``; ``--doc`` writes the
table between ``<!-- mtq:begin -->`` and ``<!-- mtq:end -->`` of that page.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402
import numpy as np  # noqa: E402

from experiments import ablations  # noqa: E402  (update_doc)
from experiments import recipes  # noqa: E402
from experiments import sweep  # noqa: E402
from uctrl_jax import evaluate  # noqa: E402
from uctrl_jax import figures  # noqa: E402

# (views, iterations) points, in the order they run: the first seed of each first.
POINTS = (
  (8, 250),
  (8, 500),
  (8, 750),
  (8, 1000),
  (8, 1500),
  (4, 750),
  (4, 1000),
  (4, 1500),
  (2, 1500),
)
SEEDS = (0, 1)
EVALUATORS = ("knn", "linear_probe", "reconstruction", "judge")
# What the default must keep (mean of two seeds): its own quality within the seeds' noise.
THRESHOLDS = {
  "knn/top1": 89.0,
  "linear_probe/top1": 87.5,
  "reconstruction/consistency": 80.0,
  "reconstruction/psnr": 16.0,
}
# (column, key, format) of the table.
COLUMNS = sweep.columns(
  "knn/top1",
  "linear_probe/top1",
  "reconstruction/consistency",
  "reconstruction/psnr",
  "judge/recon_consistency",
  "judge/cond_fd",
)


def run_name(views: int, steps: int, seed: int) -> str:
  return f"V{views}_{steps}_seed{seed}"


def speeds(views: list[int], out: str, data_dir) -> dict[int, float]:
  """Seconds per iteration of each view count, interleaved, kept in ``OUT/speed.json``."""
  path = os.path.join(out, "speed.json")
  record = {}
  if os.path.exists(path):
    with open(path) as f:
      record = {int(k): v for k, v in json.load(f).items()}
  missing = [v for v in views if v not in record]
  if missing:
    probes = {
      v: recipes.SpeedProbe(recipes.recipe_config("uctrl", 0, 1, {**data_dir, "data.num_views": v}))
      for v in missing
    }
    seconds = {v: [] for v in missing}
    for _ in range(recipes.SPEED_ROUNDS):
      for v, probe in probes.items():
        seconds[v].append(probe.seconds_per_iteration(recipes.SPEED_ITERATIONS))
    record.update({v: min(s) for v, s in seconds.items()})
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
      json.dump(record, f, indent=1)
  return record


def _mean(runs: list[dict], key: str):
  values = [r[key] for r in runs if r.get(key) is not None]
  return (float(np.mean(values)), float(np.ptp(values) / 2)) if values else (None, None)


def passes(runs: list[dict]) -> bool:
  means = {k: _mean(runs, k)[0] for k in THRESHOLDS}
  return all(m is not None and m >= THRESHOLDS[k] for k, m in means.items())


def grouped(rows: list[dict]) -> dict[tuple[int, int], list[dict]]:
  groups = {}
  for row in rows:
    groups.setdefault((row["views"], row["steps"]), []).append(row)
  return dict(sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])))


def markdown(rows: list[dict], data) -> str:
  """Per point, the mean of its seeds (± half their difference) and whether it passes."""
  lines = [
    f"Fashion-MNIST, scored on {len(data.x_train)} train / {len(data.x_test)} test images; "
    "mean of the seeds ± half their difference; accuracies and consistencies in %, PSNR "
    "in dB. Idle minutes: iterations × the measured seconds per iteration of V views. "
    "Passes: the mean meets "
    + ", ".join(f"{sweep.METRICS[k][0]} ≥ {v:g}" for k, v in THRESHOLDS.items())
    + ".",
    "",
    "| views | iterations | idle min | seeds | "
    + " | ".join(c for c, _, _ in COLUMNS)
    + " | passes |",
    "|---:|---:|---:|---:|" + "---:|" * len(COLUMNS) + "---|",
  ]
  for (views, steps), runs in grouped(rows).items():
    cells = []
    for _, key, fmt in COLUMNS:
      mean, half = _mean(runs, key)
      cells.append(
        "—"
        if mean is None
        else fmt.format(mean) + (f" ± {fmt.format(half)}" if len(runs) > 1 else "")
      )
    lines.append(
      f"| {views} | {steps} | {runs[0]['idle_minutes']:.1f} | {len(runs)} | "
      + " | ".join(cells)
      + f" | {'yes' if passes(runs) and len(runs) > 1 else 'no' if not passes(runs) else '(1 seed)'} |"
    )
  return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: str) -> str:
  """Each metric against idle minutes: one line per view count, the seeds as error bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  keys = [(c, k) for c, k, _ in COLUMNS if k in THRESHOLDS]
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
  groups = grouped(rows)
  for i, views in enumerate(sorted({v for v, _ in groups}, reverse=True)):
    points = [(runs[0]["idle_minutes"], runs) for (v, _), runs in groups.items() if v == views]
    for ax, (label, key) in zip(axes, keys):
      stats = [_mean(runs, key) for _, runs in points]
      ax.errorbar(
        [m for m, _ in points],
        [s[0] for s in stats],
        yerr=[s[1] for s in stats],
        fmt="o-",
        color=f"C{i}",
        capsize=3,
        label=f"V = {views}",
      )
  for ax, (_, key) in zip(axes, keys):
    ax.axhline(THRESHOLDS[key], ls="--", color="grey", lw=1)
  titles = [label for label, _ in keys]
  return figures.save_panels(fig, axes, titles, "idle training minutes (2 CPU cores)", path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--only", default="", help="comma-separated V:N points (default: POINTS)")
  parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  parser.add_argument("--doc", default=None, help="page whose mtq block gets the table")
  parser.add_argument("--figure", default=None, help="also copy the figure here")
  sweep.add_data_arguments(parser)
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  data_dir = {"data.data_dir": args.data_dir} if args.data_dir else {}
  points = (
    [tuple(int(x) for x in p.split(":")) for p in args.only.split(",")] if args.only else POINTS
  )
  seeds = [int(s) for s in args.seeds.split(",")]
  base = recipes.recipe_config("uctrl", 0, 1, data_dir)
  base.evals.max_train_examples = args.max_train_examples
  base.evals.max_test_examples = args.max_test_examples
  data = evaluate.load_data(base)
  seconds = speeds(sorted({v for v, _ in points}), args.out, data_dir)
  runs = {run_name(v, n, s): (v, n, s) for s in seeds for v, n in points}

  def run(name, _, workdir):
    views, steps, seed = runs[name]
    extra = {**data_dir, "data.num_views": views}
    row = recipes.run_recipe("uctrl", seed, workdir, steps, data, extra, EVALUATORS)
    return {**row, "name": name, "views": views, "idle_minutes": steps * seconds[views] / 60}

  rows = sweep.run_sweep(
    {k: {} for k in runs},
    list(runs),
    args.out,
    None,
    run,
    lambda rows: markdown(rows, data),
    row_file="mtq_row.json",
    table_file="minutes_to_quality.md",
  )
  path = figure(rows, os.path.join(args.out, "minutes_to_quality.png"))
  if args.figure:
    os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
    shutil.copyfile(path, args.figure)
  if args.doc:
    ablations.update_doc(args.doc, markdown(rows, data), marker="mtq")
  return rows


if __name__ == "__main__":
  main()
