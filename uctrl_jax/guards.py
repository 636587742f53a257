"""The training loop's guards: preemption signals, non-finite checks, the health monitor
of the game's known failures and the cap on the host's BLAS threads. Host-side and
independent of the model: ``train.train_and_evaluate`` uses them.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any, Mapping, Optional

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

  ``update`` is called at the logged steps. Each failure is an episode, told in a few
  lines however long it lasts: one when it starts (the values that show it), reminders
  with its count while it lasts, and one when it ends. The first reminder comes
  ``remind_every`` logged steps after the start, each next one after twice as many as
  the one before (10, 30, 70, 150, ... logged steps in): a failure that lasts the whole
  run adds a handful of lines, not one per ``remind_every``, and its progress lines stay
  readable. It ends only after ``clear_after`` logged steps in a row without it: a
  condition that flickers around its threshold (it held, cleared and came back at every
  other log line of a tiny run) stays one episode instead of one warning per return.
  A check whose terms a mode does not log is skipped: the encoder-only modes have no
  ``ẑ`` to fool, the generative baselines neither ``R(Z)`` nor ``ẑ``.
  """

  def __init__(
    self,
    collapse_fraction: float,
    fooling_cos: float,
    fooling_mse_fraction: float,
    remind_every: int = 10,
    clear_after: int = 3,
  ):
    self.collapse_fraction = collapse_fraction
    self.fooling_cos = fooling_cos
    self.fooling_mse_fraction = fooling_mse_fraction
    self.remind_every = int(remind_every)
    self.clear_after = int(clear_after)
    self.max_rate = -math.inf
    self.first_mse: Optional[float] = None
    # name -> {"start": its first step, "last": its latest step, "held": logged steps it
    #          held, "logged": logged steps since it started, "clear": logged steps in a
    #          row without it, "told": logged steps since the last line about it,
    #          "wait": logged steps from that line to the next reminder}
    self._episodes: dict[str, dict] = {}

  def _episode(self, step: int, name: str, detail: Optional[str]) -> Optional[str]:
    """The line to say about ``name`` at ``step``, if any; ``detail`` describes it when
    it holds now, None when it does not."""
    episode = self._episodes.get(name)
    if episode is None:
      if detail is None:
        return None
      self._episodes[name] = dict(
        start=step, last=step, held=1, logged=1, clear=0, told=0, wait=self.remind_every
      )
      return f"step {step}: {name}: {detail}"
    episode["logged"] += 1
    episode["told"] += 1
    if detail is None:
      episode["clear"] += 1
      if episode["clear"] < self.clear_after:
        return None
      del self._episodes[name]
      return (
        f"step {step}: {name} cleared: it held at {episode['held']} of the "
        f"{episode['logged'] - episode['clear']} logged steps from step {episode['start']} "
        f"to step {episode['last']}"
      )
    episode["held"] += 1
    episode["last"], episode["clear"] = step, 0
    if episode["told"] < episode["wait"]:
      return None
    episode["told"], episode["wait"] = 0, 2 * episode["wait"]
    return (
      f"step {step}: {name} goes on: it held at {episode['held']} of the "
      f"{episode['logged']} logged steps since step {episode['start']}; now {detail}"
    )

  def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
    """Returns the warnings for the metrics logged at ``step``."""
    warnings = []
    if "encoder/R" in metrics:  # the generative baselines: no rate to collapse
      rate = float(metrics["encoder/R"])
      self.max_rate = max(self.max_rate, rate)
      collapse = (
        f"R(Z) = {rate:.2f} fell below {self.collapse_fraction:.0%} of its running "
        f"maximum {self.max_rate:.2f}"
        if rate < self.collapse_fraction * self.max_rate
        else None
      )
      warnings.append(self._episode(step, "feature collapse", collapse))
    if "decoder/recon_mse" in metrics and "encoder/cos_z_zhat" in metrics:  # a game: ẑ to fool
      mse = float(metrics["decoder/recon_mse"])
      self.first_mse = mse if self.first_mse is None else self.first_mse
      cos = float(metrics["encoder/cos_z_zhat"])
      fooling = (
        f"cos(z, ẑ) = {cos:.3f} while the reconstruction MSE {mse:.3f} is still "
        f"{mse / self.first_mse:.0%} of its first value {self.first_mse:.3f}"
        if cos > self.fooling_cos and mse > self.fooling_mse_fraction * self.first_mse
        else None
      )
      warnings.append(self._episode(step, "decoder fooling", fooling))
    return [w for w in warnings if w is not None]


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
