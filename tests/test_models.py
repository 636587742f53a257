"""uctrl_jax.models: shapes, parameter counts, BatchNorm modes, upsampling, errors.

Parameter counts are checked against formulas written here from the architecture
(conv ``k·k·c_in·c_out``, biases, BatchNorm scale + bias), not read off the modules.
Shapes of the big combinations use ``jax.eval_shape`` (no compute), so the file stays
fast on a 2-core CPU.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from uctrl_jax import models

D = 16  # small feature dim for the compute tests
SIZES = {"dcgan": [(28, 28, 1), (32, 32, 3)], "resnet18": [(32, 32, 3), (96, 96, 3)]}
COMBOS = [
  (fam, shape, up) for fam in models.ENCODERS for shape in SIZES[fam] for up in models.UPSAMPLES
]


def make_config(
  family="dcgan", upsample="pixel_shuffle", feature_dim=D, width=None, dtype=None, decoder=None
):
  config = default.get_config()
  config.model.encoder = family
  config.model.decoder = decoder or family
  config.model.upsample = upsample
  config.model.feature_dim = feature_dim
  if width is not None:
    config.model.width = width
  if dtype is not None:
    config.model.dtype = dtype
  return config


def abstract_variables(config, shape, batch=2):
  """(encoder, decoder, encoder vars, decoder vars) as ShapeDtypeStructs."""
  enc, dec = models.create_models(config, shape)
  key = jax.random.key(0)
  x = jnp.zeros((batch, *shape))
  z = jnp.zeros((batch, config.model.feature_dim))
  ve = jax.eval_shape(lambda: enc.init(key, x, train=False))
  vd = jax.eval_shape(lambda: dec.init(key, z, train=False))
  return enc, dec, ve, vd


def images(shape, batch=4, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, *shape), minval=-1, maxval=1)


def random_variables(abstract, seed):
  """Concrete variables for ``abstract`` (from ``eval_shape``), drawn with NumPy.

  Compiling flax's per-parameter RNG costs seconds per model on this CPU, so compute
  tests that do not test initialisation use these: He-scaled kernels, BN scale 1,
  running variance 1, everything else 0.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    if "scale" in name or "var" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def dcgan28():
  """(encoder, decoder, variables from init_models) of a width-8 28×28 DCGAN pair."""
  shape = (28, 28, 1)
  config = make_config("dcgan", "pixel_shuffle", width=8)
  enc, dec = models.create_models(config, shape)
  return enc, dec, models.init_models(config, shape, jax.random.key(0))


# ----------------------------------------------------------------------------
# Independent parameter counts, from the architecture description.
# ----------------------------------------------------------------------------


def conv(k, cin, cout, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def bn(c):
  return 2 * c  # scale + bias (running mean / var live in batch_stats)


def up(cin, cout, method, bias=False):
  kernel = {
    "conv_transpose": 16 * cin * cout,  # 4×4 transposed conv
    "pixel_shuffle": 9 * cin * 4 * cout,  # 3×3 conv to 4·cout, depth-to-space
    "resize_conv": 9 * cin * cout,
  }[method]  # nearest 2×, 3×3 conv
  # pixel_shuffle's conv has 4·cout outputs, so one bias per sub-pixel position.
  return kernel + ((4 * cout if method == "pixel_shuffle" else cout) if bias else 0)


def dcgan_encoder_count(c, w, d):
  n = conv(4, c, w, bias=True)  # first conv: no BN, so a bias
  for cin, cout in [(w, 2 * w), (2 * w, 4 * w)]:
    n += conv(4, cin, cout) + bn(cout)
  return n + conv(4, 4 * w, d, bias=True)  # CTRL's 4×4 valid conv = linear head on 4×4×4w


def dcgan_decoder_count(c, w, d, method):
  n = d * (4 * 4 * 4 * w) + bn(4 * w)  # stem (4×4 transposed conv on 1×1), no bias
  for cin, cout in [(4 * w, 2 * w), (2 * w, w)]:
    n += up(cin, cout, method) + bn(cout)
  return n + up(w, c, method, bias=True)


def basic_block(cin, cout, resample=None, method=None):
  first = up(cin, cout, method) if resample == "up" else conv(3, cin, cout)
  n = first + bn(cout) + conv(3, cout, cout) + bn(cout)
  if resample is not None or cin != cout:
    n += conv(1, cin, cout) + bn(cout)  # projection shortcut
  return n


def resnet18_trunk_count(c, w):
  n = conv(3, c, w) + bn(w)  # CIFAR stem
  cin = w
  for stage, mult in enumerate((1, 2, 4, 8)):
    cout = w * mult
    n += basic_block(cin, cout, "down" if stage else None) + basic_block(cout, cout)
    cin = cout
  return n


def resnet18_decoder_count(s, c, w, d, method):
  s0 = s // 8
  n = d * s0 * s0 * 8 * w + bn(8 * w)
  cin = 8 * w
  for stage, mult in enumerate((8, 4, 2, 1)):
    cout = w * mult
    n += basic_block(cin, cout, "up" if stage else None, method) + basic_block(cout, cout)
    cin = cout
  return n + conv(3, w, c, bias=True)


@pytest.mark.parametrize("upsample", models.UPSAMPLES)
@pytest.mark.parametrize("shape", SIZES["dcgan"])
def test_dcgan_param_counts_width64(shape, upsample):
  d = 128
  _, _, ve, vd = abstract_variables(make_config("dcgan", upsample, d, width=64), shape)
  c = shape[-1]
  assert models.count_params(ve["params"]) == dcgan_encoder_count(c, 64, d)
  assert models.count_params(vd["params"]) == dcgan_decoder_count(c, 64, d, upsample)


def test_dcgan_param_counts_known_values():
  # The formulas above, evaluated: pins the numbers quoted in the issue note.
  assert dcgan_encoder_count(1, 64, 128) == 1_181_632
  assert dcgan_encoder_count(3, 64, 128) == 1_183_680
  assert dcgan_decoder_count(1, 64, 128, "conv_transpose") == 1_181_569
  assert dcgan_decoder_count(1, 64, 128, "pixel_shuffle") == 2_002_052
  assert dcgan_decoder_count(1, 64, 128, "resize_conv") == 894_401
  assert dcgan_decoder_count(3, 64, 128, "conv_transpose") == 1_183_619


@pytest.mark.parametrize("upsample", models.UPSAMPLES)
@pytest.mark.parametrize("shape", SIZES["resnet18"])
def test_resnet18_param_counts(shape, upsample):
  d = 128
  _, _, ve, vd = abstract_variables(make_config("resnet18", upsample, d), shape)
  c = shape[-1]
  trunk = resnet18_trunk_count(c, 64)
  # Standard CIFAR ResNet-18 is 11 173 962 with its 512 → 10 classifier (5 130).
  assert trunk == 11_173_962 - (512 * 10 + 10) == 11_168_832
  assert models.count_params(ve["params"]) == trunk + 512 * d + d
  assert models.count_params(vd["params"]) == resnet18_decoder_count(shape[0], c, 64, d, upsample)


@pytest.mark.parametrize("depth", [1, 2])
def test_dcgan_encoder_depth_adds_3x3_convs_at_each_resolution(depth):
  config = make_config("dcgan", width=16, feature_dim=32)
  config.model.encoder_depth = depth
  enc, _, ve, _ = abstract_variables(config, (28, 28, 1))
  extra = depth * sum(conv(3, m * 16, m * 16) + bn(m * 16) for m in (1, 2, 4))
  assert models.count_params(ve["params"]) == dcgan_encoder_count(1, 16, 32) + extra
  # Still unit rows out, and the decoder is untouched by the encoder's depth.
  variables = enc.init(jax.random.key(0), jnp.ones((2, 28, 28, 1)), train=False)
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), minval=-1, maxval=1)
  z, _ = enc.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  config.model.encoder = "resnet18"
  with pytest.raises(
    ValueError,
    match="encoder_depth = 1 must be ≥ 0, and > 0 only with" if depth == 1 else "encoder_depth = 2",
  ):
    models.create_models(config, (32, 32, 3))


def test_width_scales_params():
  _, _, ve32, _ = abstract_variables(make_config("dcgan", width=32, feature_dim=128), (32, 32, 3))
  assert models.count_params(ve32["params"]) == dcgan_encoder_count(3, 32, 128)


# ----------------------------------------------------------------------------
# Shapes and dtypes.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("family,shape,upsample", COMBOS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_output_shapes_and_dtypes(family, shape, upsample, dtype):
  config = make_config(family, upsample, dtype=dtype)
  enc, dec, ve, vd = abstract_variables(config, shape, batch=3)
  for leaf in jax.tree_util.tree_leaves((ve, vd)):
    assert leaf.dtype == jnp.float32  # params and stats stay float32 under bf16
  z = jax.eval_shape(lambda v: enc.apply(v, jnp.zeros((3, *shape)), train=False), ve)
  x = jax.eval_shape(lambda v: dec.apply(v, jnp.zeros((3, D)), train=False), vd)
  assert (z.shape, z.dtype) == ((3, D), jnp.float32)
  assert (x.shape, x.dtype) == ((3, *shape), jnp.float32)


@pytest.mark.parametrize("upsample", models.UPSAMPLES)
def test_upsample_variants_same_shape(upsample):
  x = jnp.ones((2, 4, 5, 3))
  mod = models.Upsample2x(7, upsample)
  y, _ = jax.eval_shape(lambda: mod.init_with_output(jax.random.key(0), x))
  assert y.shape == (2, 8, 10, 7)


@pytest.mark.parametrize(
  "family,shape", [("dcgan", (28, 28, 1)), ("dcgan", (32, 32, 3)), ("resnet18", (32, 32, 3))]
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_unit_rows_and_image_range(family, shape, dtype):
  # resize_conv: the cheapest decoder to compile; the other variants share the code path.
  config = make_config(family, "resize_conv", width=8, dtype=dtype)
  enc, dec, ve, vd = abstract_variables(config, shape)
  ve, vd = random_variables(ve, 0), random_variables(vd, 1)

  @jax.jit
  def loop(ve, vd, x):
    z = enc.apply(ve, x, train=False)
    return z, dec.apply(vd, z * 30.0, train=False)  # large inputs drive tanh to ±1

  z, xh = loop(ve, vd, images(shape))
  assert z.dtype == jnp.float32 and xh.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z, np.float64), axis=1), 1.0, atol=1e-5)
  assert xh.shape == (4, *shape)
  assert np.all(np.isfinite(xh)) and np.all(np.abs(np.asarray(xh)) <= 1.0)


# ----------------------------------------------------------------------------
# Pixel shuffle, L2 normalisation, padding.
# ----------------------------------------------------------------------------


def test_depth_to_space_matches_loop():
  b, h, w, r, c = 2, 3, 4, 2, 3
  x = np.arange(b * h * w * r * r * c, dtype=np.float32).reshape(b, h, w, r * r * c)
  expected = np.zeros((b, h * r, w * r, c), np.float32)
  for bi, hi, wi, i, j, ci in itertools.product(
    range(b), range(h), range(w), range(r), range(r), range(c)
  ):
    expected[bi, hi * r + i, wi * r + j, ci] = x[bi, hi, wi, (i * r + j) * c + ci]
  np.testing.assert_array_equal(np.asarray(models.depth_to_space(jnp.asarray(x), r)), expected)
  with pytest.raises(ValueError, match="divisible"):
    models.depth_to_space(jnp.zeros((1, 2, 2, 6)), 2)


def test_pixel_shuffle_upsample_is_conv_then_depth_to_space():
  x = jax.random.normal(jax.random.key(0), (1, 3, 3, 2))
  mod = models.Upsample2x(5, "pixel_shuffle")
  y, variables = mod.init_with_output(jax.random.key(1), x)
  kernel = variables["params"]["Conv_0"]["kernel"]
  assert kernel.shape == (3, 3, 2, 20)
  conv = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  np.testing.assert_allclose(y, models.depth_to_space(conv, 2), rtol=1e-6, atol=1e-6)


def test_dcgan_28_pads_with_black_and_crops_centre():
  x = jnp.zeros((1, 28, 28, 1))
  padded = models._pad_to(x, 32)
  assert padded.shape == (1, 32, 32, 1)
  assert float(padded[0, 0, 0, 0]) == -1.0 and float(padded[0, 2, 2, 0]) == 0.0
  np.testing.assert_array_equal(models._crop_to(padded, 28, 28), x)


# ----------------------------------------------------------------------------
# BatchNorm modes, gradients.
# ----------------------------------------------------------------------------


def test_batch_stats_update_in_train_not_in_eval(dcgan28):
  shape = (28, 28, 1)
  enc, dec, v = dcgan28
  enc_vars = {"params": v["encoder_params"], "batch_stats": v["encoder_batch_stats"]}
  dec_vars = {"params": v["decoder_params"], "batch_stats": v["decoder_batch_stats"]}
  x = images(shape, batch=8)
  z = enc.apply(enc_vars, x, train=False)

  for module, variables, inp in [(enc, enc_vars, x), (dec, dec_vars, z)]:

    @jax.jit
    def both_modes(variables, inp):
      return [
        module.apply(variables, inp, train=train, mutable=["batch_stats"])[1]
        for train in (True, False)
      ]

    train_upd, eval_upd = both_modes(variables, inp)
    old = jax.tree_util.tree_leaves(variables["batch_stats"])
    new_train = jax.tree_util.tree_leaves(train_upd["batch_stats"])
    new_eval = jax.tree_util.tree_leaves(eval_upd["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new_train))
    for a, b in zip(old, new_eval):
      np.testing.assert_array_equal(a, b)

  # Eval mode is per-sample (running stats): an image's feature ignores its batch-mates.
  z_one = enc.apply(enc_vars, x[:1], train=False)
  np.testing.assert_allclose(z_one, z[:1], rtol=1e-5, atol=1e-5)


def test_closed_loop_gradients_finite(dcgan28):
  shape = (28, 28, 1)
  enc, dec, v = dcgan28
  x = images(shape, batch=4)

  @jax.jit
  def loss_and_grads(pe, pd):
    def loss(pe, pd):
      z, s = enc.apply(
        {"params": pe, "batch_stats": v["encoder_batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      xh, _ = dec.apply(
        {"params": pd, "batch_stats": v["decoder_batch_stats"]},
        z,
        train=True,
        mutable=["batch_stats"],
      )
      zh, _ = enc.apply(
        {"params": pe, "batch_stats": s["batch_stats"]}, xh, train=True, mutable=["batch_stats"]
      )
      return jnp.sum(z * zh) + jnp.mean((xh - x) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1))(pe, pd)

  val, grads = loss_and_grads(v["encoder_params"], v["decoder_params"])
  assert np.isfinite(val)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads[1]))


def test_init_models_structure(dcgan28):
  enc, dec, v = dcgan28
  assert set(v) == {
    "encoder_params",
    "encoder_batch_stats",
    "decoder_params",
    "decoder_batch_stats",
  }
  for leaf in jax.tree_util.tree_leaves(v):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
  _, _, ve, vd = abstract_variables(make_config("dcgan", "pixel_shuffle", width=8), (28, 28, 1))
  assert jax.tree_util.tree_structure(v["encoder_params"]) == jax.tree_util.tree_structure(
    ve["params"]
  )
  assert models.count_params(v["decoder_params"]) == models.count_params(vd["params"])


def test_zero_input_encoder_output_finite(dcgan28):
  enc, _, v = dcgan28
  variables = {"params": v["encoder_params"], "batch_stats": v["encoder_batch_stats"]}
  x = jnp.zeros((2, 28, 28, 1))
  z = enc.apply(variables, x, train=False)
  assert np.all(np.isfinite(z))
  # Zero weights make Z exactly zero: the normalisation must stay finite there.
  params = jax.tree_util.tree_map(jnp.zeros_like, v["encoder_params"])
  stats = v["encoder_batch_stats"]
  z0, g = jax.jit(
    jax.value_and_grad(
      lambda p: jnp.sum(enc.apply({"params": p, "batch_stats": stats}, x, train=False))
    )
  )(params)
  assert float(z0) == 0.0
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g))


# ----------------------------------------------------------------------------
# Configuration.
# ----------------------------------------------------------------------------


def test_default_configs_build():
  from configs import cifar, fashion_mnist

  enc, dec = models.create_models(default.get_config(), (28, 28, 1))
  assert isinstance(enc, models.DCGANEncoder) and isinstance(dec, models.DCGANDecoder)
  assert enc.feature_dim == default.get_config().model.feature_dim
  enc, dec = models.create_models(fashion_mnist.get_config(), (28, 28, 1))
  assert isinstance(enc, models.DCGANEncoder)
  enc, dec = models.create_models(cifar.get_config(), (32, 32, 3))
  assert isinstance(enc, models.ResNet18Encoder) and isinstance(dec, models.ResNet18Decoder)


def test_mixed_families():
  config = make_config("resnet18", decoder="dcgan")
  enc, dec = models.create_models(config, (32, 32, 3))
  assert isinstance(enc, models.ResNet18Encoder) and isinstance(dec, models.DCGANDecoder)


@pytest.mark.parametrize(
  "field,value",
  [
    ("encoder", "vgg"),
    ("decoder", "unet"),
    ("upsample", "bilinear"),
    ("dtype", "float16"),
    ("width", -4),
    ("feature_dim", 0),
  ],
)
def test_bad_config_raises(field, value):
  config = make_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=rf"{field}.*{value}"):
    models.create_models(config, (32, 32, 3))


@pytest.mark.parametrize(
  "family,shape",
  [
    ("dcgan", (36, 36, 3)),
    ("dcgan", (28, 32, 1)),
    ("resnet18", (100, 100, 1)),
    ("dcgan", (32, 32)),
  ],
)
def test_bad_image_shape_raises(family, shape):
  # Accepted sizes and the refusal's wording: tests/test_image_sizes.py.
  with pytest.raises(ValueError, match=r"image_shape"):
    models.create_models(make_config(family), shape)


def test_wrong_input_shape_raises():
  enc, _ = models.create_models(make_config("dcgan"), (28, 28, 1))
  with pytest.raises(ValueError, match=r"\(28, 28, 1\)"):
    enc.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)


@pytest.mark.parametrize(
  "name,image_shape",
  [
    ("default", (28, 28, 1)),
    ("fashion_mnist", (28, 28, 1)),
    ("mnist", (28, 28, 1)),
    ("tiny", (28, 28, 1)),
    ("cifar", (32, 32, 3)),
    ("cifar100", (32, 32, 3)),
    ("stl10", (96, 96, 3)),
  ],
)
def test_every_config_builds_models_for_its_images(name, image_shape):
  import importlib

  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.data.image_size in (None, image_shape[0])
  encoder, decoder = models.create_models(config, image_shape)
  assert encoder.feature_dim == config.model.feature_dim
  assert decoder.image_shape == image_shape
