"""Image sizes 16..256 for both model families (issue 23): the size rule, the architecture
each size gets, today's sizes unchanged, a 64×64 training iteration of each family.

The fingerprints below were recorded from the code before sizes other than 28/32 (DCGAN)
and 32/96 (ResNet-18) existed: parameter and batch-statistics shapes (hashed with their
paths) and outputs of fixed variables must stay exactly these, so that the checkpoints
of earlier runs keep loading and computing what they computed.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_models import abstract_variables, make_config, random_variables
from uctrl_jax import config_checks, models, sharding, steps
from uctrl_jax.state import create_train_state

# (family, size, channels, upsample) -> (encoder + decoder parameters, hash of every
# variable's path and shape) at width 64, d = 128.
_RECORDED = {
  ("dcgan", 28, 1, "conv_transpose"): (2363201, "fc9001c7018bcf1f"),
  ("dcgan", 28, 1, "pixel_shuffle"): (3183684, "6b7471a346825d38"),
  ("dcgan", 28, 1, "resize_conv"): (2076033, "3d8d13b32773cd5c"),
  ("dcgan", 28, 3, "conv_transpose"): (2367299, "a443537f22a34a3b"),
  ("dcgan", 32, 3, "pixel_shuffle"): (3190348, "146c1be0c5c119b7"),
  ("dcgan", 32, 1, "resize_conv"): (2076033, "3d8d13b32773cd5c"),
  ("resnet18", 32, 3, "conv_transpose"): (26978563, "c2dd74c4a7e942f0"),
  ("resnet18", 32, 3, "pixel_shuffle"): (30419203, "7be0aebeda0b8ddd"),
  ("resnet18", 32, 1, "resize_conv"): (25772033, "6d0b5770dc39a059"),
  ("resnet18", 96, 3, "conv_transpose"): (35367171, "8520a52b0363c003"),
  ("resnet18", 96, 3, "pixel_shuffle"): (38807811, "d72020c238a65b1b"),
  ("resnet18", 96, 3, "resize_conv"): (34162947, "597b6a25298cfbe4"),
}
# (family, size, upsample) -> (Z[0, :4], mean of x̂, x̂[1, 5, 7, 0]) at width 4, d = 8, for
# `random_variables` (seeds 0, 1) and a fixed input: what the nets compute, not only shapes.
_RECORDED_OUTPUTS = {
  ("dcgan", 28, "pixel_shuffle"): ([-0.26966, 0.33416, 0.22354, 0.12108], -0.00575, -0.356049),
  ("dcgan", 32, "conv_transpose"): ([0.48193, 0.51918, 0.27963, -0.14486], -0.004611, -0.048269),
  ("resnet18", 32, "resize_conv"): ([-0.00542, -0.32197, -0.44488, -0.56213], 0.086777, 0.536356),
  ("resnet18", 96, "pixel_shuffle"): ([0.05288, -0.2775, -0.5307, -0.49505], -0.038809, 0.997042),
}


def _fingerprint(config, shape):
  _, _, ve, vd = abstract_variables(config, shape)
  leaves = jax.tree_util.tree_flatten_with_path({"encoder": ve, "decoder": vd})[0]
  shapes = sorted((jax.tree_util.keystr(p), tuple(leaf.shape)) for p, leaf in leaves)
  n = models.count_params(ve["params"]) + models.count_params(vd["params"])
  return n, hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


@pytest.mark.parametrize("key", sorted(_RECORDED))
def test_earlier_sizes_keep_their_parameters(key):
  family, size, c, upsample = key
  assert (
    _fingerprint(make_config(family, upsample, 128, width=64), (size, size, c)) == (_RECORDED[key])
  )


@pytest.mark.parametrize("key", sorted(_RECORDED_OUTPUTS))
def test_earlier_sizes_compute_what_they_computed(key):
  family, size, upsample = key
  shape = (size, size, 1 if size == 28 else 3)
  enc, dec, ve, vd = abstract_variables(make_config(family, upsample, 8, width=4), shape)
  ve, vd = random_variables(ve, 0), random_variables(vd, 1)
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, *shape)), jnp.float32)
  z = enc.apply(ve, x, train=False)
  xh = dec.apply(vd, z, train=False)
  z4, mean, pixel = _RECORDED_OUTPUTS[key]
  np.testing.assert_allclose(z[0, :4], z4, atol=2e-5)
  np.testing.assert_allclose([float(jnp.mean(xh)), float(xh[1, 5, 7, 0])], [mean, pixel], atol=2e-5)


def test_the_size_rule():
  # S = b·2^k with 4 ≤ b ≤ 7, 16 ≤ S ≤ 256, written out.
  expected = sorted(b * 2**k for b in range(4, 8) for k in range(7) if 16 <= b * 2**k <= 256)
  assert list(models.accepted_image_sizes()) == expected
  assert {16, 28, 32, 48, 64, 96, 128, 224, 256} <= set(expected)
  assert not {15, 36, 100, 257, 300} & set(expected)


@pytest.mark.parametrize(
  "size,nearest", [(36, "32 or 40"), (100, "96 or 112"), (15, "16"), (300, "256"), (8, "16")]
)
def test_unsupported_size_is_refused_naming_the_nearest(size, nearest):
  message = models.image_size_error(size)
  assert message.endswith(f"nearest: {nearest}") and "\n" not in message
  with pytest.raises(ValueError, match=f"nearest: {nearest}"):
    models.create_models(make_config("resnet18"), (size, size, 3))
  config = make_config("dcgan")
  config.data.image_size = size
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_image_shape(config)
  assert str(e.value) == f"config.data.image_size = {size}: {message}"


def test_non_square_stored_images_ask_for_image_size():
  config = make_config("dcgan")
  config.data.image_size = None
  with pytest.raises(
    config_checks.ConfigError, match=r"not square; set config.data.image_size \(e.g. 32\)"
  ):
    config_checks.check_image_shape(config, (30, 34, 3))


@pytest.mark.parametrize("family", models.ENCODERS)
def test_every_accepted_size_maps_images_to_features_and_back(family):
  config = make_config(family, "pixel_shuffle", 8, width=4)
  for size in models.accepted_image_sizes():
    shape = (size, size, 3)
    enc, dec, ve, vd = abstract_variables(config, shape)
    z = jax.eval_shape(lambda v, s=shape: enc.apply(v, jnp.zeros((2, *s)), train=False), ve)
    x = jax.eval_shape(lambda v: dec.apply(v, jnp.zeros((2, 8)), train=False), vd)
    assert (z.shape, x.shape) == ((2, 8), (2, *shape)), size


def test_architectures_follow_the_size():
  # DCGAN: one stride-2 stage per halving to a base of 4..7, widths doubling up to 8w.
  assert models.dcgan_stages(64) == (64, (1, 2, 4, 8))
  assert models.dcgan_stages(28) == (32, (1, 2, 4))  # padded, as always
  assert models.dcgan_stages(224) == (224, (1, 2, 4, 8, 8))  # 224 → 7
  # ResNet-18: (stem halvings, stage halvings); the last map in 4..12.
  assert [models.resnet18_halvings(s) for s in (16, 32, 64, 96, 128, 192, 256)] == [
    (0, 2),
    (0, 3),
    (0, 3),
    (0, 3),
    (1, 3),
    (1, 3),
    (2, 3),
  ]
  assert models.describe_architecture(make_config("dcgan", width=8), (64, 64, 3)) == [
    "encoder dcgan: 64→32→16→8→4, widths 8/16/32/64",
    "decoder dcgan: 4→8→16→32→64, widths 64/32/16/8/3, pixel_shuffle upsampling",
  ]
  assert models.describe_architecture(make_config("resnet18", width=8), (128, 128, 1)) == [
    "encoder resnet18: 7×7 stride-2 stem 128→64, stages 64→32→16→8, widths 8/16/32/64",
    "decoder resnet18: stages 8→16→32→64, 1 more 2× to 128 (the stem's mirror), "
    "widths 64/32/16/8, pixel_shuffle upsampling",
  ]
  assert models.describe_architecture(make_config("dcgan", width=8), (28, 28, 1))[0] == (
    "encoder dcgan: 28 padded to 32→16→8→4, widths 8/16/32"
  )


def _conv(k, cin, cout, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def test_new_sizes_have_the_parameters_of_their_description():
  # Independent counts, written from the architecture: DCGAN at 64 (w, 2w, 4w, 8w to 4×4).
  w, d, c = 8, 16, 3
  _, _, ve, vd = abstract_variables(make_config("dcgan", "resize_conv", d, width=w), (64, 64, c))
  enc = _conv(4, c, w, bias=True) + sum(
    _conv(4, a, b) + 2 * b for a, b in [(w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)]
  )
  assert models.count_params(ve["params"]) == enc + 4 * 4 * 8 * w * d + d
  dec = d * 4 * 4 * 8 * w + 2 * 8 * w + _conv(3, w, c, bias=True)
  dec += sum(_conv(3, a, b) + 2 * b for a, b in [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)])
  assert models.count_params(vd["params"]) == dec
  # ResNet-18 at 128 against 96: a 7×7 stem instead of a 3×3 one, an 8×8 instead of a
  # 12×12 last map, and the stem's mirror (one resize_conv to w + BatchNorm).
  cfg = make_config("resnet18", "resize_conv", d, width=w)
  _, _, ve96, vd96 = abstract_variables(cfg, (96, 96, c))
  _, _, ve128, vd128 = abstract_variables(cfg, (128, 128, c))
  count = models.count_params
  assert count(ve128["params"]) - count(ve96["params"]) == _conv(7, c, w) - _conv(3, c, w)
  assert count(vd128["params"]) - count(vd96["params"]) == (
    d * (8 * 8 - 12 * 12) * 8 * w + _conv(3, w, w) + 2 * w
  )


@pytest.mark.parametrize(
  # ResNet-18's compile is over a minute on 2 busy cores: slow; its shapes at every size
  # are checked above.
  "family",
  ["dcgan", pytest.param("resnet18", marks=pytest.mark.slow)],
)
def test_64x64_pair_runs_a_training_iteration(family):
  config = make_config(family, "resize_conv", 8, width=4)
  config.train.batch_size, config.data.num_views = 8, 2
  shape = (64, 64, 3)
  mesh = sharding.create_mesh(jax.devices()[:1])  # one device: compiles fastest
  state = sharding.replicate(create_train_state(config, shape, jax.random.key(0)), mesh)
  encoder_step, decoder_step = steps.make_steps(config, shape)
  rng = np.random.default_rng(0)
  host = {
    "image": rng.uniform(-1, 1, (8, *shape)).astype(np.float32),
    "views": rng.uniform(-1, 1, (2, 8, *shape)).astype(np.float32),
    "label": np.zeros(8, np.int32),
  }
  before = jax.device_get(state.decoder_params)
  state, metrics = steps.train_iteration(
    encoder_step, decoder_step, state, sharding.shard_batch(host, mesh), 1
  )
  assert int(state.step) == 1
  assert all(np.isfinite(float(v)) for v in jax.device_get(metrics).values())
  moved = jax.tree_util.tree_map(
    lambda a, b: bool(np.any(a != b)), before, jax.device_get(state.decoder_params)
  )
  assert any(jax.tree_util.tree_leaves(moved))
