"""The files of a work directory: one path API, atomic writes, the training lock.

Paths are ``etils.epath`` paths (``path(workdir, "results.json")``): local directories
and object stores (``gs://bucket/run``) alike, so code that writes a work directory
through this module runs unchanged on a pod whose ``--workdir`` is a bucket.

Atomic writes (``write_text_atomic``, ``write_bytes_atomic``): a reader, or a later
run, sees the previous file or the new one, never half of one. Locally the bytes go to
a temporary file beside the target, are flushed to disk and renamed over it (POSIX
rename is atomic); an interrupted write leaves the old file and no temporary one. On an
object store one upload replaces an object whole, which is atomic already.

The training lock (``training_lock(workdir)``, ``WORKDIR/train.lock``): one training
per work directory. Two trainings writing the same ``checkpoints/`` interleave their
histories and overwrite each other's steps, so a second one stops at once with
``WorkdirBusyError`` naming the holder (host, pid, since when). The lock file is JSON:
host, pid, boot id, start time, command line and a random job token.

* Taken atomically on a local file system (``O_CREAT | O_EXCL``: of two processes
  starting together exactly one creates the file). On an object store (``gs://``) the
  check and the write are two requests: best effort, two runs started within the same
  second may both proceed.
* A stale lock, left by a process that is gone (``kill -9``, a crash, a reboot), is
  taken over with a warning when its holder ran on this host and its pid is no longer
  alive (or the host has restarted since: another boot id). A lock from another host is
  respected: only that host can tell whether its run lives; the message says to delete
  the file if it does not.
* Released on every way out of the ``with`` block (a normal end, an exception, the
  checkpoint saved at SIGTERM or Ctrl-C), and only when the file still holds this
  run's token.
* Multi-host (``jax.process_count() > 1``): one lock per run, taken by process 0. Its
  outcome (taken, with the job token; or refused, with the message) is published through
  the distributed runtime's key-value store; every other process waits for it, then
  stops with the same message, or checks that the lock file it sees carries the job's
  token (a warning otherwise: the work directory is not shared by all hosts). The
  others never create, take over or delete the file.

Evaluation (``main.py --mode=eval``) and ``uctrl_jax.load`` never take the lock: they
read a running training's committed checkpoints beside it.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import secrets
import shlex
import socket
import sys
from typing import Iterator, Optional, Union

from absl import logging
from etils import epath

PathLike = Union[str, os.PathLike]

LOCK_FILENAME = "train.lock"
# Seconds the other processes of a multi-host job wait for process 0's lock outcome
# (process 0 may start minutes later than they do on a loaded cluster).
LOCK_OUTCOME_TIMEOUT_S = 3600


class WorkdirBusyError(RuntimeError):
  """The work directory is held by another training; the message is one line (main.py
  prints it as ``error: ...``)."""


def path(workdir: PathLike, *names: str) -> epath.Path:
  """``workdir/names...`` as an ``epath.Path`` (local path or ``gs://...``)."""
  return epath.Path(workdir).joinpath(*names)


def is_local(p: PathLike) -> bool:
  """Whether ``p`` is on a local file system (not ``gs://...`` or another URL)."""
  return "://" not in os.fspath(p)


def absolute(p: PathLike) -> str:
  """``p`` as an absolute path when local; a URL (``gs://...``) as it is."""
  return os.path.abspath(p) if is_local(p) else os.fspath(p)


def write_bytes_atomic(target: PathLike, data: bytes) -> epath.Path:
  """Writes ``data`` to ``target`` atomically (see the module docstring); creates the
  parent directory. Returns the path."""
  target = epath.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(target):
    target.write_bytes(data)  # one upload replaces the object whole
    return target
  # Beside the target (same file system: the rename cannot become a copy), hidden, and
  # unique per writer. Created with 0o666 so that the umask applies as for open().
  tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
    os.replace(tmp, target)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  return target


def write_text_atomic(target: PathLike, text: str) -> epath.Path:
  """``write_bytes_atomic`` of ``text`` in UTF-8."""
  return write_bytes_atomic(target, text.encode("utf-8"))


# ------------------------------------------------------------------ the training lock


def _boot_id() -> Optional[str]:
  """This boot of this host (Linux), so that a lock from before a restart is stale even
  when its pid has been given to another process since."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _new_record() -> dict:
  return {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "boot_id": _boot_id(),
    "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "command": shlex.join(sys.argv),
    "job": secrets.token_hex(8),
  }


def read_lock(workdir: PathLike) -> Optional[dict]:
  """The record of ``WORKDIR/train.lock``; None when there is none. A file that is not
  a lock record gives ``{}`` (held by an unknown process)."""
  lock = path(workdir, LOCK_FILENAME)
  try:
    text = lock.read_text()
  except FileNotFoundError:
    return None
  try:
    record = json.loads(text)
  except ValueError:
    return {}
  return record if isinstance(record, dict) and "pid" in record else {}


def _holder(record: dict) -> str:
  if not record:
    return "an unknown process (the file is not a lock record)"
  return f"pid {record.get('pid')} on {record.get('host')} since {record.get('since')}"


# Lock files held by this process: a record naming this very pid is not stale then.
_held_here: set[str] = set()


def _stale_because(record: dict, lock: epath.Path) -> Optional[str]:
  """Why the holder of ``record`` is certainly gone, or None when it may be running."""
  if not record or record.get("host") != socket.gethostname():
    return None  # another host: only it can tell
  boot = _boot_id()
  if boot and record.get("boot_id") and record["boot_id"] != boot:
    return "ran before this host restarted"
  pid = record.get("pid")
  if not isinstance(pid, int):
    return None
  if pid == os.getpid():
    # This process holds it, or it is a leftover of an earlier process that had this
    # pid (containers restart with the same small pids).
    return None if os.fspath(lock) in _held_here else "was an earlier process with this pid"
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return "is gone"
  except PermissionError:
    pass  # alive, another user's
  return None


def _busy_message(workdir: PathLike, lock: epath.Path, record: dict) -> str:
  here = record.get("host") == socket.gethostname()
  if record and here:
    advice = "let it finish or stop it, or use another --workdir"
  else:
    advice = f"if that run is dead, delete {lock}; or use another --workdir"
  where = "" if not record or here else " on another host"
  return (
    f"work directory {workdir} is held by another training{where}: {_holder(record)} "
    f"({lock}); {advice}"
  )


def _create_exclusive(lock: epath.Path, text: str) -> bool:
  """Creates ``lock`` holding ``text`` unless it exists; returns whether it did."""
  if not is_local(lock):
    if lock.exists():
      return False
    lock.write_text(text)  # best effort: see the module docstring
    return True
  try:
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:  # one small write, right after the create
    f.write(text)
  return True


def _remove_stale(lock: epath.Path, record: dict) -> bool:
  """Removes ``lock`` if it still holds ``record``; whether it did.

  Locally the file is first renamed to a private name and checked there, so that of two
  processes taking over one stale lock the second cannot delete the first's new one: it
  finds another record under its private name and puts it back.
  """
  if not is_local(lock):
    if read_lock(lock.parent) == record:
      lock.unlink(missing_ok=True)
    return True
  private = lock.parent / f".{lock.name}.{os.getpid()}.{secrets.token_hex(4)}.stale"
  try:
    os.rename(lock, private)
  except FileNotFoundError:
    return True  # someone else removed it: try again
  try:
    moved = json.loads(private.read_text())
  except ValueError:
    moved = {}
  if moved != record:  # a new holder's file: give it back
    os.rename(private, lock)
    return False
  os.unlink(private)
  return True


def _acquire(workdir: PathLike) -> dict:
  """Process 0's half: takes ``WORKDIR/train.lock`` or raises WorkdirBusyError."""
  lock = path(workdir, LOCK_FILENAME)
  lock.parent.mkdir(parents=True, exist_ok=True)
  mine = _new_record()
  text = json.dumps(mine, indent=2) + "\n"
  for _ in range(3):  # a stale lock removed, another process may still come first
    if _create_exclusive(lock, text):
      _held_here.add(os.fspath(lock))
      return mine
    record = read_lock(workdir)
    if record is None:
      continue  # released meanwhile
    reason = _stale_because(record, lock)
    if reason is None:
      raise WorkdirBusyError(_busy_message(workdir, lock, record))
    if _remove_stale(lock, record):
      logging.warning(
        "taking over %s: its holder, %s (%s), %s",
        lock,
        _holder(record),
        record.get("command"),
        reason,
      )
  raise WorkdirBusyError(
    f"work directory {workdir}: could not take {lock}, other processes keep taking it; "
    "is another training starting there?"
  )


def _release(workdir: PathLike, mine: dict) -> None:
  lock = path(workdir, LOCK_FILENAME)
  _held_here.discard(os.fspath(lock))
  try:
    if read_lock(workdir) == mine:  # not a file another run took over meanwhile
      lock.unlink(missing_ok=True)
  except OSError as e:  # the run's outcome matters more than the lock's removal
    logging.warning("could not remove %s: %s", lock, e)


_outcome_ids = itertools.count()  # every process takes its locks in the same order


def _kv_client():
  """The distributed runtime's client (its key-value store has no 30 s first-use limit,
  unlike gloo's collectives); jax keeps it in a private module, as its own
  multihost_utils reads it."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  return distributed.global_state.client


def agree_on_lock(
  workdir: PathLike, process_index: int, client, acquire=_acquire
) -> Optional[dict]:
  """Process 0 takes the lock and publishes the outcome under a key of the runtime's
  key-value store (``client``: ``key_value_set``, ``blocking_key_value_get``); the other
  processes read it. Returns process 0's record (None elsewhere); raises
  WorkdirBusyError on every process when process 0 could not take it."""
  key = f"uctrl_jax/train_lock/{next(_outcome_ids)}"
  if process_index == 0:
    try:
      mine = acquire(workdir)
    except WorkdirBusyError as e:
      client.key_value_set(key, json.dumps({"error": str(e)}))
      raise
    client.key_value_set(key, json.dumps({"job": mine["job"]}))
    return mine
  outcome = json.loads(client.blocking_key_value_get(key, LOCK_OUTCOME_TIMEOUT_S * 1000))
  if "error" in outcome:
    raise WorkdirBusyError(outcome["error"])
  seen = read_lock(workdir)
  if not seen or seen.get("job") != outcome["job"]:
    logging.warning(
      "process %d does not see process 0's lock %s (it sees %s): is the work directory "
      "shared by all processes?",
      process_index,
      path(workdir, LOCK_FILENAME),
      "no lock" if seen is None else _holder(seen),
    )
  return None


@contextlib.contextmanager
def training_lock(workdir: PathLike) -> Iterator[Optional[dict]]:
  """Holds ``WORKDIR/train.lock`` for a training run (see the module docstring).

  Yields:
    The lock record (process 0), or None (the other processes of a multi-host job).
  Raises:
    WorkdirBusyError: another training holds the directory; one line naming it.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if jax.process_count() == 1:
    mine = _acquire(workdir)
  else:
    mine = agree_on_lock(workdir, jax.process_index(), _kv_client())
  try:
    yield mine
  finally:
    if mine is not None:
      _release(workdir, mine)
