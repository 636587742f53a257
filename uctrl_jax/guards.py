"""The training loop's guards: preemption signals, non-finite checks, the health monitor
of the game's known failures, the cap on the host's BLAS threads, and the test-only NaN
fault. Host-side and independent of the model: ``train.train_and_evaluate`` uses them.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any, Mapping, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp

Array = jax.Array


def limit_host_blas(num_threads: Optional[int]):
  """Context: the host's BLAS/LAPACK pools (numpy's and scipy's OpenBLAS) on ``num_threads``.

  On CPU, jaxlib's Cholesky and triangular solves (the rate terms and their gradient)
  run in scipy's OpenBLAS, whose threads keep spinning after each call and take the
  cores from XLA's own pool for the ops that follow (``config.train.host_blas_threads``,
  issue 8: 1 thread made the Fashion-MNIST iteration about 20% faster on 2 cores).
  None leaves the pools alone. Uses threadpoolctl, so it works after numpy is imported.
  """
  import threadpoolctl  # pylint: disable=import-outside-toplevel

  if num_threads is None:
    return threadpoolctl.threadpool_limits(limits=None)
  return threadpoolctl.threadpool_limits(limits=int(num_threads), user_api="blas")


class HealthMonitor:
  """Names the game's two known failures as they happen (docs/method.md#known-failures).

  * Feature collapse: ``R(Z)`` falls below ``collapse_fraction`` of its running maximum.
  * Decoder fooling: ``cos(z, ẑ)`` above ``fooling_cos`` while the reconstruction MSE
    is still above ``fooling_mse_fraction`` of its first logged value, i.e. ``f∘g ≈ id``
    without ``g∘f ≈ id``.

  Each is named when it starts, and again only after it has cleared and come back: a
  condition that lasts does not fill the console with one warning per logged step. A
  check whose terms a mode does not log is skipped: the encoder-only modes have no
  ``ẑ`` to fool, the generative baselines neither ``R(Z)`` nor ``ẑ``.
  """

  def __init__(self, collapse_fraction: float, fooling_cos: float, fooling_mse_fraction: float):
    self.collapse_fraction = collapse_fraction
    self.fooling_cos = fooling_cos
    self.fooling_mse_fraction = fooling_mse_fraction
    self.max_rate = -math.inf
    self.first_mse: Optional[float] = None
    self._holding: set[str] = set()

  def _onset(self, name: str, holds: bool) -> bool:
    """Whether ``name`` starts to hold now."""
    started = holds and name not in self._holding
    (self._holding.add if holds else self._holding.discard)(name)
    return started

  def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
    """Returns the warnings for the metrics logged at ``step``."""
    warnings = []
    if "encoder/R" in metrics:
      rate = float(metrics["encoder/R"])
      self.max_rate = max(self.max_rate, rate)
      if self._onset("collapse", rate < self.collapse_fraction * self.max_rate):
        warnings.append(
          f"step {step}: feature collapse: R(Z) = {rate:.2f} fell below "
          f"{self.collapse_fraction:.0%} of its running maximum {self.max_rate:.2f}"
        )
    if "decoder/recon_mse" not in metrics or "encoder/cos_z_zhat" not in metrics:
      return warnings
    mse = float(metrics["decoder/recon_mse"])
    self.first_mse = mse if self.first_mse is None else self.first_mse
    cos = float(metrics["encoder/cos_z_zhat"])
    if self._onset(
      "fooling", cos > self.fooling_cos and mse > self.fooling_mse_fraction * self.first_mse
    ):
      warnings.append(
        f"step {step}: decoder fooling: cos(z, ẑ) = {cos:.3f} while the "
        f"reconstruction MSE {mse:.3f} is still {mse / self.first_mse:.0%} of its "
        f"first value {self.first_mse:.3f}"
      )
    return warnings


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


class StopSignals:
  """SIGTERM / SIGINT → a request to stop at the next iteration boundary.

  A context manager: ``__enter__`` installs handlers that only record the signal (the
  loop checks ``requested`` once per iteration, saves a checkpoint and returns);
  ``__exit__`` puts the previous handlers back. A second SIGINT raises
  KeyboardInterrupt at once (Ctrl-C twice: stop now, without the checkpoint; orbax's
  atomic commit leaves the previous checkpoints intact).

  With several processes a local flag could stop them at different steps, and the
  checkpoint save is collective; there SIGTERM is left to jax's preemption service
  (``jax.distributed``, enabled by default), which agrees on a step across processes
  (``multihost_utils.reached_preemption_sync_point``), and no handler is installed.
  Handlers need the main thread; elsewhere none is installed either.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[str] = None  # name of the first signal
    self._previous = {}
    self._multi_process = jax.process_count() > 1
    self._sync_point_available = True

  def __enter__(self) -> "StopSignals":
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      for sig in self._SIGNALS:
        self._previous[sig] = signal.getsignal(sig)
        signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = self.received or signal.Signals(signum).name

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      # None: a handler installed outside Python, which cannot be reinstated from here.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()

  def requested(self, step: int) -> Optional[str]:
    """What asks the run to stop after ``step`` (a signal name), or None. Every process
    must call this at every step (the multi-process sync point needs it)."""
    if not self._multi_process:
      return self.received
    if self._sync_point_available:
      from jax.experimental import multihost_utils

      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return "preemption notice"
      except RuntimeError:  # no preemption service (jax.distributed not initialised)
        self._sync_point_available = False
        logging.info("jax's preemption service is off: SIGTERM is not caught")
    return None


def inject_nan(state: Any, metrics: dict) -> Tuple[Any, dict]:
  """Test-only fault (``config.train.fault_inject_nan_at_step``): NaN in every encoder
  parameter and in the logged encoder objective, as a diverged step would leave them."""
  state = state.replace(encoder_params=jax.tree.map(lambda x: x * jnp.nan, state.encoder_params))
  return state, {**metrics, "encoder/encoder_objective": jnp.float32(jnp.nan)}
