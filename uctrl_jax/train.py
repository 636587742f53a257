"""The alternating maximin update of uCTRL (SPEC §3): state, encoder and decoder steps.

One iteration = ``config.train.encoder_steps`` encoder updates maximising the encoder
objective with ``X̂`` held constant, then one decoder update minimising the decoder
objective with gradients through ``f`` but only ``η`` updated. Both steps are jitted
once with the state donated; the batch arrives sharded over the ``data`` mesh axis
(``uctrl_jax/sharding.py``) and the rate terms see the global batch.

Status: the steps are complete and tested (tests/test_train.py); the training loop,
logging, checkpoints and ``train_and_evaluate`` belong to the trainer issue and are
not here yet.

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
from typing import Any, Callable, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from uctrl_jax import models
from uctrl_jax import rate_reduction as rr

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
    return -terms["encoder_objective"], (terms, new_stats)

  def decoder_loss(dec_params, state, batch):
    enc_vars = {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}
    Z, Z_aug, _ = _encode_images_and_views(encoder, enc_vars, batch)
    Xhat, updates = decoder.apply({"params": dec_params, "batch_stats": state.decoder_batch_stats},
                                  Z, train=True, mutable=["batch_stats"])
    # Gradients flow through f into η; only η is updated (only dec_params are differentiated).
    Zhat = _encode_reconstructions(encoder, config, enc_vars, Xhat)
    terms = objective_terms(config, Z, Zhat, Z_aug, batch["label"])
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
