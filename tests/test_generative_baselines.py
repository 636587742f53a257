"""The generative baselines ``loss.mode = "autoencoder"`` and ``"vae"``: their losses against
NumPy, the VAE's Gaussian head, the joint step, the views they do not read, validation,
and a command-line train + eval that runs every evaluator.

The command-line runs train 4 iterations at width 8 on 48 of 64 random 28×28 images and
evaluate on the other 16 (about a minute per mode on 2 idle cores: the autoencoder's is
a slow test).
"""

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import tiny
import uctrl_jax
from uctrl_jax import config_checks
from uctrl_jax import health
from uctrl_jax import input_pipeline
from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax import sharding
from uctrl_jax import steps
from uctrl_jax.evaluators import conditional_generation
from uctrl_jax.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SHAPE = (28, 28, 1)
MODES = list(objectives.GENERATIVE_MODES)


def _config(mode, **train_settings):
  config = tiny.get_config()
  config.loss.mode = mode
  config.train.update(train_settings)
  return config


def _images(n, seed=0):
  """(n, 28, 28, 1) float32 in [-1, 1]: black with one bright 8×8 square each (learnable)."""
  rng = np.random.default_rng(seed)
  x = -np.ones((n, *IMAGE_SHAPE), np.float32)
  for i, (r, c) in enumerate(rng.integers(0, 20, (n, 2))):
    x[i, r : r + 8, c : c + 8] = 1.0
  return x


# ----------------------------------------------------------------------------
# Losses against NumPy.
# ----------------------------------------------------------------------------


def test_autoencoder_loss_is_the_pixel_mse():
  rng = np.random.default_rng(0)
  X, Xhat = rng.uniform(-1, 1, (2, 5, 4, 4, 3)).astype(np.float32)
  terms = objectives.autoencoder_terms(jnp.asarray(X), jnp.asarray(Xhat))
  expected = np.mean((X.astype(np.float64) - Xhat) ** 2)
  np.testing.assert_allclose(terms["loss"], expected, rtol=1e-5)
  assert terms["recon_mse"] == terms["loss"]


def test_vae_negative_elbo_matches_numpy():
  rng = np.random.default_rng(1)
  B, d, sigma_sq = 6, 5, 0.07
  X, Xhat = rng.uniform(-1, 1, (2, B, 4, 4, 2))
  mu, log_var = rng.normal(size=(B, d)), rng.normal(scale=0.5, size=(B, d))
  terms = objectives.vae_terms(
    *(jnp.asarray(a, jnp.float32) for a in (X, Xhat, mu, log_var)), sigma_sq
  )
  # Reconstruction: the Gaussian log-density of every pixel (scipy), summed per image.
  nll = -stats.norm.logpdf(X, loc=Xhat, scale=math.sqrt(sigma_sq)).reshape(B, -1).sum(1)
  # KL of two Gaussians per dimension: log(σ_p/σ_q) + (σ_q² + (μ_q − μ_p)²) / (2σ_p²) − ½.
  sigma = np.exp(0.5 * log_var)
  kl = np.sum(-np.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5, axis=1)
  np.testing.assert_allclose(terms["recon_nll"], nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["kl"], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], nll.mean() + kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["recon_mse"], np.mean((X - Xhat) ** 2), rtol=1e-5)
  np.testing.assert_allclose(terms["posterior_var"], np.mean(sigma**2), rtol=1e-5)


def test_kl_is_zero_at_the_prior_and_a_monte_carlo_estimate_elsewhere():
  d = 3
  zero = objectives.gaussian_kl(jnp.zeros((2, d)), jnp.zeros((2, d)))
  np.testing.assert_array_equal(zero, np.zeros(2))
  mu, log_var = np.array([[0.5, -1.0, 0.2]]), np.array([[0.3, -0.8, 0.0]])
  z = np.asarray(
    objectives.reparameterize(
      jax.random.key(0),
      jnp.asarray(np.repeat(mu, 200_000, 0), jnp.float32),
      jnp.asarray(np.repeat(log_var, 200_000, 0), jnp.float32),
    ),
    np.float64,
  )
  sd = np.exp(0.5 * log_var)
  # The samples are q's: their moments, and E_q[log q(z) − log p(z)] ≈ the closed form.
  np.testing.assert_allclose(z.mean(0), mu[0], atol=0.01)
  np.testing.assert_allclose(z.std(0), sd[0], rtol=0.01)
  log_ratio = stats.norm.logpdf(z, mu, sd).sum(1) - stats.norm.logpdf(z).sum(1)
  closed = float(objectives.gaussian_kl(jnp.asarray(mu), jnp.asarray(log_var))[0])
  assert closed > 0
  np.testing.assert_allclose(log_ratio.mean(), closed, rtol=0.02)


def test_prior_sample_is_standard_normal_and_keyed():
  a = np.asarray(objectives.prior_sample(jax.random.key(3), 50_000, 4))
  assert a.shape == (50_000, 4) and a.dtype == np.float32
  np.testing.assert_allclose(a.mean(0), 0, atol=0.02)
  np.testing.assert_allclose(a.std(0), 1, rtol=0.02)
  np.testing.assert_array_equal(a, objectives.prior_sample(jax.random.key(3), 50_000, 4))


# ----------------------------------------------------------------------------
# The encoder head.
# ----------------------------------------------------------------------------


def test_vae_encoder_has_a_gaussian_head_and_returns_its_mean():
  config = _config("vae")
  encoder, _ = models.create_models(config, IMAGE_SHAPE)
  variables = models.init_models(config, IMAGE_SHAPE, jax.random.key(0))
  enc_vars = {
    "params": variables["encoder_params"],
    "batch_stats": variables["encoder_batch_stats"],
  }
  head = variables["encoder_params"]["FeatureHead_0"]["Dense_0"]["kernel"]
  d = config.model.feature_dim
  assert head.shape[-1] == 2 * d  # μ and log σ²
  x = jnp.asarray(_images(4))
  Z = encoder.apply(enc_vars, x, train=False)
  mu, log_var = encoder.apply(enc_vars, x, train=False, posterior=True)
  assert Z.shape == mu.shape == log_var.shape == (4, d)
  np.testing.assert_array_equal(Z, mu)
  assert not np.allclose(np.linalg.norm(Z, axis=1), 1.0)  # not normalised
  # Other modes keep unit rows and have no posterior.
  sphere, _ = models.create_models(_config("autoencoder"), IMAGE_SHAPE)
  sphere_vars = models.init_models(_config("autoencoder"), IMAGE_SHAPE, jax.random.key(0))
  sphere_vars = {
    "params": sphere_vars["encoder_params"],
    "batch_stats": sphere_vars["encoder_batch_stats"],
  }
  np.testing.assert_allclose(
    np.linalg.norm(sphere.apply(sphere_vars, x, train=False), axis=1), 1, rtol=1e-5
  )
  with pytest.raises(ValueError, match="posterior=True with feature head 'sphere'"):
    sphere.apply(sphere_vars, x, train=False, posterior=True)


# ----------------------------------------------------------------------------
# The joint step.
# ----------------------------------------------------------------------------


def _setup(config):
  mesh = sharding.create_mesh(jax.devices()[:1])
  state = sharding.replicate(create_train_state(config, IMAGE_SHAPE, jax.random.key(0)), mesh)
  step, none = steps.make_steps(config, IMAGE_SHAPE)
  assert none is None
  batch = {
    "image": _images(config.train.batch_size),
    "label": np.zeros(config.train.batch_size, np.int32),
  }
  return mesh, state, step, sharding.shard_batch(batch, mesh)


def _copy(tree):
  return jax.tree.map(np.array, tree)


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("mode", MODES)
def test_joint_step_logs_the_loss_of_its_state_and_lowers_it(mode):
  config = _config(mode, schedule="constant", encoder_lr=2e-3, decoder_lr=2e-3, num_steps=100)
  mesh, state, step, batch = _setup(config)
  del mesh
  start = _copy(state)
  # The logged loss is the mode's loss of the state before the update, recomputed here
  # from the networks (training-mode batch statistics, the step's noise).
  encoder, decoder = models.create_models(config, IMAGE_SHAPE)
  X = jnp.asarray(_images(config.train.batch_size))
  out = encoder.apply(
    {"params": start.encoder_params, "batch_stats": start.encoder_batch_stats},
    X,
    train=True,
    posterior=mode == "vae",
    mutable=["batch_stats"],
  )[0]
  if mode == "vae":
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), steps._VAE_NOISE), 0)  # pylint: disable=protected-access
    Z = objectives.reparameterize(key, *out)
  else:
    Z = out
  Xhat = decoder.apply(
    {"params": start.decoder_params, "batch_stats": start.decoder_batch_stats},
    Z,
    train=True,
    mutable=["batch_stats"],
  )[0]
  expected = (
    objectives.vae_terms(X, Xhat, *out, config.loss.vae_sigma_sq)
    if mode == "vae"
    else objectives.autoencoder_terms(X, Xhat)
  )

  losses = []
  for i in range(25):
    state, metrics = steps.train_iteration(step, None, state, batch, encoder_steps=1)
    metrics = jax.device_get(metrics)
    losses.append(float(metrics["generative/loss"]))
    if i == 0:
      for key, value in expected.items():
        np.testing.assert_allclose(metrics[f"generative/{key}"], value, rtol=2e-4, err_msg=key)
      assert int(state.step) == 1  # one joint update per iteration
      assert _changed(start.encoder_params, state.encoder_params)
      assert _changed(start.decoder_params, state.decoder_params)
      assert _changed(start.encoder_batch_stats, state.encoder_batch_stats)
      assert _changed(start.decoder_batch_stats, state.decoder_batch_stats)
      assert {"encoder/grad_norm", "decoder/grad_norm", "encoder/lr", "decoder/lr"} <= set(metrics)
  assert int(state.step) == 25 and all(map(math.isfinite, losses))
  assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize("frozen", ["encoder", "decoder"])
def test_each_network_has_its_own_optimizer(frozen):
  config = _config("autoencoder", schedule="constant", **{f"{frozen}_lr": 0.0})
  _, state, step, batch = _setup(config)
  start = _copy(state)
  state, _ = step(state, batch)
  other = "decoder" if frozen == "encoder" else "encoder"
  assert not _changed(getattr(start, f"{frozen}_params"), getattr(state, f"{frozen}_params"))
  assert _changed(getattr(start, f"{other}_params"), getattr(state, f"{other}_params"))


def test_health_monitor_skips_the_checks_whose_terms_are_not_logged():
  monitor = health.HealthMonitor(**tiny.get_config().train.health)
  for step, mse in ((1, 0.9), (2, 0.1), (3, 0.9)):
    assert monitor.update(step, {"generative/loss": mse, "generative/recon_mse": mse}) == []


# ----------------------------------------------------------------------------
# Views, validation.
# ----------------------------------------------------------------------------


def test_training_batches_carry_no_views_in_the_generative_modes(random_npz):
  config = _config("vae")
  config.data.name = f"npz:{random_npz(IMAGE_SHAPE)}"
  config.data.num_views = 8  # ignored: no view is made
  assert objectives.training_views(config) == 0
  batch = next(
    input_pipeline.create_dataset(
      config, "train", process_index=0, process_count=1
    ).as_numpy_iterator()
  )
  assert "views" not in batch and batch["image"].shape == (16, *IMAGE_SHAPE)
  config.loss.mode = "uctrl"
  assert objectives.training_views(config) == 8


@pytest.mark.parametrize("mode", MODES)
def test_validation_accepts_the_modes_without_views(mode, random_npz):
  config = _config(mode)
  config.data.name = f"npz:{random_npz(IMAGE_SHAPE)}"
  config.data.num_views = 0
  config_checks.validate_config(config, None, device_count=1, process_count=1)
  config.loss.mode = "uctrl"
  with pytest.raises(
    config_checks.ConfigError, match="config.data.num_views must be an integer ≥ 1"
  ):
    config_checks.validate_config(config, None, device_count=1, process_count=1)


@pytest.mark.parametrize(
  "mode, key, value, message",
  [
    (
      "autoencoder",
      "train.encoder_steps",
      2,
      r"'autoencoder' updates both networks together \(one step per iteration\): config.train.encoder_steps must be 1; got 2",
    ),
    ("vae", "train.encoder_steps", 3, r"'vae' updates both networks together"),
    (
      "vae",
      "loss.vae_sigma_sq",
      0.0,
      r"config.loss.vae_sigma_sq must be a finite number > 0; got 0.0",
    ),
  ],
)
def test_validation_rejects_what_makes_no_sense(mode, key, value, message, random_npz):
  config = _config(mode)
  config.data.name = f"npz:{random_npz(IMAGE_SHAPE)}"
  group, name = key.split(".")
  config[group][name] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate_config(config, None, device_count=1, process_count=1)


@pytest.mark.parametrize(
  "saved_mode, new_mode, refused",
  [
    ("uctrl", "vae", True),
    ("vae", "autoencoder", True),
    ("autoencoder", "uctrl", False),
    ("simclr", "autoencoder", True),
  ],
)
def test_resume_across_modes_only_where_the_checkpoint_fits(
  tmp_path, saved_mode, new_mode, refused
):
  from uctrl_jax import checkpointing  # pylint: disable=import-outside-toplevel

  saved = _config(saved_mode)
  checkpointing.save_config(str(tmp_path), saved)
  config = _config(new_mode)
  if refused:
    with pytest.raises(
      config_checks.ConfigError,
      match=rf"config.loss.mode = '{saved_mode}', this config has '{new_mode}'",
    ):
      config_checks.check_workdir_compatible(config, str(tmp_path))
  else:
    config_checks.check_workdir_compatible(config, str(tmp_path))


# ----------------------------------------------------------------------------
# Conditional generation keeps a VAE's features where they are.
# ----------------------------------------------------------------------------


def test_conditional_generation_decodes_features_in_their_own_space():
  rng = np.random.default_rng(0)
  seen = []

  def decode(Z):
    seen.append(np.asarray(Z))
    return np.zeros((len(Z), 2, 2, 1), np.float32)

  for scale, unit in ((3.0, False), (None, True)):
    Z = rng.normal(size=(40, 4)) * (scale or 1.0)
    if unit:
      Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    seen.clear()
    conditional_generation.evaluate(
      Z, decode, labels=np.arange(40) % 2, num_components=2, num_samples=3, batch_size=8
    )
    norms = np.linalg.norm(np.concatenate(seen), axis=1)
    if unit:
      np.testing.assert_allclose(norms, 1, rtol=1e-5)
    else:
      # Column 0 of each cluster's row is the cluster's mean, unnormalised.
      decoded = np.concatenate(seen)[:8].reshape(2, 4, 4)
      for c in range(2):
        np.testing.assert_allclose(decoded[c, 0], Z[np.arange(40) % 2 == c].mean(0), rtol=1e-5)
      assert norms.max() > 1.5


# ----------------------------------------------------------------------------
# The command line: train, then every evaluator; uctrl_jax.load of a VAE run.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, random_npz):
  """``cli_run(mode) -> (workdir, train stderr)`` of ``main.py`` train + eval, run once per
  mode."""
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=1",
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  runs = {}

  def run(mode):
    if mode in runs:
      return runs[mode]
    workdir = tmp_path_factory.mktemp(mode) / "run"
    flags = [
      "--config=configs/tiny.py",
      f"--workdir={workdir}",
      f"--config.loss.mode={mode}",
      f"--config.data.name=npz:{random_npz(IMAGE_SHAPE)}",
      "--config.data.shuffle_buffer=64",
      "--config.data.train_split=train[:75%]",
      "--config.evals.train_split=train[:75%]",
      "--config.evals.test_split=train[75%:]",
      "--config.evals.batch_size=16",
      "--config.evals.linear_probe.steps=20",
      "--config.evals.clustering.num_restarts=2",
      "--config.evals.clustering.mcr2_steps=10",
    ]
    stderr = {}
    for what in ("train", "eval"):
      proc = subprocess.run(
        [sys.executable, "main.py", f"--mode={what}", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
      )
      assert proc.returncode == 0, proc.stderr[-3000:]
      stderr[what] = proc.stderr
    runs[mode] = (str(workdir), stderr["train"])
    return runs[mode]

  return run


# The VAE's run (its head, features off the sphere, `load`) in the quick suite; the
# autoencoder's, which differs from it only in the loss, with the slow tests.
@pytest.mark.parametrize("mode", [pytest.param("autoencoder", marks=pytest.mark.slow), "vae"])
def test_cli_trains_and_runs_every_evaluator(cli_run, mode):
  workdir, stderr = cli_run(mode)
  # The progress line shows the mode's own terms; the game's are not there.
  [last] = re.findall(r"step 4/4 \| ([^|]*) \|", stderr)
  terms = dict(zip(last.split()[::2], map(float, last.split()[1::2])))
  own = {"loss", "mse"} | ({"nll", "KL", "σ²_q"} if mode == "vae" else set())
  assert set(terms) == own and all(map(math.isfinite, terms.values())), last
  assert "0 view(s) each" in stderr
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["step"] == 4 and results["training"]["loss_mode"] == mode
  assert results["not_applicable"] == [] and results["skipped_without_labels"] == []
  prefixes = {key.split("/")[0] for key in results["metrics"] if not key.startswith("eval_seconds")}
  assert prefixes == set(tiny.get_config().evals.names)
  for key in (
    "knn/top1",
    "reconstruction/psnr",
    "conditional_generation/explained_variance",
    "structure/score",
  ):
    assert key in results["metrics"] and math.isfinite(results["metrics"][key]), key
  assert os.path.isfile(os.path.join(workdir, "figures", "conditional_generation.png"))


def test_load_of_a_vae_run_encodes_to_the_posterior_mean(cli_run):
  loaded = uctrl_jax.load(cli_run("vae")[0])
  x = _images(16, seed=5)
  Z = np.asarray(loaded.encode(x))
  np.testing.assert_array_equal(Z, loaded.encode(x))  # deterministic: no sampling
  encoder, _ = models.create_models(loaded.config, IMAGE_SHAPE)
  mu, _ = encoder.apply(
    {"params": loaded.state.encoder_params, "batch_stats": loaded.state.encoder_batch_stats},
    x,
    train=False,
    posterior=True,
  )
  np.testing.assert_allclose(Z, mu, rtol=1e-5, atol=1e-6)  # jitted or not
  d = loaded.config.model.feature_dim
  samples = np.asarray(loaded.decode(objectives.prior_sample(jax.random.key(0), 16, d)))
  assert samples.shape == (16, *IMAGE_SHAPE) and np.all(np.abs(samples) <= 1)
  assert np.asarray(loaded.decode(Z)).shape == (16, *IMAGE_SHAPE)
