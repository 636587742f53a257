"""Where uCTRL's generation loses to the autoencoder, measured (docs/generation.md#why).

    .venv/bin/python -m experiments.generation_gap --compare=OUT_OF_RECIPES --out=OUT

``--compare`` is the output directory of ``experiments.recipes --reference_steps=1500``
(its ``uctrl_seed0``, ``autoencoder_seed0`` and ``vae_seed0`` runs are read, not
retrained). Three measurements, each written to ``OUT/generation_gap.md`` as it ends:

1. **What the encoder forgets.** The augmentation term makes ``f`` invariant to flips
   and shifts; what ``f`` does not hold, ``g(f(x))`` cannot restore. On the first
   ``--probe_examples`` test images: cos(f(x), f(T x)) and the PSNR of the reconstruction
   against ``x`` and against ``T x``, for ``T`` a horizontal flip and a 3-pixel shift.
   A decoder whose code forgot the flip scores about as well against the flipped image.
2. **The sampler's components.** The judge's scores of cluster-conditional samples with
   ``num_components`` in ``COMPONENTS`` (the sampler's Gaussian spans each cluster's top
   components), on the trained runs as they are.
3. **Equal iterations and λ₁.** The autoencoder at the default's 1 500 iterations (not
   the equal minutes' 8 340), and uCTRL with λ₁ = 10 (``--variants``), seed 0, scored by
   the recipes' evaluators.
"""

from __future__ import annotations

import argparse
import json
import os

from absl import logging
import numpy as np

from experiments import recipes
import uctrl_jax
from uctrl_jax import evaluate
from uctrl_jax import train
from uctrl_jax.evaluators.reconstruction import mse_psnr

COMPONENTS = (1, 2, 4, 8, 16, 32)
RUNS = ("uctrl_seed0", "autoencoder_seed0", "vae_seed0")
# name: (recipe, overrides, iterations); what each isolates is in the module docstring.
VARIANTS = {
  "autoencoder_1500it": ("autoencoder", {}, 1500),
  "uctrl_lambda_aug_10": ("uctrl", {"loss.lambda_aug": 10.0}, 1500),
}
JUDGE_COLUMNS = ("cond_fd", "cond_precision", "cond_recall", "cond_purity", "cond_consistency")


def shift(x: np.ndarray, pixels: int = 3) -> np.ndarray:
  """``x: (n, H, W, C)`` in [-1, 1] moved right by ``pixels``, the gap filled with -1."""
  out = np.full_like(x, -1.0)
  out[:, :, pixels:] = x[:, :, :-pixels]
  return out


def forgetting(loop, x: np.ndarray) -> dict[str, float]:
  """Measurement 1 on ``x: (n, H, W, C)`` in [-1, 1]."""
  z, xhat = loop.encode_images(x), loop.reconstruct_images(x)
  row = {"psnr": mse_psnr(x, xhat)["psnr"]}
  for name, transform in (("flip", lambda a: a[:, :, ::-1]), ("shift", shift)):
    moved = transform(x)
    zt = loop.encode_images(moved)
    cos = np.sum(z * zt, 1) / np.linalg.norm(z, axis=1) / np.linalg.norm(zt, axis=1)
    row[f"{name}_cos"] = float(np.mean(cos))
    row[f"psnr_vs_{name}"] = mse_psnr(moved, xhat)["psnr"]
  return row


def components_scores(loop, config, data, out_dir: str) -> dict[int, dict[str, float]]:
  """Measurement 2: the judge's ``cond_*`` scores per ``num_components``."""
  scores = {}
  for k in COMPONENTS:
    config.evals.conditional_generation.num_components = k
    metrics = recipes.score(loop, config, data, ["judge"], out_dir=out_dir)
    scores[k] = {c: metrics[f"judge/{c}"] for c in JUDGE_COLUMNS}
    print(f"  {k} components: {scores[k]}", flush=True)
  return scores


def train_variant(name: str, out: str, data) -> dict:
  """Measurement 3: one variant trained (resumable) and scored; its row kept in its dir."""
  recipe, overrides, steps = VARIANTS[name]
  workdir = os.path.join(out, name)
  row_path = os.path.join(workdir, "row.json")
  if os.path.exists(row_path):
    with open(row_path) as f:
      return json.load(f)
  config = recipes.recipe_config(recipe, 0, steps, {**overrides})
  train.train_and_evaluate(config, workdir)
  loop = uctrl_jax.load(workdir)
  row = {
    "name": name,
    "train_minutes": loop.extra["train_seconds"] / 60,
    **recipes.score(loop, config, data, list(recipes.EVALUATORS), out_dir=workdir),
  }
  with open(row_path, "w") as f:
    json.dump(row, f)
  return row


def _line(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def markdown(forgot: dict, components: dict, variants: dict) -> str:
  lines = ["# Where uCTRL's generation loses (experiments/generation_gap.py)", ""]
  if forgot:
    lines += [
      "## What the encoder forgets (first test images)",
      "",
      "| run | PSNR vs x | PSNR vs flip x | cos f(x), f(flip x) | PSNR vs shift x"
      " | cos f(x), f(shift x) |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    for run, r in forgot.items():
      cells = [run] + [
        f"{r[k]:.2f}" if k.startswith("psnr") else f"{r[k]:.3f}"
        for k in ("psnr", "psnr_vs_flip", "flip_cos", "psnr_vs_shift", "shift_cos")
      ]
      lines.append(_line(cells))
    lines.append("")
  if components:
    lines += [
      "## The sampler's components (judge, conditional samples)",
      "",
      "| run | components | FD | precision | recall | purity | consistency |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run, per_k in components.items():
      for k, s in per_k.items():
        digits = [1, 2, 2, 1, 1]  # FD, precision, recall, purity, consistency
        cells = [f"{s[c]:.{d}f}" for c, d in zip(JUDGE_COLUMNS, digits)]
        lines.append(_line([run, str(k)] + cells))
    lines.append("")
  if variants:
    columns = recipes.GENERATION_COLUMNS
    lines += [
      "## Equal iterations, λ₁ (seed 0)",
      "",
      "| run | kNN | linear | train min | " + " | ".join(c for c, _, _ in columns) + " |",
      "|---|---:|---:|---:|" + "---:|" * len(columns),
    ]
    for name, r in variants.items():
      cells = [name, f"{r['knn/top1']:.2f}", f"{r['linear_probe/top1']:.2f}"]
      cells.append(f"{r['train_minutes']:.1f}")
      cells += [recipes.cell(r, k, f) for _, k, f in columns]
      lines.append(_line(cells))
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--compare", required=True, help="experiments.recipes' output directory")
  parser.add_argument("--out", required=True)
  parser.add_argument("--probe_examples", type=int, default=2000)
  parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; '' none")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  os.makedirs(args.out, exist_ok=True)
  config = recipes.recipe_config("uctrl", 0, 1)
  data = evaluate.load_data(config)
  forgot, components, variants = {}, {}, {}

  def write():
    with open(os.path.join(args.out, "generation_gap.md"), "w") as f:
      f.write(markdown(forgot, components, variants))

  for run in RUNS:
    loop = uctrl_jax.load(os.path.join(args.compare, run))
    forgot[run] = forgetting(loop, data.x_test[: args.probe_examples])
    print(run, forgot[run], flush=True)
    write()
  for run in RUNS[:2]:
    loop = uctrl_jax.load(os.path.join(args.compare, run))
    components[run] = components_scores(loop, config, data, os.path.join(args.out, run))
    write()
  for name in [n for n in args.variants.split(",") if n]:
    variants[name] = train_variant(name, args.out, data)
    print(name, {k: variants[name][k] for k in ("knn/top1", "reconstruction/psnr")}, flush=True)
    write()


if __name__ == "__main__":
  main()
