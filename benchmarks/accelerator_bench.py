"""The uCTRL iteration on an accelerator: images/s, FLOPs and utilisation, the rate terms'
share, peak memory.

One prepared script for a GPU or TPU host. It needs only jax, flax, optax and numpy
(and the TensorFlow-free modules of ``uctrl_jax``): no TensorFlow, tfds, clu or
ml_collections (accelerator images often lack them; a stand-in for the last builds the
configs), no data and no downloads. Batches are synthetic and CIFAR-shaped (32×32×3).

Cases: the DCGAN and ResNet-18 pairs (``configs/cifar.py``, with ``model.encoder`` /
``model.decoder`` set to the pair: w = 64, d = 128, two encoder steps per decoder step),
with V augmented views per image (``--views``; default the shipped config's, 8, so that
a plain run measures the shipped recipe; 1 is the paper's one-view setting), float32 and
bfloat16 (``config.model.dtype``), global batch 128, 512 and 2048 over every local device
(``config.mesh``: all on ``data``). Per case, in a fresh process (so that each peak
memory is its own and a case that does not fit stops only itself):

* first iteration: seconds for compiling both steps and running them once;
* iteration: the median over rounds of ``--iterations`` iterations back to back
  (``steps.train_iteration``, blocked at the end of each round), after two warm-up
  iterations; none of them may compile anything (checked with ``jax.log_compiles``);
* images/s: global batch / iteration time (the batch's images; their views and the
  reconstructions ride along);
* FLOPs per iteration: XLA's cost analysis of the compiled steps (``encoder_steps`` ×
  the encoder step + the decoder step), which counts the program each device runs
  (× devices for the whole iteration); achieved FLOP/s per device = its FLOPs / iteration
  time, and the utilisation: that against one device's measured rate for one large
  matmul in the case's dtype (``jax_loop.matmul_peak``, measured in the same process);
* rate terms: the time of one iteration's objective terms and their gradient alone
  (``jax_loop.rate_terms_fwdgrad``) and their share of the iteration's time and FLOPs;
* peak memory: the largest ``peak_bytes_in_use`` of ``device.memory_stats()`` over the
  local devices, where the backend reports it (GPU, TPU; not CPU);
* a case that runs out of device memory reads "does not fit" and the next one runs.

Usage:
  python -m benchmarks.accelerator_bench --quick   # batch 512 only, 4 cases; < 5 min on an H200
  python -m benchmarks.accelerator_bench           # all 12 cases
  python -m benchmarks.accelerator_bench --ci      # one tiny DCGAN case: the CPU test's form
  [--pairs dcgan,resnet18] [--dtypes float32,bfloat16] [--batches 128,512,2048]
  [--views 1,2,4,8] [--width W] [--feature_dim D] [--rounds R] [--iterations K]
  [--budget_s S] [--json PATH]

``--quick`` stops starting cases once ``--budget_s`` (270 s) is spent and stops a case
still running then, so that the whole run stays under five minutes.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
import sys
import time
import types

# The children run this module from the repository root, wherever the driver was started.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGE_SHAPE = (32, 32, 3)  # CIFAR-shaped
PAIRS = ("dcgan", "resnet18")
DTYPES = ("float32", "bfloat16")
BATCHES = (128, 512, 2048)
_RESULT = "ACCELERATOR_BENCH_RESULT "  # a child's result line: this prefix, then JSON
_MIN_CASE_S = 20  # no case is started with less of the time budget left (start-up alone)


# ----------------------------------------------------------------------------
# Configs without ml_collections.
# ----------------------------------------------------------------------------


class _ConfigDict(dict):
  """Just enough of ``ml_collections.ConfigDict`` for ``configs/*.py`` and the steps:
  attribute access, ``.get``, nested dicts made ConfigDicts."""

  def __init__(self, initial=None):
    super().__init__()
    for key, value in (initial or {}).items():
      self[key] = value

  def __setitem__(self, key, value):
    if isinstance(value, dict) and not isinstance(value, _ConfigDict):
      value = _ConfigDict(value)
    super().__setitem__(key, value)

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None

  __setattr__ = __setitem__


def import_configs():
  """``configs.cifar``, with a stand-in for ml_collections where it is not installed.

  The stand-in module only builds configs (``ConfigDict``, ``config_dict.placeholder``);
  it goes into ``sys.modules`` only when the real package cannot be imported.
  """
  try:
    import ml_collections  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    stand_in = types.ModuleType("ml_collections")
    stand_in.ConfigDict = _ConfigDict
    stand_in.config_dict = types.SimpleNamespace(placeholder=lambda *args, **kwargs: None)
    sys.modules["ml_collections"] = stand_in
  return importlib.import_module("configs.cifar")


def case_config(pair: str, dtype: str, batch_size: int, views=None, width=None, feature_dim=None):
  """``configs/cifar.py`` with the ``pair`` of nets, compute ``dtype``, global batch and
  ``views`` per image (None: the config's)."""
  config = import_configs().get_config()
  config.model.encoder = config.model.decoder = pair
  config.model.dtype = dtype
  config.train.batch_size = batch_size
  if views is not None:
    config.data.num_views = views
  if width is not None:
    config.model.width = width
  if feature_dim is not None:
    config.model.feature_dim = feature_dim
  return config


# ----------------------------------------------------------------------------
# One case (in its own process).
# ----------------------------------------------------------------------------


def peak_memory_bytes(devices):
  """Largest ``peak_bytes_in_use`` over ``devices``; None where the backend has no stats."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def _seconds_per_call(fn, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def describe_devices() -> dict:
  """The backend this process sees (the driver asks a child: it must not hold a device)."""
  import jax  # pylint: disable=import-outside-toplevel

  device = jax.local_devices()[0]
  return {
    "jax": jax.__version__,
    "platform": device.platform,
    "device_kind": device.device_kind,
    "devices": jax.device_count(),
  }


def _is_out_of_memory(error: BaseException) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def measure(
  pair, dtype, batch_size, views, *, rounds, iterations, width=None, feature_dim=None
) -> dict:
  """Times one case in this process (see the module docstring); returns its row as a dict."""
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks import jax_loop  # pylint: disable=import-outside-toplevel
  from uctrl_jax import models  # pylint: disable=import-outside-toplevel

  config = case_config(pair, dtype, batch_size, views, width, feature_dim)
  row = {
    "pair": pair,
    "dtype": dtype,
    "batch": batch_size,
    "views": config.data.num_views,
    "devices": jax.device_count(),
    "encoder_steps": config.train.encoder_steps,
  }
  try:
    loop = jax_loop.JaxLoop(
      config, IMAGE_SHAPE, jax_loop.random_batch(config, IMAGE_SHAPE, seed=config.seed)
    )
    row["params"] = {
      "encoder": models.count_params(loop.state.encoder_params),
      "decoder": models.count_params(loop.state.decoder_params),
    }
    start = time.perf_counter()
    flops = loop.compile_steps()
    row["first_iteration_s"] = time.perf_counter() - start + loop.run(1)
    with jax_loop.count_compiles() as compiles:
      loop.run(2)  # warm-up
      per_iteration = [loop.run(iterations) / iterations for _ in range(rounds)]
    rate_terms, rate_flops = jax_loop.rate_terms_fwdgrad(config, loop.mesh, batch_size)
    rate_terms()  # compiles
    rate_seconds = [_seconds_per_call(rate_terms, iterations) for _ in range(rounds)]
    peak = jax_loop.matmul_peak(models.DTYPES[dtype])
  except Exception as e:  # pylint: disable=broad-except
    if not _is_out_of_memory(e):
      raise
    return {**row, "status": "does not fit", "error": str(e).splitlines()[0][:200]}
  if compiles:
    raise AssertionError(f"the timed iterations compiled {compiles}: timings would include it")
  iteration_ms = jax_loop.median_ms(per_iteration)
  rate_ms = jax_loop.median_ms(rate_seconds)
  # XLA's cost analysis is of the partitioned program that each device runs.
  achieved = flops / (iteration_ms / 1e3)
  return {
    **row,
    "status": "ok",
    "iteration_ms": iteration_ms,
    "images_per_s": batch_size * 1e3 / iteration_ms,
    "flops_per_iteration_per_device": flops,
    "flops_per_iteration": flops * row["devices"],
    "achieved_flops_per_s": achieved,
    "matmul_peak": peak,
    "utilisation": achieved / peak["flops_per_s"],
    "rate_terms_ms": rate_ms,
    "rate_share": rate_ms / iteration_ms,
    "rate_terms_flops": rate_flops,
    "rate_flops_share": rate_flops / flops,
    "peak_memory_bytes": peak_memory_bytes(jax.local_devices()),
  }


# ----------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------


def _fmt_row(r: dict) -> str:
  head = f"| {r['pair']} | {r['dtype']} | {r['batch']} | {r['views']} |"
  if r["status"] != "ok":
    return head + f" {r['status']} |" + " |" * (TABLE_HEADER.split("\n")[0].count("|") - 6)
  peak = r["peak_memory_bytes"]
  peak = "n/a" if peak is None else f"{peak / 2**30:.2f}"
  return (
    head + f" {r['iteration_ms']:.1f} | {r['images_per_s']:,.1f} "
    f"| {r['flops_per_iteration'] / 1e9:,.2f} | {r['achieved_flops_per_s'] / 1e9:,.1f} "
    f"| {r['matmul_peak']['flops_per_s'] / 1e9:,.1f} | {100 * r['utilisation']:.1f}% "
    f"| {r['rate_terms_ms']:.2f} | {100 * r['rate_share']:.1f}% "
    f"| {100 * r['rate_flops_share']:.2g}% | {r['first_iteration_s']:.1f} | {peak} |"
  )


TABLE_HEADER = (
  "| pair | dtype | global batch | views | iteration ms | images/s | GFLOP / iteration "
  "| achieved GFLOP/s / device | matmul peak GFLOP/s | utilisation "
  "| rate terms ms / iteration "
  "| rate terms' share of time | of FLOPs | first iteration s (compiles) "
  "| peak memory GiB / device |\n"
  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def run_child(flags, timeout_s):
  """Runs this module with ``flags`` in a child process: ``(result dict or None, why)``,
  ``why`` saying why there is no result (the time budget, or the child's last stderr line)."""
  try:
    proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.accelerator_bench"] + flags,
      cwd=_ROOT,
      capture_output=True,
      text=True,
      timeout=timeout_s,
    )
  except subprocess.TimeoutExpired:
    return None, f"stopped: the time budget ran out ({timeout_s:.0f} s were left at its start)"
  for line in proc.stdout.splitlines():
    if line.startswith(_RESULT):
      return json.loads(line[len(_RESULT) :]), None
  last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
  return None, f"failed (exit {proc.returncode}): {last}"


def run_case_process(case, args, timeout_s) -> dict:
  """One case's row, measured in a child process (this module with ``--case``)."""
  pair, dtype, batch, views = case
  flags = [
    "--case",
    f"{pair},{dtype},{batch},{views}",
    "--rounds",
    str(args.rounds),
    "--iterations",
    str(args.iterations),
  ]
  for flag in ("width", "feature_dim"):
    if getattr(args, flag) is not None:
      flags += [f"--{flag}", str(getattr(args, flag))]
  row, why = run_child(flags, timeout_s)
  return row or {"pair": pair, "dtype": dtype, "batch": batch, "views": views, "status": why}


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="batch 512 only, fewer rounds, a 270 s budget: < 5 min on an H200",
  )
  parser.add_argument(
    "--ci",
    action="store_true",
    help="one tiny case (DCGAN, float32, batch 16, w = 8, d = 16): the CPU test",
  )
  parser.add_argument("--pairs", default=None, help=f"comma-separated, from {PAIRS}")
  parser.add_argument("--dtypes", default=None, help=f"comma-separated, from {DTYPES}")
  parser.add_argument("--batches", default=None, help="comma-separated global batch sizes")
  parser.add_argument(
    "--views",
    default=None,
    help="comma-separated views per image (default: configs/cifar.py's, the shipped recipe)",
  )
  parser.add_argument("--width", type=int, default=None, help="override config.model.width")
  parser.add_argument(
    "--feature_dim", type=int, default=None, help="override config.model.feature_dim"
  )
  parser.add_argument("--rounds", type=int, default=None, help="timed rounds (median)")
  parser.add_argument("--iterations", type=int, default=None, help="iterations per round")
  parser.add_argument(
    "--budget_s",
    type=float,
    default=None,
    help="start no case after this many seconds (--quick: 270)",
  )
  parser.add_argument("--json", default=None, help="also write the rows here")
  # A child's work: one case (PAIR,DTYPE,BATCH), or the devices it sees.
  parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--describe", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  mode = "ci" if args.ci else "quick" if args.quick else "full"
  defaults = {
    "ci": dict(
      pairs="dcgan",
      dtypes="float32",
      batches="16",
      width=8,
      feature_dim=16,
      rounds=2,
      iterations=1,
      budget_s=None,
    ),
    "quick": dict(
      pairs=",".join(PAIRS),
      dtypes=",".join(DTYPES),
      batches="512",
      rounds=3,
      iterations=5,
      budget_s=270.0,
    ),
    "full": dict(
      pairs=",".join(PAIRS),
      dtypes=",".join(DTYPES),
      batches=",".join(map(str, BATCHES)),
      rounds=5,
      iterations=10,
      budget_s=None,
    ),
  }[mode]
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)

  if args.describe or args.case:  # a child: one result line
    if args.describe:
      row = describe_devices()
    else:
      pair, dtype, batch, views = args.case.split(",")
      row = measure(
        pair,
        dtype,
        int(batch),
        int(views),
        rounds=args.rounds,
        iterations=args.iterations,
        width=args.width,
        feature_dim=args.feature_dim,
      )
    print(_RESULT + json.dumps(row), flush=True)
    return [row]

  # This process never touches a device: on a GPU it would hold memory the cases need.
  start = time.monotonic()
  shipped = case_config("dcgan", "float32", 128)  # a config only: no device is touched
  views = args.views or str(shipped.data.num_views)
  cases = [
    (p, d, int(b), int(v))
    for p in args.pairs.split(",")
    for d in args.dtypes.split(",")
    for b in args.batches.split(",")
    for v in views.split(",")
  ]
  unknown = [c for c in cases if c[0] not in PAIRS or c[1] not in DTYPES]
  if unknown:
    parser.error(f"unknown pair or dtype in {unknown}; pairs {PAIRS}, dtypes {DTYPES}")
  info, why = run_child(["--describe"], 120)
  if info is None:
    raise SystemExit(f"cannot see the devices: {why}")
  width = args.width or shipped.model.width
  print(
    f"# uCTRL iteration on {info['devices']} × {info['device_kind']} ({info['platform']}), "
    f"jax {info['jax']}, {datetime.date.today().isoformat()}, mode {mode}\n",
    flush=True,
  )
  print(
    f"configs/cifar.py ({shipped.data.num_views} views shipped, "
    f"{shipped.train.encoder_steps} encoder steps per iteration), 32×32×3 synthetic "
    f"batches, w = {width}; median of {args.rounds} rounds of {args.iterations} iterations\n",
    flush=True,
  )
  print(TABLE_HEADER, flush=True)
  rows = []
  for case in cases:
    left = None if args.budget_s is None else args.budget_s - (time.monotonic() - start)
    if left is not None and left < _MIN_CASE_S:
      row = dict(zip(("pair", "dtype", "batch", "views"), case))
      row["status"] = "not run: time budget spent"
    else:
      row = run_case_process(case, args, left)
    rows.append(row)
    print(_fmt_row(row), flush=True)
  print(f"\n{time.monotonic() - start:.0f} s in all", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({**info, "mode": mode, "rows": rows}, f, indent=2)
  failed = [r for r in rows if r["status"].startswith("failed")]
  if failed:
    raise SystemExit(f"{len(failed)} case(s) failed: {[_fmt_row(r) for r in failed]}")
  return rows


if __name__ == "__main__":
  main()
