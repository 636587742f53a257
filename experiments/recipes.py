"""Equal-minutes comparison on Fashion-MNIST: uCTRL recipes against the encoder-only
self-supervised baselines, raw pixels and the untrained encoder, two seeds each.

    .venv/bin/python -m experiments.recipes --out=/tmp/uctrl_recipes --minutes=20
    .venv/bin/python -m experiments.recipes --out=/tmp/uctrl_recipes --minutes=20 \\
        --curve=uctrl --multiple=4          # one recipe's learning curve to 4× the budget

Each recipe (``RECIPES``) is ``configs/fashion_mnist.py`` plus overrides. Its iteration
count for the budget is ``--minutes × 60 / s``, with ``s`` the seconds per iteration
measured in this process just before the recipe trains (``SPEED_ITERATIONS`` iterations
after compilation, real input pipeline), so every row trains for about the same minutes
of this machine; the run's own training minutes (recorded in its checkpoints) are in the
table. Run nothing else on the machine meanwhile: a loaded machine measures fewer
iterations for everyone. Every run is then scored on the full split with the
library's evaluators: kNN and linear-probe top-1, nearest subspace, k-means ACC and NMI
of the test features, reconstruction class consistency and PSNR (uCTRL rows only).

Outputs: ``OUT/<recipe>_seed<k>/`` work directories with ``recipe_row.json``,
``OUT/recipes.md`` (one row per run, then the mean of the seeds per recipe), rewritten
after every run; an interrupted invocation resumes (finished runs are read back, an
interrupted one resumes from its checkpoint with its recorded iteration count).

``--curve=NAME --multiple=M`` trains recipe NAME (seed 0) for M budgets' worth of
iterations (its cosine schedule spans all of them), keeps a checkpoint at every budget,
scores each one, and writes ``OUT/curve_NAME.md`` and ``OUT/curve_NAME.png``: the
answer to "does longer training close the gap?".
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import sweep  # noqa: E402  (configs from overrides, resumable rows)
import uctrl_jax  # noqa: E402
from uctrl_jax import evaluate  # noqa: E402
from uctrl_jax import evaluators  # noqa: E402
from uctrl_jax import host_blas  # noqa: E402
from uctrl_jax import input_pipeline  # noqa: E402
from uctrl_jax import sharding  # noqa: E402
from uctrl_jax import train  # noqa: E402
from uctrl_jax.steps import make_steps, train_iteration  # noqa: E402
from uctrl_jax.state import create_train_state  # noqa: E402

# name -> (label, overrides of configs/fashion_mnist.py). "uctrl" is the default itself.
RECIPES = {
  "uctrl": ("uCTRL, configs/fashion_mnist.py", {}),
  # The baselines with the optimiser of the PyTorch runs that first measured them
  # (Adam 1e-3, β₁ 0.9) and EMP-SSL's / SimCLR's own settings where ours would differ,
  # except TCR's invariance weight: 30 scored best of 10-200 at ε² = 0.5 (docs/recipes.md).
  "tcr": (
    "EMP-SSL total coding rate (encoder only)",
    {
      "loss.mode": "tcr",
      "data.num_views": 8,
      "train.batch_size": 64,
      "loss.lambda_aug": 30.0,
      "train.encoder_lr": 1e-3,
      "train.encoder_b1": 0.9,
    },
  ),
  "simclr": (
    "SimCLR NT-Xent, T = 0.2 (encoder only)",
    {
      "loss.mode": "simclr",
      "data.num_views": 2,
      "train.batch_size": 256,
      "loss.temperature": 0.2,
      "train.encoder_lr": 1e-3,
      "train.encoder_b1": 0.9,
    },
  ),
}
SEEDS = (0, 1)
SPEED_ITERATIONS = 20
EVALUATORS = ("knn", "linear_probe", "nearest_subspace", "clustering", "reconstruction")
CURVE_EVALUATORS = ("knn", "linear_probe", "reconstruction")
# (column, row key, format).
COLUMNS = (
  ("kNN", "knn/top1", "{:.2f}"),
  ("linear", "linear_probe/top1", "{:.2f}"),
  ("nearest subspace", "nearest_subspace/top1", "{:.2f}"),
  ("k-means ACC", "clustering/kmeans_acc", "{:.1f}"),
  ("k-means NMI", "clustering/kmeans_nmi", "{:.3f}"),
  ("consistency", "reconstruction/consistency", "{:.1f}"),
  ("PSNR", "reconstruction/psnr", "{:.2f}"),
  ("iterations", "steps", "{:.0f}"),
  ("train min", "train_minutes", "{:.1f}"),
)


def recipe_config(name: str, seed: int, steps=None, extra=None):
  """``configs/fashion_mnist.py`` with recipe ``name``'s overrides, ``seed`` and ``extra``."""
  overrides = {**RECIPES[name][1], "seed": seed, **(extra or {})}
  return sweep.variant_config(overrides, steps)


def seconds_per_iteration(config, iterations: int = SPEED_ITERATIONS) -> float:
  """Median-free mean seconds of ``iterations`` training iterations after compilation and
  two warm-up iterations, on the real input pipeline, as ``train_and_evaluate`` runs
  them (BLAS limit included)."""
  mesh = sharding.create_mesh(mesh_config=config.mesh)
  image_shape = input_pipeline.get_dataset_info(config).image_shape
  state = sharding.replicate(create_train_state(config, image_shape, jax.random.key(0)), mesh)
  encoder_step, decoder_step = make_steps(config, image_shape)
  batches = input_pipeline.create_dataset(
    config, "train", process_index=0, process_count=1
  ).as_numpy_iterator()

  def run(n, state):
    for _ in range(n):
      state, _ = train_iteration(
        encoder_step,
        decoder_step,
        state,
        sharding.shard_batch(next(batches), mesh),
        config.train.encoder_steps,
      )
    return jax.block_until_ready(state)

  with host_blas.limit_host_blas(config.train.host_blas_threads):
    state = run(2, state)
    start = time.time()
    run(iterations, state)
  return (time.time() - start) / iterations


def budget_steps(
  name: str, minutes: float, workdir: str, data_dir, speed_iterations: int = SPEED_ITERATIONS
) -> int:
  """The recipe's iteration count for ``minutes``, measured once and kept in
  ``workdir/budget.json`` (a resumed run keeps its count)."""
  path = os.path.join(workdir, "budget.json")
  if os.path.exists(path):
    with open(path) as f:
      return int(json.load(f)["steps"])
  config = recipe_config(name, 0, 1, data_dir)
  seconds = seconds_per_iteration(config, speed_iterations)
  steps = max(10, int(round(minutes * 60 / seconds / 10)) * 10)
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump({"minutes": minutes, "seconds_per_iteration": seconds, "steps": steps}, f)
  print(
    f"{name}: {seconds:.3f} s per iteration -> {steps} iterations for {minutes} min", flush=True
  )
  return steps


def score(loop, config, data, names) -> dict:
  """The evaluators ``names`` on a loaded run (those needing ``g`` skipped without one)."""
  context = evaluators.Context(data, loop.encode, loop.decode)
  metrics = evaluators.run_context(evaluators.build(config, names=names), context)
  return {k: v for k, v in metrics.items() if not k.startswith("eval_seconds/")}


def run_recipe(
  name: str, seed: int, workdir: str, steps: int, data, data_dir, names=EVALUATORS
) -> dict:
  config = recipe_config(name, seed, steps, data_dir)
  train.train_and_evaluate(config, workdir)
  loop = uctrl_jax.load(workdir)
  return {
    "name": f"{name}_seed{seed}",
    "recipe": name,
    "seed": seed,
    "steps": int(loop.state.step),
    "train_minutes": loop.extra["train_seconds"] / 60,
    **score(loop, config, data, names),
  }


def finished_rows(out: str) -> list[dict]:
  """Every ``OUT/*/recipe_row.json``, in ``RECIPES`` order, then by seed."""
  rows = []
  for path in os.listdir(out):
    row_path = os.path.join(out, path, "recipe_row.json")
    if os.path.exists(row_path):
      with open(row_path) as f:
        rows.append(json.load(f))
  order = list(RECIPES)
  return sorted(rows, key=lambda r: (order.index(r["recipe"]), r["seed"]))


def _cell(row: dict, key: str, fmt: str) -> str:
  value = row.get(key)
  return "—" if value is None else fmt.format(value)


def markdown(rows: list[dict], reference: dict, minutes: float, data) -> str:
  """One row per run, then per recipe the mean of its seeds, then the references."""
  header = [
    "| run | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
    "|---|" + "---:|" * len(COLUMNS),
  ]
  lines = [
    f"Budget {minutes:g} min of training per run on this machine; Fashion-MNIST, "
    f"scored on {len(data.x_train)} train / {len(data.x_test)} test images. "
    "Accuracies and consistency in %, PSNR in dB.",
    "",
  ] + header
  for row in rows:
    lines.append(f"| {row['name']} | " + " | ".join(_cell(row, k, f) for _, k, f in COLUMNS) + " |")
  lines += ["", "Mean over seeds (± half the difference of the two seeds):", ""] + header
  for recipe in dict.fromkeys(r["recipe"] for r in rows):
    runs = [r for r in rows if r["recipe"] == recipe]
    cells = []
    for _, key, fmt in COLUMNS:
      values = [r[key] for r in runs if r.get(key) is not None]
      if not values:
        cells.append("—")
      elif len(values) == 1 or key in ("steps", "train_minutes"):
        cells.append(fmt.format(np.mean(values)))
      else:
        cells.append(f"{fmt.format(np.mean(values))} ± {fmt.format(np.ptp(values) / 2)}")
    lines.append(f"| **{recipe}**: {RECIPES[recipe][0]} | " + " | ".join(cells) + " |")
  for label, metrics in reference.items():
    lines.append(f"| *{label}* | " + " | ".join(_cell(metrics, k, f) for _, k, f in COLUMNS) + " |")
  return "\n".join(lines) + "\n"


def references(config, data, names=EVALUATORS) -> dict:
  """Raw pixels and the untrained encoder (seed 0) through the feature evaluators."""
  built = evaluators.build(config, names=[n for n in names if n in evaluators.CLASSIFIERS])
  image_shape = data.x_train.shape[1:]
  out = {}
  for label, encode in (
    ("raw pixels", lambda x: x.reshape(len(x), -1)),
    ("untrained encoder", evaluate.random_encoder(config, image_shape, 0)),
  ):
    metrics = evaluators.run_all(built, encode, None, data)
    out[label] = {k: v for k, v in metrics.items() if not k.startswith("eval_seconds/")}
  return out


def curve(
  name: str,
  minutes: float,
  multiple: int,
  out: str,
  data,
  data_dir,
  speed_iterations: int = SPEED_ITERATIONS,
) -> list[dict]:
  """Recipe ``name`` trained for ``multiple`` budgets, scored at every budget."""
  workdir = os.path.join(out, f"curve_{name}")
  steps = budget_steps(name, minutes, workdir, data_dir, speed_iterations)
  config = recipe_config(
    name,
    0,
    steps * multiple,
    {**(data_dir or {}), "train.checkpoint_every": steps, "train.max_to_keep": multiple + 1},
  )
  train.train_and_evaluate(config, workdir)
  rows = []
  for k in range(1, multiple + 1):
    loop = uctrl_jax.load(workdir, steps * k)
    rows.append(
      {
        "step": steps * k,
        "train_minutes": loop.extra["train_seconds"] / 60,
        **score(loop, config, data, CURVE_EVALUATORS),
      }
    )
    print(rows[-1], flush=True)
  with open(os.path.join(out, f"curve_{name}.json"), "w") as f:
    json.dump(rows, f, indent=1)
  return rows


def curve_figure(rows: list[dict], baselines: dict, path: str, title: str) -> str:
  """kNN, linear probe and consistency against training minutes; baselines as lines."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  minutes = [r["train_minutes"] for r in rows]
  keys = [
    ("knn/top1", "kNN top-1 (%)"),
    ("linear_probe/top1", "linear probe top-1 (%)"),
    ("reconstruction/consistency", "class consistency of g(f(x)) (%)"),
  ]
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
  for ax, (key, label) in zip(axes, keys):
    ax.plot(minutes, [r.get(key, np.nan) for r in rows], "o-", label=title)
    for i, (name, value) in enumerate(
      sorted((n, v[key]) for n, v in baselines.items() if v.get(key) is not None)
    ):
      ax.axhline(value, ls="--", color=f"C{i + 1}", label=name)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_title(label, fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--minutes", type=float, default=20.0, help="training budget per run")
  parser.add_argument("--only", default="", help="comma-separated recipe names")
  parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  parser.add_argument("--curve", default=None, help="recipe whose learning curve to run")
  parser.add_argument("--multiple", type=int, default=4, help="curve length in budgets")
  parser.add_argument(
    "--speed_iterations",
    type=int,
    default=SPEED_ITERATIONS,
    help="iterations timed to size each budget",
  )
  parser.add_argument("--evaluators", default=",".join(EVALUATORS), help="smoke runs: fewer")
  parser.add_argument("--max_train_examples", type=int, default=None, help="smoke runs")
  parser.add_argument("--max_test_examples", type=int, default=None, help="smoke runs")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (None: the config's)")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  data_dir = {"data.data_dir": args.data_dir} if args.data_dir else None
  base = recipe_config("uctrl", 0, 1, data_dir)
  base.evals.max_train_examples = args.max_train_examples
  base.evals.max_test_examples = args.max_test_examples
  data = evaluate.load_data(base)
  os.makedirs(args.out, exist_ok=True)
  reference = references(base, data, args.evaluators.split(","))
  if args.curve:
    rows = curve(
      args.curve, args.minutes, args.multiple, args.out, data, data_dir, args.speed_iterations
    )
    done = {}
    for row in finished_rows(args.out):
      done.setdefault(f"{row['recipe']} at {args.minutes:g} min", []).append(row)
    baselines = {
      name: {
        k: float(np.mean([r[k] for r in runs if k in r]))
        for k in runs[0]
        if isinstance(runs[0][k], float)
      }
      for name, runs in done.items()
      if not name.startswith(args.curve + " ")
    }
    baselines.update(reference)
    curve_figure(
      rows,
      baselines,
      os.path.join(args.out, f"curve_{args.curve}.png"),
      f"{args.curve} (one run, cosine over {args.multiple}× the budget)",
    )
    return rows
  names = [n for n in args.only.split(",") if n] or list(RECIPES)
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = {f"{n}_seed{s}": (n, s) for n in names for s in seeds}

  def run(run_name, _, workdir):
    name, seed = runs[run_name]
    steps = budget_steps(
      name, args.minutes, os.path.join(args.out, f"{name}_seed0"), data_dir, args.speed_iterations
    )
    return run_recipe(name, seed, workdir, steps, data, data_dir, args.evaluators.split(","))

  # The table holds every finished run in OUT, also those of earlier invocations.
  rows = sweep.run_sweep(
    {k: {} for k in runs},
    list(runs),
    args.out,
    None,
    run,
    lambda _: markdown(finished_rows(args.out), reference, args.minutes, data),
    row_file="recipe_row.json",
    table_file="recipes.md",
  )
  return rows


if __name__ == "__main__":
  main()
