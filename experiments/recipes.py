"""Equal-minutes comparison on Fashion-MNIST: uCTRL recipes against the encoder-only
self-supervised baselines, the generative baselines (autoencoder, VAE, CTRL-Binary), raw
pixels and the untrained encoder, two seeds each.

    .venv/bin/python -m experiments.recipes --out=/tmp/uctrl_recipes --minutes=20
    .venv/bin/python -m experiments.recipes --out=/tmp/uctrl_compare --reference_steps=1500 \
        --only=uctrl,autoencoder,vae,ctrl_binary,tcr --figure=/tmp/uctrl_compare/comparison.png
    .venv/bin/python -m experiments.recipes --out=/tmp/uctrl_recipes --minutes=20 \\
        --curve=uctrl --multiple=4          # one recipe's learning curve to 4× the budget

Each recipe (``RECIPES``) is ``configs/fashion_mnist.py`` plus overrides. Its iteration
count for the budget is ``--minutes × 60 / s``, with ``s`` the seconds per iteration
measured in this process just before the recipe trains (``SPEED_ITERATIONS`` iterations
after compilation, real input pipeline), so every row trains for about the same minutes
of this machine; the run's own training minutes (recorded in its checkpoints) are in the
table. Run nothing else on the machine meanwhile: a loaded machine measures fewer
iterations for everyone.

``--reference_steps=N`` sizes the budgets by speed ratios instead, which a loaded machine
distorts far less than absolute seconds: every recipe's seconds per iteration are
measured in this process, interleaved over ``SPEED_ROUNDS`` rounds (the fastest round of
each kept), and recipe ``r`` gets ``N · s_uctrl / s_r`` iterations: the minutes that N
iterations of the default take, whatever the machine's load. They are kept in
``OUT/budgets.json``.

Every run is then scored on the full split with the library's evaluators: kNN and
linear-probe top-1, nearest subspace, k-means ACC and NMI of the test features; for
recipes with a decoder, PSNR and the pixel-kNN consistency of reconstructions, and the
judge's scores (``evaluators/judge.py``: its consistency of reconstructions, Fréchet
distance and precision/recall of reconstructions and of samples, cluster purity).

Outputs: ``OUT/<recipe>_seed<k>/`` work directories with ``recipe_row.json``,
``OUT/recipes.md`` (per table, features and generation: one row per run, then the mean
of the seeds per recipe), rewritten after every run, and with ``--figure`` a picture of
each recipe's linear probe against the FD of its conditional samples; an interrupted invocation resumes (finished runs are read back, an
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
from uctrl_jax import figures  # noqa: E402
from uctrl_jax import host_blas  # noqa: E402
from uctrl_jax import input_pipeline  # noqa: E402
from uctrl_jax import sharding  # noqa: E402
from uctrl_jax import train  # noqa: E402
from uctrl_jax.steps import make_steps, train_iteration  # noqa: E402
from uctrl_jax.state import create_train_state  # noqa: E402

# name -> (label, overrides of configs/fashion_mnist.py). "uctrl" is the default itself.
RECIPES = {
  "uctrl": ("uCTRL, configs/fashion_mnist.py", {}),
  # The default until minutes to quality chose 4 views (docs/minutes_to_quality.md).
  "uctrl_8views": ("uCTRL with 8 views", {"data.num_views": 8}),
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
  # What a user would train instead to generate (issue 24): the same f and g (the VAE's f
  # with a Gaussian head), the default's players' optimizers, no views (they read none).
  "autoencoder": ("autoencoder: the same f and g, pixel MSE", {"loss.mode": "autoencoder"}),
  "vae": ("VAE: the same f (Gaussian head) and g, negative ELBO", {"loss.mode": "vae"}),
  # CTRL-Binary plays ΔR(Z, Ẑ) alone: no term reads the views, so it is given one (the
  # least the game's steps take) instead of paying for the default's 8.
  "ctrl_binary": (
    "CTRL-Binary: ΔR(Z, Ẑ) only",
    {"loss.mode": "ctrl_binary", "data.num_views": 1},
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
EVALUATORS = (
  "knn",
  "linear_probe",
  "nearest_subspace",
  "clustering",
  "reconstruction",
  "conditional_generation",  # its grid, in the run's directory
  "judge",
)
CURVE_EVALUATORS = ("knn", "linear_probe", "reconstruction")
# (column, row key, format): the features, then the generation (judge/... : evaluators/judge.py).
COLUMNS = sweep.columns(
  "knn/top1",
  "linear_probe/top1",
  "nearest_subspace/top1",
  "clustering/kmeans_acc",
  "clustering/kmeans_nmi",
) + (("iterations", "steps", "{:.0f}"), ("train min", "train_minutes", "{:.1f}"))
GENERATION_COLUMNS = (
  *sweep.columns(
    "reconstruction/psnr",
    "reconstruction/consistency",
    "judge/recon_consistency",
    "judge/recon_fd",
  ),
  ("recon P / R", ("judge/recon_precision", "judge/recon_recall"), "{:.2f}"),
  *sweep.columns("judge/cond_fd"),
  ("cond P / R", ("judge/cond_precision", "judge/cond_recall"), "{:.2f}"),
  *sweep.columns(
    "judge/cond_purity", "judge/cond_consistency", "judge/uncond_fd", "judge/prior_fd"
  ),
)


def recipe_config(name: str, seed: int, steps=None, extra=None):
  """``configs/fashion_mnist.py`` with recipe ``name``'s overrides, ``seed`` and ``extra``."""
  overrides = {**RECIPES[name][1], "seed": seed, **(extra or {})}
  return sweep.variant_config(overrides, steps)


class SpeedProbe:
  """A recipe's state, steps and real input pipeline, built once, for timed iterations."""

  def __init__(self, config):
    self.config = config
    self.mesh = sharding.create_mesh(mesh_config=config.mesh)
    image_shape = input_pipeline.get_dataset_info(config).image_shape
    state = create_train_state(config, image_shape, jax.random.key(0))
    self.state = sharding.replicate(state, self.mesh)
    self.steps = make_steps(config, image_shape)
    self.batches = input_pipeline.create_dataset(
      config, "train", process_index=0, process_count=1
    ).as_numpy_iterator()
    self.run(2)  # compilation and warm-up

  def run(self, n: int) -> None:
    for _ in range(n):
      self.state, _ = train_iteration(
        *self.steps,
        self.state,
        sharding.shard_batch(next(self.batches), self.mesh),
        self.config.train.encoder_steps,
      )
    jax.block_until_ready(self.state)

  def seconds_per_iteration(self, iterations: int) -> float:
    """Mean seconds of ``iterations`` iterations, as ``train_and_evaluate`` runs them (BLAS
    limit included)."""
    with host_blas.limit_host_blas(self.config.train.host_blas_threads):
      start = time.time()
      self.run(iterations)
    return (time.time() - start) / iterations


def seconds_per_iteration(config, iterations: int = SPEED_ITERATIONS) -> float:
  """Mean seconds of ``iterations`` training iterations after compilation and two warm-up
  iterations, on the real input pipeline."""
  return SpeedProbe(config).seconds_per_iteration(iterations)


SPEED_ROUNDS = 3


def reference_budgets(
  names, reference_steps: int, out: str, data_dir, speed_iterations: int = SPEED_ITERATIONS
) -> dict[str, int]:
  """Each recipe's iterations for the minutes of ``reference_steps`` iterations of "uctrl"
  (module docstring), measured once and kept in ``OUT/budgets.json``."""
  path = os.path.join(out, "budgets.json")
  record = {"reference_steps": reference_steps, "seconds_per_iteration": {}, "steps": {}}
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    if record["reference_steps"] != reference_steps:
      raise SystemExit(f"{path} holds budgets for {record['reference_steps']} reference steps")
  missing = [n for n in dict.fromkeys(["uctrl", *names]) if n not in record["steps"]]
  if missing:
    probes = {n: SpeedProbe(recipe_config(n, 0, 1, data_dir)) for n in missing}
    seconds = {n: [] for n in missing}
    for _ in range(SPEED_ROUNDS):  # interleaved: a load that comes and goes hits all alike
      for name, probe in probes.items():
        seconds[name].append(probe.seconds_per_iteration(speed_iterations))
    record["seconds_per_iteration"].update({n: min(v) for n, v in seconds.items()})
    reference = record["seconds_per_iteration"]["uctrl"]
    for name in missing:
      ratio = reference / record["seconds_per_iteration"][name]
      record["steps"][name] = max(10, int(round(reference_steps * ratio / 10)) * 10)
      print(
        f"{name}: {ratio:.2f}× uctrl's iterations per second -> {record['steps'][name]} iterations",
        flush=True,
      )
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
      json.dump(record, f, indent=1)
  return record["steps"]


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


def score(loop, config, data, names, out_dir=None) -> dict:
  """The evaluators ``names`` on a loaded run (those needing ``g`` skipped without one);
  pictures (the conditional generation grid) go to ``out_dir``."""
  context = evaluators.Context(data, loop.encode, loop.decode, out_dir=out_dir)
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
    **score(loop, config, data, names, out_dir=workdir),
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


def _keys(key) -> tuple:
  return key if isinstance(key, tuple) else (key,)


def cell(row: dict, key, fmt: str) -> str:
  """One value, or "P / R"-style values of a tuple of keys; "—" where the row has none."""
  values = [row.get(k) for k in _keys(key)]
  return "—" if None in values else " / ".join(fmt.format(v) for v in values)


def _mean_cell(runs: list[dict], key, fmt: str) -> str:
  """The seeds' mean ± half their difference (of each key of a tuple)."""
  cells = []
  for k in _keys(key):
    values = [r[k] for r in runs if r.get(k) is not None]
    if not values:
      return "—"
    if len(values) == 1 or k in ("steps", "train_minutes"):
      cells.append(fmt.format(np.mean(values)))
    else:
      cells.append(f"{fmt.format(np.mean(values))} ± {fmt.format(np.ptp(values) / 2)}")
  return " / ".join(cells)


def _table(rows: list[dict], reference: dict, columns) -> list[str]:
  """One row per run, then per recipe the mean of its seeds, then the references."""
  header = [
    "| run | " + " | ".join(c for c, _, _ in columns) + " |",
    "|---|" + "---:|" * len(columns),
  ]
  lines = list(header)
  for row in rows:
    lines.append(f"| {row['name']} | " + " | ".join(cell(row, k, f) for _, k, f in columns) + " |")
  lines += ["", "Mean over seeds (± half the difference of the two seeds):", ""] + header
  for recipe in dict.fromkeys(r["recipe"] for r in rows):
    runs = [r for r in rows if r["recipe"] == recipe]
    cells = [_mean_cell(runs, k, f) for _, k, f in columns]
    lines.append(f"| **{recipe}**: {RECIPES[recipe][0]} | " + " | ".join(cells) + " |")
  for label, metrics in reference.items():
    lines.append(f"| *{label}* | " + " | ".join(cell(metrics, k, f) for _, k, f in columns) + " |")
  return lines


def markdown(rows: list[dict], reference: dict, minutes, data) -> str:
  """The features' table, then the generation's (recipes with a decoder)."""
  budget = f"{minutes:g} min" if isinstance(minutes, (int, float)) else minutes
  generative = [r for r in rows if any(k.startswith("reconstruction/") for k in r)]
  lines = [
    f"Budget {budget} of training per run on this machine; Fashion-MNIST, "
    f"scored on {len(data.x_train)} train / {len(data.x_test)} test images. "
    "Accuracies, consistency and purity in %, PSNR in dB; FD and precision / recall "
    "(P / R, k = 3) in the judge's features against the test images.",
    "",
    "Features:",
    "",
    *_table(rows, reference, COLUMNS),
  ]
  if generative:
    lines += ["", "Generation:", "", *_table(generative, {}, GENERATION_COLUMNS)]
  return "\n".join(lines) + "\n"


def comparison_figure(rows: list[dict], reference: dict, path: str) -> str:
  """Each recipe as a point: linear probe (x) against the FD of its conditional samples
  (y, lower is better), bars at ± half the difference of its seeds; feature-only
  recipes and references as vertical lines; a VAE's prior samples as a second point."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  colours = iter(f"C{i}" for i in range(10))
  for recipe in dict.fromkeys(r["recipe"] for r in rows):
    runs = [r for r in rows if r["recipe"] == recipe]
    x = [r["linear_probe/top1"] for r in runs]
    colour = next(colours)
    points = [
      (k, label)
      for k, label in (("judge/cond_fd", recipe), ("judge/prior_fd", f"{recipe} (prior)"))
      if runs[0].get(k) is not None
    ]
    if not points:
      ax.axvline(np.mean(x), ls="--", color=colour, label=f"{recipe} (no decoder)")
    for (key, label), marker in zip(points, "os"):
      y = [r[key] for r in runs]
      ax.errorbar(
        np.mean(x),
        np.mean(y),
        xerr=np.ptp(x) / 2,
        yerr=np.ptp(y) / 2,
        fmt=marker,
        color=colour,
        capsize=3,
        label=label,
      )
  for label, metrics in reference.items():
    if metrics.get("linear_probe/top1") is not None:
      ax.axvline(metrics["linear_probe/top1"], ls=":", color="grey")
      ax.annotate(
        label,
        (metrics["linear_probe/top1"], 1.0),
        xycoords=("data", "axes fraction"),
        rotation=90,
        va="top",
        ha="right",
        fontsize=7,
        color="grey",
      )
  ax.set_xlabel("linear probe top-1 (%) of f(x), higher is better")
  ax.set_ylabel("FD of conditional samples (judge features), lower is better")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return figures.save(fig, path)


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
  titles = [label for _, label in keys]
  return figures.save_panels(fig, axes, titles, "training minutes (2 CPU cores)", path, 7)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--minutes", type=float, default=20.0, help="training budget per run")
  parser.add_argument(
    "--reference_steps",
    type=int,
    default=None,
    help="budgets: the minutes of this many iterations of uctrl, by speed ratios",
  )
  parser.add_argument("--figure", default=None, help="PNG: linear probe vs conditional FD")
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
  sweep.add_data_arguments(parser)
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

  budgets = (
    reference_budgets(names, args.reference_steps, args.out, data_dir, args.speed_iterations)
    if args.reference_steps
    else None
  )

  def run(run_name, _, workdir):
    name, seed = runs[run_name]
    if budgets:
      steps = budgets[name]
    else:
      steps = budget_steps(
        name, args.minutes, os.path.join(args.out, f"{name}_seed0"), data_dir, args.speed_iterations
      )
    return run_recipe(name, seed, workdir, steps, data, data_dir, args.evaluators.split(","))

  budget = f"the minutes of {args.reference_steps} uctrl iterations" if budgets else args.minutes
  # The table holds every finished run in OUT, also those of earlier invocations.
  rows = sweep.run_sweep(
    {k: {} for k in runs},
    list(runs),
    args.out,
    None,
    run,
    lambda _: markdown(finished_rows(args.out), reference, budget, data),
    row_file="recipe_row.json",
    table_file="recipes.md",
  )
  if args.figure:
    print("wrote", comparison_figure(finished_rows(args.out), reference, args.figure), flush=True)
  return rows


if __name__ == "__main__":
  main()
