"""tf.data input pipeline on the CPU: images and their augmented views.

The batches the closed loop reads (docs/method.md#the-closed-loop).

API for the trainer and evaluators:

    info = get_dataset_info(config)
      # DatasetInfo: image_shape (S, S, C) of the batches, num_classes,
      # num_examples {split: n}, class_names, unlabelled_splits.
    ds = create_dataset(config, "train", process_index=jax.process_index(),
                        process_count=jax.process_count())
    for batch in ds.as_numpy_iterator(): ...
    for images, labels in examples_in_order(config, "test"): ...  # evaluation's reading

Batches, with B = config.train.batch_size // process_count (per process) and
V = config.data.num_views:

    "image": (B, S, S, C) float32 in [-1, 1]  the image, resized to S×S (`resize_image`:
                         shorter side to S, then the centre S×S crop)
    "views": (V, B, S, S, C) float32 in [-1, 1]  independent augmentations (absent
                         where V = 0: the generative loss modes, evaluation)
    "label": (B,) int32  -1 in an unlabelled split (training never reads it,
                         except the supervised loss.mode "ctrl_multi")
    "mask":  (B,) bool  evaluation only: False marks padding (label -1)

Training (default for splits named "train*"): this process's shard, shuffled,
repeated forever, full batches. Evaluation (`training=False`): every example of
the split exactly once over all processes, in a fixed order; the last batches
are padded so that every process yields the same number of batches,
ceil(ceil(n / process_count) / B). Evaluators that need no views pass
`num_views=0` (no "views" key; saves the augmentation work).

Randomness comes from config.seed only: process p's shuffle and augmentations
are seeded from (config.seed, p), and the k-th example it emits gets
augmentation seed fold_in(seed, k). The same config gives the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from uctrl_jax import augment
from uctrl_jax import datasets
from uctrl_jax import objectives


def _hide_accelerators_from_tf() -> None:
  """Keeps TensorFlow off GPUs so that it never takes memory JAX needs."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices; too late to hide.
    pass


_hide_accelerators_from_tf()


def open_source(config: ml_collections.ConfigDict) -> datasets.Source:
  """The dataset named by `config.data` (see uctrl_jax/datasets/)."""
  return datasets.open_dataset(
    config.data.name, data_dir=config.data.data_dir, download=config.data.download
  )


def get_dataset_info(config: ml_collections.ConfigDict) -> datasets.DatasetInfo:
  """Dataset facts, with image_shape as batches carry it, (S, S, C), and a note on the
  resizing (`resize_note`) among its notes."""
  info = open_source(config).info
  size = _image_size(config, info)
  note = resize_note(info, size[0])
  return dataclasses.replace(
    info,
    image_shape=(*size, info.image_shape[-1]),
    num_examples=dict(info.num_examples),
    notes=info.notes + ((note,) if note else ()),
  )


RESIZE_RULE = "shorter side to {S}, centre crop"  # `resize_image`'s, for notes and errors


def resize_note(info: datasets.DatasetInfo, size: int) -> Optional[str]:
  """How many of `info`'s images are resized to size×size and by which rule; None when
  none is."""
  rule = RESIZE_RULE.format(S=size)
  h, w = info.image_shape[:2]
  if h is not None:
    same = (h, w) == (size, size)
    return None if same else f"{info.name}: images are {h}×{w}: resized to {size}×{size} ({rule})"
  if info.size_counts is None:
    return f"{info.name}: images vary in size: each resized to {size}×{size} ({rule})"
  total = sum(info.size_counts.values())
  other = total - info.size_counts.get((size, size), 0)
  return f"{info.name}: {other} of {total} images are not {size}×{size}: resized ({rule})"


def per_process_batch_size(config: ml_collections.ConfigDict, process_count: int) -> int:
  """config.train.batch_size (global) split over processes."""
  batch_size = config.train.batch_size
  if batch_size % process_count:
    raise ValueError(
      f"config.train.batch_size = {batch_size} (global) is not divisible by "
      f"the number of processes, {process_count}."
    )
  return batch_size // process_count


def create_dataset(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  process_index: int,
  process_count: int,
  training: bool | None = None,
  num_views: int | None = None,
  skip_batches: int = 0,
) -> tf.data.Dataset:
  """Batches of images and views for one process (see the module docstring).

  Args:
    config: the experiment config; reads config.seed, config.data and
      config.train.batch_size.
    split: split name, e.g. "train", "test", or a slice of one ("train[:90%]";
      see uctrl_jax/datasets/splits.py for how npz and image-folder slices are drawn).
    process_index: this process, in [0, process_count).
    process_count: number of processes; each reads a disjoint shard.
    training: shuffle + repeat + drop the remainder (True) or one padded, masked
      pass (False). None: True iff `split` starts with "train".
    num_views: augmented views per image; None: those training reads
      (`objectives.training_views`: config.data.num_views, 0 for the generative
      loss modes, which read the clean images only). 0 leaves out the "views" key.
    skip_batches: training only: start after this many batches of the stream,
      which continues exactly as if they had been read (resume after a restart;
      skipped examples are not augmented, so this is cheap).

  Returns:
    A tf.data.Dataset of batch dicts.
  """
  training = split.startswith("train") if training is None else training
  num_views = objectives.training_views(config) if num_views is None else num_views
  if num_views < (1 if training and objectives.reads_views(config) else 0):
    raise ValueError(
      f"num_views = {num_views}: training loss.mode {config.loss.mode!r} needs at least "
      "1 augmented view per image."
    )
  batch_size = per_process_batch_size(config, process_count)
  # Independent streams per process, all derived from config.seed.
  shuffle_seed, *augment_seed = np.random.SeedSequence([config.seed, process_index]).generate_state(
    3
  )
  source = open_source(config)
  info = source.info
  if source.split_size(split) < process_count:
    raise datasets.DataError(
      f"Split {split!r} of {info.name!r} has {source.split_size(split)} "
      f"examples: too few for {process_count} processes."
    )
  ds = source.read(
    split,
    process_index=process_index,
    process_count=process_count,
    shuffle_seed=int(shuffle_seed) if training else None,
  )
  if config.data.cache:
    ds = ds.cache()  # Decoded images in memory; augmentations are redrawn.

  if training:
    ds = ds.shuffle(
      config.data.shuffle_buffer, seed=int(shuffle_seed), reshuffle_each_iteration=True
    )
    ds = ds.repeat()
  else:
    ds = ds.map(_with_mask(True))
    # Shards differ by at most one example: all processes pad to the largest.
    largest_shard = math.ceil(source.split_size(split) / process_count)
    num_batches = math.ceil(largest_shard / batch_size)
    padding = tf.data.Dataset.from_tensors(
      _with_mask(False)(_zeros_like_spec(ds.element_spec))
    ).repeat()
    ds = ds.concatenate(padding).take(num_batches * batch_size)

  preprocess = functools.partial(
    _preprocess,
    size=_image_size(config, info),
    num_views=num_views,
    seed=tf.constant(augment_seed, tf.int64),
    augment_kwargs=dict(config.data.augment),
  )
  # enumerate before skip: the k-th example keeps augmentation seed fold_in(seed, k).
  ds = ds.enumerate()
  if skip_batches:
    if not training:
      raise ValueError("skip_batches is for resuming a training stream")
    ds = ds.skip(skip_batches * batch_size)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  if num_views:
    ds = ds.map(_views_first)
  options = tf.data.Options()
  options.deterministic = True  # Same seed, same batches, despite parallel maps.
  return ds.with_options(options).prefetch(config.data.prefetch)


def examples_in_order(
  config: ml_collections.ConfigDict, split: str, limit: Optional[int] = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``split`` as evaluation reads it: every example once, in the split's order (the
  ``training=False`` pipeline of one process), without views, padding dropped.

  Yields:
    Chunks ``(images (b, S, S, C) float32 in [-1, 1], labels (b,) int32)`` (label -1 in
    an unlabelled split), of the first ``limit`` examples (None: all).
  """
  ds = create_dataset(config, split, process_index=0, process_count=1, training=False, num_views=0)
  count = 0
  for batch in ds.as_numpy_iterator():
    keep = batch["mask"]
    images, labels = batch["image"][keep], batch["label"][keep]
    if limit is not None:
      images, labels = images[: limit - count], labels[: limit - count]
    count += len(images)
    if len(images):
      yield images, labels
    if limit is not None and count >= limit:
      return


def _image_size(config, info) -> tuple[int, int]:
  """(S, S) from config.data.image_size; None keeps the stored size, which the images must
  then share."""
  size = config.data.image_size
  if size is not None:
    return (size, size)
  if info.image_shape[0] is None:
    sizes = sorted(info.size_counts or (), key=lambda hw: hw[0] * hw[1])
    span = f" (from {_hw(sizes[0])} to {_hw(sizes[-1])})" if sizes else ""
    raise datasets.DataError(
      f"{info.name} holds images of different sizes{span}: set config.data.image_size "
      "(e.g. --config.data.image_size=64) to resize each to S×S "
      f"({RESIZE_RULE.format(S='S')})."
    )
  return tuple(info.image_shape[:2])


def _hw(size: tuple[int, int]) -> str:
  return f"{size[0]}×{size[1]}"


def _with_mask(value: bool):
  def add_mask(example):
    label = example["label"] if value else -tf.ones_like(example["label"])
    return {**example, "label": label, "mask": tf.constant(value)}

  return add_mask


def _zeros_like_spec(spec):
  """Zeros of each spec's shape, 1 along the dimensions it leaves open (images of mixed
  sizes: a 1×1 black image, resized like any other)."""
  return tf.nest.map_structure(
    lambda s: tf.zeros([1 if d is None else d for d in s.shape], s.dtype), spec
  )


def resize_image(image: tf.Tensor, size: int) -> tf.Tensor:
  """(H, W, C) float32 -> (size, size, C): the shorter side resized to `size`
  (antialiased bilinear), then the centre size×size crop. As torchvision's
  `Resize(size)` + `CenterCrop(size)`: keeps the aspect ratio, crops the longer side's
  ends; a square image is simply resized. Unchanged when already size×size."""
  if tuple(image.shape[:2]) == (size, size):
    return image
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  short = tf.minimum(h, w)
  # torchvision: the shorter side becomes `size`, the longer int(size * long / short).
  new_h = tf.where(h > w, size * h // short, size)
  new_w = tf.where(h > w, size, size * w // short)
  resized = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
  top = tf.cast(tf.round((new_h - size) / 2), tf.int32)  # torchvision's rounding
  left = tf.cast(tf.round((new_w - size) / 2), tf.int32)
  out = resized[top : top + size, left : left + size]
  out.set_shape((size, size, image.shape[-1]))
  return out


def _preprocess(index, example, *, size, num_views, seed, augment_kwargs):
  """One example -> image (S, S, C) and views (V, S, S, C) in [-1, 1].

  Args:
    index: () int64, position of the example in this process's stream; makes
      its augmentations differ from every other example's, epochs included.
    example: {"image": (H, W, C) uint8, "label": () int32[, "mask": ()]}.
    size: (S, S) output size.
    num_views: V.
    seed: (2,) int64 seed of this process.
    augment_kwargs: keyword arguments of `augment.augment`.
  """
  image = tf.image.convert_image_dtype(example["image"], tf.float32)  # [0, 1]
  out = dict(example)
  out["image"] = _to_signed(tf.clip_by_value(resize_image(image, size[0]), 0.0, 1.0))
  if num_views:
    view_seeds = tf.random.experimental.stateless_split(
      tf.random.experimental.stateless_fold_in(seed, index), num_views
    )
    out["views"] = tf.stack(
      [
        _to_signed(augment.augment(image, view_seeds[v], size=size, **augment_kwargs))
        for v in range(num_views)
      ]
    )
  return out


def _to_signed(image):
  """[0, 1] -> [-1, 1], the range the decoder's tanh produces."""
  return image * 2.0 - 1.0


def _views_first(batch):
  """views (B, V, S, S, C) -> (V, B, S, S, C): one view is a batch."""
  return {**batch, "views": tf.transpose(batch["views"], [1, 0, 2, 3, 4])}
