"""Evaluation results that do not depend on the trained run, cached as JSON files.

The raw-pixel baseline's metrics depend on the data and the evaluators' settings alone,
the untrained encoder's also on the model config and the seed: every evaluation of a
run on the same data computes the same numbers again (about half the time of
``main.py --mode=eval`` of the default, docs/benchmarks.md#evaluation-of-the-default).
``cached_metrics`` computes them once per key and reads them back afterwards.

A file per key in ``cache_dir``: ``<name>_<digest>.json`` holding the key and the
metrics; the digest covers the key and ``VERSION``, and a file whose stored key differs
(a digest collision, a hand-edited file) or that does not parse is computed again (a
warning). Files are written atomically (``workdir_files.write_bytes_atomic``), so a
reader (another process of a multi-host evaluation, say) never sees half a file. Without
``cache_dir``: ``$UCTRL_JAX_BASELINE_CACHE``, else ``$XDG_CACHE_HOME/uctrl_jax/baselines``, else
``~/.cache/uctrl_jax/baselines``; an unwritable directory leaves the metrics uncached (a
warning). ``config.evals.cache_baselines = False`` bypasses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable, Mapping, Optional

from absl import logging

from uctrl_jax import workdir_files

# Bump when a change of the evaluators changes the numbers a key gives: cached ones recompute.
VERSION = 1
ENV_CACHE_DIR = "UCTRL_JAX_BASELINE_CACHE"


def user_cache_dir(env_var: str, leaf: str) -> str:
  """``$env_var``, else ``$XDG_CACHE_HOME/uctrl_jax/<leaf>``, else ``~/.cache/uctrl_jax/<leaf>``:
  where the project's caches (baselines here, judges in ``judge_network``) live per user."""
  if os.environ.get(env_var):
    return os.environ[env_var]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "uctrl_jax", leaf)


def default_cache_dir() -> str:
  """``$UCTRL_JAX_BASELINE_CACHE``, else the user's cache directory's ``uctrl_jax/baselines``."""
  return user_cache_dir(ENV_CACHE_DIR, "baselines")


def _canonical(key: Mapping[str, Any]) -> dict:
  """``key`` as JSON gives it back (tuples as lists, non-JSON values as strings)."""
  return json.loads(json.dumps({**key, "version": VERSION}, sort_keys=True, default=str))


def cache_path(cache_dir: str, name: str, key: Mapping[str, Any]) -> str:
  """``<name>_<digest>.json`` in ``cache_dir``; the digest covers ``key`` and ``VERSION``."""
  text = json.dumps(_canonical(key), sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")[:80] or "metrics"
  return os.path.join(cache_dir, f"{slug}_{digest}.json")


def cached_metrics(
  name: str,
  key: Mapping[str, Any],
  compute: Callable[[], Mapping[str, float]],
  cache_dir: Optional[str] = None,
) -> tuple[dict[str, float], bool]:
  """``(compute(), False)``, cached under ``key``; ``(the cached metrics, True)`` on a hit.

  Args:
    name: readable part of the file name (e.g. "raw_pixels_fashion_mnist").
    key: JSON-able description of everything the metrics depend on.
    compute: the metrics ``{"name/metric": float}``; its ``eval_seconds/*`` timings
      are returned but not cached (a hit costs none of them).
    cache_dir: where the files live (None: ``default_cache_dir()``).
  """
  path = cache_path(cache_dir or default_cache_dir(), name, key)
  want = _canonical(key)
  try:
    with open(path) as f:
      record = json.load(f)
    if record.get("key") != want:
      raise ValueError("it holds another key")
    logging.info("%s: metrics read from %s", name, path)
    return {k: float(v) for k, v in record["metrics"].items()}, True
  except FileNotFoundError:
    pass
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    logging.warning("%s: cache file %s unreadable (%s); computing again", name, path, e)
  metrics = dict(compute())
  kept = {k: float(v) for k, v in metrics.items() if not k.startswith("eval_seconds/")}
  try:
    record = json.dumps({"key": want, "metrics": kept}, indent=1, sort_keys=True)
    workdir_files.write_bytes_atomic(path, record.encode())
  except OSError as e:
    logging.warning("%s: metrics not cached (%s): the next evaluation computes them again", name, e)
  return metrics, False
