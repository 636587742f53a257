"""The trainer: the encoder and decoder steps of the alternating maximin game and the
loop that runs them (``train_and_evaluate``).

One iteration = ``config.train.encoder_steps`` encoder updates maximising the encoder
objective with ``X̂`` held constant, then one decoder update minimising the decoder
objective with gradients through ``f`` but only ``η`` updated (docs/method.md#the-game).
Both steps are jitted once with the state (``state.TrainState``) donated; the batch
arrives sharded over the ``data`` mesh axis (``uctrl_jax/sharding.py``) and the rate
terms see the global batch.

``train_and_evaluate(config, workdir)`` runs the loop: batches from
``input_pipeline``, the steps, console + TensorBoard scalars (clu) with a progress/ETA
line, reconstruction grids, the guards of ``guards`` (preemption signals, non-finite
values, the health monitor, the BLAS cap) and orbax checkpoints with automatic resume
(``checkpointing``). Resuming restores the whole state and continues the data stream
exactly where it was (``create_dataset(..., skip_batches=...)``), so an interrupted run
repeats the uninterrupted one's batches. Every ``config.train.eval_every`` steps and at
the end the cheap evaluators of ``config.evals.during_training`` run on a subset of both
splits (``evaluate.PeriodicEval``) and are logged as ``eval/...`` scalars.

Batch-norm semantics (docs/method.md#batch-norm-in-the-game):
- the encoder sees ``[X; X_a]`` in one training-mode pass (one set of batch statistics
  for real images and their views); its running statistics update in encoder steps
  only;
- ``f(X̂)`` uses the running statistics (``config.train.encoder_bn_on_xhat =
  "running"``) or ``"batch"`` statistics of ``X̂``;
- the decoder runs in training mode in both steps; its running statistics update in
  decoder steps only.
"""

from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import optax

from uctrl_jax import console
from uctrl_jax import distributed
from uctrl_jax import guards
from uctrl_jax import loading
from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr
from uctrl_jax import sharding

# Re-exported: the state and the BLAS cap are part of the trainer's interface (tests,
# benchmarks/recipes.py).
from uctrl_jax.guards import limit_host_blas  # noqa: F401
from uctrl_jax.state import TrainState, create_train_state, learning_rate_schedule, make_optimizers  # noqa: F401

# Accelerator images often lack TensorFlow, tfds, clu and ml_collections: the steps
# (create_train_state, make_steps, train_iteration) import and run without any of them
# (tests/test_tf_free.py, test_accelerator_bench.py). So the loop's host-side pieces
# (evaluate and input_pipeline: TensorFlow; clu's writers; checkpointing and validation:
# ml_collections) are imported where they are used.
if TYPE_CHECKING:
  import ml_collections

Array = jax.Array
Metrics = Mapping[str, Array]

# The VAE's noise stream, folded into key(seed) apart from the initialisation's split.
_VAE_NOISE = 1


def _encode_images_and_views(encoder, variables, batch):
  """``f`` on ``[X; X_a]`` in one training-mode pass → Z (B, d), Z_aug (V, B, d), stats."""
  X, views = batch["image"], batch["views"]
  num_views, B = views.shape[:2]
  x_all = jnp.concatenate([X, views.reshape((num_views * B,) + X.shape[1:])])
  z_all, updates = encoder.apply(variables, x_all, train=True, mutable=["batch_stats"])
  return z_all[:B], z_all[B:].reshape(num_views, B, -1), updates["batch_stats"]


def _encode_reconstructions(encoder, config, variables, Xhat):
  """``Ẑ = f(X̂)`` with the configured batch-norm statistics; never updates them."""
  if config.train.encoder_bn_on_xhat == "running":
    return encoder.apply(variables, Xhat, train=False)
  return encoder.apply(variables, Xhat, train=True, mutable=["batch_stats"])[0]


def _with_grad_norm(prefix: str, terms: dict, grads, lr) -> dict:
  return {
    **{f"{prefix}/{k}": v for k, v in terms.items()},
    f"{prefix}/grad_norm": optax.tree.norm(grads),
    f"{prefix}/lr": lr,
  }


def make_steps(config, image_shape) -> Tuple[Callable, Optional[Callable]]:
  """Jitted ``encoder_step(state, batch)`` and ``decoder_step(state, batch)``.

  Each returns ``(new_state, metrics)``; ``state`` is donated. ``batch`` holds
  ``image`` (B, H, W, C), ``views`` (V, B, H, W, C) and ``label`` (B,), global arrays
  (``sharding.shard_batch``). In the game the encoder step does not advance
  ``state.step``; the decoder step, which ends an iteration, does. In the encoder-only
  modes (``objectives.ENCODER_ONLY_MODES``) ``decoder_step`` is None, the encoder step
  sees the views only and ends the iteration. In the generative modes
  (``objectives.GENERATIVE_MODES``) the first is ``make_generative_step``'s joint step,
  the second None.
  """
  if config.loss.mode in objectives.GENERATIVE_MODES:
    return make_generative_step(config, image_shape), None
  encoder, decoder = models.create_models(config, image_shape)
  enc_tx, dec_tx = make_optimizers(config)
  enc_lr = learning_rate_schedule(config, config.train.encoder_lr)
  dec_lr = learning_rate_schedule(config, config.train.decoder_lr)
  game = objectives.uses_decoder(config)
  running_stats_in_decoder_step = config.train.encoder_bn_in_decoder_step == "running"

  def encoder_loss(enc_params, state, batch):
    enc_vars = {"params": enc_params, "batch_stats": state.encoder_batch_stats}
    Z, Z_aug, new_stats = _encode_images_and_views(encoder, enc_vars, batch)
    # The encoder step holds X̂ constant (docs/method.md#the-game): no gradient flows into g.
    Xhat = jax.lax.stop_gradient(
      decoder.apply(
        {"params": state.decoder_params, "batch_stats": state.decoder_batch_stats},
        Z,
        train=True,
        mutable=["batch_stats"],
      )[0]
    )
    Zhat = _encode_reconstructions(
      encoder, config, {"params": enc_params, "batch_stats": new_stats}, Xhat
    )
    terms = objectives.game_terms(config, Z, Zhat, Z_aug, batch["label"])
    terms["cos_z_zhat"] = jnp.mean(1.0 - rr.cosine_distance(Z, Zhat))
    terms["cos_z_zaug"] = jnp.mean(1.0 - jax.vmap(rr.cosine_distance, (None, 0))(Z, Z_aug))
    return -terms["encoder_objective"], (terms, new_stats)

  def encoder_only_loss(enc_params, state, batch):
    views = batch["views"]
    num_views, B = views.shape[:2]
    z, updates = encoder.apply(
      {"params": enc_params, "batch_stats": state.encoder_batch_stats},
      views.reshape((num_views * B,) + views.shape[2:]),
      train=True,
      mutable=["batch_stats"],
    )
    Z_views = z.reshape(num_views, B, -1)
    terms = objectives.encoder_only_terms(config, Z_views)
    # The first view against the others: the invariance the game logs as cos(z, z_a).
    terms["cos_z_zaug"] = jnp.mean(
      1.0 - jax.vmap(rr.cosine_distance, (None, 0))(Z_views[0], Z_views[1:])
    )
    return -terms["encoder_objective"], (terms, updates["batch_stats"])

  def decoder_loss(dec_params, state, batch):
    enc_vars = {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}
    if running_stats_in_decoder_step:
      # f as evaluation runs it; the views are not encoded: the augmentation term does
      # not depend on η, so it is left out of the decoder's objective here.
      Z, Z_aug = encoder.apply(enc_vars, batch["image"], train=False), None
    else:
      Z, Z_aug, _ = _encode_images_and_views(encoder, enc_vars, batch)
    Xhat, updates = decoder.apply(
      {"params": dec_params, "batch_stats": state.decoder_batch_stats},
      Z,
      train=True,
      mutable=["batch_stats"],
    )
    # Gradients flow through f into η; only η is updated (only dec_params are differentiated).
    Zhat = _encode_reconstructions(encoder, config, enc_vars, Xhat)
    terms = objectives.game_terms(config, Z, Zhat, Z_aug, batch["label"])
    # Pixel error of g(f(x)): not in the objective, but the health monitor's fooling check.
    terms["recon_mse"] = jnp.mean(jnp.square(Xhat - batch["image"]))
    return terms["decoder_objective"], (terms, updates["batch_stats"])

  @functools.partial(jax.jit, donate_argnums=0)
  def encoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    loss = encoder_loss if game else encoder_only_loss
    grads, (terms, new_stats) = jax.grad(loss, has_aux=True)(state.encoder_params, state, batch)
    updates, opt_state = enc_tx.update(grads, state.encoder_opt_state, state.encoder_params)
    new_state = state.replace(
      encoder_params=optax.apply_updates(state.encoder_params, updates),
      encoder_batch_stats=new_stats,
      encoder_opt_state=opt_state,
      step=state.step + (0 if game else 1),
    )
    return new_state, _with_grad_norm("encoder", terms, grads, enc_lr(state.step))

  @functools.partial(jax.jit, donate_argnums=0)
  def decoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    grads, (terms, new_stats) = jax.grad(decoder_loss, has_aux=True)(
      state.decoder_params, state, batch
    )
    updates, opt_state = dec_tx.update(grads, state.decoder_opt_state, state.decoder_params)
    new_state = state.replace(
      decoder_params=optax.apply_updates(state.decoder_params, updates),
      decoder_batch_stats=new_stats,
      decoder_opt_state=opt_state,
      step=state.step + 1,
    )
    return new_state, _with_grad_norm("decoder", terms, grads, dec_lr(state.step))

  return encoder_step, (decoder_step if game else None)


def make_generative_step(config, image_shape) -> Callable:
  """Jitted ``step(state, batch) -> (new_state, metrics)`` of the generative baselines
  (``loss.mode`` ``"autoencoder"`` or ``"vae"``; ``state`` donated).

  One joint update per iteration (``state.step`` + 1): the loss of ``objectives``
  (``autoencoder_terms`` or ``vae_terms``) on ``batch["image"]`` alone, its gradient taken
  in both networks' parameters, each applied by its own player's Adam (``make_optimizers``:
  ``train.encoder_lr``/``encoder_b1`` and ``decoder_lr``/``decoder_b1``). Both networks
  run in training mode and update their batch statistics. The VAE's noise ``ε`` comes from
  ````fold_in(key(config.seed), _VAE_NOISE)`` folded with the step: the same run draws the
  same noise, resumed or not.

  Metrics: the loss's terms as ``generative/<term>``, and ``encoder/grad_norm``,
  ``encoder/lr``, ``decoder/grad_norm``, ``decoder/lr``.
  """
  encoder, decoder = models.create_models(config, image_shape)
  enc_tx, dec_tx = make_optimizers(config)
  enc_lr = learning_rate_schedule(config, config.train.encoder_lr)
  dec_lr = learning_rate_schedule(config, config.train.decoder_lr)
  vae = config.loss.mode == "vae"
  sigma_sq = config.loss.vae_sigma_sq
  noise_key = jax.random.fold_in(jax.random.key(config.seed), _VAE_NOISE)

  def loss_fn(params, state, batch):
    enc_params, dec_params = params
    X = batch["image"]
    out, enc_updates = encoder.apply(
      {"params": enc_params, "batch_stats": state.encoder_batch_stats},
      X,
      train=True,
      posterior=vae,
      mutable=["batch_stats"],
    )
    if vae:
      mu, log_var = out
      Z = objectives.reparameterize(jax.random.fold_in(noise_key, state.step), mu, log_var)
    else:
      Z = out
    Xhat, dec_updates = decoder.apply(
      {"params": dec_params, "batch_stats": state.decoder_batch_stats},
      Z,
      train=True,
      mutable=["batch_stats"],
    )
    terms = (
      objectives.vae_terms(X, Xhat, mu, log_var, sigma_sq)
      if vae
      else objectives.autoencoder_terms(X, Xhat)
    )
    return terms["loss"], (terms, enc_updates["batch_stats"], dec_updates["batch_stats"])

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    params = (state.encoder_params, state.decoder_params)
    (enc_grads, dec_grads), (terms, enc_stats, dec_stats) = jax.grad(loss_fn, has_aux=True)(
      params, state, batch
    )
    enc_updates, enc_opt = enc_tx.update(enc_grads, state.encoder_opt_state, state.encoder_params)
    dec_updates, dec_opt = dec_tx.update(dec_grads, state.decoder_opt_state, state.decoder_params)
    new_state = state.replace(
      encoder_params=optax.apply_updates(state.encoder_params, enc_updates),
      encoder_batch_stats=enc_stats,
      encoder_opt_state=enc_opt,
      decoder_params=optax.apply_updates(state.decoder_params, dec_updates),
      decoder_batch_stats=dec_stats,
      decoder_opt_state=dec_opt,
      step=state.step + 1,
    )
    return new_state, {
      **{f"generative/{k}": v for k, v in terms.items()},
      **_with_grad_norm("encoder", {}, enc_grads, enc_lr(state.step)),
      **_with_grad_norm("decoder", {}, dec_grads, dec_lr(state.step)),
    }

  return step


def train_iteration(
  encoder_step, decoder_step, state: TrainState, batch, encoder_steps: int
) -> Tuple[TrainState, dict]:
  """One iteration on one batch: ``encoder_steps`` encoder updates, then one decoder update
  (none when ``decoder_step`` is None: an encoder-only mode's one encoder update, or a
  generative mode's one joint update).

  Returns the new state and the metrics of the last encoder step and the decoder step.
  """
  if encoder_steps < 1:
    raise ValueError(f"config.train.encoder_steps must be ≥ 1; got {encoder_steps}")
  if decoder_step is None:
    return encoder_step(state, batch)
  for _ in range(encoder_steps):
    state, enc_metrics = encoder_step(state, batch)
  state, dec_metrics = decoder_step(state, batch)
  return state, {**enc_metrics, **dec_metrics}


def _flat_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict:
  """``{"train.batch_size": 128, ...}``; values TensorBoard cannot show become strings."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat_hparams(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return flat


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains uCTRL as ``config`` says, in ``workdir``, resuming from its latest checkpoint.

  Writes to ``workdir``: ``checkpoints/`` (orbax), ``config.json``, TensorBoard event
  files, ``reconstructions/step_*.png`` (inputs above ``g(f(x))``), ``eval/*`` scalars of
  the in-training evaluators (``evaluate.PeriodicEval``). Only process 0 writes logs and
  pictures; every process takes part in checkpoints (orbax).

  Reliability:

  * Validation: ``validation.validate_config`` runs first (names, ranges, batch vs.
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
  count changes between runs (the stream itself changes; ``validation`` warns); on a
  different device count or backend (reduction order changes the floats; GPU
  reductions may be nondeterministic unless XLA is told otherwise); the health
  monitor's running references (max ``R(Z)``, first MSE) restart at the resumed step;
  and steps between the last checkpoint and a kill are logged twice to TensorBoard.

  Returns:
    The final state (replicated over the mesh); after a preemption, the state saved.
  Raises:
    validation.ConfigError: a bad config or workdir, before anything is compiled.
    FloatingPointError: non-finite values with ``on_nonfinite = "stop"`` (or rollbacks
      exhausted, or nothing to roll back to).
    checkpointing.RunLoadError: checkpoints exist but none can be restored.
  """
  # pylint: disable=import-outside-toplevel
  from clu import metric_writers, periodic_actions
  from uctrl_jax import checkpointing, evaluate, image_grid, input_pipeline, validation

  # pylint: enable=import-outside-toplevel
  t = config.train
  validation.validate_config(config, workdir)
  process_index, process_count = jax.process_index(), jax.process_count()
  on_nonfinite, max_rollbacks = t.on_nonfinite, int(t.max_rollbacks)
  fault_step = t.fault_inject_nan_at_step
  mesh = sharding.create_mesh(mesh_config=config.mesh)
  info = input_pipeline.get_dataset_info(config)
  image_shape = info.image_shape
  validation.check_training_labels(config, info)
  if config.data.image_size is None:
    # "Keep the stored size": the shape is known only now, still before any compile.
    validation.check_image_shape(config, image_shape)
    validation.check_workdir_compatible(config, workdir, image_shape)
  state = sharding.replicate(
    create_train_state(config, image_shape, jax.random.key(config.seed)), mesh
  )
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=t.max_to_keep)
  batches_consumed, train_seconds_before = 0, 0.0
  restored = checkpointer.restore_latest_readable(
    state, check=lambda s: guards.check_finite(int(s.step), {}, s)
  )
  if restored is not None:
    state, extra = restored
    # Checkpoints written before `batches_consumed` existed read step batches.
    batches_consumed = int(extra.get("batches_consumed", int(state.step)))
    train_seconds_before = float(extra.get("train_seconds", 0.0))
    logging.info("resumed from %s at step %d", workdir, int(state.step))
  # The saved config records the image shape too, so `load` can rebuild the models.
  saved_config = config.copy_and_resolve_references()
  with saved_config.unlocked():
    saved_config.data.image_shape = tuple(image_shape)
  checkpointing.save_config(workdir, saved_config)
  start = int(state.step)
  num_params = {
    role: sum(x.size for x in jax.tree.leaves(getattr(state, f"{role}_params")))
    for role in ("encoder", "decoder")
  }
  for line in console.startup_summary(
    config, info, image_shape, num_params, workdir, start if restored is not None else None
  ):
    logging.info("%s", line)

  batches = input_pipeline.create_dataset(
    config,
    config.data.train_split,
    process_index=process_index,
    process_count=process_count,
    training=True,
    skip_batches=batches_consumed,
  ).as_numpy_iterator()
  encoder_step, decoder_step = make_steps(config, image_shape)
  # Several processes: each compiles a step, then all meet, so no collective times out.
  encoder_step = distributed.meet_before_first_run(encoder_step, "encoder_step")
  if decoder_step is not None:
    decoder_step = distributed.meet_before_first_run(decoder_step, "decoder_step")
  reconstruct = loading.make_reconstruct(config, image_shape)
  periodic_eval = evaluate.PeriodicEval(config, image_shape)
  writer = metric_writers.create_default_writer(workdir, just_logging=process_index > 0)
  new_progress = lambda: periodic_actions.ReportProgress(  # noqa: E731
    num_train_steps=t.num_steps, writer=writer, every_steps=t.log_every
  )
  progress = new_progress()
  monitor = guards.HealthMonitor(**t.health)
  if start == 0:
    writer.write_hparams(_flat_hparams(config.to_dict()))

  # Training time (the loop without its evaluations), summed over resumes: what the
  # "minutes" of a run mean when runs are compared at equal budget.
  loop_start, eval_seconds = time.time(), 0.0

  def train_seconds() -> float:
    return train_seconds_before + time.time() - loop_start - eval_seconds

  # The speed behind the progress line's ETA: training seconds per step since the last
  # progress line (the first interval includes compiling).
  last_log = (start, train_seconds())

  def save(step: int, state: TrainState) -> None:
    checkpointer.save(
      step,
      state,
      extra={
        "step": step,
        "examples_seen": step * t.batch_size,
        "batches_consumed": batches_consumed,
        "train_seconds": train_seconds(),
      },
    )

  rollbacks, injected, step, stop = 0, False, start, None
  try:
    with guards.StopSignals() as stop_signals, guards.limit_host_blas(t.host_blas_threads):
      while step < t.num_steps:
        host_batch = next(batches)
        batches_consumed += 1
        state, metrics = train_iteration(
          encoder_step, decoder_step, state, sharding.shard_batch(host_batch, mesh), t.encoder_steps
        )
        step += 1  # iterations done
        if step == fault_step and not injected:
          injected = True  # once per call, so that a rollback can get past it
          state, metrics = guards.inject_nan(state, metrics)
        progress(step)
        last = step == t.num_steps
        log_now = step % t.log_every == 0 or last
        save_now = step % t.checkpoint_every == 0 or last
        # Kept once seen: a multi-process sync point answers yes at one step only.
        stop = stop or stop_signals.requested(step)
        if log_now:
          metrics = jax.device_get(metrics)
        if log_now or save_now or stop:
          try:
            # The state is checked wherever it could reach a checkpoint, so a NaN born
            # between log steps is not saved either.
            guards.check_finite(step, metrics if log_now else {}, state)
          except FloatingPointError as e:
            last_good = checkpointer.latest_step()
            if on_nonfinite != "rollback" or last_good is None or rollbacks >= max_rollbacks:
              why = (
                ""
                if on_nonfinite != "rollback"
                else "; no checkpoint to roll back to"
                if last_good is None
                else f"; {rollbacks} rollbacks done already"
              )
              kept = (
                "no checkpoint was written"
                if last_good is None
                else f"the last checkpoint, step {last_good} in {checkpointer.directory}, is intact"
              )
              raise FloatingPointError(f"{e}{why}; {kept}") from None
            rollbacks += 1
            state, _ = checkpointer.restore(state, last_good)  # `state` gives shapes only
            logging.warning(
              "%s; rolled back to the checkpoint of step %d (rollback %d of %d); "
              "the data stream goes on at batch %d, skipping the batches of "
              "steps %d-%d",
              str(e).split("; stopping")[0],
              last_good,
              rollbacks,
              max_rollbacks,
              batches_consumed,
              last_good + 1,
              step,
            )
            step = last_good
            progress = new_progress()  # it insists on consecutive steps
            continue
        if log_now:
          writer.write_scalars(step, metrics)
          now = train_seconds()
          per_step = (now - last_log[1]) / (step - last_log[0]) if step > last_log[0] else None
          last_log = (step, now)
          logging.info("%s", console.progress_line(step, t.num_steps, metrics, per_step))
          for warning in monitor.update(step, metrics):
            logging.warning("%s", warning)
        if (step % t.image_every == 0 or last) and process_index == 0 and reconstruct:
          # Two rows of inputs over reconstructions.
          k = min(8, host_batch["image"].shape[0] // 2)
          x = host_batch["image"][: 2 * k]
          xhat = jax.device_get(reconstruct(state, x))
          image_grid.save_png(
            os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"),
            image_grid.image_grid([x[:k], xhat[:k], x[k:], xhat[k:]]),
          )
        if save_now or stop:
          save(step, state)
        if periodic_eval.due(step, last) and not stop:  # after the save: a failure loses nothing
          eval_start = time.time()
          eval_metrics = periodic_eval(state)
          eval_seconds += time.time() - eval_start
          writer.write_scalars(step, eval_metrics)
          logging.info(
            "step %d/%d | %s",
            step,
            t.num_steps,
            " ".join(f"{k[5:]} {v:.4g}" for k, v in eval_metrics.items() if "seconds" not in k),
          )
        if stop:
          logging.warning(
            "%s received: saved the checkpoint of step %d in %s and stopped; "
            "run the same command again to resume",
            stop,
            step,
            checkpointer.directory,
          )
          break
  finally:
    writer.flush()
    checkpointer.close()
  logging.info(
    "step %d/%d: %.1f min of training in all (evaluations excluded)",
    step,
    t.num_steps,
    train_seconds() / 60,
  )
  return state
