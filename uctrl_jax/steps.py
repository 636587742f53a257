"""The steps of the alternating maximin game: ``make_steps`` (the jitted encoder and
decoder updates) and ``train_iteration`` (one iteration of them on one batch).

One iteration = ``config.train.encoder_steps`` encoder updates maximising the encoder
objective with ``X̂`` held constant, then one decoder update minimising the decoder
objective with gradients through ``f`` but only ``η`` updated (docs/method.md#the-game).
Both steps are jitted once with the state (``state.TrainState``) donated; the batch
arrives sharded over the ``data`` mesh axis (``uctrl_jax/sharding.py``) and the rate
terms see the global batch.

Batch-norm semantics (docs/method.md#batch-norm-in-the-game):
- the encoder sees ``[X; X_a]`` in one training-mode pass (one set of batch statistics
  for real images and their views); its running statistics update in encoder steps
  only;
- ``f(X̂)`` uses the running statistics (``config.train.encoder_bn_on_xhat =
  "running"``) or ``"batch"`` statistics of ``X̂``;
- the decoder runs in training mode in both steps; its running statistics update in
  decoder steps only.

Accelerator images often lack TensorFlow, tfds, clu and ml_collections: this module
imports and runs without any of them (tests/test_tf_free.py, test_accelerator_bench.py).
The loop that runs the steps is ``train.train_and_evaluate``.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr
from uctrl_jax.state import TrainState, learning_rate_schedule, make_optimizers

Array = jax.Array
Metrics = Mapping[str, Array]

# The VAE's noise stream, folded into key(seed) apart from the initialisation's split.
_VAE_NOISE = 1
# (params, state, batch) -> (loss, (terms, new batch statistics)), for jax.grad's has_aux.
Loss = Callable[..., Tuple[Array, Tuple[dict, dict]]]


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


def _encoder_loss(config, encoder, decoder) -> Loss:
  """The game's encoder loss of ``enc_params``: minus the encoder objective."""

  def loss(enc_params, state, batch):
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

  return loss


def _encoder_only_loss(config, encoder) -> Loss:
  """The encoder-only modes' loss of ``enc_params``: minus their objective on the views."""

  def loss(enc_params, state, batch):
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

  return loss


def _decoder_loss(config, encoder, decoder) -> Loss:
  """The decoder loss of ``dec_params``: the decoder objective."""
  running_stats_in_decoder_step = config.train.encoder_bn_in_decoder_step == "running"

  def loss(dec_params, state, batch):
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

  return loss


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
  encoder_loss = (
    _encoder_loss(config, encoder, decoder) if game else _encoder_only_loss(config, encoder)
  )
  decoder_loss = _decoder_loss(config, encoder, decoder)

  @functools.partial(jax.jit, donate_argnums=0)
  def encoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    grads, (terms, new_stats) = jax.grad(encoder_loss, has_aux=True)(
      state.encoder_params, state, batch
    )
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
  ``fold_in(key(config.seed), _VAE_NOISE)`` folded with the step: the same run draws the
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
