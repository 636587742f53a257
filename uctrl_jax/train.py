"""The alternating maximin update of uCTRL (SPEC §3): state, encoder and decoder steps.

One iteration = ``config.train.encoder_steps`` encoder updates maximising the encoder
objective with ``X̂`` held constant, then one decoder update minimising the decoder
objective with gradients through ``f`` but only ``η`` updated. Both steps are jitted
once with the state donated; the batch arrives sharded over the ``data`` mesh axis
(``uctrl_jax/sharding.py``) and the rate terms see the global batch.

``train_and_evaluate(config, workdir)`` runs the loop: batches from
``input_pipeline``, the steps, console + TensorBoard scalars (clu) with a progress/ETA
line, reconstruction grids, a health monitor (feature collapse, decoder fooling), a
non-finite guard, and orbax checkpoints with automatic resume (``checkpointing``).
Resuming restores the whole state and continues the data stream exactly where it was
(``create_dataset(..., skip_batches=step)``), so an interrupted run repeats the
uninterrupted one's batches. Evaluators (``config.train.eval_every``) are not wired in
yet.

Batch-norm semantics, provisional until the trainer issue measures them:
- the encoder sees ``[X; X_a]`` in one training-mode pass (one set of batch statistics
  for real images and their views); its running statistics update in encoder steps
  only;
- ``f(X̂)`` uses the running statistics (``config.train.encoder_bn_on_xhat =
  "running"``, run B/E of shared/CALIBRATION.md) or ``"batch"`` statistics of ``X̂``;
- the decoder runs in training mode in both steps; its running statistics update in
  decoder steps only.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from uctrl_jax import checkpointing
from uctrl_jax import image_grid
from uctrl_jax import input_pipeline
from uctrl_jax import models
from uctrl_jax import rate_reduction as rr
from uctrl_jax import sharding

Array = jax.Array
Metrics = Mapping[str, Array]

LOSS_MODES = ("uctrl", "ctrl_binary", "ctrl_multi")


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree, so it is jitted and checkpointed whole."""
  step: Array  # () int32, iterations completed
  encoder_params: Any
  encoder_batch_stats: Any
  decoder_params: Any
  decoder_batch_stats: Any
  encoder_opt_state: Any
  decoder_opt_state: Any


def learning_rate_schedule(config: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
  """``base_lr`` (× global batch / 256 when ``train.scale_lr_by_batch``), with optional
  linear warm-up and cosine decay over ``train.num_steps``."""
  t = config.train
  lr = base_lr * (t.batch_size / 256.0 if t.get("scale_lr_by_batch", False) else 1.0)
  warmup = int(t.get("warmup_steps", 0))
  if t.get("schedule", "constant") == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(t.num_steps, warmup + 1))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                [warmup])
  return optax.constant_schedule(lr)


def make_optimizers(config) -> Tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam for each player, β = (b1, b2) (CTRL: (0.5, 0.999), lr 1.5e-4; SPEC §3)."""
  t = config.train
  return tuple(optax.adam(learning_rate_schedule(config, lr), b1=t.b1, b2=t.b2)
               for lr in (t.encoder_lr, t.decoder_lr))


def create_train_state(config, image_shape, rng: Array) -> TrainState:
  """Fresh parameters (``models.init_models``) and optimizer states at step 0."""
  variables = models.init_models(config, image_shape, rng)
  enc_tx, dec_tx = make_optimizers(config)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      encoder_params=variables["encoder_params"],
      encoder_batch_stats=variables["encoder_batch_stats"],
      decoder_params=variables["decoder_params"],
      decoder_batch_stats=variables["decoder_batch_stats"],
      encoder_opt_state=enc_tx.init(variables["encoder_params"]),
      decoder_opt_state=dec_tx.init(variables["decoder_params"]))


def objective_terms(config, Z: Array, Zhat: Array, Z_aug: Array, labels: Array) -> dict:
  """The game's terms for ``config.loss.mode`` (SPEC §3).

  Args:
    Z, Zhat: (B, d) float32 global-batch features of ``X`` and ``X̂``.
    Z_aug: (V, B, d) features of the views.
    labels: (B,) int32 (used by the supervised ``ctrl_multi`` only).
  Returns:
    dict of () float32 with at least ``encoder_objective`` (maximised) and
    ``decoder_objective`` (minimised).
  """
  loss = config.loss
  if loss.mode == "ctrl_multi":
    terms = dict(rr.ctrl_multi_objective(Z, Zhat, labels, loss.num_classes, loss.eps_sq))
    terms["encoder_objective"] = terms["decoder_objective"] = terms["objective"]
    return terms
  binary = loss.mode == "ctrl_binary"
  terms = dict(rr.uctrl_objective(
      Z, Zhat, Z_aug, loss.eps_sq, 0.0 if binary else loss.lambda_aug,
      0.0 if binary else loss.lambda_self, loss.sample_distance,
      sample_reduction=loss.get("sample_reduction", "sum")))
  if binary:  # CTRL-Binary: only ΔR(Z, Ẑ) is played (SPEC §3).
    terms["encoder_objective"] = terms["decoder_objective"] = terms["delta_R_z_zhat"]
  return terms


def _encode_images_and_views(encoder, variables, batch):
  """``f`` on ``[X; X_a]`` in one training-mode pass → Z (B, d), Z_aug (V, B, d), stats."""
  X, views = batch["image"], batch["views"]
  num_views, B = views.shape[:2]
  x_all = jnp.concatenate([X, views.reshape((num_views * B,) + X.shape[1:])])
  z_all, updates = encoder.apply(variables, x_all, train=True, mutable=["batch_stats"])
  return z_all[:B], z_all[B:].reshape(num_views, B, -1), updates["batch_stats"]


def _encode_reconstructions(encoder, config, variables, Xhat):
  """``Ẑ = f(X̂)`` with the configured batch-norm statistics; never updates them."""
  if config.train.get("encoder_bn_on_xhat", "running") == "running":
    return encoder.apply(variables, Xhat, train=False)
  return encoder.apply(variables, Xhat, train=True, mutable=["batch_stats"])[0]


def _with_grad_norm(prefix: str, terms: dict, grads, lr) -> dict:
  return {**{f"{prefix}/{k}": v for k, v in terms.items()},
          f"{prefix}/grad_norm": optax.tree.norm(grads), f"{prefix}/lr": lr}


def make_steps(config, image_shape) -> Tuple[Callable, Callable]:
  """Jitted ``encoder_step(state, batch)`` and ``decoder_step(state, batch)``.

  Each returns ``(new_state, metrics)``; ``state`` is donated. ``batch`` holds
  ``image`` (B, H, W, C), ``views`` (V, B, H, W, C) and ``label`` (B,), global arrays
  (``sharding.shard_batch``). The encoder step does not advance ``state.step``; the
  decoder step, which ends an iteration, does.
  """
  encoder, decoder = models.create_models(config, image_shape)
  enc_tx, dec_tx = make_optimizers(config)
  enc_lr = learning_rate_schedule(config, config.train.encoder_lr)
  dec_lr = learning_rate_schedule(config, config.train.decoder_lr)

  def encoder_loss(enc_params, state, batch):
    enc_vars = {"params": enc_params, "batch_stats": state.encoder_batch_stats}
    Z, Z_aug, new_stats = _encode_images_and_views(encoder, enc_vars, batch)
    # The encoder step holds X̂ constant (SPEC §3): no gradient flows into g.
    Xhat = jax.lax.stop_gradient(decoder.apply(
        {"params": state.decoder_params, "batch_stats": state.decoder_batch_stats}, Z,
        train=True, mutable=["batch_stats"])[0])
    Zhat = _encode_reconstructions(encoder, config, {"params": enc_params, "batch_stats": new_stats}, Xhat)
    terms = objective_terms(config, Z, Zhat, Z_aug, batch["label"])
    terms["cos_z_zhat"] = jnp.mean(1.0 - rr.cosine_distance(Z, Zhat))
    terms["cos_z_zaug"] = jnp.mean(1.0 - jax.vmap(rr.cosine_distance, (None, 0))(Z, Z_aug))
    return -terms["encoder_objective"], (terms, new_stats)

  def decoder_loss(dec_params, state, batch):
    enc_vars = {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}
    Z, Z_aug, _ = _encode_images_and_views(encoder, enc_vars, batch)
    Xhat, updates = decoder.apply({"params": dec_params, "batch_stats": state.decoder_batch_stats},
                                  Z, train=True, mutable=["batch_stats"])
    # Gradients flow through f into η; only η is updated (only dec_params are differentiated).
    Zhat = _encode_reconstructions(encoder, config, enc_vars, Xhat)
    terms = objective_terms(config, Z, Zhat, Z_aug, batch["label"])
    # Pixel error of g(f(x)): not in the objective, but the health monitor's fooling check.
    terms["recon_mse"] = jnp.mean(jnp.square(Xhat - batch["image"]))
    return terms["decoder_objective"], (terms, updates["batch_stats"])

  @functools.partial(jax.jit, donate_argnums=0)
  def encoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    grads, (terms, new_stats) = jax.grad(encoder_loss, has_aux=True)(state.encoder_params, state, batch)
    updates, opt_state = enc_tx.update(grads, state.encoder_opt_state, state.encoder_params)
    new_state = state.replace(encoder_params=optax.apply_updates(state.encoder_params, updates),
                              encoder_batch_stats=new_stats, encoder_opt_state=opt_state)
    return new_state, _with_grad_norm("encoder", terms, grads, enc_lr(state.step))

  @functools.partial(jax.jit, donate_argnums=0)
  def decoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    grads, (terms, new_stats) = jax.grad(decoder_loss, has_aux=True)(state.decoder_params, state, batch)
    updates, opt_state = dec_tx.update(grads, state.decoder_opt_state, state.decoder_params)
    new_state = state.replace(decoder_params=optax.apply_updates(state.decoder_params, updates),
                              decoder_batch_stats=new_stats, decoder_opt_state=opt_state,
                              step=state.step + 1)
    return new_state, _with_grad_norm("decoder", terms, grads, dec_lr(state.step))

  return encoder_step, decoder_step


def train_iteration(encoder_step, decoder_step, state: TrainState, batch,
                    encoder_steps: int) -> Tuple[TrainState, dict]:
  """One iteration of the game on one batch: ``encoder_steps`` encoder updates, one decoder update.

  Returns the new state and the metrics of the last encoder step and the decoder step.
  """
  if encoder_steps < 1:
    raise ValueError(f"config.train.encoder_steps must be ≥ 1; got {encoder_steps}")
  for _ in range(encoder_steps):
    state, enc_metrics = encoder_step(state, batch)
  state, dec_metrics = decoder_step(state, batch)
  return state, {**enc_metrics, **dec_metrics}


def _eval_mode_loop(config, image_shape) -> Tuple[Callable, Callable]:
  """``encode(state, x) -> Z`` and ``decode(state, Z) -> x̂`` with running BN statistics."""
  encoder, decoder = models.create_models(config, image_shape)

  def encode(state: TrainState, x: Array) -> Array:
    return encoder.apply({"params": state.encoder_params, "batch_stats": state.encoder_batch_stats},
                         x, train=False)

  def decode(state: TrainState, Z: Array) -> Array:
    return decoder.apply({"params": state.decoder_params, "batch_stats": state.decoder_batch_stats},
                         Z, train=False)
  return encode, decode


def make_reconstruct(config, image_shape) -> Callable:
  """Jitted ``reconstruct(state, x) -> g(f(x))`` in eval mode (running BN statistics)."""
  encode, decode = _eval_mode_loop(config, image_shape)
  return jax.jit(lambda state, x: decode(state, encode(state, x)))


class HealthMonitor:
  """Names the game's two known failures as they happen (shared/CALIBRATION.md).

  * Feature collapse: ``R(Z)`` falls below ``collapse_fraction`` of its running maximum.
  * Decoder fooling: ``cos(z, ẑ)`` above ``fooling_cos`` while the reconstruction MSE
    is still above ``fooling_mse_fraction`` of its first logged value, i.e. ``f∘g ≈ id``
    without ``g∘f ≈ id``.
  """

  # fooling_cos 0.75: the 2026-11-29 Fashion-MNIST run drew noise at cos(z, ẑ) ≈ 0.8
  # (prototypes: 0.8-0.96), while a faithful transcription has cos near 1 and falling MSE.
  def __init__(self, collapse_fraction: float = 0.5, fooling_cos: float = 0.75,
               fooling_mse_fraction: float = 0.9):
    self.collapse_fraction = collapse_fraction
    self.fooling_cos = fooling_cos
    self.fooling_mse_fraction = fooling_mse_fraction
    self.max_rate = -math.inf
    self.first_mse: Optional[float] = None

  def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
    """Returns the warnings for the metrics logged at ``step``."""
    warnings = []
    rate = float(metrics["encoder/R"])
    self.max_rate = max(self.max_rate, rate)
    if rate < self.collapse_fraction * self.max_rate:
      warnings.append(f"step {step}: feature collapse: R(Z) = {rate:.2f} fell below "
                      f"{self.collapse_fraction:.0%} of its running maximum {self.max_rate:.2f}")
    mse = float(metrics["decoder/recon_mse"])
    self.first_mse = mse if self.first_mse is None else self.first_mse
    cos = float(metrics["encoder/cos_z_zhat"])
    if cos > self.fooling_cos and mse > self.fooling_mse_fraction * self.first_mse:
      warnings.append(f"step {step}: decoder fooling: cos(z, ẑ) = {cos:.3f} while the "
                      f"reconstruction MSE {mse:.3f} is still {mse / self.first_mse:.0%} of its "
                      f"first value {self.first_mse:.3f}")
    return warnings


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  """Raises FloatingPointError naming every non-finite logged term (before any checkpoint)."""
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
  if bad:
    raise FloatingPointError(f"non-finite values at step {step}: {', '.join(bad)}; stopping "
                             "without writing a checkpoint of this state")


_CONSOLE_TERMS = (("R", "encoder/R"), ("ΔR(Z,Ẑ)", "encoder/delta_R_z_zhat"),
                  ("aug", "encoder/aug_per_sample"), ("self", "encoder/self_per_sample"),
                  ("enc", "encoder/encoder_objective"), ("dec", "decoder/decoder_objective"),
                  ("cos(z,ẑ)", "encoder/cos_z_zhat"), ("cos(z,z_a)", "encoder/cos_z_zaug"),
                  ("mse", "decoder/recon_mse"))


def _console_line(step: int, num_steps: int, metrics: Mapping[str, float]) -> str:
  terms = " ".join(f"{name} {float(metrics[key]):.4g}" for name, key in _CONSOLE_TERMS
                   if key in metrics)
  return f"step {step}/{num_steps} | {terms}"


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
  files, ``reconstructions/step_*.png`` (inputs above ``g(f(x))``). Only process 0
  writes logs and pictures; every process takes part in checkpoints (orbax).

  Returns:
    The final state (replicated over the mesh).
  """
  t = config.train
  os.makedirs(workdir, exist_ok=True)
  process_index, process_count = jax.process_index(), jax.process_count()
  if t.batch_size % jax.device_count():
    raise ValueError(f"config.train.batch_size = {t.batch_size} must be divisible by the "
                     f"{jax.device_count()} devices")
  mesh = sharding.create_mesh()
  image_shape = input_pipeline.get_dataset_info(config).image_shape
  state = sharding.replicate(create_train_state(config, image_shape, jax.random.key(config.seed)),
                             mesh)
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=t.max_to_keep)
  if checkpointer.latest_step() is not None:
    state, _ = checkpointer.restore(state)
    logging.info("resumed from %s at step %d", workdir, int(state.step))
  # The saved config records the image shape too, so `load` can rebuild the models.
  saved_config = config.copy_and_resolve_references()
  with saved_config.unlocked():
    saved_config.data.image_shape = tuple(image_shape)
  checkpointing.save_config(workdir, saved_config)
  start = int(state.step)

  batches = input_pipeline.create_dataset(
      config, "train", process_index=process_index, process_count=process_count,
      skip_batches=start).as_numpy_iterator()
  encoder_step, decoder_step = make_steps(config, image_shape)
  reconstruct = make_reconstruct(config, image_shape)
  writer = metric_writers.create_default_writer(workdir, just_logging=process_index > 0)
  progress = periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer,
                                             every_steps=t.log_every)
  monitor = HealthMonitor(**t.get("health", {}))
  if start == 0:
    writer.write_hparams(_flat_hparams(config.to_dict()))

  for step in range(start + 1, t.num_steps + 1):  # step: iterations done after this one
    host_batch = next(batches)
    state, metrics = train_iteration(encoder_step, decoder_step, state,
                                     sharding.shard_batch(host_batch, mesh), t.encoder_steps)
    progress(step)
    last = step == t.num_steps
    if step % t.log_every == 0 or last:
      metrics = jax.device_get(metrics)
      check_finite(step, metrics)
      writer.write_scalars(step, metrics)
      logging.info("%s", _console_line(step, t.num_steps, metrics))
      for warning in monitor.update(step, metrics):
        logging.warning("%s", warning)
    if (step % t.image_every == 0 or last) and process_index == 0:
      k = min(8, host_batch["image"].shape[0] // 2)  # two rows of inputs over reconstructions
      x = host_batch["image"][:2 * k]
      xhat = jax.device_get(reconstruct(state, x))
      image_grid.save_png(os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"),
                          image_grid.image_grid([x[:k], xhat[:k], x[k:], xhat[k:]]))
    if step % t.checkpoint_every == 0 or last:
      checkpointer.save(step, state, extra={"step": step, "examples_seen": step * t.batch_size})
  writer.flush()
  checkpointer.close()
  return state


class Loaded(NamedTuple):
  """A trained closed loop: ``encode(x) -> Z`` and ``decode(Z) -> x̂``, both jitted, eval mode."""
  encode: Callable[[Array], Array]  # (B, H, W, C) in [-1, 1] -> (B, d) float32 unit rows
  decode: Callable[[Array], Array]  # (B, d) -> (B, H, W, C) in [-1, 1]
  config: ml_collections.ConfigDict
  state: TrainState


def load(workdir: str, step: Optional[int] = None) -> Loaded:
  """The encoder and decoder of the checkpoint at ``step`` (latest when None) in ``workdir``.

  Needs only the work directory (``config.json`` and ``checkpoints/``), not the data.
  """
  config = checkpointing.load_config(workdir)
  image_shape = tuple(config.data.image_shape)
  target = create_train_state(config, image_shape, jax.random.key(0))
  with checkpointing.Checkpointer(workdir) as checkpointer:
    state, _ = checkpointer.restore(target, step)
  encode, decode = (jax.jit(f) for f in _eval_mode_loop(config, image_shape))
  # The state is an argument, not a closed-over constant: compiles fast at any size.
  return Loaded(lambda x: encode(state, x), lambda Z: decode(state, Z), config, state)
