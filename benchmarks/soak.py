"""Soak: a long run of a small config, its resident memory and step time along the way.

A leak in the loop (host arrays kept per step, a growing jit cache, checkpoints or
evaluations that keep what they read) shows only over thousands of steps. This runs
``main.py`` as a user would, in a subprocess, for ``--steps`` iterations (default
20 000) of configs/tiny.py (DCGAN w = 8, d = 16, batch 16, 28×28) with a checkpoint
every ``--checkpoint_every`` steps (500), the in-training evaluation every
``--eval_every`` (2 000) and a progress line every ``--log_every`` (100), and samples:

* resident memory of the training process (``VmRSS`` and its peak ``VmHWM`` in
  ``/proc/PID/status``) at every progress line;
* step time from the progress lines (``N it/s``: the training seconds per step since the
  previous line, evaluations excluded).

It prints one row per checkpoint (resident memory then, its peak so far, the mean step
time since the previous row, wall time) and a summary: resident memory and step time at
the first checkpoint and at the end, and their change. With ``--json PATH`` the rows and
the summary are written there too. The first checkpoint is the reference, not step 0:
the first steps include compiling and the allocator's growth to its working size.

Data: ``fashion_mnist`` (the Debian package's files, prepared offline into tfds on first
use) or ``npz`` (2 048 random 28×28 images written beside the work directory; the
in-training evaluation reads ``train[:1536]`` against ``train[1536:]``).

Usage:
  .venv/bin/python -m benchmarks.soak [--steps 20000] [--data fashion_mnist|npz]
      [--workdir DIR] [--json PATH]

Linux only (``/proc``). The work directory is created fresh (an existing one is
refused: a resumed run would measure something else).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# "step 500/20000 | R 1.8 ... | 21.37 it/s, ETA 0:14:58" (console.progress_line)
_PROGRESS = re.compile(r"step (\d+)/\d+ \|.*\| ([\d.]+) it/s")


def parse_progress(line: str) -> Optional[tuple[int, float]]:
  """``(step, iterations per second)`` of a progress line, None for any other line."""
  match = _PROGRESS.search(line)
  return (int(match.group(1)), float(match.group(2))) if match else None


def memory_mib(pid: int) -> dict[str, float]:
  """``{"rss": VmRSS, "hwm": VmHWM}`` of process ``pid`` in MiB (``/proc/PID/status``)."""
  values = {}
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      name, _, rest = line.partition(":")
      if name in ("VmRSS", "VmHWM"):
        values[name[2:].lower()] = int(rest.split()[0]) / 1024  # kB
  return values


def write_random_npz(path: str, n: int = 2048) -> None:
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  np.savez(path, x=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), y=rng.integers(0, 10, n))


def command(args, workdir: str) -> list[str]:
  cmd = [
    sys.executable,
    "main.py",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.train.num_steps={args.steps}",
    f"--config.train.log_every={args.log_every}",
    f"--config.train.checkpoint_every={args.checkpoint_every}",
    f"--config.train.eval_every={args.eval_every}",
    f"--config.train.image_every={args.checkpoint_every}",
  ]
  if args.data == "npz":
    data = os.path.join(os.path.dirname(os.path.abspath(workdir)), "soak_data.npz")
    write_random_npz(data)
    cmd += [
      f"--config.data.name=npz:{data}",
      "--config.evals.train_split=train[:1536]",
      "--config.evals.test_split=train[1536:]",
    ]
  return cmd


def run(args) -> dict:
  workdir = args.workdir or os.path.join(tempfile.mkdtemp(prefix="uctrl_soak_"), "run")
  if os.path.exists(workdir) and os.listdir(workdir):
    raise SystemExit(f"error: {workdir} is not empty: the soak needs a fresh work directory")
  cmd = command(args, workdir)
  print("$", " ".join(cmd[1:]), "\n", flush=True)
  print(HEADER, flush=True)
  start = time.time()
  proc = subprocess.Popen(
    cmd, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
  )
  rows, speeds, log_tail, warnings = [], [], [], []
  try:
    for line in proc.stdout:
      log_tail = (log_tail + [line])[-40:]
      if args.verbose:
        print("  |", line.rstrip(), flush=True)
      if "warning:" in line:
        warnings.append(line.rstrip())
      progress = parse_progress(line)
      if progress is None:
        continue
      step, it_per_s = progress
      memory = memory_mib(proc.pid)
      speeds.append(1000 / it_per_s)
      if step % args.checkpoint_every == 0 or step == args.steps:
        row = {
          "step": step,
          "rss_mib": round(memory["rss"], 1),
          "hwm_mib": round(memory["hwm"], 1),
          # Mean over the progress lines since the previous row (each: ms per step since
          # the line before it); the first row's includes compiling.
          "ms_per_step": round(sum(speeds) / len(speeds), 2),
          "wall_min": round((time.time() - start) / 60, 2),
        }
        rows.append(row)
        speeds = []
        print(_row(row), flush=True)
  finally:
    status = proc.wait()
  if status != 0:
    raise SystemExit(f"error: main.py exited with {status}; its last lines:\n" + "".join(log_tail))
  return {
    "command": cmd[1:],
    "workdir": workdir,
    "rows": rows,
    "summary": summarise(rows),
    "warnings": warnings,
  }


def _row(row: dict) -> str:
  return (
    f"| {row['step']:>6} | {row['rss_mib']:>8.1f} | {row['hwm_mib']:>8.1f} | "
    f"{row['ms_per_step']:>9.2f} | {row['wall_min']:>7.2f} |"
  )


HEADER = "|   step |  RSS MiB | peak MiB | ms / step | minutes |\n|---:|---:|---:|---:|---:|"


def summarise(rows: list[dict]) -> dict:
  """First checkpoint (reference: past compiling and warm-up) against the end."""
  if len(rows) < 2:
    return {}
  # Step time: the second row is the first interval without compiling in it.
  first, second, last = rows[0], rows[1], rows[-1]
  return {
    "rss_first_mib": first["rss_mib"],
    "rss_end_mib": last["rss_mib"],
    "rss_growth_mib": round(last["rss_mib"] - first["rss_mib"], 1),
    "peak_end_mib": last["hwm_mib"],
    "ms_per_step_start": second["ms_per_step"],
    "ms_per_step_end": last["ms_per_step"],
    "step_time_ratio": round(last["ms_per_step"] / second["ms_per_step"], 3),
    "minutes": last["wall_min"],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=20_000)
  parser.add_argument("--checkpoint_every", type=int, default=500)
  parser.add_argument("--eval_every", type=int, default=2_000)
  parser.add_argument("--log_every", type=int, default=100)
  parser.add_argument("--data", choices=("fashion_mnist", "npz"), default="fashion_mnist")
  parser.add_argument("--workdir", help="fresh work directory (default: a new temporary one)")
  parser.add_argument("--json", help="write the rows and the summary here")
  parser.add_argument("--verbose", action="store_true", help="echo every line of the run")
  args = parser.parse_args()
  if args.checkpoint_every % args.log_every:
    parser.error("--checkpoint_every must be a multiple of --log_every (rows are read there)")
  result = run(args)
  print()
  for key, value in result["summary"].items():
    print(f"{key}: {value}")
  print(f"warnings: {len(result['warnings'])}")
  for line in result["warnings"][:10]:
    print("  ", line)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  main()
