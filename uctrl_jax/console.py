"""The console of ``main.py``: the project's own lines only (third-party INFO logging
lowered, TensorFlow's native start-up messages held back), in a short format; the
start-up summary and the progress line of a run.

``main.py`` calls ``configure`` and ``import_tensorflow_quietly`` once; with
``--verbose`` neither, and every library logs as it comes (absl's format, INFO and up).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from typing import Any, Mapping, Optional

from absl import logging as absl_logging

from uctrl_jax import models
from uctrl_jax import objectives

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# The progress line: name shown, logged key.
_TERMS = (
  ("R", "encoder/R"),
  ("ΔR(Z,Ẑ)", "encoder/delta_R_z_zhat"),
  ("aug", "encoder/aug_per_sample"),
  ("self", "encoder/self_per_sample"),
  ("enc", "encoder/encoder_objective"),
  ("dec", "decoder/decoder_objective"),
  ("cos(z,ẑ)", "encoder/cos_z_zhat"),
  ("cos(z,z_a)", "encoder/cos_z_zaug"),
  ("mse", "decoder/recon_mse"),
  # The generative baselines (loss.mode "autoencoder", "vae").
  ("loss", "generative/loss"),
  ("nll", "generative/recon_nll"),
  ("KL", "generative/kl"),
  ("σ²_q", "generative/posterior_var"),
  ("mse", "generative/recon_mse"),
)


def _is_project(record: logging.LogRecord) -> bool:
  """Logged from this package or from the script being run (main.py)."""
  path = os.path.abspath(record.pathname)
  return path.startswith(_PACKAGE_DIR + os.sep) or path == os.path.abspath(sys.argv[0])


class _ProjectOnly(logging.Filter):
  """Warnings and errors of anyone; INFO and below of the project only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _is_project(record)


class _Short(logging.Formatter):
  """``HH:MM:SS message``; warnings and errors say so (``warning: ...``)."""

  def format(self, record: logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    level = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
    return f"{stamp} {level}{record.getMessage()}"


def configure(verbose: bool) -> None:
  """Quiet console unless ``verbose``: a filter and a short format on absl's handler,
  which every library's Python logging reaches."""
  if verbose:
    return
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_ProjectOnly())
  handler.setFormatter(_Short())


@contextlib.contextmanager
def _native_stderr_to_devnull():
  """File descriptor 2 → /dev/null: C++ logging that no environment variable reaches."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow (the input pipeline's) without the lines its C++ runtime writes
  before absl's C++ logging is set up (oneDNN's notice, twice), which
  ``TF_CPP_MIN_LOG_LEVEL`` does not reach. An import error surfaces later, where the
  pipeline imports it, with its message."""
  with _native_stderr_to_devnull():
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      pass


def _count(n: int) -> str:
  return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def startup_summary(
  config,
  info,
  image_shape,
  num_params: Mapping[str, int],
  workdir: str,
  resumed_step: Optional[int],
) -> list[str]:
  """The lines that open a training run: dataset (and how its images were converted:
  ``info.notes``), models (and their architecture at this image size), work directory."""
  sizes = ", ".join(f"{split} {n}" for split, n in sorted(info.num_examples.items()))
  t, m = config.train, config.model
  params = ", ".join(f"{name} {_count(n)}" for name, n in num_params.items() if n)
  return [
    f"data {config.data.name} ({sizes}), images {tuple(image_shape)}, "
    f"{objectives.training_views(config)} view(s) each; batch {t.batch_size}",
    *info.notes,
    f"models {m.encoder}/{m.decoder}, width {m.width}, d = {m.feature_dim}, "
    f"{m.dtype}; parameters: {params}; loss {config.loss.mode}",
    *models.describe_architecture(config, image_shape),
    f"workdir {workdir}: "
    + (f"resuming at step {resumed_step}" if resumed_step else "a new run")
    + f", {t.num_steps} iterations",
  ]


def progress_line(
  step: int, num_steps: int, metrics: Mapping[str, Any], seconds_per_step: Optional[float]
) -> str:
  """``step 20/1500 | R 56.3 ... | 2.1 it/s, ETA 0:11:40``."""
  terms = " ".join(f"{name} {float(metrics[key]):.4g}" for name, key in _TERMS if key in metrics)
  line = f"step {step}/{num_steps} | {terms}"
  if seconds_per_step:
    eta = datetime.timedelta(seconds=round(seconds_per_step * (num_steps - step)))
    line += f" | {1 / seconds_per_step:.2f} it/s, ETA {eta}"
  return line
