"""The training loop: ``train_and_evaluate(config, workdir)`` runs the game's steps
(``steps``) on batches from ``input_pipeline`` and hands the periodic work to the named
actions of ``_Run``: ``log`` (console + TensorBoard scalars with clu, a progress/ETA
line), ``health`` (``health.HealthMonitor``'s warnings), ``images`` (reconstruction
grids), ``checkpoint`` (orbax, ``checkpointing``), ``evaluate`` (the cheap evaluators of
``config.evals.during_training`` on a subset of both splits every
``config.train.eval_every`` steps and at the end, ``evaluate.PeriodicEval``, logged as
``eval/...`` scalars) and ``stopped`` (preemption). ``stop_signals`` and ``host_blas``
wrap the loop; non-finite values (``nonfinite``) stop or roll back the run
(``_check_or_roll_back``).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Mapping, Optional, Tuple

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import ml_collections

from uctrl_jax import checkpointing
from uctrl_jax import config_checks
from uctrl_jax import console
from uctrl_jax import distributed
from uctrl_jax import evaluate
from uctrl_jax import health
from uctrl_jax import host_blas
from uctrl_jax import image_grid
from uctrl_jax import input_pipeline
from uctrl_jax import loading
from uctrl_jax import nonfinite
from uctrl_jax import sharding
from uctrl_jax import steps
from uctrl_jax import stop_signals
from uctrl_jax import workdir_files
from uctrl_jax.state import TrainState, create_train_state


def _flat_hparams(config: ml_collections.ConfigDict) -> dict:
  """``{"train.batch_size": 128, ...}``; values TensorBoard cannot show become strings."""
  return {
    key: value if isinstance(value, (bool, int, float, str)) else str(value)
    for key, value in config_checks.flat_config(config.to_dict()).items()
  }


def _open_run(config: ml_collections.ConfigDict, workdir: str):
  """Everything before the first compile: validation, the mesh, the dataset's image
  shape, the state (restored from the latest readable checkpoint, if any), the saved
  config and the start-up summary.

  Returns ``(mesh, image_shape, state, checkpointer, extra)``: ``extra`` is the restored
  checkpoint's record, {} for a new run.
  """
  config_checks.validate_config(config, workdir)
  mesh = sharding.create_mesh(mesh_config=config.mesh)
  info = input_pipeline.get_dataset_info(config)
  image_shape = info.image_shape
  config_checks.check_training_labels(config, info)
  if config.data.image_size is None:
    # "Keep the stored size": the shape is known only now, still before any compile.
    config_checks.check_image_shape(config, image_shape)
    config_checks.check_workdir_compatible(config, workdir, image_shape)
  state = sharding.replicate(
    create_train_state(config, image_shape, jax.random.key(config.seed)), mesh
  )
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.train.max_to_keep)
  restored = checkpointer.restore_latest_readable(
    state, check=lambda s: nonfinite.check_finite(int(s.step), {}, s)
  )
  extra = {}
  if restored is not None:
    state, extra = restored
    logging.info("resumed from %s at step %d", workdir, int(state.step))
  # The saved config records the image shape too, so `load` can rebuild the models.
  saved_config = config.copy_and_resolve_references()
  with saved_config.unlocked():
    saved_config.data.image_shape = tuple(image_shape)
  checkpointing.save_config(workdir, saved_config)
  num_params = {
    role: sum(x.size for x in jax.tree.leaves(getattr(state, f"{role}_params")))
    for role in ("encoder", "decoder")
  }
  resumed_step = int(state.step) if restored is not None else None
  for line in console.startup_summary(config, info, image_shape, num_params, workdir, resumed_step):
    logging.info("%s", line)
  return mesh, image_shape, state, checkpointer, extra


def _training_batches(config: ml_collections.ConfigDict, batches_consumed: int):
  """This process's host batches, the first ``batches_consumed`` of its stream skipped."""
  return input_pipeline.create_dataset(
    config,
    config.data.train_split,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    training=True,
    skip_batches=batches_consumed,
  ).as_numpy_iterator()


def _make_steps(config: ml_collections.ConfigDict, image_shape):
  """``steps.make_steps``'s pair, each step meeting the other processes before its first run."""
  encoder_step, decoder_step = steps.make_steps(config, image_shape)
  # Several processes: each compiles a step, then all meet, so no collective times out.
  encoder_step = distributed.meet_before_first_run(encoder_step, "encoder_step")
  if decoder_step is not None:
    decoder_step = distributed.meet_before_first_run(decoder_step, "decoder_step")
  return encoder_step, decoder_step


class _Run:
  """The loop's periodic actions (``log``, ``health``, ``images``, ``checkpoint``,
  ``evaluate``, ``stopped``) and the run's mutable bookkeeping: ``batches_consumed`` (the
  batches this process read from its stream), ``rollbacks``, the training seconds and the
  last progress line.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    workdir: str,
    image_shape,
    checkpointer: checkpointing.Checkpointer,
    start: int,
    batches_consumed: int,
    train_seconds_before: float,
  ):
    self.config, self.workdir, self.checkpointer = config, workdir, checkpointer
    self.reconstruct = loading.make_reconstruct(config, image_shape)
    self.periodic_eval = evaluate.PeriodicEval(config, image_shape)
    self.writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0
    )
    self.progress = self.new_progress()
    self.monitor = health.HealthMonitor(**config.train.health)
    if start == 0:
      self.writer.write_hparams(_flat_hparams(config))
    self.batches_consumed, self.rollbacks = batches_consumed, 0
    self._train_seconds_before = train_seconds_before
    self._loop_start, self._eval_seconds = time.time(), 0.0
    # The speed behind the progress line's ETA: training seconds per step since the last
    # progress line (the first interval includes compiling).
    self._last_log = (start, self.train_seconds())

  def new_progress(self) -> periodic_actions.ReportProgress:
    t = self.config.train
    return periodic_actions.ReportProgress(
      num_train_steps=t.num_steps, writer=self.writer, every_steps=t.log_every
    )

  def train_seconds(self) -> float:
    """Training time (the loop without its evaluations), summed over resumes: what the
    "minutes" of a run mean when runs are compared at equal budget."""
    return self._train_seconds_before + time.time() - self._loop_start - self._eval_seconds

  def log(self, step: int, metrics: Mapping[str, float]) -> None:
    """The logged terms to TensorBoard and the console's progress line."""
    self.writer.write_scalars(step, metrics)
    now, (last_step, last_seconds) = self.train_seconds(), self._last_log
    per_step = (now - last_seconds) / (step - last_step) if step > last_step else None
    self._last_log = (step, now)
    logging.info("%s", console.progress_line(step, self.config.train.num_steps, metrics, per_step))

  def health(self, step: int, metrics: Mapping[str, float]) -> None:
    for warning in self.monitor.update(step, metrics):
      logging.warning("%s", warning)

  def images(self, step: int, host_batch, state: TrainState) -> None:
    """Two rows of inputs over their reconstructions, as ``reconstructions/step_*.png``
    and TensorBoard's image ``reconstructions`` (process 0; none in the encoder-only
    modes)."""
    if jax.process_index() != 0 or not self.reconstruct:
      return
    k = min(8, host_batch["image"].shape[0] // 2)
    x = host_batch["image"][: 2 * k]
    xhat = jax.device_get(self.reconstruct(state, x))
    grid = image_grid.image_grid([x[:k], xhat[:k], x[k:], xhat[k:]])
    image_grid.save_png(
      workdir_files.path(self.workdir, "reconstructions", f"step_{step:07d}.png"), grid
    )
    self.writer.write_images(step, {"reconstructions": grid[None]})

  def checkpoint(self, step: int, state: TrainState) -> None:
    self.checkpointer.save(
      step,
      state,
      extra={
        "step": step,
        "examples_seen": step * self.config.train.batch_size,
        "batches_consumed": self.batches_consumed,
        "train_seconds": self.train_seconds(),
      },
    )

  def evaluate(self, step: int, state: TrainState) -> None:
    """The in-training evaluators: ``eval/...`` scalars and one console line."""
    eval_start = time.time()
    eval_metrics = self.periodic_eval(state)
    self._eval_seconds += time.time() - eval_start
    self.writer.write_scalars(step, eval_metrics)
    logging.info(
      "step %d/%d | %s",
      step,
      self.config.train.num_steps,
      " ".join(f"{k[5:]} {v:.4g}" for k, v in eval_metrics.items() if "seconds" not in k),
    )

  def stopped(self, stop: str, step: int) -> None:
    logging.warning(
      "%s received: saved the checkpoint of step %d in %s and stopped; "
      "run the same command again to resume",
      stop,
      step,
      self.checkpointer.directory,
    )

  def close(self) -> None:
    self.writer.flush()
    self.checkpointer.close()


def _check_or_roll_back(
  run: _Run, step: int, metrics: Mapping[str, float], state: TrainState
) -> Optional[Tuple[TrainState, int]]:
  """``nonfinite.check_finite`` of the logged ``metrics`` (may be empty) and ``state``.

  Returns None when all is finite; else, with ``train.on_nonfinite = "rollback"``, the
  state and step of the last checkpoint to go on from (with a warning). Raises
  FloatingPointError otherwise: ``"stop"``, no checkpoint, or rollbacks exhausted.
  """
  t = run.config.train
  try:
    nonfinite.check_finite(step, metrics, state)
  except FloatingPointError as e:
    last_good = run.checkpointer.latest_step()
    if t.on_nonfinite != "rollback" or last_good is None or run.rollbacks >= int(t.max_rollbacks):
      why = (
        ""
        if t.on_nonfinite != "rollback"
        else "; no checkpoint to roll back to"
        if last_good is None
        else f"; {run.rollbacks} rollbacks done already"
      )
      kept = (
        "no checkpoint was written"
        if last_good is None
        else f"the last checkpoint, step {last_good} in {run.checkpointer.directory}, is intact"
      )
      raise FloatingPointError(f"{e}{why}; {kept}") from None
    run.rollbacks += 1
    state, _ = run.checkpointer.restore(state, last_good)  # `state` gives shapes only
    logging.warning(
      "%s; rolled back to the checkpoint of step %d (rollback %d of %d); "
      "the data stream goes on at batch %d, skipping the batches of "
      "steps %d-%d",
      str(e).split("; stopping")[0],
      last_good,
      run.rollbacks,
      int(t.max_rollbacks),
      run.batches_consumed,
      last_good + 1,
      step,
    )
    run.progress = run.new_progress()  # it insists on consecutive steps
    return state, last_good
  return None


def _holding_the_workdir(train_fn: Callable) -> Callable:
  """``train_fn(config, workdir)`` inside ``workdir_files.training_lock``: one training per
  work directory, the lock released on every way out."""

  @functools.wraps(train_fn)
  def train_holding_it(config, workdir):
    config_checks.check_workdir_writable(workdir)  # its one-line error before any lock file
    with workdir_files.training_lock(workdir):
      return train_fn(config, workdir)

  return train_holding_it


@_holding_the_workdir
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains uCTRL as ``config`` says, in ``workdir``, resuming from its latest checkpoint.

  Writes to ``workdir``: ``checkpoints/`` (orbax), ``config.json``, TensorBoard event
  files (scalars, and the reconstruction grids as images), ``reconstructions/step_*.png``
  (inputs above ``g(f(x))``), ``eval/*`` scalars of
  the in-training evaluators (``evaluate.PeriodicEval``). Only process 0 writes logs and
  pictures; every process takes part in checkpoints (orbax).

  Reliability:

  * One writer: the run holds ``WORKDIR/train.lock`` (``workdir_files.training_lock``);
    a second training on the directory raises ``WorkdirBusyError`` naming the holder.
  * Validation: ``config_checks.validate_config`` runs first (names, ranges, batch vs.
    devices, image size vs. model, a writable workdir whose earlier ``config.json``
    agrees on the architecture and data) and raises ``ConfigError`` before any compile.
  * Preemption: SIGTERM or SIGINT (single process) is noted by a handler and acted on
    at the end of the iteration under way: the state is checked, saved as a checkpoint
    of that step, a warning says so and the function returns (a second Ctrl-C stops at
    once). Handlers are restored on return. A ``kill -9`` loses at most the steps since
    the last checkpoint (``checkpoint_every``): orbax commits a step by renaming its
    temporary directory, and the uncommitted remains are neither listed nor restored.
  * Non-finite values: the logged terms (every ``log_every`` steps) and every array of
    the state (at log steps and before every checkpoint, one jitted reduction) are
    checked; a NaN or infinity is never checkpointed. ``train.on_nonfinite = "stop"``
    (default) raises FloatingPointError naming the terms/arrays and the step, leaving
    the last checkpoint intact. ``"rollback"`` restores the last checkpoint and goes
    on, at most ``train.max_rollbacks`` (3) times, with the data stream continuing
    where it was: the batches of the rolled-back steps are skipped, not replayed, so
    the retried steps see new data (replaying them would most likely diverge again).
  * Unreadable checkpoint: a resume falls back to the newest step that restores (and
    holds finite values), with a warning; the damaged steps are moved to
    ``checkpoints_unreadable/``. If none restores it raises, never restarting from
    step 0 over the run's history.

  Determinism and resume: the same config and seed give the same batches
  (``input_pipeline``: streams seeded from ``(seed, process)``) and, on one backend
  and device count, the same losses. Each checkpoint records ``batches_consumed``, the
  number of batches this process read from the stream; a resume restores the whole
  state and reopens the stream with ``create_dataset(..., skip_batches=
  batches_consumed)``, so it sees exactly the batches the uninterrupted run would
  have (``batches_consumed`` = step unless a rollback skipped batches). Not exact:
  after a rollback (by design, see above); when the seed, global batch size or process
  count changes between runs (the stream itself changes; ``config_checks`` warns); on a
  different device count or backend (reduction order changes the floats; GPU
  reductions may be nondeterministic unless XLA is told otherwise); the health
  monitor's running references (max ``R(Z)``, first MSE) restart at the resumed step;
  and steps between the last checkpoint and a kill are logged twice to TensorBoard.

  Returns:
    The final state (replicated over the mesh); after a preemption, the state saved.
  Raises:
    config_checks.ConfigError: a bad config or workdir, before anything is compiled.
    FloatingPointError: non-finite values with ``on_nonfinite = "stop"`` (or rollbacks
      exhausted, or nothing to roll back to).
    checkpointing.RunLoadError: checkpoints exist but none can be restored.
    checkpointing.CheckpointWriteError: a checkpoint could not be written (full disk, ...).
    workdir_files.WorkdirBusyError: another training holds ``workdir``.
  """
  t = config.train
  mesh, image_shape, state, checkpointer, extra = _open_run(config, workdir)
  step = start = int(state.step)
  # Checkpoints written before `batches_consumed` existed read step batches.
  batches_consumed = int(extra.get("batches_consumed", start))
  batches = _training_batches(config, batches_consumed)
  encoder_step, decoder_step = _make_steps(config, image_shape)
  seconds_before = float(extra.get("train_seconds", 0.0))
  run = _Run(config, workdir, image_shape, checkpointer, start, batches_consumed, seconds_before)
  stop = None
  try:
    with stop_signals.StopSignals() as signals, host_blas.limit_host_blas(t.host_blas_threads):
      while step < t.num_steps:
        host_batch = next(batches)
        run.batches_consumed += 1
        state, metrics = steps.train_iteration(
          encoder_step, decoder_step, state, sharding.shard_batch(host_batch, mesh), t.encoder_steps
        )
        step += 1  # iterations done
        run.progress(step)
        last = step == t.num_steps
        log_now = step % t.log_every == 0 or last
        save_now = step % t.checkpoint_every == 0 or last
        # Kept once seen: a multi-process sync point answers yes at one step only.
        stop = stop or signals.requested(step)
        if log_now:
          metrics = jax.device_get(metrics)
        # The state is checked wherever it could reach a checkpoint, so a NaN born
        # between log steps is not saved either.
        if log_now or save_now or stop:
          rolled_back = _check_or_roll_back(run, step, metrics if log_now else {}, state)
          if rolled_back is not None:
            state, step = rolled_back
            continue
        if log_now:
          run.log(step, metrics)
          run.health(step, metrics)
        if step % t.image_every == 0 or last:
          run.images(step, host_batch, state)
        if save_now or stop:
          run.checkpoint(step, state)
        # After the save: a failure loses nothing.
        if run.periodic_eval.due(step, last) and not stop:
          run.evaluate(step, state)
        if stop:
          run.stopped(stop, step)
          break
  finally:
    run.close()
  logging.info(
    "step %d/%d: %.1f min of training in all (evaluations excluded)",
    step,
    t.num_steps,
    run.train_seconds() / 60,
  )
  return state
