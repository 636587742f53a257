"""SimCLR augmentations `τ`, stateless: the same seed gives the same view.

The augmentation of the closed loop (docs/method.md#the-closed-loop).

Every op takes a float32 image in [0, 1] of shape (H, W, C) and a seed of shape
(2,) (int32 or int64, as for `tf.random.stateless_*`) and works eagerly and
inside `tf.data.Dataset.map`. `augment` chains them like SimCLR / uCTRL's
torchvision pipeline:

    RandomResizedCrop(size, scale, ratio) -> horizontal flip (p = 0.5)
    -> ColorJitter(brightness, contrast, saturation, hue) with p = jitter_prob,
       the four in random order -> grayscale with p = grayscale_prob

For 1-channel images the jitter keeps brightness and contrast and skips saturation,
hue and grayscale (they need colour). Its keyword
arguments are the keys of `config.data.augment`, so
`augment(image, seed, size=..., **config.data.augment)` works.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

Image = tf.Tensor  # (H, W, C) float32 in [0, 1]


def random_resized_crop(
  image: Image,
  seed: tf.Tensor,
  *,
  size: tuple[int, int],
  scale: Sequence[float] = (0.08, 1.0),
  ratio: Sequence[float] = (3 / 4, 4 / 3),
  max_attempts: int = 100,
) -> Image:
  """Crops a random box (area fraction in `scale`, w/h in `ratio`), resizes.

  As torchvision's RandomResizedCrop: after `max_attempts` failed draws, the centre
  crop of the whole image at the nearest ratio in `ratio` (the whole image when its
  own ratio is in range: always for square images).

  Args:
    image: (H, W, C) float32 in [0, 1].
    seed: (2,) integer seed.
    size: output (height, width).
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio width / height.
    max_attempts: draws before falling back to the centre crop.

  Returns:
    (size[0], size[1], C) float32 in [0, 1].
  """
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
    seed=seed,
    min_object_covered=scale[0],
    aspect_ratio_range=ratio,
    area_range=scale,
    max_attempts=max_attempts,
    use_image_if_no_bounding_boxes=True,
  )
  begin, crop_size = _centre_crop_if_whole(tf.shape(image), begin, crop_size, ratio)
  crop = tf.slice(image, begin, crop_size)
  # antialias: crops are also shrunk (e.g. STL-10 96 -> 64); bilinear alone aliases.
  out = tf.clip_by_value(tf.image.resize(crop, size, method="bilinear", antialias=True), 0.0, 1.0)
  # tf.slice loses the static channel count inside tf.data/tf.function; later ops
  # (colour jitter only for 3 channels) read it, so restore it.
  out.set_shape((*size, image.shape[-1]))
  return out


def _centre_crop_if_whole(shape, begin, crop_size, ratio):
  """torchvision's fallback: tf's sampler returns the whole image after its failed draws;
  a whole image whose w/h lies outside `ratio` cannot be a successful draw, so it becomes
  the centre crop at the nearest ratio in range. (begin, size) (3,) int32 in and out."""
  h, w = shape[0], shape[1]
  in_ratio = tf.cast(w, tf.float32) / tf.cast(h, tf.float32)
  crop_h = tf.where(
    in_ratio < ratio[0], tf.cast(tf.round(tf.cast(w, tf.float32) / ratio[0]), tf.int32), h
  )
  crop_w = tf.where(
    in_ratio > ratio[1], tf.cast(tf.round(tf.cast(h, tf.float32) * ratio[1]), tf.int32), w
  )
  whole = tf.reduce_all(tf.equal(crop_size[:2], shape[:2]))
  begin = tf.where(whole, tf.stack([(h - crop_h) // 2, (w - crop_w) // 2, 0]), begin)
  crop_size = tf.where(whole, tf.stack([crop_h, crop_w, -1]), crop_size)
  return begin, crop_size


def random_flip(image: Image, seed: tf.Tensor) -> Image:
  """Flips left-right with probability 1/2. image: (H, W, C)."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def random_brightness(image: Image, seed: tf.Tensor, strength: float) -> Image:
  """Multiplies by a factor in [max(0, 1 - strength), 1 + strength].

  Multiplicative as torchvision and SimCLR v2; tf.image's is additive.
  """
  factor = tf.random.stateless_uniform([], seed, max(0.0, 1.0 - strength), 1.0 + strength)
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def color_jitter(
  image: Image,
  seed: tf.Tensor,
  *,
  brightness: float = 0.0,
  contrast: float = 0.0,
  saturation: float = 0.0,
  hue: float = 0.0,
) -> Image:
  """torchvision's ColorJitter: the four adjustments in a random order.

  Args:
    image: (H, W, 3) float32 in [0, 1].
    seed: (2,) integer seed.
    brightness, contrast, saturation: factor ranges
      [max(0, 1 - s), 1 + s]; 0 switches the adjustment off.
    hue: hue shift range [-hue, hue] (fraction of the colour wheel, ≤ 0.5).

  Returns:
    (H, W, 3) float32 in [0, 1].
  """
  order_seed, *op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
  ops: list[Callable[[Image, tf.Tensor], Image]] = []
  if brightness > 0:
    ops.append(lambda x, s: random_brightness(x, s, brightness))
  if contrast > 0:
    ops.append(
      lambda x, s: tf.image.stateless_random_contrast(
        x, max(0.0, 1.0 - contrast), 1.0 + contrast, s
      )
    )
  if saturation > 0:
    ops.append(
      lambda x, s: tf.image.stateless_random_saturation(
        x, max(0.0, 1.0 - saturation), 1.0 + saturation, s
      )
    )
  if hue > 0:
    ops.append(lambda x, s: tf.image.stateless_random_hue(x, hue, s))
  if not ops:
    return image
  order = tf.random.experimental.stateless_shuffle(tf.range(len(ops)), order_seed)
  for step, op_seed in zip(range(len(ops)), op_seeds):
    branches = [lambda op=op: tf.clip_by_value(op(image, op_seed), 0.0, 1.0) for op in ops]
    image = tf.switch_case(order[step], branches)
  return image


def to_grayscale(image: Image) -> Image:
  """Luma replicated over the 3 channels: (H, W, 3) -> (H, W, 3)."""
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def random_apply(fn: Callable[[Image], Image], image: Image, seed: tf.Tensor, prob: float) -> Image:
  """`fn(image)` with probability `prob`, else `image`."""
  if prob <= 0:
    return image
  if prob >= 1:
    return fn(image)
  apply = tf.random.stateless_uniform([], seed) < prob
  return tf.cond(apply, lambda: fn(image), lambda: image)


def augment(
  image: Image,
  seed: tf.Tensor,
  *,
  size: int | tuple[int, int],
  crop_scale: Sequence[float],
  crop_ratio: Sequence[float],
  flip: bool,
  jitter_prob: float,
  brightness: float,
  contrast: float,
  saturation: float,
  hue: float,
  grayscale_prob: float,
) -> Image:
  """One SimCLR view of `image` (see the module docstring); every setting is required, as
  `config.data.augment` holds it (uctrl_jax/defaults.py is the one source of the values).

  Args:
    image: (H, W, C) float32 in [0, 1], C in {1, 3}.
    seed: (2,) integer seed; the view is a function of (image, seed).
    size: output side, or (height, width).
    crop_scale, crop_ratio: `random_resized_crop`'s scale and ratio ranges.
    flip: whether to flip left-right with probability 1/2.
    jitter_prob: probability of `color_jitter`.
    brightness, contrast, saturation, hue: `color_jitter` strengths.
    grayscale_prob: probability of `to_grayscale`.

  Returns:
    (size, size, C) float32 in [0, 1].
  """
  size = (size, size) if isinstance(size, int) else tuple(size)
  _check_args(crop_scale, crop_ratio, jitter_prob, hue, grayscale_prob)
  crop_seed, flip_seed, jitter_seed, gray_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, 4)
  )
  image = random_resized_crop(image, crop_seed, size=size, scale=crop_scale, ratio=crop_ratio)
  if flip:
    image = random_flip(image, flip_seed)
  colour = image.shape[-1] == 3
  apply_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(jitter_seed, 2))
  # Brightness and contrast mean the same for a 1-channel image; saturation, hue and
  # grayscale only for colour.
  image = random_apply(
    lambda x: color_jitter(
      x,
      op_seed,
      brightness=brightness,
      contrast=contrast,
      saturation=saturation if colour else 0.0,
      hue=hue if colour else 0.0,
    ),
    image,
    apply_seed,
    jitter_prob,
  )
  if colour:
    image = random_apply(to_grayscale, image, gray_seed, grayscale_prob)
  return image


def _check_args(crop_scale, crop_ratio, jitter_prob, hue, grayscale_prob):
  """Raises ValueError on settings tf.image would reject deep inside a graph."""
  if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
    raise ValueError(f"crop_scale {crop_scale} must satisfy 0 < lo <= hi <= 1.")
  if not 0 < crop_ratio[0] <= crop_ratio[1]:
    raise ValueError(f"crop_ratio {crop_ratio} must satisfy 0 < lo <= hi.")
  for name, p in (("jitter_prob", jitter_prob), ("grayscale_prob", grayscale_prob)):
    if not 0 <= p <= 1:
      raise ValueError(f"{name} = {p} is not a probability.")
  if not 0 <= hue <= 0.5:
    raise ValueError(f"hue = {hue} must lie in [0, 0.5].")
