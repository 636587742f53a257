"""The non-finite check: a NaN or infinity in the logged terms or the training state stops
the run (or rolls it back: ``config.train.on_nonfinite``) before it is checkpointed.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.jit
def _finite_per_leaf(leaves: list) -> Array:
  """(L,) bool: whether each array in ``leaves`` is entirely finite (one small transfer)."""
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_state_leaves(state: Any) -> list[str]:
  """Paths (``jax.tree_util.keystr``) of the floating-point arrays of ``state`` that hold
  a NaN or an infinity; [] when all are finite. One jitted reduction per call."""
  named = [
    (jax.tree_util.keystr(path), x)
    for path, x in jax.tree_util.tree_leaves_with_path(state)
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  if not named:
    return []
  finite = jax.device_get(_finite_per_leaf([x for _, x in named]))
  return [name for (name, _), ok in zip(named, finite) if not ok]


def check_finite(step: int, metrics: Mapping[str, float], state: Any = None) -> None:
  """Raises FloatingPointError naming every non-finite logged term (before any checkpoint).

  Args:
    step: the step the values belong to (named in the message).
    metrics: host scalars, e.g. ``jax.device_get`` of a step's metrics; may be empty.
    state: optional ``TrainState`` (any pytree); its floating-point arrays are checked
      too (parameters, batch statistics, optimizer moments), so a NaN that has not yet
      reached a logged term still stops the run before it is checkpointed.
  """
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
  if state is not None:
    leaves = nonfinite_state_leaves(state)
    if leaves:
      more = f" and {len(leaves) - 3} more arrays" if len(leaves) > 3 else ""
      bad.append(f"state {', '.join(leaves[:3])}{more}")
  if bad:
    raise FloatingPointError(
      f"non-finite values at step {step}: {', '.join(bad)}; stopping "
      "without writing a checkpoint of this state"
    )
