"""Evaluators of a trained closed loop, one module each, and the registry that runs them.

Protocols: docs/method.md#evaluation-protocols.

Each module has a pure ``evaluate(...)`` on arrays returning ``{metric: float}``:

    knn                     weighted kNN top-1 (k = 20, cosine, T = 0.07)
    linear_probe            softmax regression on standardised features, top-1
    nearest_subspace        per-class principal subspaces, smallest residual, top-1
    clustering              k-means and MCR² clustering ACC (Hungarian) and NMI
    reconstruction          MSE, PSNR of g(f(x)); class consistency of g(f(x))
    conditional_generation  samples along each cluster's principal subspace (PNG grid)
    fid                     Fréchet distance of Z and Ẑ; FID with Inception weights
    judge                   a cached CNN judge's consistency, FD, precision/recall of
                            reconstructions and samples, cluster purity
    structure               within- over between-class mean |cos| of test features

and says what the registry needs to run it (an evaluator is one module of this package):

    NEEDS_DECODER = False          # reads g (context.decode, context.xhat_test); default False
    NEEDS_LABELS = ("train", "test")  # splits whose labels every metric needs; default ()
    def needs_labels(options): ... # instead of NEEDS_LABELS where the options decide
    OPTIONAL_LABELS = ("train",)   # splits whose labels some metrics need; default ()
    def defaults(config): ...      # {option: value} for options left None (optional)
    def run(context, **options):   # -> {metric: float}, from the shared ``Context``

An evaluator without a decoder scores features only: those run on the baselines (raw
pixels, the encoder at initialisation; ``CLASSIFIERS``) too.

The registry runs the ones named in ``config.evals.names`` on an encoder/decoder pair,
computing features once:

    evaluators = build(config)          # imports only the named modules
    data = EvalData(x_train, y_train, x_test, y_test, num_classes)
    metrics = run_all(evaluators, encode, decode, data, step, out_dir=...)
    # {"knn/top1": 87.1, "reconstruction/psnr": 15.2, ...}

Labels only score a run. On data without them (``EvalData`` with ``y_train`` and/or
``y_test`` None) the evaluators that need them (``NEEDS_LABELS``: kNN, linear probe,
nearest subspace, clustering, structure) are skipped with one log line saying why
(``without_labels``); those with ``OPTIONAL_LABELS`` run without their label-based
metrics: reconstruction reports MSE/PSNR without its class consistency, conditional
generation clusters by k-means (``num_clusters``, or ``num_clusters_without_labels``
when there are no classes) without its ``sample_consistency``; FID needs none; the judge
needs training labels (to train it) and reports its accuracy and the reconstructions'
consistency only with test labels.

``encode(x (B, H, W, C)) -> (B, d)`` and ``decode(Z) -> x̂`` are called on batches of
exactly ``config.evals.batch_size`` rows (padded), so jitted callables compile once.
Options of an evaluator are ``config.evals.<name>`` (keyword arguments of its ``run``);
a missing block means every default.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import time
from types import ModuleType
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from absl import logging
import numpy as np

from uctrl_jax.evaluators import common

_HELPERS = ("common", "precision_recall")  # modules of this package that are not evaluators


def _names() -> tuple[str, ...]:
  """Every evaluator's name: the modules of this package (a new file is a new evaluator)."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _HELPERS))


def module(name: str) -> ModuleType:
  """The module of evaluator ``name``, imported on first use (only those named are)."""
  if name not in _names():
    raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(_names())}")
  return importlib.import_module(f"{__name__}.{name}")


def __getattr__(attr: str):
  # Computed on use, so that they follow the modules present.
  if attr == "ALL":  # every evaluator's name
    return _names()
  if attr == "CLASSIFIERS":  # those that score features only: run on the baselines too
    return tuple(n for n in _names() if build_one(n).features_only)
  raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


class EvalData(NamedTuple):
  """Images of both splits, as the input pipeline presents them, and their labels."""

  x_train: np.ndarray  # (n, H, W, C) float32 in [-1, 1]
  y_train: Optional[np.ndarray]  # (n,) int; None: the split has no labels
  x_test: np.ndarray  # (m, H, W, C) float32 in [-1, 1]
  y_test: Optional[np.ndarray]  # (m,) int; None: the split has no labels
  num_classes: int  # 0 when the dataset has no labels


class Context:
  """What evaluators read; features and reconstructions computed once, on first use.

  Beyond the data and the loop, optional keyword fields (None when the caller has none)
  carry what only some evaluators need; a new one is one more keyword here, and the
  evaluators that read it check it for None:

  - ``dataset_key``: names the evaluation data (``config.data.name``), for caches kept
    across runs.
  """

  def __init__(
    self,
    data: EvalData,
    encode: Callable,
    decode: Optional[Callable],
    batch_size: int = 500,
    out_dir: Optional[str] = None,
    step: Optional[int] = None,
    *,
    dataset_key: Optional[str] = None,
  ):
    self.data, self.encode, self.decode = data, encode, decode
    self.batch_size, self.out_dir, self.step = batch_size, out_dir, step
    self.dataset_key = dataset_key

  def _run(self, fn, x):
    return common.batched(fn, x, self.batch_size).astype(np.float32)

  @functools.cached_property
  def z_train(self) -> np.ndarray:  # (n, d)
    return self._run(self.encode, self.data.x_train)

  @functools.cached_property
  def z_test(self) -> np.ndarray:  # (m, d)
    return self._run(self.encode, self.data.x_test)

  @functools.cached_property
  def xhat_test(self) -> np.ndarray:  # (m, H, W, C) = g(f(x_test))
    return self._run(self.decode, self.z_test).reshape(self.data.x_test.shape)

  @functools.cached_property
  def zhat_test(self) -> np.ndarray:  # (m, d) = f(g(f(x_test)))
    return self._run(self.encode, self.xhat_test)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """A named evaluator: ``fn(context) -> {metric: float}``, with its module's needs:
  ``needs_labels`` names the splits ("train", "test") whose labels all its metrics need,
  ``optional_labels`` those whose labels some of its metrics need."""

  name: str
  fn: Callable[[Context], Mapping[str, float]]
  needs_decoder: bool = False
  needs_labels: tuple[str, ...] = ()
  optional_labels: tuple[str, ...] = ()
  # The keyword options of its module's ``run`` (what a cache of its results is keyed by).
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

  @property
  def features_only(self) -> bool:
    """Scores features alone (no decoder): runs on raw pixels and random encoders too."""
    return not self.needs_decoder


def build_one(name: str, options: Optional[Mapping[str, Any]] = None) -> Evaluator:
  """The evaluator ``name`` with keyword ``options`` of its module's ``run``."""
  mod = module(name)
  options = dict(options or {})
  if hasattr(mod, "needs_labels"):
    needs = mod.needs_labels(options)
  else:
    needs = getattr(mod, "NEEDS_LABELS", ())

  def fn(context):
    try:
      return mod.run(context, **options)
    except TypeError as e:  # most likely a misspelt option
      raise TypeError(f"evaluator {name!r} with options {options}: {e}") from e

  return Evaluator(
    name,
    fn,
    needs_decoder=getattr(mod, "NEEDS_DECODER", False),
    needs_labels=tuple(needs),
    optional_labels=tuple(getattr(mod, "OPTIONAL_LABELS", ())),
    options=options,
  )


def build(config, names: Optional[Sequence[str]] = None) -> list[Evaluator]:
  """Evaluators named in ``config.evals.names`` (or ``names``), with their options
  ``config.evals.<name>``; an option left None takes its module's ``defaults(config)``
  where it has one (``clustering.eps_sq``: the ``config.loss.eps_sq`` the features were
  trained with)."""
  evals = config.evals
  out = []
  for name in tuple(names if names is not None else evals.names):
    mod = module(name)
    options = evals.get(name)
    options = dict(options.to_dict() if hasattr(options, "to_dict") else (options or {}))
    for key, value in (mod.defaults(config) if hasattr(mod, "defaults") else {}).items():
      if options.get(key) is None:
        options[key] = value
    out.append(build_one(name, options))
  return out


def without_labels(
  evaluators: Sequence[Evaluator], data: EvalData
) -> tuple[list[Evaluator], Optional[str]]:
  """The evaluators that ``data``'s labels allow, and one line naming the others and why
  (None when none is skipped, or when ``data`` has every label)."""
  missing = {s for s, y in (("train", data.y_train), ("test", data.y_test)) if y is None}
  keep = [e for e in evaluators if not set(e.needs_labels) & missing]
  # Label-based metrics dropped by evaluators that still run.
  partial = [e.name for e in keep if set(e.optional_labels) & missing]
  parts = []
  if len(keep) < len(evaluators):
    parts.append(
      ", ".join(e.name for e in evaluators if e not in keep) + " skipped (they score with labels)"
    )
  if partial:
    parts.append(", ".join(partial) + " without label-based metrics")
  if not missing or not parts:
    return keep, None
  splits = [s for s in ("train", "test") if s in missing]
  return keep, f"no labels in the evaluation's {' and '.join(splits)} split: " + "; ".join(parts)


def run_context(
  evaluators: Sequence[Evaluator],
  context: Context,
  *,
  log_labels: bool = True,
  log_times: bool = True,
) -> dict[str, float]:
  """Runs ``evaluators`` on a prepared ``Context`` (``run_all`` without building one).

  Skips the evaluators that need a decoder when ``context.decode`` is None, and those
  that need labels the data lack (``without_labels``; its line is logged unless
  ``log_labels`` is False, for a caller that logged it once already). Reports each
  evaluator's wall time as ``eval_seconds/<name>`` (the features' as ``encode``), and
  logs it unless ``log_times`` is False.
  """
  evaluators, note = without_labels(evaluators, context.data)
  if note and log_labels:
    logging.info("%s", note)
  start = time.time()
  context.z_train, context.z_test  # pylint: disable=pointless-statement  (timed apart)
  metrics = {"eval_seconds/encode": time.time() - start}
  for ev in evaluators:
    if ev.needs_decoder and context.decode is None:
      continue
    start = time.time()
    for key, value in ev.fn(context).items():
      metrics[f"{ev.name}/{key}"] = float(value)
    metrics[f"eval_seconds/{ev.name}"] = time.time() - start
    if log_times:
      logging.info("evaluator %s: %.1f s", ev.name, metrics[f"eval_seconds/{ev.name}"])
  return metrics


def run_all(
  evaluators: Sequence[Evaluator],
  encode: Callable,
  decode: Optional[Callable],
  data: EvalData,
  step: Optional[int] = None,
  *,
  out_dir: Optional[str] = None,
  batch_size: int = 500,
  log_labels: bool = True,
  log_times: bool = True,
  **fields,
) -> dict[str, float]:
  """Runs ``evaluators`` on ``encode``/``decode`` and ``data``: ``{"name/metric": float}``.

  ``decode=None`` (raw pixels, say) skips the evaluators that need a decoder.
  ``out_dir`` receives pictures (conditional generation), suffixed with ``step`` when
  given. Features are computed once, in batches of ``batch_size``. ``fields``: the
  optional keyword fields of ``Context`` (``dataset_key``).
  """
  return run_context(
    evaluators,
    Context(data, encode, decode, batch_size, out_dir, step, **fields),
    log_labels=log_labels,
    log_times=log_times,
  )
