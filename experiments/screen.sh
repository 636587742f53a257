#!/usr/bin/env bash
# One screening run (issue 14's recipe search, docs/recipes.md): trains
# configs/fashion_mnist.py with the given overrides in OUT/NAME, then scores the last
# checkpoint on the full Fashion-MNIST split with kNN, the linear probe and (for the
# game) reconstruction; appends one line to OUT/screens.md.
#
#   bash experiments/screen.sh OUT NAME [--config.section.key=value ...]
#
# The in-training evaluation (kNN and linear probe on 10 000 / 2 000 images every
# eval_every steps) gives each run's curve in its TensorBoard files. Run one screen at a
# time: the minutes are only comparable on an otherwise idle machine.
set -euo pipefail
out=$1; name=$2; shift 2
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$out"
start=$(date +%s)
.venv/bin/python main.py --config=configs/fashion_mnist.py --workdir="$out/$name" "$@" \
  --config.evals.during_training.names="('knn','linear_probe')" > "$out/$name.train.log" 2>&1
mid=$(date +%s)
.venv/bin/python main.py --mode=eval --config=configs/fashion_mnist.py --workdir="$out/$name" "$@" \
  --config.evals.names="('knn','linear_probe','reconstruction')" --config.evals.baselines=False \
  --config.evals.figures=False > "$out/$name.eval.log" 2>&1
.venv/bin/python - "$out" "$name" "$((mid - start))" "$*" <<'PY'
import json, os, sys
out, name, seconds, overrides = sys.argv[1:]
with open(os.path.join(out, name, "results.json")) as f:
  m = json.load(f)["metrics"]
cell = lambda k: f"{m[k]:.2f}" if k in m else "n/a"
path = os.path.join(out, "screens.md")
if not os.path.exists(path):
  with open(path, "w") as f:
    f.write("| run | kNN | linear | linear (train) | consistency | PSNR | wall min | overrides |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|\n")
with open(path, "a") as f:
  f.write(f"| {name} | {cell('knn/top1')} | {cell('linear_probe/top1')} | "
          f"{cell('linear_probe/train_top1')} | {cell('reconstruction/consistency')} | "
          f"{cell('reconstruction/psnr')} | {int(seconds) / 60:.1f} | `{overrides}` |\n")
PY
tail -n 1 "$out/screens.md"
