"""Evaluation of a trained run: ``main.py --mode=eval`` (metrics, baselines, figures) and
the in-training evaluation (``PeriodicEval``), both over the evaluators' registry.

``evaluate(config, workdir)`` loads the checkpoint (``uctrl_jax.load``), reads the
train/test splits as the input pipeline presents them, and runs every evaluator of
``config.evals.names`` (``uctrl_jax/evaluators``) on the trained encoder/decoder, and
those that score features only (no decoder: kNN, linear probe, nearest subspace,
clustering, structure) on two baselines: raw pixels, and the encoder at initialisation (the same architecture and
seed, ``state.create_train_state``; batch-norm at its initial statistics). It writes
to ``WORKDIR``:

- ``results.json``: every metric, both baselines, step, sizes, hardware, wall time,
  the run's config and the evaluation settings (``Infinity`` for a perfect PSNR);
- ``results.md``: the same as tables, trained vs baselines side by side;
- ``figures/*.png`` (``uctrl_jax/figures.py``) and ``figures/conditional_generation.png``;
- the metrics as TensorBoard scalars ``eval_full/<metric>`` at the run's step, beside
  the training's curves (``write_scalars``).

Every file goes through ``workdir_files``: ``WORKDIR`` may be ``gs://...``.

``config`` supplies the evaluation settings (``config.evals``) and where the data are
(``config.data``); the model comes from the work directory. From the command line it is
the run's own ``config.json`` with the command line's ``config.evals``
(``run_config.for_existing_run``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Optional, Tuple

from absl import logging
import jax
import ml_collections
import numpy as np

from uctrl_jax import config_checks
from uctrl_jax import datasets
from uctrl_jax import eval_cache
from uctrl_jax import evaluators
from uctrl_jax import figures
from uctrl_jax import host_blas
from uctrl_jax import input_pipeline
from uctrl_jax import loading
from uctrl_jax import models
from uctrl_jax import workdir_files
from uctrl_jax.state import TrainState, create_train_state


def load_data(config: ml_collections.ConfigDict) -> evaluators.EvalData:
  """Both splits as arrays, preprocessed as the training batches' ``image``.

  Reads ``config.evals.{train,test}_split`` (slices too) and keeps the first
  ``config.evals.max_{train,test}_examples`` (None: all) of each; a split without
  labels gives ``y`` None. Warns when the test split shares images with the reference
  split or with ``config.data.train_split`` (not held out).
  """
  evals = config.evals
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.cache = False  # read once; a partial read must not leave a partial cache
  info = input_pipeline.get_dataset_info(config)
  train_split, test_split = evals.train_split, evals.test_split
  source = input_pipeline.open_source(config)
  for field, split in (
    ("config.evals.train_split", train_split),
    ("config.data.train_split", config.data.train_split),
  ):
    shared = source.shared_examples(test_split, split)
    if shared:
      logging.warning(
        "config.evals.test_split %r shares %d of its images with %s %r: they "
        "are not held out (slice one split instead, e.g. train[:90%%] and "
        "train[90%%:])",
        test_split,
        shared,
        field,
        split,
      )
  arrays = []
  for split, limit in (
    (train_split, evals.max_train_examples),
    (test_split, evals.max_test_examples),
  ):
    images, labels = zip(*input_pipeline.examples_in_order(config, split, limit))
    x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    arrays += [x, y if datasets.has_labels(info, split) else None]
  return evaluators.EvalData(*arrays, num_classes=info.num_classes)


class PeriodicEval:
  """The in-training evaluation: ``config.evals.during_training`` on the current state.

  ``during_training.names`` (default kNN and reconstruction) run on the first
  ``max_train_examples`` / ``max_test_examples`` of each split, read once on first use
  (the splits are not read at all when ``names`` is empty or ``eval_every`` is 0).
  Every process computes the same metrics (the same images, the replicated state;
  tested with two processes); the caller's writer logs process 0's.
  """

  def __init__(self, config: ml_collections.ConfigDict, image_shape: Tuple[int, ...]):
    evals = config.evals
    during = evals.during_training
    self.names = tuple(during.names)
    self.every = int(config.train.eval_every)
    splits = [evals.train_split, evals.test_split]
    available = input_pipeline.get_dataset_info(config).num_examples
    missing = [s for s in splits if datasets.split_name(s) not in available]
    if self.names and self.every > 0 and missing:
      # A single .npz file holds a train split only: train anyway, without evaluations.
      logging.warning(
        "in-training evaluation off: %s has no split %s (it has %s); set "
        "config.evals.train_split / test_split",
        config.data.name,
        " or ".join(map(repr, missing)),
        ", ".join(sorted(available)),
      )
      self.names = ()
    self._config = config.copy_and_resolve_references()
    if self.names:
      with self._config.unlocked():
        self._config.evals.max_train_examples = during.max_train_examples
        self._config.evals.max_test_examples = during.max_test_examples
    encode, decode = loading.eval_mode_loop(config, image_shape)
    self._encode = jax.jit(encode)
    self._decode = None if decode is None else jax.jit(decode)
    self._data, self._evaluators = None, None

  def due(self, step: int, last: bool) -> bool:
    return bool(self.names) and self.every > 0 and (step % self.every == 0 or last)

  def __call__(self, state: TrainState) -> dict:
    """``{"eval/<evaluator>/<metric>": float}`` of ``state`` (eval-mode BN statistics)."""
    if self._data is None:
      self._data = load_data(self._config)
      # Those the labels allow; the one line on the others is logged here, once.
      self._evaluators, note = evaluators.without_labels(
        evaluators.build(self._config, names=self.names), self._data
      )
      if note:
        logging.info("in-training evaluation: %s", note)
    batch_size = int(self._config.evals.batch_size)
    metrics = evaluators.run_all(
      self._evaluators,
      lambda x: self._encode(state, x),
      None if self._decode is None else lambda Z: self._decode(state, Z),
      self._data,
      batch_size=batch_size,
      log_labels=False,
      log_times=False,
      dataset_key=self._config.data.name,
    )
    return {f"eval/{k}": v for k, v in metrics.items()}


def random_encoder(config: ml_collections.ConfigDict, image_shape, seed: int):
  """``encode(x) -> Z`` of the encoder as initialised by ``train`` with ``seed`` (eval mode)."""
  state = create_train_state(config, image_shape, jax.random.key(seed))
  encoder, _ = models.create_models(config, image_shape)
  apply = jax.jit(lambda variables, x: encoder.apply(variables, x, train=False))
  variables = {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}
  return lambda x: apply(variables, x)


def _training_record(workdir: str, loaded) -> dict[str, Any]:
  """Where a loaded run comes from: its mode, step and training minutes (None when its
  checkpoint predates the record)."""
  seconds = loaded.extra.get("train_seconds")
  return {
    "workdir": workdir_files.absolute(workdir),
    "loss_mode": loaded.config.loss.mode,
    "step": int(loaded.state.step),
    "train_minutes": None if seconds is None else float(seconds) / 60,
  }


def raw_pixels(x) -> np.ndarray:
  """The raw-pixel baseline's "encoder": images ``(n, H, W, C)`` as rows ``(n, H·W·C)``."""
  return np.asarray(x).reshape(len(x), -1)


def _hardware() -> str:
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (
    f"{len(devices)} × {', '.join(kinds)} ({jax.default_backend()}), "
    f"{os.cpu_count()} CPU cores, {platform.machine()}"
  )


def _fmt(value: Optional[float]) -> str:
  if value is None:
    return "—"
  if not np.isfinite(value):
    return str(value)
  return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def _header_lines(results: dict[str, Any]) -> list[str]:
  """``results.md``'s title and facts: data, hardware, wall time, where each run comes from."""
  lines = [
    f"# Evaluation of `{results['workdir']}` at step {results['step']}",
    "",
    f"- dataset: {results['dataset']} ({results['num_train']} train / "
    f"{results['num_test']} test examples)",
    f"- hardware: {results['hardware']}",
    f"- evaluation wall time: {results['wall_time_s']:.1f} s",
  ]
  if results.get("baselines_cached"):
    lines.append(
      f"- read from the cache (no timings): {', '.join(results['baselines_cached'])} "
      "(`config.evals.cache_baselines`)"
    )
  for label, record in [("this run", results.get("training"))] + list(
    results.get("compared_runs", {}).items()
  ):
    if record:
      minutes = record["train_minutes"]
      lines.append(
        f"- {label}: `{record['workdir']}`, loss.mode {record['loss_mode']}, step "
        f"{record['step']}, "
        + ("training time not recorded" if minutes is None else f"{minutes:.1f} min of training")
      )
  return lines


def _metric_rows(results: dict[str, Any], timing: bool) -> list[str]:
  """Table rows ``| key | trained | baseline ... |`` of the metrics, or (``timing``) of the
  ``eval_seconds/`` parts, named without their prefix."""
  baselines = results.get("baselines", {})
  lines = []
  for key, value in results["metrics"].items():
    if key.startswith("eval_seconds/") == timing:
      row = [_fmt(value)] + [_fmt(b.get(key)) for b in baselines.values()]
      lines.append(f"| {key.split('/', 1)[1] if timing else key} | " + " | ".join(row) + " |")
  return lines


def _json_section(title: str, value: Any) -> list[str]:
  return ["", f"## {title}", "", "```json", json.dumps(value, indent=2), "```"]


def results_markdown(results: dict[str, Any]) -> str:
  """``results.md``: header facts, metrics beside baselines, timings, configs."""
  names = list(results.get("baselines", {}))
  lines = _header_lines(results) + [
    "",
    "| metric | trained |" + "".join(f" {n.replace('_', ' ')} |" for n in names),
    "|---|---:|" + "---:|" * len(names),
  ]
  lines += _metric_rows(results, timing=False)
  for name in results.get("not_applicable", ()):
    lines.append(f"| {name} | n/a (encoder-only run: no decoder) |" + " |" * len(names))
  for name in results.get("skipped_without_labels", ()):
    lines.append(f"| {name} | skipped: no labels |" + " |" * len(names))
  lines += [
    "",
    "Accuracies (`top1`, `acc`, `consistency`, `purity`) in %; NMI, precision and recall in "
    "[0, 1]; PSNR in dB (peak-to-peak 2); MSE on [-1, 1]; `judge/*_fd` on the judge's features.",
    "",
    "## Evaluation time (s)",
    "",
    "| part | trained |" + "".join(f" {n} |" for n in names),
    "|---|---:|" + "---:|" * len(names),
  ]
  lines += _metric_rows(results, timing=True)
  if results.get("figures"):
    lines += ["", "## Figures", ""] + [
      f"- {k}: `{v.removeprefix(results['workdir'].rstrip('/') + '/')}`"
      for k, v in results["figures"].items()
    ]
  lines += _json_section("Evaluation settings", results["evals_config"])
  lines += _json_section("Run config", results["config"]) + [""]
  return "\n".join(lines)


def _load_run(config: ml_collections.ConfigDict, workdir: str, step: Optional[int]):
  """``(loaded run, EvalData)``: the checkpoint at ``step`` and the evaluation data,
  checked to be the run's dataset at its models' image shape."""
  loaded = loading.load(workdir, step)
  run_config = loaded.config
  if config.data.name != run_config.data.name:
    raise config_checks.ConfigError(
      f"config.data.name = {config.data.name!r}, but {workdir} was trained on "
      f"{run_config.data.name!r}; pass the run's config (--config=...)"
    )
  image_shape = tuple(run_config.data.image_shape)
  data = load_data(config)
  if data.x_train.shape[1:] != image_shape:
    raise config_checks.ConfigError(
      f"the data come as {data.x_train.shape[1:]} images, the run's models read "
      f"{image_shape}; set config.data.image_size as in the run"
    )
  return loaded, data


def _baselines(config, run_config, data, classifiers) -> tuple[dict[str, dict[str, float]], list]:
  """``({"raw_pixels": metrics, "random_encoder": metrics}, names read from the cache)`` of
  the feature evaluators ``classifiers`` (none when ``config.evals.baselines`` is off or
  there are none). Neither depends on the trained run: with ``config.evals.cache_baselines``
  each is computed once per data, evaluator settings (and model and seed) and read back
  afterwards (``eval_cache``)."""
  if not (config.evals.baselines and classifiers):
    return {}, []
  image_shape = tuple(run_config.data.image_shape)
  seed = int(run_config.seed)
  common_key = {
    "dataset": run_config.data.name,
    "data": evaluators.common.digest(
      *(a for a in (data.x_train, data.y_train, data.x_test, data.y_test) if a is not None)
    ),
    "evaluators": [[e.name, dict(e.options)] for e in classifiers],
  }
  # The initial state train_and_evaluate starts from: what training added.
  encoders = {
    "raw_pixels": ({}, lambda: raw_pixels),
    "random_encoder": (
      {
        "model": run_config.model.to_dict(),
        "image_shape": image_shape,
        "seed": seed,
        "jax": jax.__version__,
      },
      lambda: random_encoder(run_config, image_shape, seed),
    ),
  }
  baselines, cached = {}, []
  for name, (key, make_encode) in encoders.items():
    logging.info("baseline %s", name)

    def compute(make_encode=make_encode):
      return evaluators.run_all(
        classifiers, make_encode(), None, data, batch_size=int(config.evals.batch_size)
      )

    if config.evals.cache_baselines:
      baselines[name], hit = eval_cache.cached_metrics(
        f"{name}_{run_config.data.name}", {"baseline": name, **common_key, **key}, compute
      )
      cached += [name] if hit else []
    else:
      baselines[name] = compute()
  return baselines, cached


def _compared_runs(config, run_config, data, classifiers) -> tuple[dict, dict]:
  """``(metrics, training records)`` of ``config.evals.compare_workdirs``, each named
  ``"<loss.mode>: <directory>"``: other runs on the same data (e.g. the encoder-only
  baselines trained for the same minutes), their features through the same classifiers."""
  image_shape = tuple(run_config.data.image_shape)
  metrics, records = {}, {}
  for path in config.evals.compare_workdirs:
    other = loading.load(path)
    if (
      other.config.data.name != run_config.data.name
      or tuple(other.config.data.image_shape) != image_shape
    ):
      raise config_checks.ConfigError(
        f"config.evals.compare_workdirs: {path} was trained on "
        f"{other.config.data.name!r} {tuple(other.config.data.image_shape)}, this "
        f"run on {run_config.data.name!r} {image_shape}"
      )
    name = f"{other.config.loss.mode}: {workdir_files.path(path).name}"
    logging.info("compared run %s", name)
    metrics[name] = evaluators.run_all(
      classifiers, other.encode, None, data, batch_size=int(config.evals.batch_size)
    )
    records[name] = _training_record(path, other)
  return metrics, records


def _not_applicable(built, loaded) -> list[str]:
  """The evaluators that need the decoder an encoder-only run (loss.mode "tcr",
  "simclr") lacks: "n/a" in the results, logged once."""
  names = [] if loaded.decode is not None else [e.name for e in built if e.needs_decoder]
  if names:
    logging.info(
      "%s: n/a, the run is encoder-only (loss.mode %r, no decoder)",
      ", ".join(names),
      loaded.config.loss.mode,
    )
  return names


def _write_figures(config, workdir: str, context, built) -> dict[str, str]:
  """``{figure: path}`` of ``figures.write_all`` under ``WORKDIR/figures`` and the
  conditional-generation grid the evaluators wrote there."""
  out_dir = _figures_dir(workdir)
  decoded = context.decode is not None
  paths = dict(
    figures.write_all(
      out_dir,
      x_test=context.data.x_test,
      xhat_test=context.xhat_test if decoded else None,
      z_test=context.z_test,
      zhat_test=context.zhat_test if decoded else None,
      y_test=context.data.y_test,
      workdir=workdir,
      class_names=input_pipeline.get_dataset_info(config).class_names,
    )
  )
  cond = workdir_files.path(out_dir, "conditional_generation.png")
  if cond.is_file() and any(e.name == "conditional_generation" for e in built):
    paths["conditional_generation"] = os.fspath(cond)
  return paths


def _write_results(workdir: str, results: dict[str, Any]) -> None:
  """``WORKDIR/results.json`` and ``results.md``, each written atomically: an interrupted
  evaluation leaves the previous results whole."""
  path = workdir_files.path(workdir, "results.json")
  workdir_files.write_text_atomic(path, json.dumps(results, indent=2, default=str) + "\n")
  workdir_files.write_text_atomic(path.parent / "results.md", results_markdown(results))
  logging.info("wrote %s and results.md", path)


def _figures_dir(workdir: str) -> str:
  """``WORKDIR/figures``, absolute (results.md names the figures relative to the run)."""
  return os.fspath(workdir_files.path(workdir_files.absolute(workdir), "figures"))


def write_scalars(workdir: str, step: int, metrics: dict[str, Any]) -> None:
  """The metrics as TensorBoard scalars ``eval_full/<metric>`` at the run's ``step``, into
  the work directory's event files beside the training's curves (its timings left out)."""
  from clu import metric_writers  # pylint: disable=import-outside-toplevel

  scalars = {
    figures.EVAL_FULL + key: float(value)
    for key, value in metrics.items()
    if not key.startswith("eval_seconds/") and isinstance(value, (int, float, np.number))
  }
  writer = metric_writers.SummaryWriter(os.fspath(workdir))
  writer.write_scalars(step, scalars)
  writer.close()


def evaluate(
  config: ml_collections.ConfigDict, workdir: str, step: Optional[int] = None
) -> dict[str, Any]:
  """Evaluates the checkpoint at ``step`` (latest when None) of ``workdir``.

  Returns:
    The ``results.json`` content: ``metrics`` (``{"knn/top1": ..., ...}``),
    ``baselines`` (``{"raw_pixels": {...}, "random_encoder": {...}}``, same keys),
    ``step``, ``wall_time_s``, ``figures`` and the configs.
  """
  start = time.time()
  loaded, data = _load_run(config, workdir, step)
  run_config, evals = loaded.config, config.evals
  write = jax.process_index() == 0
  built = evaluators.build(config)
  logging.info(
    "evaluating %s at step %d on %d train / %d test examples",
    workdir,
    int(loaded.state.step),
    len(data.x_train),
    len(data.x_test),
  )
  context = evaluators.Context(
    data,
    loaded.encode,
    loaded.decode,
    int(evals.batch_size),
    _figures_dir(workdir) if write else None,
    dataset_key=config.data.name,
  )
  # The training's cap on scipy's OpenBLAS threads (host_blas): the log-dets of the
  # clustering's MCR² head run as in training, off XLA's cores (docs/benchmarks.md).
  with host_blas.limit_host_blas(config.train.get("host_blas_threads")):
    metrics = evaluators.run_context(built, context)
    # Only those the labels allow (run_context logged which were skipped, and why).
    runnable, _ = evaluators.without_labels(built, data)
    classifiers = [e for e in runnable if e.features_only]
    baselines, baselines_cached = _baselines(config, run_config, data, classifiers)
    compared_metrics, compared = _compared_runs(config, run_config, data, classifiers)
    baselines.update(compared_metrics)
    not_applicable = _not_applicable(built, loaded)
    paths = _write_figures(config, workdir, context, built) if write and evals.figures else {}
  results = {
    "workdir": workdir_files.absolute(workdir),
    "step": int(loaded.state.step),
    "dataset": run_config.data.name,
    "num_train": int(len(data.x_train)),
    "num_test": int(len(data.x_test)),
    "hardware": _hardware(),
    "wall_time_s": time.time() - start,
    "training": _training_record(workdir, loaded),
    "compared_runs": compared,
    "metrics": metrics,
    "not_applicable": not_applicable,
    "skipped_without_labels": [e.name for e in built if e not in runnable],
    "baselines": baselines,
    "baselines_cached": baselines_cached,
    "figures": paths,
    "evals_config": evals.to_dict() if hasattr(evals, "to_dict") else dict(evals),
    "config": run_config.to_dict(),
  }
  if write:
    _write_results(workdir, results)
    write_scalars(workdir, results["step"], metrics)
  return results
