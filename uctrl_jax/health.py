"""The health monitor: warnings of the game's known failures (feature collapse, decoder
fooling) as episodes, from the logged terms (docs/method.md#known-failures).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional


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
    remind_every: int,
    clear_after: int,
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
