"""Preemption and interrupts: SIGTERM / SIGINT (or jax's multi-process preemption notice)
become a request to checkpoint and stop at the next iteration boundary.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

from absl import logging
import jax


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
