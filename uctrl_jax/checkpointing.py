"""Checkpoints of the whole ``TrainState`` plus a small JSON dict, and the run's config.

Layout of a work directory::

    WORKDIR/config.json               save_config: the ConfigDict as JSON
    WORKDIR/checkpoints/<step>/state  the TrainState (orbax StandardSave)
    WORKDIR/checkpoints/<step>/extra  a JSON dict (e.g. data seed, examples seen)
    WORKDIR/checkpoints_unreadable/<step>  damaged steps set aside by a resume

``Checkpointer`` wraps an orbax ``CheckpointManager``. Orbax writes each step into a
temporary directory and renames it when complete (atomic commit), so a save that
crashes half-way is never listed by ``latest_step``/``all_steps`` and a resume picks
the last complete step. A committed step damaged later (truncated or deleted files)
fails to restore; ``restore_latest_readable`` then sets it aside with a warning and
falls back to the previous step, and never silently starts over.

A save that fails (a full disk, a quota, no permission) raises ``CheckpointWriteError``:
one line naming the directory, the step and the last complete checkpoint. Orbax's own
error lines about it (several per failure, from its threads, some while the process
exits) are held back from then on, for the rest of the process. The uncommitted step
directory it leaves is removed by the next training's ``Checkpointer``, which then
resumes from the last complete step.

Readers beside a running training (``uctrl_jax.load``, ``main.py --mode=eval``) open a
``Checkpointer(..., read_only=True)``: it creates, cleans up and deletes nothing, so the
training's save under way is left alone.

Multi-host: every process must call ``Checkpointer(...)``, ``save`` and ``restore``
with the same arguments (orbax synchronises the processes inside them and each
process writes/reads its own shards; process 0 writes the metadata and the JSON).
Calling them from process 0 only deadlocks. ``save_config`` writes from process 0
only; ``load_config`` may be called anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging as python_logging
import os
import re
from typing import Any, Callable, Optional, Tuple

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from uctrl_jax import workdir_files

CHECKPOINT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = "checkpoints_unreadable"  # restore_latest_readable moves damaged steps here
CONFIG_FILENAME = "config.json"
_STATE = "state"
_EXTRA = "extra"


class RunLoadError(RuntimeError):
  """A work directory whose run cannot be loaded: it holds no run (no ``config.json``),
  no checkpoint (of the step asked for), or none that reads back. The message is one
  line naming the directory; ``main.py`` prints it as ``error: ...``."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the message is one line naming the directory,
  the step and the last complete checkpoint (``main.py`` prints it as ``error: ...``)."""


_ORBAX_DIR = os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep  # .../site-packages/orbax/


class _OrbaxErrorsHeld(python_logging.Filter):
  """Keeps orbax's ERROR records off the console while installed; ``records`` holds them."""

  def __init__(self):
    super().__init__()
    self.records: list[python_logging.LogRecord] = []

  def filter(self, record: python_logging.LogRecord) -> bool:
    if record.levelno >= python_logging.ERROR and record.pathname.startswith(_ORBAX_DIR):
      self.records.append(record)
      return False
    return True


def _failure_reason(error: BaseException) -> str:
  """What stopped a write, in a few words: the OS's reason where the error names one
  (tensorstore writes it as ``[os_error_code='28']``), else its first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    code = re.search(r"os_error_code='?(\d+)", str(seen))
    if code:
      return os.strerror(int(code.group(1)))
    seen = seen.__cause__ or seen.__context__
  first = str(error).splitlines()[0][:300] if str(error) else ""
  return f"{type(error).__name__}: {first}"


class Checkpointer:
  """Orbax CheckpointManager over WORKDIR/checkpoints: the whole TrainState plus a small
  JSON 'extra' dict.

  Args:
    workdir: the run's directory; checkpoints go to ``workdir/checkpoints`` (created).
    max_to_keep: the newest ``max_to_keep`` steps are kept, older ones deleted after
      each save.
    read_only: only read (``restore``, the step lists): no directory is created, no
      leftover of a save cleaned up (it may be a running training's save under way).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, read_only: bool = False):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be ≥ 1, got {max_to_keep}")
    # A local path or gs://... (orbax takes both), as workdir_files spells it.
    self.directory = os.fspath(workdir_files.path(workdir, CHECKPOINT_SUBDIR))
    self._save_failed = False
    options = ocp.CheckpointManagerOptions(
      # `max_to_keep=` on the options is deprecated in favour of a preservation policy.
      preservation_policy=None if read_only else ocp.checkpoint_managers.LatestN(n=max_to_keep),
      # Partial saves left by a crash (uncommitted tmp dirs) are removed on start.
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=(_STATE, _EXTRA)
    )

  def latest_step(self) -> Optional[int]:
    """The newest committed step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Committed steps, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, extra: dict) -> None:
    """Writes ``state`` and ``extra`` as ``step`` and blocks until committed.

    Every process must call this (see the module docstring). The trainer decides when
    to save, so orbax's save-interval policy is bypassed (``force=True``).

    Args:
      step: the checkpoint's step (usually ``int(state.step)``). Saving a step that
        already exists is a no-op (a resumed run re-saving the step it restored);
        saving a step older than ``latest_step()`` is an error, since a later resume
        would silently jump back to the newer one.
      state: a pytree of ``jax.Array``s (the ``TrainState``), any sharding.
      extra: JSON-serialisable dict, e.g. ``{"step": 10, "data_seed": 3,
        "examples_seen": 1280}``.
    Raises:
      CheckpointWriteError: the write failed (full disk, quota, permission, ...); the
        Checkpointer only closes after that.
    """
    step = int(step)
    existing = self.all_steps()
    if step in existing:
      return
    if existing and step < existing[-1]:
      raise ValueError(
        f"step {step} is older than the latest checkpoint {existing[-1]} in "
        f"{self.directory}; restore it or use a fresh workdir"
      )
    json.dumps(extra)  # fail here, with the caller's stack, if not JSON-serialisable
    held = _OrbaxErrorsHeld()
    absl_logger = python_logging.getLogger("absl")  # orbax logs through absl
    absl_logger.addFilter(held)
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          **{_STATE: ocp.args.StandardSave(state), _EXTRA: ocp.args.JsonSave(extra)}
        ),
        force=True,
      )
      # Saves are asynchronous; wait so that a crash right after loses nothing.
      self._manager.wait_until_finished()
    except Exception as e:  # orbax/tensorstore raise many types for one failed write
      # The filter stays: orbax's threads go on failing (in close(), and at exit).
      self._save_failed = True
      last = f"step {existing[-1]}" if existing else "none yet"
      raise CheckpointWriteError(
        f"cannot write the checkpoint of step {step} in {self.directory}: "
        f"{_failure_reason(e)}; the last complete checkpoint: {last} (the same command "
        "resumes from it once the directory can be written again)"
      ) from e
    absl_logger.removeFilter(held)
    for record in held.records:  # errors orbax logged about a save that did succeed
      absl_logger.handle(record)

  def restore(self, target_state: Any, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Reads a checkpoint into the structure, dtypes and shardings of ``target_state``.

    Every process must call this (see the module docstring).

    Args:
      target_state: a pytree like the saved state whose leaves are ``jax.Array``s or
        ``jax.ShapeDtypeStruct``s with ``sharding`` set (e.g. a freshly created and
        placed ``TrainState``); only its shapes, dtypes and shardings are used.
      step: the step to read; the latest when None.
    Returns:
      ``(state, extra)``: the state with each leaf placed like ``target_state``'s and
      the ``extra`` dict given to ``save``.
    Raises:
      FileNotFoundError: no committed checkpoint (or not ``step``) in the directory.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})"
      )
    # ShapeDtypeStructs keep each leaf's sharding, so orbax reads straight onto it.
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        **{_STATE: ocp.args.StandardRestore(abstract), _EXTRA: ocp.args.JsonRestore()}
      ),
    )
    return restored[_STATE], dict(restored[_EXTRA])

  def restore_latest_readable(
    self, target_state: Any, check: Optional[Callable[[Any], None]] = None
  ) -> Optional[Tuple[Any, dict]]:
    """Restores the newest checkpoint that reads back, moving unreadable ones aside.

    A checkpoint whose files were truncated or deleted after its commit (a full disk,
    a copy cut short, a bad block) makes orbax raise on restore. Rather than fail, or
    restart from step 0 over the run's history, the next older step is tried, with a
    warning naming the unreadable one. Once one restores, the unreadable newer step
    directories are moved to ``WORKDIR/checkpoints_unreadable/<step>`` (kept for
    inspection; orbax no longer lists them, so the resumed run can save those steps
    again).

    Args:
      target_state: as for ``restore``.
      check: called with each restored state; raising (e.g. on non-finite values)
        makes the step count as unreadable.
    Returns:
      ``(state, extra)`` of the newest readable step, or None when the directory holds
      no committed step at all (a fresh run).
    Raises:
      RunLoadError: committed steps exist but none reads back; names each directory
        and moves none.
    """
    steps = self.all_steps()
    if not steps:
      return None
    failures = []  # (step, path, reason), newest first
    for step in reversed(steps):
      path = os.fspath(workdir_files.path(self.directory, str(step)))
      try:
        state, extra = self.restore(target_state, step)
        if check is not None:
          check(state)
      except Exception as e:  # orbax/tensorstore raise many types for damaged files
        first_line = str(e).splitlines()[0][:300] if str(e) else ""
        failures.append((step, path, f"{type(e).__name__}: {first_line}"))
        logging.warning(
          "checkpoint %s is unreadable (%s); trying the previous step", path, failures[-1][2]
        )
        continue
      # Only now that an older step restored are the newer ones set aside: when none
      # restores, everything stays in place, so the next start cannot begin at step 0.
      for bad_step, bad_path, _ in failures:
        logging.warning(
          "resuming from step %d: moved the unreadable checkpoint %s to %s",
          step,
          bad_path,
          self._set_aside(bad_step),
        )
      return state, extra
    raise RunLoadError(
      f"no readable checkpoint in {self.directory}: "
      + "; ".join(f"{path} ({reason})" for _, path, reason in failures)
      + ". Not restarting from step 0 over them: repair or remove them, or use a fresh workdir"
    )

  def _set_aside(self, step: int) -> str:
    """Moves step ``step``'s directory out of orbax's sight; returns the new path."""
    directory = workdir_files.path(self.directory)
    aside_root = directory.parent / UNREADABLE_SUBDIR
    target = aside_root / str(step)
    if jax.process_index() == 0:
      aside_root.mkdir(parents=True, exist_ok=True)
      suffix = 1
      while target.exists():  # an earlier fallback set this step aside already
        target = aside_root / f"{step}.{suffix}"
        suffix += 1
      (directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"uctrl_set_aside_{step}")
    self._manager.reload()  # forget the cached step list
    return os.fspath(target)

  def close(self) -> None:
    """Waits for pending work and releases orbax's threads. After a failed save, the
    failure (raised already as CheckpointWriteError) is not raised again."""
    if not self._save_failed:
      self._manager.close()
      return
    with contextlib.suppress(Exception):
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def save_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes ``config`` to ``WORKDIR/config.json`` from process 0 only; returns the path.

  ``to_json_best_effort`` turns tuples into lists and drops placeholder types (an
  unset ``placeholder(str)`` is written as ``null``).
  """
  path = workdir_files.path(workdir, CONFIG_FILENAME)
  if jax.process_index() == 0:  # atomic: a reader never sees half a file
    workdir_files.write_text_atomic(path, config.to_json_best_effort(indent=2) + "\n")
  return os.fspath(path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads ``WORKDIR/config.json`` back (tuples come back as lists)."""
  text = workdir_files.path(workdir, CONFIG_FILENAME).read_text()
  return ml_collections.ConfigDict(json.loads(text))
