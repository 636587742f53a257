"""benchmarks/train_step_bench.py's PyTorch baseline computes what the project computes:
the same objective, nets, steps and optimizers as today's default, from the same weights.

Only where PyTorch is installed (requirements.txt pins its CPU build for this test; it
is no dependency of uctrl_jax): the whole module is skipped otherwise.
"""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from configs import cifar, fashion_mnist, tiny  # noqa: E402
from uctrl_jax import models  # noqa: E402
from uctrl_jax import rate_reduction as rr  # noqa: E402

from benchmarks import jax_loop  # noqa: E402
from benchmarks import torch_uctrl  # noqa: E402
from benchmarks import train_step_bench as bench  # noqa: E402
from benchmarks.jax_loop import unit_rows  # noqa: E402


@pytest.mark.parametrize("n", [8, 100])  # 2n < d (row side of the Gram) and 2n ≥ d (d side)
@pytest.mark.parametrize("sample_distance", ["cosine", "exact"])
@pytest.mark.parametrize("sample_reduction", ["mean", "sum"])
@pytest.mark.parametrize("aug_target", ["mean", "image"])
def test_torch_objective_matches_jax(n, sample_distance, sample_reduction, aug_target):
  rng = np.random.default_rng(n)
  d = 128
  Z = unit_rows(rng, n, d)
  Zhat = unit_rows(rng, n, d) + 2 * Z
  Z_aug = unit_rows(rng, 2, n, d) + 2 * Z
  kwargs = dict(
    eps_sq=0.5,
    lambda_aug=10.0,
    lambda_self=3.0,
    sample_distance=sample_distance,
    sample_reduction=sample_reduction,
    aug_target=aug_target,
  )
  want = jax.device_get(rr.uctrl_objective(Z, Zhat, Z_aug, **kwargs))
  got = torch_uctrl.uctrl_objective(*(torch.from_numpy(a) for a in (Z, Zhat, Z_aug)), **kwargs)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-4, atol=1e-4, err_msg=key)


def test_benchmark_startup_check_passes():
  # The default's terms (views' mean target, R over the views), the decoder step's too.
  config = fashion_mnist.get_config()
  assert (config.loss.aug_target, config.loss.rate_on_views) == ("mean", True)
  assert bench.check_objectives_agree(config, sizes=(16, 128)) < 1e-5


def _tiny_resnet_config():
  config = cifar.get_config()
  config.model.width, config.model.feature_dim = 8, 16
  config.train.batch_size, config.data.num_views = 8, 2
  return config


FAMILIES = {"dcgan": (tiny.get_config, (28, 28, 1)), "resnet18": (_tiny_resnet_config, (32, 32, 3))}


@functools.cache
def _loop(family: str) -> jax_loop.JaxLoop:
  """A tiny config of ``family`` and its JaxLoop, compiled once for the module's tests
  (each test calls ``reset()`` first)."""
  make_config, image_shape = FAMILIES[family]
  config = make_config()
  return jax_loop.JaxLoop(config, image_shape, jax_loop.random_batch(config, image_shape))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loaded_twin_encodes_and_decodes_as_jax(family):
  """load_jax_weights maps every layer: the eval-mode nets give JAX's outputs."""
  jl = _loop(family)
  jl.reset()
  config, image_shape = jl.config, jl.image_shape
  model = torch_uctrl.TorchUCTRL(config, image_shape)

  # Non-trivial BN statistics, so that a statistic landing in the wrong layer shows.
  def shift(stats):
    return jax.tree.map(lambda a: a + 0.1 * np.arange(a.size).reshape(a.shape) / a.size, stats)

  s = jl.state.replace(
    encoder_batch_stats=shift(jl.state.encoder_batch_stats),
    decoder_batch_stats=shift(jl.state.decoder_batch_stats),
  )
  model.load_jax_weights(jax.device_get(s))
  encoder, decoder = models.create_models(config, image_shape)

  @jax.jit
  def loop(s, x):
    z = encoder.apply(
      {"params": s.encoder_params, "batch_stats": s.encoder_batch_stats}, x, train=False
    )
    xhat = decoder.apply(
      {"params": s.decoder_params, "batch_stats": s.decoder_batch_stats}, z, train=False
    )
    return z, xhat

  z, xhat = jax.device_get(loop(s, jl.host_batch["image"]))
  model.encoder.eval()
  model.decoder.eval()
  with torch.no_grad():
    z_t = model.encoder(bench.nchw(jl.host_batch)[0])
    xhat_t = model.decoder(torch.from_numpy(np.array(z)))
  np.testing.assert_allclose(z_t.numpy(), z, atol=1e-5)
  np.testing.assert_allclose(xhat_t.numpy().transpose(0, 2, 3, 1), xhat, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_twin_steps_as_jax_from_the_same_weights(family):
  """Every logged term, gradient norm and Adam update of two iterations (the ResNet
  config with its two encoder steps per iteration)."""
  jl = _loop(family)
  jl.reset()
  model = torch_uctrl.TorchUCTRL(jl.config, jl.image_shape)
  worst = bench.check_iteration_agrees(jl, model, iterations=2)
  assert worst["terms"] < 1e-4 and worst["grad_norm"] < 1e-2 and worst["update"] < 1e-2


@pytest.mark.parametrize(
  "key,value",
  [
    ("loss.lambda_self", 10.0),  # an objective term
    ("train.decoder_lr", 1e-3),  # an optimizer
    ("train.encoder_bn_in_decoder_step", "batch"),  # which statistics a pass reads
  ],
)
def test_iteration_check_fails_for_a_twin_of_another_recipe(key, value):
  jl = _loop("dcgan")
  jl.reset()
  other = tiny.get_config()
  section, name = key.split(".")
  other[section][name] = value
  with pytest.raises(AssertionError, match="differ"):
    bench.check_iteration_agrees(jl, torch_uctrl.TorchUCTRL(other, jl.image_shape), iterations=2)


@pytest.mark.parametrize(
  "encoder,decoder,image_shape",
  [("dcgan", "dcgan", (28, 28, 1)), ("resnet18", "resnet18", (32, 32, 3))],
)
def test_torch_nets_have_the_jax_parameter_counts(encoder, decoder, image_shape):
  config = tiny.get_config()
  config.model.encoder, config.model.decoder = encoder, decoder
  variables = jax.eval_shape(lambda: models.init_models(config, image_shape, jax.random.key(0)))
  enc, dec = torch_uctrl.create_models(config, image_shape)
  assert torch_uctrl.count_params(enc) == models.count_params(variables["encoder_params"])
  assert torch_uctrl.count_params(dec) == models.count_params(variables["decoder_params"])
  x = torch.zeros(4, image_shape[2], *image_shape[:2])
  z = enc(x)
  assert z.shape == (4, config.model.feature_dim)
  assert dec(z).shape == x.shape


def test_torch_iteration_updates_only_the_stepped_player():
  config = tiny.get_config()
  model = torch_uctrl.TorchUCTRL(config, (28, 28, 1))
  rng = np.random.default_rng(0)
  X = torch.from_numpy(rng.uniform(-1, 1, (16, 1, 28, 28)).astype(np.float32))
  views = torch.from_numpy(rng.uniform(-1, 1, (2, 16, 1, 28, 28)).astype(np.float32))
  snapshot = lambda m: [t.clone() for t in m.state_dict().values() if t.is_floating_point()]  # noqa: E731
  changed = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
  enc0, dec0 = snapshot(model.encoder), snapshot(model.decoder)
  terms = model.encoder_step(X, views)
  assert changed(enc0, snapshot(model.encoder))
  assert not changed(dec0, snapshot(model.decoder))  # nor its running statistics
  enc1 = snapshot(model.encoder)
  terms = model.decoder_step(X, views)
  assert changed(dec0, snapshot(model.decoder))
  assert not changed(enc1, snapshot(model.encoder))
  assert all(bool(torch.isfinite(v)) for v in terms.values())


@pytest.mark.slow
def test_benchmark_runs_on_the_tiny_case(tmp_path):
  out = tmp_path / "r.json"
  [result] = bench.main(
    ["--cases", "tiny", "--repeats", "1", "--breakdown", "--per_op", "--json", str(out)]
  )
  assert result["compiles_per_iteration"][0] > 0
  assert result["compiles_per_iteration"][1:] == [0, 0]
  assert out.exists()
