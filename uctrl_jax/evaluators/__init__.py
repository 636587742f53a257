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

The registry runs the ones named in ``config.evals.names`` on an encoder/decoder pair,
computing features once:

    evaluators = build(config)          # imports only the named modules
    data = EvalData(x_train, y_train, x_test, y_test, num_classes)
    metrics = run_all(evaluators, encode, decode, data, step, out_dir=...)
    # {"knn/top1": 87.1, "reconstruction/psnr": 15.2, ...}

Labels only score a run. On data without them (``EvalData`` with ``y_train`` and/or
``y_test`` None) the evaluators that need them (``Evaluator.needs_labels``: kNN, linear
probe, nearest subspace, clustering, structure) are skipped with one log line saying
why (``without_labels``); reconstruction reports MSE/PSNR without its class consistency,
conditional generation clusters by k-means (``num_clusters``, or
``num_clusters_without_labels`` when there are no classes) without its
``sample_consistency``; FID needs none; the judge needs training labels (to train it)
and reports its accuracy and reconstructions' consistency only with test labels.

``encode(x (B, H, W, C)) -> (B, d)`` and ``decode(Z) -> x̂`` are called on batches of
exactly ``config.evals.batch_size`` rows (padded), so jitted callables compile once.
Options of an evaluator are ``config.evals.<name>`` (keyword arguments of its
``evaluate``); a missing ``config.evals`` means every default.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from absl import logging
import numpy as np

from uctrl_jax.evaluators import common

# Evaluators that need only features: the ones run on raw pixels and random encoders.
CLASSIFIERS = ("knn", "linear_probe", "nearest_subspace", "clustering", "structure")


class EvalData(NamedTuple):
  """Images of both splits, as the input pipeline presents them, and their labels."""

  x_train: np.ndarray  # (n, H, W, C) float32 in [-1, 1]
  y_train: Optional[np.ndarray]  # (n,) int; None: the split has no labels
  x_test: np.ndarray  # (m, H, W, C) float32 in [-1, 1]
  y_test: Optional[np.ndarray]  # (m,) int; None: the split has no labels
  num_classes: int  # 0 when the dataset has no labels


class Context:
  """What evaluators read; features and reconstructions computed once, on first use."""

  def __init__(
    self,
    data: EvalData,
    encode: Callable,
    decode: Optional[Callable],
    batch_size: int = 500,
    out_dir: Optional[str] = None,
    step: Optional[int] = None,
  ):
    self.data, self.encode, self.decode = data, encode, decode
    self.batch_size, self.out_dir, self.step = batch_size, out_dir, step

  def _run(self, fn, x):
    return common.batched(fn, x, self.batch_size).astype(np.float32)

  @functools.cached_property
  def z_train(self) -> np.ndarray:  # (n, d)
    return self._run(self.encode, self.data.x_train)

  @functools.cached_property
  def z_test(self) -> np.ndarray:  # (m, d)
    return self._run(self.encode, self.data.x_test)

  @functools.cached_property
  def x_hat(self) -> np.ndarray:  # (m, H, W, C) = g(f(x_test))
    return self._run(self.decode, self.z_test).reshape(self.data.x_test.shape)

  @functools.cached_property
  def zhat_test(self) -> np.ndarray:  # (m, d) = f(g(f(x_test)))
    return self._run(self.encode, self.x_hat)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """A named evaluator: ``fn(context) -> {metric: float}``; ``needs_labels`` names the
  splits ("train", "test") whose labels all its metrics need."""

  name: str
  fn: Callable[[Context], Mapping[str, float]]
  needs_decode: bool = False
  needs_labels: tuple[str, ...] = ()


def _knn(m, o):
  return lambda c: m.evaluate(
    c.z_train, c.data.y_train, c.z_test, c.data.y_test, num_classes=c.data.num_classes, **o
  )


def _clustering(m, o):
  k = o.pop("num_clusters", None)
  # Clusters the test split (unsupervised: the labels only score the partition).
  return lambda c: m.evaluate(c.z_test, c.data.y_test, num_clusters=k or c.data.num_classes, **o)


def _structure(m, o):
  return lambda c: m.evaluate(c.z_test, c.data.y_test, num_classes=c.data.num_classes, **o)


def _reconstruction(m, o):
  return lambda c: m.evaluate(
    c.data.x_train,
    c.data.y_train,
    c.data.x_test,
    c.data.y_test,
    c.x_hat,
    num_classes=c.data.num_classes,
    **o,
  )


def _conditional_generation(m, o):
  use_labels, k = o.pop("use_labels", False), o.pop("num_clusters", None)
  k_unlabelled = o.pop("num_clusters_without_labels", None)

  def fn(c):
    grid, metrics = m.evaluate(
      c.z_train,
      c.decode,
      labels=c.data.y_train if use_labels else None,
      num_clusters=k or c.data.num_classes or k_unlabelled,
      x_train=c.data.x_train,
      y_train=c.data.y_train,
      num_classes=c.data.num_classes,
      batch_size=c.batch_size,
      **o,
    )
    if c.out_dir:
      from uctrl_jax import image_grid  # pylint: disable=import-outside-toplevel

      name = "conditional_generation" + ("" if c.step is None else f"_step_{c.step:07d}")
      logging.info("wrote %s", image_grid.save_png(os.path.join(c.out_dir, name + ".png"), grid))
    return metrics

  return fn


def _fid(m, o):
  return lambda c: m.evaluate(
    c.z_test, c.zhat_test, x_test=c.data.x_test, x_hat=c.x_hat, batch_size=c.batch_size, **o
  )


def _judge(m, o):
  return lambda c: m.run(c, **o)


# name -> (builder(module, options) -> fn(context), needs_decode, needs_labels)
_REGISTRY = {
  "knn": (_knn, False, ("train", "test")),
  "linear_probe": (_knn, False, ("train", "test")),  # same arguments as knn
  "nearest_subspace": (_knn, False, ("train", "test")),
  # Clusters the test split; its labels only score the partition.
  "clustering": (_clustering, False, ("test",)),
  # Without labels: MSE and PSNR only.
  "reconstruction": (_reconstruction, True, ()),
  # Without labels: k-means clusters, no sample_consistency (use_labels needs train's).
  "conditional_generation": (_conditional_generation, True, ()),
  "fid": (_fid, True, ()),
  "structure": (_structure, False, ("test",)),
  # Trained on the training labels; without test labels no top1 / recon_consistency.
  "judge": (_judge, True, ("train",)),
}
ALL = tuple(_REGISTRY)  # every evaluator's name, in the registry's order


def build_one(name: str, options: Optional[Mapping[str, Any]] = None) -> Evaluator:
  """The evaluator ``name`` with keyword ``options`` of its module's ``evaluate``."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown evaluator {name!r}; known: {', '.join(ALL)}")
  builder, needs_decode, needs_labels = _REGISTRY[name]
  module = importlib.import_module(f"uctrl_jax.evaluators.{name}")  # lazily: only those named
  options = dict(options or {})
  if name == "conditional_generation" and options.get("use_labels"):
    needs_labels = ("train",)  # its clusters are the training classes
  inner = builder(module, options)

  def fn(context):
    try:
      return inner(context)
    except TypeError as e:  # most likely a misspelt option
      raise TypeError(f"evaluator {name!r} with options {options}: {e}") from e

  return Evaluator(name, fn, needs_decode, needs_labels)


def build(config, names: Optional[Sequence[str]] = None) -> list[Evaluator]:
  """Evaluators named in ``config.evals.names`` (or ``names``), with their options.

  ``clustering.eps_sq`` defaults to ``config.loss.eps_sq`` (the ε² the features were
  trained with). The judge gets ``name`` (its cache file's readable part: the dataset and
  the evaluation's training split) and the conditional sampler's settings of
  ``config.evals.conditional_generation``, so its samples are the grid's.
  """
  evals = config.evals
  names = tuple(names if names is not None else evals.names)
  out = []
  for name in names:
    options = evals[name] if name in _REGISTRY else None  # unknown: build_one says so
    options = dict(options.to_dict() if hasattr(options, "to_dict") else (options or {}))
    if name == "clustering" and options["eps_sq"] is None:
      options["eps_sq"] = float(config.loss.eps_sq)
    if name == "judge":
      options.update(_judge_options(config))
    out.append(build_one(name, options))
  return out


def _judge_options(config) -> dict[str, Any]:
  sampler = config.evals.conditional_generation
  limit = config.evals.max_train_examples
  return dict(
    name=f"{config.data.name}|{config.evals.train_split}" + (f"|first{limit}" if limit else ""),
    **{k: sampler[k] for k in ("num_clusters", "num_components", "seed", "use_labels")},
  )


def without_labels(
  evaluators: Sequence[Evaluator], data: EvalData
) -> tuple[list[Evaluator], Optional[str]]:
  """The evaluators that ``data``'s labels allow, and one line naming the others and why
  (None when none is skipped, or when ``data`` has every label)."""
  missing = [s for s, y in (("train", data.y_train), ("test", data.y_test)) if y is None]
  keep = [e for e in evaluators if not set(e.needs_labels) & set(missing)]
  # Label-based metrics dropped by evaluators that still run.
  partial = [
    e.name
    for e in keep
    if e.name in ("reconstruction", "judge")
    or (e.name == "conditional_generation" and "train" in missing)
  ]
  parts = []
  if len(keep) < len(evaluators):
    parts.append(
      ", ".join(e.name for e in evaluators if e not in keep) + " skipped (they score with labels)"
    )
  if partial:
    parts.append(", ".join(partial) + " without label-based metrics")
  if not missing or not parts:
    return keep, None
  return keep, f"no labels in the evaluation's {' and '.join(missing)} split: " + "; ".join(parts)


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
    if ev.needs_decode and context.decode is None:
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
) -> dict[str, float]:
  """Runs ``evaluators`` on ``encode``/``decode`` and ``data``: ``{"name/metric": float}``.

  ``decode=None`` (raw pixels, say) skips the evaluators that need a decoder.
  ``out_dir`` receives pictures (conditional generation), suffixed with ``step`` when
  given. Features are computed once, in batches of ``batch_size``.
  """
  return run_context(
    evaluators,
    Context(data, encode, decode, batch_size, out_dir, step),
    log_labels=log_labels,
    log_times=log_times,
  )
