"""The training state of the closed loop: ``TrainState``, the players' optimizers and
learning-rate schedules, and a fresh state at step 0.

Its own module so that the trainer (``train``), ``loading`` (the restore target of a
checkpoint) and ``evaluate`` (the encoder at initialisation) share it without importing
one another. Needs jax, flax and optax only (no TensorFlow, clu or ml_collections).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from uctrl_jax import models
from uctrl_jax import objectives

if TYPE_CHECKING:
  import ml_collections

Array = jax.Array


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
  lr = base_lr * (t.batch_size / 256.0 if t.scale_lr_by_batch else 1.0)
  warmup = int(t.warmup_steps)
  if t.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(t.num_steps, warmup + 1))
  if warmup:
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  return optax.constant_schedule(lr)


def make_optimizers(config) -> Tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam for each player with its own learning rate and β₁ (``train.encoder_lr``,
  ``encoder_b1``; ``decoder_lr``, ``decoder_b1``) and a shared β₂ (CTRL: lr 1.5e-4,
  β = (0.5, 0.999) for both; docs/method.md#the-game).

  The schedules run over iterations (``state.step``, the rate each step logs as
  ``*/lr``), while optax counts updates: the encoder, updated ``train.encoder_steps``
  times per iteration, reads its schedule at ``count // encoder_steps``."""
  t = config.train
  encoder_lr = learning_rate_schedule(config, t.encoder_lr)
  return (
    optax.adam(lambda count: encoder_lr(count // t.encoder_steps), b1=t.encoder_b1, b2=t.b2),
    optax.adam(learning_rate_schedule(config, t.decoder_lr), b1=t.decoder_b1, b2=t.b2),
  )


def create_train_state(config, image_shape, rng: Array) -> TrainState:
  """Fresh parameters (``models.init_models``) and optimizer states at step 0.

  In the encoder-only modes (``objectives.ENCODER_ONLY_MODES``) the decoder's fields are
  empty dicts: no decoder is built.
  """
  variables = models.init_models(
    config, image_shape, rng, with_decoder=objectives.uses_decoder(config)
  )
  enc_tx, dec_tx = make_optimizers(config)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    encoder_params=variables["encoder_params"],
    encoder_batch_stats=variables["encoder_batch_stats"],
    decoder_params=variables["decoder_params"],
    decoder_batch_stats=variables["decoder_batch_stats"],
    encoder_opt_state=enc_tx.init(variables["encoder_params"]),
    decoder_opt_state=dec_tx.init(variables["decoder_params"]),
  )
