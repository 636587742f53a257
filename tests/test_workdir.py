"""The files of a work directory (issue 26): atomic writes and the training lock, in
process. The lock against real ``main.py`` processes and real trainings is in
tests/test_reliability.py.
"""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from uctrl_jax import workdir_files

LOCK = workdir_files.LOCK_FILENAME


def _dead_pid():
  """A pid of this host whose process has exited (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **fields):
  record = {
    "host": socket.gethostname(),
    "pid": os.getppid(),  # alive: the process that started pytest
    "boot_id": workdir_files._boot_id(),  # pylint: disable=protected-access
    "since": "2026-12-05T09:00:00+00:00",
    "command": "python main.py --workdir=elsewhere",
    "job": "0123456789abcdef",
    **fields,
  }
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK), "w") as f:
    json.dump(record, f)
  return record


def _files(directory):
  return sorted(os.listdir(directory))


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_creates_the_parent_and_leaves_no_temporary_file(tmp_path):
  target = tmp_path / "new" / "results.json"
  assert workdir_files.write_text_atomic(target, "{}\n") == workdir_files.path(target)
  assert target.read_text() == "{}\n"
  assert _files(target.parent) == ["results.json"]
  umask = os.umask(0)
  os.umask(umask)
  assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_interrupted_atomic_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
  target = tmp_path / "results.json"
  target.write_text('{"previous": true}\n')

  def interrupted(src, dst):
    raise KeyboardInterrupt  # after the temporary file is complete, before the rename

  monkeypatch.setattr(os, "replace", interrupted)
  with pytest.raises(KeyboardInterrupt):
    workdir_files.write_text_atomic(target, '{"new": true}\n')
  assert target.read_text() == '{"previous": true}\n'
  assert _files(tmp_path) == ["results.json"]  # the temporary file is gone too


# ------------------------------------------------------------------ the training lock


def test_lock_is_held_inside_and_released_after_a_normal_end_and_an_exception(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_files.training_lock(workdir) as mine:
    on_disk = workdir_files.read_lock(workdir)
    assert on_disk == mine
    assert on_disk["pid"] == os.getpid() and on_disk["host"] == socket.gethostname()
    assert len(on_disk["job"]) == 16 and on_disk["since"][:2] == "20"
    # This process holds it: a second training in it is refused too.
    with pytest.raises(workdir_files.WorkdirBusyError, match=f"pid {os.getpid()} on "):
      with workdir_files.training_lock(workdir):
        pass
    assert workdir_files.read_lock(workdir) == mine
  assert _files(workdir) == []
  with pytest.raises(ValueError, match="a bug"):
    with workdir_files.training_lock(workdir):
      raise ValueError("a bug")
  assert _files(workdir) == []


def test_a_live_holder_on_this_host_is_named_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  _write_lock(workdir)
  with pytest.raises(workdir_files.WorkdirBusyError) as e:
    with workdir_files.training_lock(workdir):
      pass
  assert str(e.value) == (
    f"work directory {workdir} is held by another training: pid {os.getppid()} on "
    f"{socket.gethostname()} since 2026-12-05T09:00:00+00:00 ({workdir}/{LOCK}); let it "
    "finish or stop it, or use another --workdir"
  )
  assert workdir_files.read_lock(workdir)["pid"] == os.getppid()  # left alone


def test_a_holder_on_another_host_is_respected(tmp_path):
  workdir = str(tmp_path / "run")
  _write_lock(workdir, host="other-host", pid=_dead_pid())
  with pytest.raises(
    workdir_files.WorkdirBusyError,
    match=rf"held by another training on another host: pid \d+ on other-host since .*; "
    rf"if that run is dead, delete {workdir}/{LOCK}; or use another --workdir$",
  ):
    with workdir_files.training_lock(workdir):
      pass


def test_an_unreadable_lock_file_counts_as_held(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / LOCK).write_text("")
  with pytest.raises(workdir_files.WorkdirBusyError, match="an unknown process"):
    with workdir_files.training_lock(str(workdir)):
      pass


@pytest.mark.parametrize(
  "fields, reason",
  [
    ({"pid": "dead"}, "is gone"),
    ({"boot_id": "an earlier boot"}, "ran before this host restarted"),
    ({"pid": "mine"}, "was an earlier process with this pid"),  # a restarted container
  ],
)
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, fields, reason):
  workdir = str(tmp_path / "run")
  pid = {"dead": _dead_pid(), "mine": os.getpid()}.get(fields.get("pid"), os.getppid())
  stale = _write_lock(workdir, **{**fields, "pid": pid})
  with caplog.at_level(logging.WARNING, logger="absl"):
    with workdir_files.training_lock(workdir) as mine:
      assert workdir_files.read_lock(workdir) == mine != stale
  assert (
    f"taking over {workdir}/{LOCK}: its holder, pid {pid} on {socket.gethostname()} since "
    f"2026-12-05T09:00:00+00:00 (python main.py --workdir=elsewhere), {reason}"
  ) in caplog.text
  assert _files(workdir) == []


def test_a_stale_lock_replaced_meanwhile_is_put_back(tmp_path):
  """Two processes take over one stale lock: the second must not remove the first's."""
  workdir = str(tmp_path / "run")
  stale = {"host": socket.gethostname(), "pid": _dead_pid()}
  newer = _write_lock(workdir)  # what the first process wrote in the meantime
  lock = workdir_files.path(workdir, LOCK)
  assert not workdir_files._remove_stale(lock, stale)  # pylint: disable=protected-access
  assert workdir_files.read_lock(workdir) == newer and _files(workdir) == [LOCK]


def test_release_keeps_a_lock_another_run_took_over(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_files.training_lock(workdir):
    other = _write_lock(workdir)
  assert workdir_files.read_lock(workdir) == other


class _KeyValueStore:
  """The distributed runtime's key-value store, as the processes of one job share it."""

  def __init__(self):
    self.values = {}

  def key_value_set(self, key, value):
    assert key not in self.values
    self.values[key] = value

  def blocking_key_value_get(self, key, timeout_ms):
    assert timeout_ms > 0
    return self.values[key]


def _as_process(index, workdir, store, monkeypatch):
  """``agree_on_lock`` as process ``index`` of a fresh job (each process counts its keys)."""
  monkeypatch.setattr(workdir_files, "_outcome_ids", iter(range(100)))
  return workdir_files.agree_on_lock(workdir, index, store)


def test_multi_host_process_0_holds_the_lock_and_the_others_check_it(tmp_path, monkeypatch, caplog):
  workdir = str(tmp_path / "run")
  store = _KeyValueStore()
  mine = _as_process(0, workdir, store, monkeypatch)
  assert workdir_files.read_lock(workdir) == mine
  with caplog.at_level(logging.WARNING, logger="absl"):
    assert _as_process(1, workdir, store, monkeypatch) is None
  assert caplog.text == ""
  assert workdir_files.read_lock(workdir) == mine  # the others take nothing

  # A host that sees another directory (not shared) is told so.
  elsewhere = str(tmp_path / "not_shared")
  with caplog.at_level(logging.WARNING, logger="absl"):
    _as_process(1, elsewhere, store, monkeypatch)
  assert "process 1 does not see process 0's lock" in caplog.text
  assert not os.path.exists(elsewhere)

  # A second job on the held directory: process 0 is refused, and so is every other.
  second = _KeyValueStore()
  with pytest.raises(workdir_files.WorkdirBusyError) as refused:
    _as_process(0, workdir, second, monkeypatch)
  with pytest.raises(workdir_files.WorkdirBusyError) as also:
    _as_process(3, workdir, second, monkeypatch)
  assert str(also.value) == str(refused.value)
  assert f"pid {os.getpid()} on {socket.gethostname()}" in str(also.value)
  workdir_files._release(workdir, mine)  # pylint: disable=protected-access
  assert _files(workdir) == []
