"""Which way the game's steps go (issue 17): tests that fail on a flipped sign or a
missing stop-gradient, and on a learning rate other than the schedule's.

The references are written here from docs/method.md#the-game (``rate_reduction.uctrl_objective`` on
features computed with the models directly), not through ``steps.make_steps``:

    encoder θ:  max  J_f(θ) = R(Z) + ΔR(Z, Ẑ) − λ₁ Σ ΔR(zᵢ, z_aᵢ) − λ₂ Σ ΔR(zᵢ, ẑᵢ),  X̂ constant
    decoder η:  min  J_g(η) = R(Z) + ΔR(Z, Ẑ) + λ₁ Σ ΔR(zᵢ, z_aᵢ) + λ₂ Σ ΔR(zᵢ, ẑᵢ),  Ẑ = f(g(Z))

Adam's first update moves every parameter by ≈ lr · sign(gradient of its loss), so one
step of a player changes its objective by ≈ ±lr · ‖∇J‖₁ to first order: the tests ask
for at least half of that, in the right direction.

Mutation check (by hand, one mutation at a time): flipping the sign of the encoder loss
in ``uctrl_jax/steps.py`` fails ``test_encoder_step_raises_the_encoder_objective`` and
``test_encoder_step_holds_xhat_constant``; flipping the decoder's fails
``test_decoder_step_lowers_the_decoder_objective`` and
``test_decoder_step_gradient_flows_through_the_encoder``; removing the ``stop_gradient`` on
X̂ fails ``test_encoder_step_holds_xhat_constant``; a warm-up one step too long, or
``scale_lr_by_batch`` ignored, in ``state.learning_rate_schedule`` fails
``test_logged_lr_follows_the_schedule[warmup_scale_lr_by_batch]``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks.jax_loop import random_batch
from configs import tiny
from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax import sharding
from uctrl_jax import steps
from uctrl_jax.state import create_train_state, make_optimizers

IMAGE_SHAPE = (28, 28, 1)


def _batch(config, seed=0):
  return random_batch(config, IMAGE_SHAPE, seed)


def _copy(tree):
  return jax.tree.map(np.array, tree)


def _terms(config, Z, Zhat, Z_aug):
  # The mode's combination of the rate-reduction terms (values checked against NumPy in
  # test_objectives.py / test_rate_reduction.py); what is tested here is the steps' direction.
  return objectives.game_terms(config, Z, Zhat, Z_aug, jnp.zeros(len(Z), jnp.int32))


def _encoder_objective(config, batch, state, *, xhat_constant=True):
  """``J_f(θ)`` with the decoder and the encoder's running statistics of ``state``."""
  encoder, decoder = models.create_models(config, IMAGE_SHAPE)
  B, V = config.train.batch_size, config.data.num_views
  x_all = jnp.concatenate([batch["image"], batch["views"].reshape(V * B, *IMAGE_SHAPE)])

  def objective(enc_params):
    z_all, updates = encoder.apply(
      {"params": enc_params, "batch_stats": state.encoder_batch_stats},
      x_all,
      train=True,
      mutable=["batch_stats"],
    )
    Z, Z_aug = z_all[:B], z_all[B:].reshape(V, B, -1)
    Xhat = decoder.apply(
      {"params": state.decoder_params, "batch_stats": state.decoder_batch_stats},
      Z,
      train=True,
      mutable=["batch_stats"],
    )[0]
    if xhat_constant:
      Xhat = jax.lax.stop_gradient(Xhat)
    Zhat = encoder.apply(
      {"params": enc_params, "batch_stats": updates["batch_stats"]}, Xhat, train=False
    )
    return _terms(config, Z, Zhat, Z_aug)["encoder_objective"]

  return objective


def _decoder_objective(config, batch, state, *, through_f=True):
  """``J_g(η)`` with the encoder of ``state``: the running statistics for Ẑ = f(g(Z)), and for
  Z those config.train.encoder_bn_in_decoder_step names ("running": X alone, the views'
  term being constant in η; "batch": the batch statistics of ``[X; X_a]``)."""
  encoder, decoder = models.create_models(config, IMAGE_SHAPE)
  B, V = config.train.batch_size, config.data.num_views
  enc_vars = {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}
  if config.train.encoder_bn_in_decoder_step == "running":
    Z, Z_aug = encoder.apply(enc_vars, batch["image"], train=False), None
  else:
    x_all = jnp.concatenate([batch["image"], batch["views"].reshape(V * B, *IMAGE_SHAPE)])
    z_all = encoder.apply(enc_vars, x_all, train=True, mutable=["batch_stats"])[0]
    Z, Z_aug = z_all[:B], z_all[B:].reshape(V, B, -1)

  def objective(dec_params):
    Xhat = decoder.apply(
      {"params": dec_params, "batch_stats": state.decoder_batch_stats},
      Z,
      train=True,
      mutable=["batch_stats"],
    )[0]
    if not through_f:
      Xhat = jax.lax.stop_gradient(Xhat)
    Zhat = encoder.apply(enc_vars, Xhat, train=False)
    return _terms(config, Z, Zhat, Z_aug)["decoder_objective"]

  return objective


def _l1(tree):
  return float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))


def _l2(tree):
  return float(math.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(tree))))


@pytest.fixture(scope="module")
def game():
  """The tiny config's steps, a state one iteration in (so that the decoder is not at its
  initialisation), and a fixed batch other than the one that iteration saw."""
  config = tiny.get_config()
  # Steps small enough for the first-order prediction below to hold (Adam moves each
  # parameter by about lr): at the default encoder lr of 1e-3 one step gains 4.1 where the
  # first order predicts 15, curvature already bending the path.
  config.train.encoder_lr = config.train.decoder_lr = 1.5e-4
  mesh = sharding.create_mesh(jax.devices()[:1])
  encoder_step, decoder_step = steps.make_steps(config, IMAGE_SHAPE)
  state = sharding.replicate(create_train_state(config, IMAGE_SHAPE, jax.random.key(0)), mesh)
  state, _ = steps.train_iteration(
    encoder_step, decoder_step, state, sharding.shard_batch(_batch(config, seed=1), mesh), 1
  )
  return config, mesh, encoder_step, decoder_step, _copy(state), _batch(config)


def _run(step, game):
  config, mesh, _, _, start, batch = game
  state = sharding.replicate(jax.tree.map(jnp.asarray, start), mesh)
  new_state, metrics = step(state, sharding.shard_batch(batch, mesh))
  return _copy(new_state), jax.device_get(metrics)


def test_encoder_step_raises_the_encoder_objective(game):
  config, _, encoder_step, _, start, batch = game
  new, metrics = _run(encoder_step, game)
  J = jax.jit(_encoder_objective(config, batch, start))
  before, after = float(J(start.encoder_params)), float(J(new.encoder_params))
  np.testing.assert_allclose(metrics["encoder/encoder_objective"], before, rtol=1e-4, atol=1e-4)
  first_order = config.train.encoder_lr * _l1(jax.grad(J)(start.encoder_params))
  assert after - before > 0.5 * first_order, (before, after, first_order)


def test_decoder_step_lowers_the_decoder_objective(game):
  config, _, _, decoder_step, start, batch = game
  new, metrics = _run(decoder_step, game)
  J = jax.jit(_decoder_objective(config, batch, start))
  before, after = float(J(start.decoder_params)), float(J(new.decoder_params))
  np.testing.assert_allclose(metrics["decoder/decoder_objective"], before, rtol=1e-4, atol=1e-4)
  first_order = config.train.decoder_lr * _l1(jax.grad(J)(start.decoder_params))
  assert before - after > 0.5 * first_order, (before, after, first_order)


def _adam_from(start, player, grad_of_objective, config, sign):
  """Parameters after the player's optimizer (``state.make_optimizers``) applies the
  gradient ``sign · ∇J`` of its loss from ``start``'s optimizer state."""
  tx = make_optimizers(config)[0 if player == "encoder" else 1]
  params = getattr(start, f"{player}_params")
  loss_grad = jax.tree.map(lambda g: sign * g, grad_of_objective)
  updates, _ = tx.update(loss_grad, getattr(start, f"{player}_opt_state"), params)
  return optax.apply_updates(params, updates)


def _distance(a, b):
  return _l2(jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y), a, b))


def test_encoder_step_holds_xhat_constant(game):
  """The step's update is the one of the gradient with X̂ = g(f(x)) a constant, measurably
  not the one with gradients through g(f(x)) into θ (Adam's update depends on the
  gradient elementwise, so the parameters tell the two apart where norms barely do)."""
  config, _, encoder_step, _, start, batch = game
  new, metrics = _run(encoder_step, game)
  constant = jax.grad(_encoder_objective(config, batch, start))(start.encoder_params)
  through = jax.grad(_encoder_objective(config, batch, start, xhat_constant=False))(
    start.encoder_params
  )
  if_constant = _adam_from(start, "encoder", constant, config, sign=-1.0)  # loss = −J_f
  if_through = _adam_from(start, "encoder", through, config, sign=-1.0)
  apart = _distance(if_constant, if_through)
  assert apart > 1e-2 * _distance(if_constant, start.encoder_params)  # the test can tell
  assert _distance(new.encoder_params, if_constant) < 1e-2 * apart
  np.testing.assert_allclose(metrics["encoder/grad_norm"], _l2(constant), rtol=1e-4)


def test_decoder_step_gradient_flows_through_the_encoder(game):
  """J_g depends on η only through Ẑ = f(g(Z)): cut at f's input, its gradient is zero;
  the step's update is the one of the gradient through f."""
  config, _, _, decoder_step, start, batch = game
  new, metrics = _run(decoder_step, game)
  through = jax.grad(_decoder_objective(config, batch, start))(start.decoder_params)
  cut = jax.grad(_decoder_objective(config, batch, start, through_f=False))(start.decoder_params)
  assert _l2(cut) == 0.0 and _l2(through) > 0.0
  if_through = _adam_from(start, "decoder", through, config, sign=1.0)  # loss = J_g
  if_cut = _adam_from(start, "decoder", cut, config, sign=1.0)
  assert _distance(new.decoder_params, if_through) < 1e-2 * _distance(if_through, if_cut)
  np.testing.assert_allclose(metrics["decoder/grad_norm"], _l2(through), rtol=1e-4)


# ------------------------------------------------------------------ learning rates


def _expected_lr(base, step, *, schedule="constant", warmup=0, num_steps=100, scale=1.0):
  """The documented schedule (configs/default.py, state.learning_rate_schedule), in closed
  form: linear warm-up from 0 over ``warmup`` steps, then constant or a cosine decay to 0
  at ``num_steps``."""
  lr = base * scale
  if step < warmup:
    return lr * step / warmup
  if schedule == "cosine":
    progress = min(step - warmup, num_steps - warmup) / (num_steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
  return lr


# Each names its schedule: left to the config's default (cosine since the default recipe
# changed), "constant" and the constant warm-up would test the cosine decay twice.
SCHEDULES = {
  "constant": dict(schedule="constant"),
  "cosine": dict(schedule="cosine"),
  "warmup_scale_lr_by_batch": dict(schedule="constant", warmup_steps=10, scale_lr_by_batch=True),
  "warmup_cosine": dict(schedule="cosine", warmup_steps=10),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_logged_lr_follows_the_schedule(name):
  config = tiny.get_config()
  config.train.update(num_steps=100, encoder_lr=2e-4, decoder_lr=3e-4, **SCHEDULES[name])
  expected = dict(
    schedule=config.train.schedule,
    warmup=config.train.warmup_steps,
    num_steps=100,
    scale=config.train.batch_size / 256 if config.train.scale_lr_by_batch else 1.0,
  )
  mesh = sharding.create_mesh(jax.devices()[:1])
  encoder_step, decoder_step = steps.make_steps(config, IMAGE_SHAPE)
  start = _copy(create_train_state(config, IMAGE_SHAPE, jax.random.key(0)))
  batch = sharding.shard_batch(_batch(config), mesh)
  for step in (0, 5, 10, 40, 99, 150):
    state = sharding.replicate(jax.tree.map(jnp.asarray, start.replace(step=np.int32(step))), mesh)
    state, enc_metrics = encoder_step(state, batch)
    _, dec_metrics = decoder_step(state, batch)
    for player, metrics, base in (("encoder", enc_metrics, 2e-4), ("decoder", dec_metrics, 3e-4)):
      np.testing.assert_allclose(
        float(metrics[f"{player}/lr"]),
        _expected_lr(base, step, **expected),
        rtol=1e-5,
        atol=1e-6 * base,
        err_msg=f"{name}: {player} at step {step}",
      )


@pytest.mark.parametrize("encoder_steps", [1, 3])
def test_optimizers_apply_the_lr_of_the_iteration(encoder_steps):
  """Adam on a constant gradient g moves by exactly lr · g / (|g| + ε): the learning rate
  each update applies is observable. The encoder's k-th update of iteration i must use the
  rate of iteration i, the one its step logs (``learning_rate_schedule(step)``), however
  many encoder updates an iteration makes."""
  config = tiny.get_config()
  config.train.update(num_steps=12, warmup_steps=4, schedule="cosine", encoder_steps=encoder_steps)
  enc_tx, dec_tx = make_optimizers(config)
  params = {"w": jnp.zeros(())}
  grads = {"w": jnp.ones(())}
  enc_state, dec_state = enc_tx.init(params), dec_tx.init(params)
  for iteration in range(config.train.num_steps + 2):
    lr, dec_lr = (
      _expected_lr(base, iteration, schedule="cosine", warmup=4, num_steps=12)
      for base in (config.train.encoder_lr, config.train.decoder_lr)
    )
    for _ in range(encoder_steps):
      updates, enc_state = enc_tx.update(grads, enc_state, params)
      np.testing.assert_allclose(
        -float(updates["w"]),
        lr / (1 + 1e-8),
        rtol=1e-5,
        atol=1e-10,
        err_msg=f"encoder, iteration {iteration}",
      )
    updates, dec_state = dec_tx.update(grads, dec_state, params)
    np.testing.assert_allclose(
      -float(updates["w"]),
      dec_lr / (1 + 1e-8),
      rtol=1e-5,
      atol=1e-10,
      err_msg=f"decoder, iteration {iteration}",
    )
