"""Features out (``--mode=embed``, ``uctrl embed``): the trained encoder's features of a
split of the run's data, or of any dataset named on the command line, as ``.npz`` files.

    WORKDIR/embeddings/<split>.npz          the run's data: config.evals' test and train
                                            splits (those the data have), or --split
    WORKDIR/embeddings/<data>/<split>.npz   --data=image_folder:PATH or npz:PATH (<data>:
                                            PATH's name), every split of it or --split

Sliced splits are named for files as ``train[:80%]`` → ``train_to80pct``; ``--out=FILE``
writes one split there. Each file holds

    features  (n, d) float32  one row per image, in the split's order (the order
                              evaluation reads it: ``input_pipeline.examples_in_order``)
    labels    (n,) int64      where the split has labels
    paths     (n,) str        for an image folder: each image's file, relative to PATH
    split, step               the split's name and the checkpoint's step

Images are prepared as the run's training prepared its data (its image size; channels
converted by ``Loaded.encode_images``). Files are written atomically through
``workdir_files``, by process 0: the work directory may be ``gs://...``.
"""

from __future__ import annotations

import io
import os
from typing import Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from uctrl_jax import datasets
from uctrl_jax import input_pipeline
from uctrl_jax import loading
from uctrl_jax import config_checks
from uctrl_jax import workdir_files

EMBEDDINGS_SUBDIR = "embeddings"


def file_stem(split: str) -> str:
  """``split`` as a file name: ``"test"`` → ``"test"``, ``"train[:80%]"`` →
  ``"train_to80pct"``, ``"train[80%:]"`` → ``"train_80pctto"`` (distinct slices, distinct
  names)."""
  for old, new in (("[", "_"), ("]", ""), (":", "to"), ("%", "pct"), ("/", "_")):
    split = split.replace(old, new)
  return split


def data_label(name: str) -> str:
  """The folder name under ``embeddings/`` of a dataset named on the command line:
  ``image_folder:/data/photos`` → ``photos``, ``npz:/data/x.npz`` → ``x``, ``cifar10`` →
  ``cifar10``."""
  kind, sep, path = name.partition(":")
  if not sep or kind not in ("image_folder", "npz"):
    return file_stem(name)
  return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _source_config(
  config: ml_collections.ConfigDict, data: Optional[str]
) -> ml_collections.ConfigDict:
  """The run's ``config`` reading ``data`` (None: the run's own) at the run's image size
  (``data.image_shape``, saved by the trainer), uncached."""
  source_config = config.copy_and_resolve_references()
  with source_config.unlocked():
    source_config.data.cache = False  # read once
    if data is not None:
      source_config.data.name = data
      source_config.data.image_size = int(config.data.image_shape[0])
  return source_config


def _splits(config, info, split: Optional[str], data: Optional[str]) -> list[str]:
  """The splits to embed: ``split``; else every split of ``data``; else the evaluation's
  test and train splits that the run's data have."""
  if split is not None:
    return [split]
  if data is not None:
    return sorted(info.num_examples)
  wanted = list(dict.fromkeys([config.evals.test_split, config.evals.train_split]))
  present = [s for s in wanted if datasets.split_name(s) in info.num_examples]
  for s in wanted:
    if s not in present:
      logging.warning("embed: %s has no split %r; left out", info.name, s)
  if not present:
    raise datasets.DataError(
      f"{info.name} has none of the splits {wanted} (it has {sorted(info.num_examples)}): "
      "name one with --split"
    )
  return present


def embed_split(
  loaded: loading.Loaded, source_config: ml_collections.ConfigDict, source, split: str
) -> dict[str, np.ndarray]:
  """The arrays of one ``.npz`` (module docstring) of ``split``."""
  features, labels = [], []
  batch_size = int(source_config.train.batch_size)  # the chunks' size: one compiled shape
  for images, y in input_pipeline.examples_in_order(source_config, split):
    features.append(loaded.encode_images(images, batch_size=batch_size))
    labels.append(y)
  arrays = {
    "features": np.concatenate(features).astype(np.float32),
    "split": np.array(split),
    "step": np.array(int(loaded.state.step)),
  }
  if datasets.has_labels(source.info, split):
    arrays["labels"] = np.concatenate(labels).astype(np.int64)
  paths = source.example_paths(split)
  if paths is not None:
    root = os.path.expanduser(source_config.data.name.partition(":")[2])
    arrays["paths"] = np.array([os.path.relpath(p, root) for p in paths])
  return arrays


def embed(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  split: Optional[str] = None,
  data: Optional[str] = None,
  out: Optional[str] = None,
  step: Optional[int] = None,
) -> list[str]:
  """Writes the features of the checkpoint at ``step`` (latest when None) of ``workdir``.

  Args:
    config: the run's config (``run_config.for_existing_run``): its data, evaluation
      splits and ``evals.batch_size``.
    workdir: the run's directory; files go to ``WORKDIR/embeddings/`` (module docstring).
    split: one split (slices too); None: the defaults of the module docstring.
    data: another dataset (``image_folder:PATH``, ``npz:PATH``, a tfds name), read at the
      run's image size; None: the run's own.
    out: the file to write (one split only); None: under ``WORKDIR/embeddings/``.
  Returns:
    The files written, one per split.
  Raises:
    checkpointing.RunLoadError: no run (or checkpoint) in ``workdir``.
    datasets.DataError: bad data (no image in a folder, an unknown split, ...).
    config_checks.ConfigError: ``out`` with several splits.
  """
  # The data first: a bad folder or split costs no model.
  source_config = _source_config(config, data)
  source = input_pipeline.open_source(source_config)
  splits = _splits(config, source.info, split, data)
  if out is not None and len(splits) > 1:
    raise config_checks.ConfigError(
      f"--out names one file, but {len(splits)} splits would be embedded ({splits}): "
      "give --split too"
    )
  loaded = loading.load(workdir, step)
  written = []
  for name in splits:
    arrays = embed_split(loaded, source_config, source, name)
    target = workdir_files.path(
      out
      or workdir_files.path(
        workdir,
        EMBEDDINGS_SUBDIR,
        *([data_label(data)] if data is not None else []),
        file_stem(name) + ".npz",
      )
    )
    if jax.process_index() == 0:
      buffer = io.BytesIO()
      np.savez(buffer, **arrays)
      workdir_files.write_bytes_atomic(target, buffer.getvalue())
    n, d = arrays["features"].shape
    logging.info(
      "wrote %s: the %d × %d features of %s split %r at step %d",
      target,
      n,
      d,
      source.info.name,
      name,
      int(arrays["step"]),
    )
    written.append(os.fspath(target))
  return written
