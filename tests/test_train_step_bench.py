"""benchmarks/train_step_bench.py's PyTorch baseline computes what the project computes.

Only where PyTorch is installed (a benchmark-only dependency; CI has none): the
whole module is skipped otherwise.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from configs import fashion_mnist, tiny  # noqa: E402
from uctrl_jax import models  # noqa: E402
from uctrl_jax import rate_reduction as rr  # noqa: E402

from benchmarks import torch_uctrl  # noqa: E402
from benchmarks import train_step_bench as bench  # noqa: E402
from benchmarks.jax_loop import unit_rows  # noqa: E402


@pytest.mark.parametrize("n", [8, 100])  # 2n < d (row side of the Gram) and 2n ≥ d (d side)
@pytest.mark.parametrize("sample_distance", ["cosine", "exact"])
@pytest.mark.parametrize("sample_reduction", ["mean", "sum"])
def test_torch_objective_matches_jax(n, sample_distance, sample_reduction):
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
  )
  want = jax.device_get(rr.uctrl_objective(Z, Zhat, Z_aug, aug_target="image", **kwargs))
  got = torch_uctrl.uctrl_objective(*(torch.from_numpy(a) for a in (Z, Zhat, Z_aug)), **kwargs)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-4, atol=1e-4, err_msg=key)


def test_benchmark_startup_check_passes():
  assert bench.check_objectives_agree(fashion_mnist.get_config(), sizes=(16, 128)) < 1e-4


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
  [result] = bench.main(["--cases", "tiny", "--repeats", "1", "--breakdown", "--json", str(out)])
  assert result["compiles_per_iteration"][0] > 0
  assert result["compiles_per_iteration"][1:] == [0, 0]
  assert out.exists()
