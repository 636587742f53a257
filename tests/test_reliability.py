"""Reliability of train_and_evaluate (issues 6 and 26): preemption, kill -9, NaN guard,
config validation, damaged checkpoints, determinism; one training per work directory, a
checkpoint that cannot be written, an evaluation interrupted while writing.

Signals are sent to real `python main.py` subprocesses (tiny config, a 64-image npz
dataset) once they have logged the step the test needs, never after a blind sleep;
everything else runs in-process. A module-scoped run of 4 steps (checkpoints at 2 and
4) serves the determinism and damaged-checkpoint tests, and a module-wide persistent
compilation cache keeps the many small runs cheap.
"""

import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
import uctrl_jax
from uctrl_jax import checkpointing
from uctrl_jax import config_checks
from uctrl_jax import evaluate
from uctrl_jax import nonfinite
from uctrl_jax import steps
from uctrl_jax import train
from uctrl_jax import workdir_files
from uctrl_jax.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LINE = re.compile(r"step (\d+)/\d+ \|")
_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for this module's runs, in-process and subprocesses.

  They all compile the same tiny-config steps, and compiling is most of a 4-step run
  (about 20 s of CPU; 3 s from the cache). The previous settings come back afterwards.
  """
  path = str(tmp_path_factory.mktemp("jax_cache"))
  previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield path
  for name, value in previous.items():
    jax.config.update(name, value)


@pytest.fixture(scope="module")
def npz_path(random_npz):
  return random_npz((28, 28, 1))


def _config(npz_path, **train):
  config = tiny.get_config()
  config.data.name = f"npz:{npz_path}"
  config.train.num_steps = 4
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.image_every = 1000
  # Runs here are continued with a larger num_steps; a constant rate does not depend on it
  # (the default cosine decay would refuse: the test of that passes schedule="cosine").
  config.train.schedule = "constant"
  for key, value in train.items():
    config.train[key] = value
  return config


def _scalars(workdir, tag):
  """{step: value} of a TensorBoard scalar written by clu."""
  import tensorflow as tf

  values = {}
  for name in sorted(os.listdir(workdir)):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for v in event.summary.value:
          if v.tag == tag:
            values[event.step] = float(tf.make_ndarray(v.tensor))
  return values


@pytest.fixture(scope="module")
def four_step_run(npz_path, tmp_path_factory):
  """A finished 4-step run (checkpoints 2 and 4); tests copy it before changing it."""
  workdir = str(tmp_path_factory.mktemp("four_step") / "run")
  train.train_and_evaluate(_config(npz_path), workdir)
  return workdir


# ------------------------------------------------------------------ determinism


def test_same_seed_same_losses(npz_path, four_step_run, tmp_path):
  """Same config and seed: the same batches, views and initial state, so bitwise the
  same logged terms (on one backend and device count)."""
  workdir = str(tmp_path / "again")
  train.train_and_evaluate(_config(npz_path, num_steps=3), workdir)
  for tag in ("encoder/encoder_objective", "decoder/decoder_objective", "encoder/R"):
    first, second = _scalars(four_step_run, tag), _scalars(workdir, tag)
    assert sorted(second) == [1, 2, 3]
    assert [first[k] for k in (1, 2, 3)] == [second[k] for k in (1, 2, 3)], tag  # bitwise


# ------------------------------------------------------------------ damaged checkpoints


def _damage(step_dir):
  """Truncates every data file of the saved state to 10 bytes."""
  data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  names = os.listdir(data)
  assert names
  for name in names:
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(10)


def test_truncated_latest_checkpoint_falls_back_to_previous(
  npz_path, four_step_run, tmp_path, caplog
):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_step_run, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  _damage(os.path.join(ckpt_dir, "4"))
  with caplog.at_level(logging.INFO, logger="absl"):
    state = train.train_and_evaluate(_config(npz_path, num_steps=5), workdir)
  assert int(state.step) == 5
  text = caplog.text
  assert f"checkpoint {ckpt_dir}/4 is unreadable" in text
  assert "resumed from" in text and "at step 2" in text
  # The damaged step is kept aside, and redone: 4 is the new run's, not the damaged one.
  assert os.path.isdir(os.path.join(workdir, checkpointing.UNREADABLE_SUBDIR, "4"))
  assert checkpointing.Checkpointer(workdir).all_steps() == [2, 4, 5]


def test_no_readable_checkpoint_is_an_error_naming_them(npz_path, four_step_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_step_run, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for step in ("2", "4"):
    _damage(os.path.join(ckpt_dir, step))
  # RunLoadError: main.py prints it as one `error:` line.
  with pytest.raises(checkpointing.RunLoadError, match=r"no readable checkpoint") as e:
    train.train_and_evaluate(_config(npz_path, num_steps=6), workdir)
  assert f"{ckpt_dir}/4" in str(e.value) and f"{ckpt_dir}/2" in str(e.value)
  # Nothing moved, nothing new written: the next start fails the same way, never at step 0.
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]
  assert not os.path.exists(os.path.join(workdir, checkpointing.UNREADABLE_SUBDIR))


# ------------------------------------------------------------------ old work directories


def test_a_run_saved_with_a_retired_key_loads_evaluates_and_resumes(
  npz_path, four_step_run, tmp_path, caplog
):
  """A ``config.json`` holding a key today's configs no longer have (the test-only
  ``train.fault_inject_nan_at_step``, retired) still loads, evaluates and resumes."""
  workdir = str(tmp_path / "run")
  shutil.copytree(four_step_run, workdir)
  path = os.path.join(workdir, checkpointing.CONFIG_FILENAME)
  with open(path) as f:
    saved = json.load(f)
  assert "fault_inject_nan_at_step" not in saved["train"]
  saved["train"]["fault_inject_nan_at_step"] = None  # as runs of the time wrote it
  with open(path, "w") as f:
    json.dump(saved, f)

  loaded = uctrl_jax.load(workdir)
  x = np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)).astype(np.float32)
  np.testing.assert_array_equal(loaded.encode(x), uctrl_jax.load(four_step_run).encode(x))
  config = _config(npz_path)
  config.evals.update(
    names=("knn",),
    baselines=False,
    figures=False,
    train_split="train[:48]",
    test_split="train[48:]",
  )
  results = evaluate.evaluate(config, workdir)  # main.py --mode=eval
  assert results["step"] == 4 and 0 <= results["metrics"]["knn/top1"] <= 100
  with caplog.at_level(logging.INFO, logger="absl"):
    state = train.train_and_evaluate(_config(npz_path, num_steps=5), workdir)
  assert int(state.step) == 5 and "resumed from" in caplog.text and "at step 4" in caplog.text


# ------------------------------------------------------------------ one writer per run


def _subprocess_env(cache_dir):
  """The environment of a `main.py` subprocess: this module's compilation cache."""
  return dict(
    os.environ,  # conftest's 8 CPU devices included
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )


def _main_subprocess(cache_dir, *args, code=None, timeout=600):
  """`python main.py ARGS` (or ``code`` with main's flags; `main` is importable from it):
  (exit status, stderr)."""
  cmd = [sys.executable] + (["-c", code] if code else ["main.py"]) + list(args)
  proc = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_subprocess_env(cache_dir)
  )
  return proc.returncode, proc.stderr


def _lock_record(**fields):
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),  # alive, and not the subprocess's own pid
    "since": "2026-12-05T09:00:00+00:00",
    "command": "python main.py",
    "job": "0123456789abcdef",
    **fields,
  }


def _hold(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_files.LOCK_FILENAME), "w") as f:
    json.dump(_lock_record(**fields), f)


def test_a_second_training_on_a_held_workdir_exits_with_one_line(
  npz_path, compilation_cache, tmp_path
):
  workdir = str(tmp_path / "run")
  _hold(workdir)
  status, stderr = _main_subprocess(
    compilation_cache,
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.name=npz:{npz_path}",
  )
  assert status == 1 and "Traceback" not in stderr, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
    f"error: work directory {workdir} is held by another training: pid {os.getpid()} on "
    f"{socket.gethostname()} since 2026-12-05T09:00:00+00:00 ({workdir}/train.lock); let it "
    "finish or stop it, or use another --workdir"
  )
  assert os.listdir(workdir) == ["train.lock"]  # nothing written, nothing cleaned up


def test_a_stale_lock_is_taken_over_and_released_at_the_end(npz_path, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _hold(workdir, pid=dead.pid)
  with caplog.at_level(logging.WARNING, logger="absl"):
    state = train.train_and_evaluate(_config(npz_path, num_steps=2), workdir)
  assert int(state.step) == 2
  assert f"its holder, pid {dead.pid} on {socket.gethostname()}" in caplog.text
  assert "is gone" in caplog.text
  assert not os.path.exists(os.path.join(workdir, workdir_files.LOCK_FILENAME))


def test_load_reads_beside_a_running_training(four_step_run, tmp_path):
  """A training holds the directory and has a save under way: `load` takes no lock and
  leaves the save's temporary directory alone (a training's start would remove it)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(four_step_run, workdir)
  _hold(workdir)
  under_way = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp")
  os.makedirs(under_way)
  loaded = uctrl_jax.load(workdir)
  assert int(loaded.state.step) == 4
  assert os.path.isdir(under_way)
  with open(os.path.join(workdir, workdir_files.LOCK_FILENAME)) as f:
    assert json.load(f) == _lock_record()


# ------------------------------------------------------------------ a checkpoint that cannot be written

# main.py with orbax's commit of step 4 failing as on a full disk (the step's temporary
# directory written, its rename refused), as a real full disk fails (tried on a 1.5 MB
# tmpfs: one line, the same leftover).
_FULL_DISK_AT_STEP_4 = """
import errno, os, sys
sys.argv[0] = "main.py"
from orbax.checkpoint._src.path import atomicity
commit = atomicity.AtomicRenameTemporaryPath.finalize
async def full_disk(self, *args, **kwargs):
  if os.path.basename(os.fspath(self._final_path)) == "4":
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(self._tmp_path))
  return await commit(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = full_disk
from absl import app
import main
app.run(main.main, flags_parser=main.cli.parse_flags)
"""


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_a_rerun_resumes(
  npz_path, compilation_cache, tmp_path, caplog
):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  status, stderr = _main_subprocess(
    compilation_cache,
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.name=npz:{npz_path}",
    "--config.train.schedule=constant",
    "--config.train.image_every=1000",
    code=_FULL_DISK_AT_STEP_4,
  )
  assert status == 1, stderr[-3000:]
  assert "Traceback" not in stderr and "orbax" not in stderr, stderr[-3000:]
  # Python-side lines only: XLA's C++ log may warn about the compilation cache's machine.
  errors = [line for line in stderr.splitlines() if re.match(r"(\d\d:\d\d:\d\d )?error", line)]
  assert (
    errors
    == stderr.strip().splitlines()[-1:]
    == [
      f"error: cannot write the checkpoint of step 4 in {ckpt_dir}: No space left on device; "
      "the last complete checkpoint: step 2 (the same command resumes from it once the "
      "directory can be written again)"
    ]
  ), stderr[-3000:]
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4.orbax-checkpoint-tmp"]
  assert not os.path.exists(os.path.join(workdir, workdir_files.LOCK_FILENAME))

  with caplog.at_level(logging.INFO, logger="absl"):
    state = train.train_and_evaluate(_config(npz_path), workdir)
  assert int(state.step) == 4 and f"resumed from {workdir} at step 2" in caplog.text
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]  # the leftover removed, step 4 written


def test_the_reason_of_a_failed_write_is_the_os_error():
  tensorstore = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file "/w/": Failed to '
    "write 18541 bytes to file 15: No space left on device [os_error_code='28']"
  )
  assert checkpointing._failure_reason(tensorstore) == "No space left on device"  # pylint: disable=protected-access
  try:
    try:
      raise PermissionError(13, "Permission denied", "/w/checkpoints")
    except OSError as e:
      raise RuntimeError("commit failed") from e
  except RuntimeError as wrapped:
    assert checkpointing._failure_reason(wrapped) == "Permission denied"  # pylint: disable=protected-access
  assert checkpointing._failure_reason(KeyError("x")) == "KeyError: 'x'"  # pylint: disable=protected-access


# ------------------------------------------------------------------ an interrupted evaluation


def test_an_evaluation_interrupted_while_writing_leaves_the_previous_results(
  npz_path, four_step_run, tmp_path, monkeypatch
):
  workdir = str(tmp_path / "run")
  shutil.copytree(four_step_run, workdir)
  results = os.path.join(workdir, "results.json")
  previous = '{"metrics": {"knn/top1": 12.5}}\n'
  with open(results, "w") as f:
    f.write(previous)
  config = _config(npz_path)
  config.evals.names = ("knn",)
  config.evals.train_split, config.evals.test_split = "train[:48]", "train[48:]"
  config.evals.baselines = False
  config.evals.figures = False
  replace = os.replace

  def killed_before_the_rename(src, dst):
    if os.path.basename(dst) == "results.json":
      with open(src) as f:
        assert json.load(f)["step"] == 4  # the new results were complete
      raise KeyboardInterrupt  # e.g. Ctrl-C
    replace(src, dst)

  monkeypatch.setattr(os, "replace", killed_before_the_rename)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(config, workdir)
  with open(results) as f:
    assert f.read() == previous
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


# ------------------------------------------------------------------ non-finite guard


def _inject_nan(state, metrics):
  """The fault: NaN in every encoder parameter and in the logged encoder objective, as a
  diverged step would leave them."""
  state = state.replace(encoder_params=jax.tree.map(lambda x: x * jnp.nan, state.encoder_params))
  return state, {**metrics, "encoder/encoder_objective": jnp.float32(jnp.nan)}


@pytest.fixture
def nan_at_step(monkeypatch):
  """``nan_at_step(n)``: the loop's iteration that ends at step ``n`` leaves NaN
  (``_inject_nan``), once, so that a rollback can get past it. The loop calls
  ``steps.train_iteration`` through the module, so wrapping it there reaches the loop."""

  def arm(fault_step):
    iterate, injected = steps.train_iteration, []

    def train_iteration(*args, **kwargs):
      state, metrics = iterate(*args, **kwargs)
      if not injected and int(state.step) == fault_step:
        injected.append(fault_step)
        state, metrics = _inject_nan(state, metrics)
      return state, metrics

    monkeypatch.setattr(steps, "train_iteration", train_iteration)

  return arm


def test_injected_nan_stops_naming_term_and_keeps_last_checkpoint(npz_path, tmp_path, nan_at_step):
  workdir = str(tmp_path / "run")
  config = _config(npz_path)  # log every step, checkpoints 2, 4
  nan_at_step(3)
  with pytest.raises(FloatingPointError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "non-finite values at step 3" in message
  assert "encoder/encoder_objective" in message and ".encoder_params" in message
  assert "the last checkpoint, step 2" in message
  assert not os.path.exists(os.path.join(workdir, workdir_files.LOCK_FILENAME))  # released
  with checkpointing.Checkpointer(workdir) as ckpt:
    assert ckpt.all_steps() == [2]
    target = create_train_state(config, (28, 28, 1), jax.random.key(0))
    restored, extra = ckpt.restore(target)
  assert int(restored.step) == 2 and extra["batches_consumed"] == 2
  assert nonfinite.nonfinite_state_leaves(restored) == []


def test_rollback_skips_bad_batches_and_never_saves_nan(npz_path, tmp_path, caplog, nan_at_step):
  """The NaN appears at a checkpoint step that is not a log step: the check before the
  save catches it; rollback restores step 2 and goes on with the next batches."""
  workdir = str(tmp_path / "run")
  config = _config(npz_path, on_nonfinite="rollback", log_every=1000, checkpoint_every=1)
  nan_at_step(3)
  with caplog.at_level(logging.WARNING, logger="absl"):
    state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  assert "non-finite values at step 3: state .encoder_params" in caplog.text
  assert "rolled back to the checkpoint of step 2 (rollback 1 of 3)" in caplog.text
  with checkpointing.Checkpointer(workdir) as ckpt:
    assert ckpt.all_steps() == [2, 3, 4]
    for step in (2, 3, 4):
      restored, extra = ckpt.restore(state, step)
      assert nonfinite.nonfinite_state_leaves(restored) == [], step
    assert extra["batches_consumed"] == 5  # step 3's first batch was skipped


def test_check_finite_names_state_arrays():
  state = {
    "a": np.zeros(3, np.float32),
    "b": {"c": np.array([1.0, np.inf], np.float32)},
    "n": np.zeros(2, np.int32),
  }
  assert nonfinite.nonfinite_state_leaves(state) == ["['b']['c']"]
  nonfinite.check_finite(5, {"x": 1.0}, {"a": np.ones(2, np.float32)})
  with pytest.raises(FloatingPointError, match=r"step 5: x, state \['b'\]\['c'\]; stopping"):
    nonfinite.check_finite(5, {"x": float("nan")}, state)


# ------------------------------------------------------------------ validation


def _mutate(path, value):
  def apply(config):
    *sections, key = path.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[key] = value

  apply.path, apply.value = path, value
  return apply


def _with_mode(mode, path, value):
  """``_mutate(path, value)`` on a config whose ``loss.mode`` is ``mode``."""
  mutate = _mutate(path, value)

  def apply(config):
    config.loss.mode = mode
    mutate(config)

  apply.path, apply.value = f"loss.mode={mode},{path}", value
  return apply


INVALID = [
  (_mutate("train.batch_size", 12), r"batch_size = 12 is not divisible by the 8 devices"),
  (_mutate("loss.eps_sq", 0.0), r"config.loss.eps_sq must be a finite number > 0; got 0.0"),
  (_mutate("loss.lambda_aug", -1.0), r"config.loss.lambda_aug must be a finite number ≥ 0"),
  (_mutate("data.image_size", 36), r"image_size = 36: image size 36 is not accepted.*32 or 40"),
  (_mutate("data.image_size", 300), r"image_size = 300: .*nearest: 256$"),
  (_mutate("model.feature_dim", 0), r"config.model.feature_dim must be an integer ≥ 1"),
  (_mutate("train.encoder_steps", 0), r"config.train.encoder_steps must be an integer ≥ 1"),
  (_mutate("model.decoder", "vgg"), r"config.model.decoder = 'vgg' is not one of"),
  (_mutate("loss.mode", "gan"), r"config.loss.mode = 'gan' is not one of"),
  (_mutate("loss.sample_distance", "l2"), r"config.loss.sample_distance = 'l2' is not one of"),
  (_mutate("train.on_nonfinite", "ignore"), r"config.train.on_nonfinite = 'ignore'"),
  (_mutate("data.name", "no_such_dataset"), r"'no_such_dataset' is not a tensorflow-datasets"),
  (_mutate("data.name", "npz:/no/such.npz"), r"no such file or directory '/no/such.npz'"),
  (
    _mutate("data.train_split", "train[:half]"),
    r"config.data.train_split: Bad split 'train\[:half\]': slice bound 'half' is not",
  ),
  (_mutate("evals.test_split", "train[90%]"), r"config.evals.test_split: Bad split 'train\[90%\]'"),
  (_mutate("evals.train_split", "train[:120%]"), r"config.evals.train_split: .* outside \[-100%"),
  (
    _mutate("evals.during_training.names", ("knn", "knnn")),
    r"config.evals.during_training.names has 'knnn', not one of",
  ),
  (_mutate("loss.rate_weight", -0.5), r"config.loss.rate_weight must be a finite number ≥ 0"),
  (_mutate("train.eval_every", -1), r"config.train.eval_every must be an integer ≥ 0"),
  (_mutate("train.host_blas_threads", 0), r"config.train.host_blas_threads must be an integer ≥ 1"),
  (_mutate("train.encoder_b1", 1.0), r"config.train.encoder_b1 must be a number in \[0, 1\)"),
  (_mutate("loss.aug_target", "views"), r"config.loss.aug_target = 'views' is not one of"),
  (
    _mutate("train.encoder_bn_in_decoder_step", "eval"),
    r"config.train.encoder_bn_in_decoder_step = 'eval' is not one of",
  ),
  (
    _with_mode("tcr", "data.num_views", 1),
    r"'tcr' compares views with each other: config.data.num_views must be ≥ 2; got 1",
  ),
  (_with_mode("simclr", "train.encoder_steps", 2), r"config.train.encoder_steps must be 1; got 2"),
  (
    _with_mode("simclr", "loss.temperature", 0.0),
    r"config.loss.temperature must be a finite number > 0",
  ),
]


def test_tfds_split_expressions_are_left_to_tfds():
  # tfds parses more than NAME[START:STOP] (e.g. "train[:50%]+test"): only npz: and
  # image_folder: splits are checked against this project's grammar up front.
  config = tiny.get_config()
  config.data.name = "fashion_mnist"
  config.evals.test_split = "train[:50%]+test"
  config_checks.check_splits(config)
  config.data.name = "npz:/data.npz"
  with pytest.raises(config_checks.ConfigError, match=r"config.evals.test_split: Bad split"):
    config_checks.check_splits(config)


@pytest.fixture
def no_compile(monkeypatch):
  """Anything past validation (model init, step compilation) fails the test."""

  def refuse(*args, **kwargs):
    raise AssertionError("reached model initialisation / compilation")

  monkeypatch.setattr(train, "create_train_state", refuse)
  monkeypatch.setattr(steps, "make_steps", refuse)


@pytest.mark.parametrize(
  "mutate, message", INVALID, ids=[f"{m.path}={m.value}" for m, _ in INVALID]
)
def test_invalid_config_fails_before_compiling(mutate, message, npz_path, tmp_path, no_compile):
  config = _config(npz_path)
  mutate(config)
  with pytest.raises(config_checks.ConfigError, match=message) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)


def test_unwritable_workdir(npz_path, tmp_path, no_compile):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(config_checks.ConfigError, match=r"work directory .* is not writable"):
    train.train_and_evaluate(_config(npz_path), str(blocker / "run"))


@pytest.mark.parametrize(
  "path, value, key",
  [
    ("model.feature_dim", 32, "model.feature_dim"),
    ("model.width", 16, "model.width"),
    ("data.image_size", 32, "data.image_size"),
  ],
)
def test_workdir_of_an_incompatible_run(path, value, key, npz_path, tmp_path, no_compile):
  workdir = str(tmp_path / "run")
  checkpointing.save_config(workdir, _config(npz_path))
  config = _config(npz_path)
  _mutate(path, value)(config)
  with pytest.raises(config_checks.ConfigError, match=rf"holds a run with config.{key} = "):
    train.train_and_evaluate(config, workdir)


def test_workdir_of_a_run_on_other_data(npz_path, tmp_path, no_compile):
  workdir = str(tmp_path / "run")
  saved = _config(npz_path)
  saved.data.name = "fashion_mnist"
  checkpointing.save_config(workdir, saved)
  with pytest.raises(config_checks.ConfigError, match=r"config.data.name = 'fashion_mnist'"):
    train.train_and_evaluate(_config(npz_path), workdir)


@pytest.mark.parametrize("saved_mode, new_mode", [("uctrl", "tcr"), ("simclr", "ctrl_binary")])
def test_workdir_of_a_run_with_or_without_decoder(
  saved_mode, new_mode, npz_path, tmp_path, no_compile
):
  workdir = str(tmp_path / "run")
  saved = _config(npz_path)
  saved.loss.mode = saved_mode
  checkpointing.save_config(workdir, saved)
  config = _config(npz_path)
  config.loss.mode = new_mode
  with pytest.raises(
    config_checks.ConfigError,
    match=rf"config.loss.mode = '{saved_mode}', this config has '{new_mode}'",
  ):
    train.train_and_evaluate(config, workdir)


def test_schedule_changes_may_resume(npz_path, tmp_path):
  workdir = str(tmp_path / "run")
  checkpointing.save_config(workdir, _config(npz_path))
  config_checks.validate_config(
    _config(npz_path, num_steps=100, log_every=7, checkpoint_every=9),
    workdir,
    image_shape=(28, 28, 1),
  )


def test_resume_with_other_num_steps_under_cosine_is_refused_unless_allowed(
  npz_path, tmp_path, caplog
):
  """The cosine schedule decays over num_steps: a resume with another num_steps would put
  the remaining steps on another learning-rate curve. The logged */lr show the curve."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(_config(npz_path, schedule="cosine", num_steps=4), workdir)
  lr, dec_lr = tiny.get_config().train.encoder_lr, tiny.get_config().train.decoder_lr

  # Iteration s (logged at step s) ran at state.step = s − 1.
  def cosine(s, n, base=lr):
    return base * 0.5 * (1 + math.cos(math.pi * (s - 1) / n))

  logged = _scalars(workdir, "encoder/lr")
  np.testing.assert_allclose(
    [logged[s] for s in (1, 2, 3, 4)],
    [cosine(s, 4) for s in (1, 2, 3, 4)],
    rtol=1e-5,
    atol=1e-6 * lr,
  )

  longer = _config(npz_path, schedule="cosine", num_steps=6)
  with pytest.raises(
    config_checks.ConfigError,
    match=r"config.train.num_steps = 4, this config has 6: under the cosine "
    r".*config.train.allow_lr_curve_change=True",
  ) as e:
    train.train_and_evaluate(longer, workdir)
  assert "\n" not in str(e.value)
  longer.train.allow_lr_curve_change = True
  with caplog.at_level(logging.WARNING, logger="absl"):
    state = train.train_and_evaluate(longer, workdir)
  assert int(state.step) == 6
  assert "num_steps = 4, this config has 6" in caplog.text
  logged = _scalars(workdir, "decoder/lr")
  np.testing.assert_allclose(
    [logged[5], logged[6]],
    [cosine(5, 6, dec_lr), cosine(6, 6, dec_lr)],
    rtol=1e-5,
    atol=1e-6 * dec_lr,
  )
  # A constant schedule does not depend on num_steps: no question asked.
  config_checks.validate_config(_config(npz_path, num_steps=9), str(tmp_path / "other"))


# ------------------------------------------------------------------ real signals


class _Run:
  """`python main.py` on the tiny config in a subprocess, its log read line by line."""

  def __init__(self, workdir, npz_path, cache_dir, *flags):
    cmd = [
      sys.executable,
      "main.py",
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
      f"--config.data.name=npz:{npz_path}",
      "--config.train.num_steps=100000",
      "--config.train.log_every=1",
      "--config.train.image_every=100000",
      "--config.train.schedule=constant",
      *flags,
    ]  # as _config: resumed with other num_steps
    self.proc = subprocess.Popen(
      cmd,
      cwd=REPO,
      env=_subprocess_env(cache_dir),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    self.lines = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line)

  @property
  def text(self):
    return "".join(self.lines)

  def logged_steps(self):
    return [int(m.group(1)) for m in STEP_LINE.finditer(self.text)]

  def wait_for_step(self, step, timeout=600):
    deadline = time.monotonic() + timeout
    while max(self.logged_steps(), default=0) < step:
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.proc.kill()
        raise AssertionError(
          f"no step {step} logged; exit {self.proc.poll()}; log tail:\n" + self.text[-3000:]
        )
      time.sleep(0.05)

  def finish(self, timeout=300):
    rc = self.proc.wait(timeout)
    self._reader.join(10)
    return rc


def test_sigterm_saves_then_resume_then_kill9_loses_at_most_checkpoint_every(
  npz_path, compilation_cache, tmp_path
):
  workdir = str(tmp_path / "run")
  # 1. SIGTERM between scheduled checkpoints: a checkpoint of the current step, exit 0.
  run = _Run(workdir, npz_path, compilation_cache, "--config.train.checkpoint_every=100000")
  run.wait_for_step(3)
  run.proc.send_signal(signal.SIGTERM)
  assert run.finish() == 0, run.text[-3000:]
  stopped_at = max(run.logged_steps())
  assert f"SIGTERM received: saved the checkpoint of step {stopped_at}" in run.text
  assert checkpointing.Checkpointer(workdir).all_steps() == [stopped_at]
  assert not os.path.exists(os.path.join(workdir, workdir_files.LOCK_FILENAME))  # released

  # 2. The same command resumes there (checkpointing every 2 steps now), then dies hard.
  every = 2
  run = _Run(workdir, npz_path, compilation_cache, f"--config.train.checkpoint_every={every}")
  run.wait_for_step(stopped_at + 5)
  run.proc.send_signal(signal.SIGKILL)
  run.finish()
  # kill -9 leaves its lock behind; the next start (3.) takes it over: its pid is gone.
  assert workdir_files.read_lock(workdir)["pid"] == run.proc.pid
  assert f"at step {stopped_at}" in run.text and "resumed from" in run.text
  assert min(run.logged_steps()) == stopped_at + 1
  last_logged = max(run.logged_steps())
  with checkpointing.Checkpointer(workdir) as ckpt:
    latest = ckpt.latest_step()
  assert last_logged - every <= latest <= last_logged

  # 3. A save cut short leaves an uncommitted directory (this orbax's name for it); the
  #    resume takes the last committed step and removes the leftover.
  ckpt_dir = os.path.join(workdir, "checkpoints")
  partial = os.path.join(ckpt_dir, f"{latest + 2}.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(ckpt_dir, str(latest)), partial, dirs_exist_ok=True)
  state = train.train_and_evaluate(
    _config(npz_path, num_steps=latest + 1, checkpoint_every=every), workdir
  )
  assert int(state.step) == latest + 1
  assert not os.path.exists(partial)
  assert workdir_files.read_lock(workdir) is None
  assert checkpointing.Checkpointer(workdir).all_steps()[-2:] == [latest, latest + 1]
