"""main.py's errors (issue 17): the user's input errors print one line, `error: ...`, and
exit 1; a bug keeps its traceback. `uctrl_jax.load` raises `RunLoadError` with the same
message for a directory without a (readable) run.

The subprocesses stop before anything is trained or compiled (a missing run, a bad
config value, bad data), so each costs only the imports.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
import uctrl_jax
from uctrl_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, code=None, timeout=600):
  """Runs main.py (or `code` with main's flags) in a subprocess: (exit status, stderr)."""
  cmd = [sys.executable] + (["-c", code] if code else ["main.py"]) + list(args)
  proc = subprocess.run(
    cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
  )  # conftest's CPU-only settings included
  return proc.returncode, proc.stderr


def _assert_one_line_error(status, stderr, *fragments):
  last = stderr.strip().splitlines()[-1]
  assert status == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert last.startswith("error: "), stderr[-3000:]
  for fragment in fragments:
    assert fragment in last, (fragment, last)


@pytest.mark.parametrize("exists", [False, True], ids=["absent", "empty"])
def test_eval_of_a_directory_without_a_run(tmp_path, exists):
  workdir = tmp_path / "no_run"
  if exists:
    workdir.mkdir()
  status, stderr = _main("--mode=eval", "--config=configs/tiny.py", f"--workdir={workdir}")
  _assert_one_line_error(
    status, stderr, f"error: {workdir} holds no run: no {workdir / 'config.json'}"
  )


def test_eval_of_a_run_whose_checkpoint_cannot_be_read(tmp_path):
  _saved_run(tmp_path)
  _unreadable_checkpoint(tmp_path)
  status, stderr = _main("--mode=eval", "--config=configs/tiny.py", f"--workdir={tmp_path}")
  _assert_one_line_error(status, stderr, f"error: the checkpoint in {tmp_path} cannot be read")


def test_bad_config_value(tmp_path):
  status, stderr = _main(
    "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", "--config.loss.eps_sq=0"
  )
  _assert_one_line_error(status, stderr, "config.loss.eps_sq must be a finite number > 0")


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--config=configs/tiny.py", "--config.train.num_step=10"],
      "error: unknown config key train.num_step (did you mean train.num_steps?)",
    ),
    (
      ["--config.trian.num_steps=10"],  # no --config: the default file, read at import
      "error: unknown config key trian.num_steps (did you mean train.num_steps?)",
    ),
    (
      ["--config=configs/tiny.py", "--config.train.nothing_like_it=1"],
      "error: unknown config key train.nothing_like_it",
    ),
    (
      ["--config=configs/tiny.py", "--config.train.num_steps=ten"],
      "error: --config.train.num_steps=ten: invalid literal for int() with base 10: 'ten'",
    ),
    (
      ["--config=configs/no_such_config.py"],
      "error: cannot load the config file configs/no_such_config.py: [Errno 2] No such file "
      "or directory: 'configs/no_such_config.py'",
    ),
  ],
  ids=["typo", "typo-default-config", "unknown", "wrong-type", "missing-file"],
)
def test_bad_command_line(tmp_path, flags, message):
  status, stderr = _main(f"--workdir={tmp_path / 'run'}", *flags)
  _assert_one_line_error(status, stderr)
  assert stderr.strip() == message  # the only line
  assert not (tmp_path / "run").exists()


def test_bad_data(tmp_path):
  x = np.full((4, 28, 28), 0.5, np.float32)
  x[2, 3, 3] = np.nan
  path = tmp_path / "nan.npz"
  np.savez(path, x=x)
  status, stderr = _main(
    "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", f"--config.data.name=npz:{path}"
  )
  _assert_one_line_error(status, stderr, str(path), "x[2] holds a non-finite value")


def test_a_bug_keeps_its_traceback(tmp_path):
  code = (
    "import sys; sys.argv[0] = 'main.py'\n"
    "from absl import app\n"
    "import main\n"
    "from uctrl_jax import train\n"
    "def broken(config, workdir):\n"
    "  raise KeyError('a bug')\n"
    "train.train_and_evaluate = broken\n"
    "app.run(main.main)\n"
  )
  status, stderr = _main("--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", code=code)
  assert status == 1 and "Traceback" in stderr and "KeyError: 'a bug'" in stderr, stderr[-3000:]


# ------------------------------------------------------------------ uctrl_jax.load


def _saved_run(workdir):
  config = tiny.get_config()
  config.data.image_shape = (28, 28, 1)
  checkpointing.save_config(str(workdir), config)


def _unreadable_checkpoint(workdir):
  """A step directory (step 3) that orbax lists but cannot restore."""
  step_dir = workdir / "checkpoints" / "3"
  (step_dir / "state").mkdir(parents=True)
  (step_dir / "state" / "garbage").write_text("not a checkpoint")


@pytest.mark.parametrize("exists", [False, True], ids=["absent", "empty"])
def test_load_of_a_directory_without_a_run(tmp_path, exists):
  workdir = tmp_path / "none"
  if exists:
    workdir.mkdir()
  with pytest.raises(
    checkpointing.RunLoadError, match=f"{workdir} holds no run: no {workdir}/config.json"
  ):
    uctrl_jax.load(str(workdir))
  # Looking created nothing.
  assert (os.listdir(workdir) == []) if exists else not workdir.exists()


def test_load_of_a_run_without_checkpoint_or_with_a_damaged_one(tmp_path):
  _saved_run(tmp_path)
  with pytest.raises(checkpointing.RunLoadError, match=f"{tmp_path} holds no checkpoint to load"):
    uctrl_jax.load(str(tmp_path))
  with pytest.raises(checkpointing.RunLoadError, match="no checkpoint for step 7"):
    uctrl_jax.load(str(tmp_path), step=7)
  _unreadable_checkpoint(tmp_path)
  with pytest.raises(
    checkpointing.RunLoadError, match=f"the checkpoint in {tmp_path} cannot be read"
  ) as e:
    uctrl_jax.load(str(tmp_path))
  assert "\n" not in str(e.value)


def test_load_of_an_unreadable_config(tmp_path):
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(checkpointing.RunLoadError, match="cannot read the run's config .*JSONDecode"):
    uctrl_jax.load(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"data": {}}))
  with pytest.raises(checkpointing.RunLoadError, match="cannot read the run's config"):
    uctrl_jax.load(str(tmp_path))


# ------------------------------------------------------------------ uctrl, eval and embed alone

# `uctrl ARGS` without the console script: the function it calls (pyproject.toml).
UCTRL = "import sys; sys.argv[0] = 'uctrl'; from uctrl_jax import cli; cli.run_uctrl()"


def test_uctrl_help_lists_the_commands():
  proc = subprocess.run(
    [sys.executable, "-c", UCTRL, "--help"], cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for command in ("uctrl train --config=", "uctrl eval --workdir=", "uctrl embed --workdir="):
    assert command in proc.stdout, proc.stdout


@pytest.mark.parametrize(
  "args, message",
  [
    (["fit", "--workdir=W"], "error: unknown command 'fit': uctrl train | eval | embed"),
    (["eval", "--workdir=W", "--mode=train"], "error: uctrl eval takes no --mode"),
    (["train", "--workdir=W"], "error: uctrl train needs --config=FILE"),
  ],
  ids=["unknown-command", "mode-flag", "train-without-config"],
)
def test_uctrl_bad_command(tmp_path, args, message):
  status, stderr = _main(*args, code=UCTRL)
  _assert_one_line_error(status, stderr, message)


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--config.data.name=cifar10"],
      "error: --config.data.name cannot change for an existing run's evaluation: the model "
      "was trained on data.name = 'fashion_mnist'",
    ),
    (["--config.model.width=64"], "error: --config.model.width cannot change"),
    (["--config=configs/cifar.py"], "error: --config=configs/cifar.py has data.name = 'cifar10'"),
  ],
  ids=["data", "model", "config-file"],
)
@pytest.mark.parametrize("mode", ["eval", "embed"])
def test_an_existing_runs_evaluation_refuses_another_data_or_model(tmp_path, mode, flags, message):
  _saved_run(tmp_path)
  status, stderr = _main(f"--mode={mode}", f"--workdir={tmp_path}", *flags)
  _assert_one_line_error(status, stderr, message)


def test_an_existing_runs_evaluation_takes_evaluation_options(tmp_path):
  # The run's own data name repeated and an evaluation option: accepted, so the command
  # goes on to the checkpoint (which this run lacks).
  _saved_run(tmp_path)
  status, stderr = _main(
    "--mode=eval",
    f"--workdir={tmp_path}",
    "--config.data.name=fashion_mnist",
    "--config.evals.knn.k=5",
  )
  _assert_one_line_error(status, stderr, f"error: {tmp_path} holds no checkpoint to load")


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--data=image_folder:{empty}"], "holds no images"),
    (["--data=image_folder:{empty}/missing"], "no such file or directory"),
  ],
  ids=["empty-folder", "missing-folder"],
)
def test_embed_of_bad_data(tmp_path, flags, message):
  _saved_run(tmp_path)
  (tmp_path / "empty").mkdir()
  flags = [f.format(empty=tmp_path / "empty") for f in flags]
  status, stderr = _main("--mode=embed", f"--workdir={tmp_path}", *flags)
  _assert_one_line_error(status, stderr, message)


@pytest.mark.parametrize("mode", ["eval", "embed"])
def test_eval_or_embed_of_a_workdir_without_a_run(tmp_path, mode):
  status, stderr = _main(f"--mode={mode}", f"--workdir={tmp_path / 'none'}")
  _assert_one_line_error(status, stderr, f"error: {tmp_path / 'none'} holds no run")


def test_embed_flags_outside_embed(tmp_path):
  status, stderr = _main("--mode=eval", f"--workdir={tmp_path}", "--split=test")
  _assert_one_line_error(status, stderr, "error: --split: only with --mode=embed")
