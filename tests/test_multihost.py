"""Multi-host data parallelism on JAX's runtime: real processes on 127.0.0.1.

Two `main.py` processes with 4 CPU devices each, joined by `jax.distributed` (a
coordinator on a free local port, gloo collectives), train for 3 iterations. Their
logged objective terms must equal those of one process with 8 devices (and, marked
slow, of one process with 1 device), and their checkpoint must restore here, in one
process. Each `main.py` costs about 35 CPU-seconds (imports, compiling the steps).

The same global batch in every run. Each process reads its own shard of the data
and seeds its shuffle and augmentations with (seed, process index), so on real data
the 2-process run sees other batches than a 1-process run. The data here is built
so that the global batch cannot depend on the process count:
- 16 examples, one global batch: process p's contiguous shard [8p, 8p + 8) is its
  whole per-process batch, and the global batch concatenates them in process order
  (`sharding.shard_batch`), which is the 1-process batch;
- no shuffling (a buffer of 1 is the identity); every iteration sees that batch;
- views that no seed changes: the whole image (crop scale and ratio 1), no flip, no
  colour jitter, grayscale always. (While augment.py's colour ops are skipped inside
  tf.data, where the channel count is unknown after the crop, the views are the
  images themselves and the augmentation term is 0.)
"""

import os
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import uctrl_jax
from uctrl_jax import checkpointing
from uctrl_jax import distributed
from uctrl_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 3
RUN_TIMEOUT_S = 1200  # per phase (minutes on a loaded machine); a hang must fail, not stall

CONFIG = """
from configs import tiny


def get_config():
  config = tiny.get_config()  # batch 16, 2 views, checkpoints at 2 and 3
  config.data.name = "npz:{data}"
  config.data.shuffle_buffer = 1
  config.data.augment.crop_scale = (1.0, 1.0)
  config.data.augment.crop_ratio = (1.0, 1.0)
  config.data.augment.flip = False
  config.data.augment.jitter_prob = 0.0
  config.data.augment.grayscale_prob = 1.0
  config.train.num_steps = {num_steps}
  return config
"""

# clu's LoggingWriter: "... logging_writer.py:48] [3] decoder/R=7.71622, encoder/R=..."
# (scalar lines only: its image lines read "[2] Got images: {...}")
_SCALARS = re.compile(r"logging_writer\.py:\d+\] \[(\d+)\] ([\w/]+=.*)$")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_config(tmp_path) -> str:
  rng = np.random.default_rng(0)
  data = tmp_path / "data"  # train.npz and test.npz: the in-training evaluation runs too
  data.mkdir()
  for split in ("train", "test"):
    np.savez(
      data / f"{split}.npz",
      x=rng.integers(0, 256, (16, 28, 28, 3), dtype=np.uint8),
      y=rng.integers(0, 10, 16),
    )
  path = tmp_path / "multihost_config.py"
  path.write_text(CONFIG.format(data=data, num_steps=NUM_STEPS))
  return str(path)


def _start(log_path, num_devices, args, extra_env=None) -> subprocess.Popen:
  """`python main.py ARGS` on `num_devices` simulated CPU devices, output to `log_path`."""
  env = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
  }
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="2",
    **(extra_env or {}),
  )
  # --verbose: the terms are read from clu's scalar lines (full precision), INFO logs of
  # a library that the default console leaves out.
  with open(log_path, "w") as log:  # the child keeps its own handle
    return subprocess.Popen(
      [sys.executable, os.path.join(REPO, "main.py"), "--verbose", *args],
      cwd=REPO,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
    )


def _wait(runs: dict) -> None:
  """Waits for every process; on a failure or the timeout, stops the rest and fails."""
  deadline = time.monotonic() + RUN_TIMEOUT_S
  pending = dict(runs)
  failed = None
  while pending and failed is None and time.monotonic() < deadline:
    for name, (proc, _) in list(pending.items()):
      if proc.poll() is not None:
        del pending[name]
        if proc.returncode:
          failed = name
    time.sleep(0.5)
  for proc, _ in pending.values():  # a peer of a dead process would wait for it for minutes
    proc.kill()
    proc.wait()
  if failed or pending:
    name = failed or next(iter(pending))
    with open(runs[name][1]) as f:
      tail = f.read()[-4000:]
    pytest.fail(f"{name} {'failed' if failed else 'timed out'}; its log ends:\n{tail}")


def _logged_terms(log_path) -> dict:
  """{step: {"encoder/R": value, ...}}: the objective terms a process logged."""
  terms = {}
  with open(log_path) as f:
    for line in f:
      match = _SCALARS.search(line)
      if match:
        for item in match.group(2).split(", "):
          key, value = item.split("=", 1)
          if key.startswith(("encoder/", "decoder/")):
            terms.setdefault(int(match.group(1)), {})[key] = float(value)
  return terms


def _start_all(tmp_path, procs: dict) -> dict:
  """Starts {name: (args, devices, env)} at once and waits for all; {name: log path}."""
  started = {}
  for name, (args, devices, env) in procs.items():
    log = str(tmp_path / (name.replace(" ", "_").replace(",", "") + ".log"))
    started[name] = (_start(log, devices, args, env), log)
  _wait(started)
  return {name: log for name, (_, log) in started.items()}


def _one_process(tmp_path, config, num_devices) -> tuple[str, str]:
  """`main.py` in one process with `num_devices` devices; (workdir, log)."""
  name = f"1 process, {num_devices} device{'s' if num_devices > 1 else ''}"
  workdir = str(tmp_path / f"one_host_{num_devices}")
  log = _start_all(
    tmp_path, {name: ([f"--config={config}", f"--workdir={workdir}"], num_devices, None)}
  )[name]
  return workdir, log


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
  """(tmp_path, config, workdir, logs of processes 0 and 1) of the 2-process run.

  The pair runs alone: gloo (CPU collectives) gives processes 30 s to meet the first
  time a compiled program runs, and sharing the cores evenly keeps them in step
  where nothing else makes them wait for each other.
  """
  tmp_path = tmp_path_factory.mktemp("multihost")
  config = _write_config(tmp_path)
  workdir = str(tmp_path / "two_hosts")
  port = _free_port()
  # The coordinator listens on loopback only (jax's default binds every interface).
  bind = {"JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}"}
  logs = _start_all(
    tmp_path,
    {
      f"process {process_id} of 2": (
        [
          f"--config={config}",
          f"--workdir={workdir}",
          f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2",
          f"--process_id={process_id}",
        ],
        4,
        bind,
      )
      for process_id in range(2)
    },
  )
  return tmp_path, config, workdir, [logs["process 0 of 2"], logs["process 1 of 2"]]


@pytest.fixture(scope="module")
def one_host_8(two_hosts):
  """(workdir, log) of the 1-process run with 8 devices, after the pair."""
  tmp_path, config, _, _ = two_hosts
  return _one_process(tmp_path, config, 8)


def _assert_terms_close(actual, expected, rtol, atol, what):
  assert sorted(actual) == sorted(expected) == list(range(1, NUM_STEPS + 1)), what
  for step in expected:
    assert actual[step].keys() == expected[step].keys(), what
    for key, value in expected[step].items():
      np.testing.assert_allclose(
        actual[step][key], value, rtol=rtol, atol=atol, err_msg=f"{what}: step {step} {key}"
      )


def test_two_processes_log_the_terms_of_one_with_8_devices(two_hosts, one_host_8):
  _, _, _, (log0, log1) = two_hosts
  with open(log0) as f:
    text0 = f.read()
  with open(log1) as f:
    text1 = f.read()
  # One job over both processes: each sees its 4 devices and all 8.
  assert "JAX process 0/2: 4 local cpu device(s)" in text0 and "of 8 in all" in text0
  assert "JAX process 1/2: 4 local cpu device(s)" in text1 and "of 8 in all" in text1

  two = _logged_terms(log0)
  assert two and "encoder/R" in two[1] and "decoder/decoder_objective" in two[1]
  # The in-training evaluation ran on both processes (the jitted encoder and decoder span
  # the global mesh) at the last step, with the same results.
  evals = [
    re.search(r"\[%d\] eval/eval_seconds.*eval/knn/top1=([0-9.e+-]+)" % NUM_STEPS, t)
    for t in (text0, text1)
  ]
  assert all(evals) and evals[0].group(1) == evals[1].group(1)
  # The terms are replicated results of the same all-reduces: both processes log them.
  _assert_terms_close(_logged_terms(log1), two, 1e-6, 0.0, "process 1 vs 0")
  # The same partitioned program in one process, with in-process instead of gloo
  # all-reduces: equal to about 1e-6 (2026-11-29); 1.1e-6 on ΔR(Z, Ẑ) ≈ 0.006 at step 2
  # with the encoder's lr of 1e-3 (2026-12-03), larger steps carrying the noise further.
  _assert_terms_close(
    two, _logged_terms(one_host_8[1]), 1e-5, 5e-6, "2 processes vs 1 process with 8 devices"
  )


@pytest.mark.slow
def test_two_processes_log_the_terms_of_one_with_1_device(two_hosts):
  tmp_path, config, _, (log0, _) = two_hosts
  _, log = _one_process(tmp_path, config, 1)
  # Other reduction orders: tolerances of test_train's 8-vs-1 device comparison
  # (seen: 2e-6 relative, 2026-11-29).
  _assert_terms_close(
    _logged_terms(log0), _logged_terms(log), 2e-4, 2e-5, "2 processes vs 1 process with 1 device"
  )


def test_two_process_checkpoint_restores_in_one_process(two_hosts, one_host_8):
  _, _, workdir, _ = two_hosts
  with checkpointing.Checkpointer(workdir) as checkpointer:
    assert checkpointer.all_steps() == [2, NUM_STEPS]
  # Process 0 alone wrote the config and the pictures.
  assert checkpointing.load_config(workdir).train.num_steps == NUM_STEPS
  assert os.path.isfile(os.path.join(workdir, "reconstructions", f"step_{NUM_STEPS:07d}.png"))
  two = uctrl_jax.load(workdir)  # in this process: one process, 8 devices
  one = uctrl_jax.load(one_host_8[0])
  assert int(two.state.step) == int(one.state.step) == NUM_STEPS
  # Float noise of the all-reduces, grown by 3 Adam steps: up to 1.6e-5 seen (2026-11-29).
  # Adam's first updates are ±lr = ±1.5e-4 wherever a gradient is ≈ 0, so a sign flipped
  # by that noise would show as a difference near 3e-4.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4),
    two.state,
    one.state,
  )
  x = np.random.default_rng(1).uniform(-1, 1, (4, 28, 28, 3)).astype(np.float32)
  np.testing.assert_allclose(two.decode(two.encode(x)), one.decode(one.encode(x)), atol=1e-4)


# --- no processes started: settings and errors ---


@pytest.fixture
def no_distributed_env(monkeypatch):
  for name in (
    distributed.ENV_COORDINATOR,
    distributed.ENV_NUM_PROCESSES,
    distributed.ENV_PROCESS_ID,
    "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS",
    "OMPI_COMM_WORLD_SIZE",
  ):
    monkeypatch.delenv(name, raising=False)


def test_initialize_without_settings_stays_single_process(no_distributed_env, monkeypatch):
  called = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
  assert distributed.initialize() is False
  monkeypatch.setenv("SLURM_NTASKS", "4")  # srun without --distributed: warned, not joined
  assert distributed.initialize() is False
  assert called == []


def test_initialize_reads_the_environment(no_distributed_env, monkeypatch):
  called = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
  monkeypatch.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:1234")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
  assert distributed.initialize() is True
  assert called[0]["coordinator_address"] == "10.0.0.1:1234"
  assert (called[0]["num_processes"], called[0]["process_id"]) == (4, 3)
  # --distributed alone leaves everything to jax's cluster detection (TPU, SLURM, MPI).
  monkeypatch.delenv(distributed.ENV_COORDINATOR)
  monkeypatch.delenv(distributed.ENV_NUM_PROCESSES)
  monkeypatch.delenv(distributed.ENV_PROCESS_ID)
  assert distributed.initialize(enabled=True) is True
  assert called[1]["coordinator_address"] is None and called[1]["process_id"] is None


def test_initialize_rejects_bad_settings(no_distributed_env, monkeypatch):
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("called"))
  with pytest.raises(ValueError, match="not in \\[0, 2\\)"):
    distributed.initialize(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2)
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    distributed.initialize()


def test_single_process_keeps_the_step_and_device_put():
  step = jax.jit(lambda x: x + 1)
  assert distributed.meet_before_first_run(step, "step") is step
  mesh = sharding.create_mesh()
  state = sharding.replicate({"w": np.arange(3.0)}, mesh)
  assert state["w"].sharding.is_fully_replicated
  assert len(state["w"].sharding.device_set) == jax.device_count()


def test_mesh_shape_from_config():
  assert sharding.mesh_shape({"data": -1, "model": 1}, 8) == (8, 1)
  assert sharding.mesh_shape(None, 8) == (8, 1)
  mesh = sharding.create_mesh(mesh_config={"data": -1, "model": 1})
  assert mesh.axis_names == ("data", "model") and mesh.shape["data"] == jax.device_count()
  with pytest.raises(NotImplementedError, match="model-parameter sharding"):
    sharding.mesh_shape({"data": 4, "model": 2}, 8)
  with pytest.raises(ValueError, match="does not cover the 8 devices"):
    sharding.mesh_shape({"data": 4, "model": 1}, 8)
  with pytest.raises(ValueError, match="unknown axes"):
    sharding.mesh_shape({"data": -1, "pipeline": 1}, 8)
