"""Tests of uctrl_jax/augment.py: each op's effect, determinism, eager == tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from uctrl_jax import augment

SEED = tf.constant([7, 11], tf.int64)
# SimCLR's published recipe; each test overrides what it is about.
SIMCLR = dict(
  crop_scale=(0.08, 1.0),
  crop_ratio=(3 / 4, 4 / 3),
  flip=True,
  jitter_prob=0.8,
  brightness=0.4,
  contrast=0.4,
  saturation=0.4,
  hue=0.1,
  grayscale_prob=0.2,
)


def _seed(i):
  return tf.constant([3, i], tf.int64)


def _colour_image(size=32):
  return tf.random.stateless_uniform((size, size, 3), [1, 2])


def _column_ramp(size=32, channels=3):
  """Pixel value = column / (size - 1): reveals the crop's width and flips."""
  ramp = tf.linspace(0.0, 1.0, size)
  return tf.tile(ramp[None, :, None], [size, 1, channels])


# Every op as (name, fn(image, seed)); fn must accept a colour image in [0, 1].
OPS = {
  "random_resized_crop": lambda x, s: augment.random_resized_crop(
    x, s, size=(24, 24), scale=(0.2, 1.0)
  ),
  "random_flip": augment.random_flip,
  "random_brightness": lambda x, s: augment.random_brightness(x, s, 0.4),
  "color_jitter": lambda x, s: augment.color_jitter(
    x, s, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1
  ),
  "to_grayscale": lambda x, s: augment.to_grayscale(x),
  "random_apply": lambda x, s: augment.random_apply(augment.to_grayscale, x, s, 0.5),
  "augment": lambda x, s: augment.augment(x, s, size=32, **SIMCLR),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_eager_equals_dataset_map_and_is_deterministic(name):
  op = OPS[name]
  image = _colour_image()
  eager = op(image, SEED).numpy()
  assert eager.min() >= 0.0 and eager.max() <= 1.0
  np.testing.assert_array_equal(op(image, SEED).numpy(), eager)

  def mapped(x):
    return op(x, SEED)

  in_map = next(iter(tf.data.Dataset.from_tensors(image).map(mapped))).numpy()
  np.testing.assert_allclose(in_map, eager, atol=1e-6)


@pytest.mark.parametrize(
  "name", ["random_resized_crop", "random_brightness", "color_jitter", "augment"]
)
def test_random_ops_depend_on_the_seed(name):
  image = _colour_image()
  outs = [OPS[name](image, _seed(i)).numpy() for i in range(4)]
  for i in range(4):
    for j in range(i):
      assert np.abs(outs[i] - outs[j]).mean() > 1e-3, (i, j)


def test_random_resized_crop_takes_the_requested_area():
  image = _column_ramp(32)
  whole = augment.random_resized_crop(
    image, SEED, size=(32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0)
  )
  np.testing.assert_allclose(whole.numpy(), image.numpy(), atol=1e-5)
  # A quarter of the area at ratio 1 is a 16×16 window: 16 ramp columns.
  quarter = augment.random_resized_crop(
    image, SEED, size=(32, 32), scale=(0.25, 0.25), ratio=(1.0, 1.0)
  )
  span = quarter.numpy().max() - quarter.numpy().min()
  assert span == pytest.approx(15 / 31, abs=1.5 / 31)


def test_random_flip_flips_about_half_the_time():
  image = _column_ramp(8)
  flipped = 0
  for i in range(40):
    out = augment.random_flip(image, _seed(i)).numpy()
    if np.array_equal(out, image.numpy()[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, image.numpy())
  assert 8 <= flipped <= 32


def test_random_brightness_scales_by_a_factor_in_range():
  image = tf.fill((4, 4, 3), 0.5)
  factors = [augment.random_brightness(image, _seed(i), 0.4).numpy() / 0.5 for i in range(20)]
  for f in factors:
    assert np.ptp(f) < 1e-6  # One factor for the whole image.
    assert 0.6 - 1e-6 <= f.flat[0] <= 1.4 + 1e-6
  assert np.ptp([f.flat[0] for f in factors]) > 0.2


def test_color_jitter_off_is_identity_and_saturation_keeps_gray_gray():
  image = _colour_image()
  np.testing.assert_array_equal(augment.color_jitter(image, SEED).numpy(), image.numpy())
  gray = augment.to_grayscale(image)
  out = augment.color_jitter(gray, SEED, saturation=0.8).numpy()
  np.testing.assert_allclose(out, gray.numpy(), atol=1e-5)
  changed = augment.color_jitter(image, SEED, saturation=0.8).numpy()
  assert np.abs(changed - image.numpy()).mean() > 1e-3


def test_to_grayscale_makes_channels_equal():
  out = augment.to_grayscale(_colour_image()).numpy()
  assert out.shape == (32, 32, 3)
  np.testing.assert_allclose(out[..., 0], out[..., 1])
  np.testing.assert_allclose(out[..., 0], out[..., 2])


def test_random_apply_probability():
  image = _colour_image(4)
  assert augment.random_apply(lambda x: x * 0, image, SEED, 0.0) is image
  np.testing.assert_array_equal(augment.random_apply(lambda x: x * 0, image, SEED, 1.0).numpy(), 0)
  applied = sum(
    float(tf.reduce_max(augment.random_apply(lambda x: x * 0, image, _seed(i), 0.5))) == 0.0
    for i in range(64)
  )
  assert 16 <= applied <= 48


def test_augment_switches_colour_ops_off_for_one_channel():
  # Crop and flip off; colour ops forced on: colour input turns gray; a 1-channel
  # input passes unchanged by saturation, hue and grayscale.
  settings = dict(
    SIMCLR,
    size=16,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip=False,
    jitter_prob=1.0,
    grayscale_prob=1.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.8,
    hue=0.4,
  )
  gray = _column_ramp(16, channels=1)
  out = augment.augment(gray, SEED, **settings).numpy()
  assert out.shape == (16, 16, 1)
  np.testing.assert_allclose(out, gray.numpy(), atol=1e-5)
  colour = augment.augment(_colour_image(16), SEED, **settings).numpy()
  np.testing.assert_allclose(colour[..., 0], colour[..., 2], atol=1e-6)
  assert np.abs(colour - _colour_image(16).numpy()).mean() > 1e-2


def test_one_channel_images_get_brightness_and_contrast_jitter():
  # As torchvision's ColorJitter(brightness, contrast) on a 1-channel tensor: the
  # image changes, keeps its shape and stays in [0, 1]; its ordering of pixel values
  # (a monotone map per image) is kept.
  settings = dict(
    SIMCLR,
    size=16,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip=False,
    jitter_prob=1.0,
    brightness=0.4,
    contrast=0.4,
  )
  gray = _column_ramp(16, channels=1)
  outs = [
    augment.augment(gray, tf.constant([s, 1], tf.int64), **settings).numpy() for s in range(8)
  ]
  for out in outs:
    assert out.shape == (16, 16, 1) and out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out[0, :, 0]) >= -1e-6)  # the ramp still rises
  assert max(np.abs(out - gray.numpy()).mean() for out in outs) > 1e-2
  off = augment.augment(gray, SEED, **{**settings, "jitter_prob": 0.0}).numpy()
  np.testing.assert_allclose(off, gray.numpy(), atol=1e-5)


def test_augment_applies_colour_ops_inside_tf_data():
  # Regression: in graph mode the crop lost the static channel count, so `augment`
  # silently skipped colour jitter and grayscale for every RGB dataset.
  settings = dict(
    SIMCLR, size=16, crop_scale=(0.5, 1.0), flip=False, jitter_prob=1.0, grayscale_prob=1.0
  )
  # Unknown height and width, as decoded images of varying size arrive.
  ds = tf.data.Dataset.from_generator(
    lambda: iter([_colour_image(32)]), output_signature=tf.TensorSpec((None, None, 3))
  )
  ds = ds.map(lambda x: augment.augment(x, SEED, **settings))
  assert ds.element_spec.shape == (16, 16, 3)
  out = next(iter(ds)).numpy()
  np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)


def test_augment_output_size_and_view_independence():
  image = _colour_image(32)
  out = augment.augment(image, SEED, size=(20, 24), **SIMCLR)
  assert out.shape == (20, 24, 3) and out.dtype == tf.float32
  seeds = tf.random.experimental.stateless_split(SEED, 2)
  a, b = (augment.augment(image, s, size=32, **SIMCLR).numpy() for s in seeds)
  assert np.abs(a - b).mean() > 1e-2


@pytest.mark.parametrize(
  "bad",
  [
    dict(crop_scale=(0.0, 1.0)),
    dict(crop_scale=(0.8, 0.2)),
    dict(crop_ratio=(2.0, 1.0)),
    dict(jitter_prob=1.5),
    dict(grayscale_prob=-0.1),
    dict(hue=0.7),
  ],
)
def test_augment_rejects_bad_settings(bad):
  key = next(iter(bad))
  with pytest.raises(ValueError, match=key):
    augment.augment(_colour_image(8), SEED, size=8, **dict(SIMCLR, **bad))
