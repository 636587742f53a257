"""Linear probe: softmax regression on frozen, standardised features.

Protocol (fixed, so numbers are comparable across runs):
- features as given (no augmentation), standardised per dimension with the training
  set's mean and standard deviation (the test set uses the same statistics);
- a linear classifier ``logits = Z W + b`` trained on the whole training set at once
  (full batch: features are small, and full batch makes the probe deterministic)
  with Adam, learning rate ``lr`` cosine-decayed to 0 over ``steps``, minimising
  mean cross-entropy + ``weight_decay / 2 · |W|²`` (a convex problem: the answer does
  not depend on the initialisation, zeros here);
- reported: test top-1 in % (and train top-1, to spot under-fitting).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uctrl_jax.evaluators import common

# What the registry needs (uctrl_jax/evaluators/__init__.py): features and both splits' labels.
NEEDS_DECODER = False
NEEDS_LABELS = ("train", "test")


def standardize(train_z: np.ndarray, test_z: np.ndarray, eps: float = 1e-6):
  """Both ``(n, d)`` sets scaled by the training set's per-dimension mean and std."""
  mean, std = train_z.mean(axis=0), train_z.std(axis=0)
  # eps: constant dimensions (black pixel borders) must not divide by zero.
  return (train_z - mean) / (std + eps), (test_z - mean) / (std + eps)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(Z, y, lr, weight_decay, *, num_classes: int, steps: int):
  """``(W (d, C), b (C,))`` minimising cross-entropy + ``weight_decay/2 |W|²`` on ``Z: (n, d)``."""
  params = (
    jnp.zeros((Z.shape[1], num_classes), jnp.float32),
    jnp.zeros((num_classes,), jnp.float32),
  )
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps))

  def loss(params):
    W, b = params
    ce = optax.softmax_cross_entropy_with_integer_labels(Z @ W + b, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(W * W)

  def step(carry, _):
    params, opt_state = carry
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


def evaluate(
  train_z,
  train_y,
  test_z,
  test_y,
  *,
  num_classes: int | None = None,
  steps: int = 500,
  lr: float = 0.05,
  weight_decay: float = 1e-4,
) -> dict[str, float]:
  """``{"top1": %, "train_top1": %}`` of the linear probe (module docstring).

  Args:
    train_z, test_z: (n, d), (m, d) features (images are flattened).
    train_y, test_y: (n,), (m,) int labels.
    num_classes: C; default ``max(train_y, test_y) + 1``.
    steps, lr, weight_decay: the optimisation protocol above.
  """
  train_z, test_z = common.as_features("train_z", train_z), common.as_features("test_z", test_z)
  train_y = common.as_labels("train_y", train_y, len(train_z))
  test_y = common.as_labels("test_y", test_y, len(test_z))
  if num_classes is None:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
  train_s, test_s = standardize(train_z, test_z)
  W, b = _fit(
    jnp.asarray(train_s),
    jnp.asarray(train_y, jnp.int32),
    jnp.float32(lr),
    jnp.float32(weight_decay),
    num_classes=int(num_classes),
    steps=int(steps),
  )
  W, b = np.asarray(W), np.asarray(b)
  return {
    "top1": common.accuracy(test_y, (test_s @ W + b).argmax(1)),
    "train_top1": common.accuracy(train_y, (train_s @ W + b).argmax(1)),
  }


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: fit on train features, scored on test."""
  return common.classify(evaluate, context, **options)
