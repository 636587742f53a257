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


def standardize(z_train: np.ndarray, z_test: np.ndarray, eps: float = 1e-6):
  """Both ``(n, d)`` sets scaled by the training set's per-dimension mean and std."""
  mean, std = z_train.mean(axis=0), z_train.std(axis=0)
  # eps: constant dimensions (black pixel borders) must not divide by zero.
  return (z_train - mean) / (std + eps), (z_test - mean) / (std + eps)


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
  z_train,
  y_train,
  z_test,
  y_test,
  *,
  num_classes: int | None = None,
  steps: int = 500,
  lr: float = 0.05,
  weight_decay: float = 1e-4,
) -> dict[str, float]:
  """``{"top1": %, "train_top1": %}`` of the linear probe (module docstring).

  Args:
    z_train, z_test: (n, d), (m, d) features (images are flattened).
    y_train, y_test: (n,), (m,) int labels.
    num_classes: C; default ``max(y_train, y_test) + 1``.
    steps, lr, weight_decay: the optimisation protocol above.
  """
  z_train, z_test = common.as_features("z_train", z_train), common.as_features("z_test", z_test)
  y_train = common.as_labels("y_train", y_train, len(z_train))
  y_test = common.as_labels("y_test", y_test, len(z_test))
  if num_classes is None:
    num_classes = int(max(y_train.max(), y_test.max())) + 1
  train_s, test_s = standardize(z_train, z_test)
  W, b = _fit(
    jnp.asarray(train_s),
    jnp.asarray(y_train, jnp.int32),
    jnp.float32(lr),
    jnp.float32(weight_decay),
    num_classes=int(num_classes),
    steps=int(steps),
  )
  W, b = np.asarray(W), np.asarray(b)
  return {
    "top1": common.accuracy(y_test, (test_s @ W + b).argmax(1)),
    "train_top1": common.accuracy(y_train, (train_s @ W + b).argmax(1)),
  }


def run(context, **options) -> dict[str, float]:
  """``evaluate`` on a registry ``Context``: fit on train features, scored on test."""
  return common.classify(evaluate, context, **options)
