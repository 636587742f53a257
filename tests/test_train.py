"""The alternating update of uctrl_jax/steps.py on a tiny config and random images."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.jax_loop import random_batch
from configs import tiny
from uctrl_jax import health
from uctrl_jax import host_blas
from uctrl_jax import loading
from uctrl_jax import models
from uctrl_jax import nonfinite
from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr
from uctrl_jax import sharding
from uctrl_jax import steps
from uctrl_jax.state import create_train_state, make_optimizers

IMAGE_SHAPE = (28, 28, 1)


def _config(**loss):
  config = tiny.get_config()
  config.loss.update(loss)
  return config


def _batch(config, seed=0):
  return random_batch(config, IMAGE_SHAPE, seed)


def _setup(config, devices):
  mesh = sharding.create_mesh(devices)
  state = sharding.replicate(create_train_state(config, IMAGE_SHAPE, jax.random.key(0)), mesh)
  encoder_step, decoder_step = steps.make_steps(config, IMAGE_SHAPE)
  return mesh, state, encoder_step, decoder_step


def _copy(tree):
  return jax.tree.map(np.array, tree)


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_trees_differ(a, b):
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_each_step_updates_only_its_own_player():
  config = _config()
  mesh, state, encoder_step, decoder_step = _setup(config, jax.devices()[:1])
  batch = sharding.shard_batch(_batch(config), mesh)

  before = _copy(state)
  state, metrics = encoder_step(state, batch)
  _assert_trees_differ(before.encoder_params, state.encoder_params)
  _assert_trees_differ(before.encoder_batch_stats, state.encoder_batch_stats)
  _assert_trees_equal(before.decoder_params, _copy(state.decoder_params))
  _assert_trees_equal(before.decoder_batch_stats, _copy(state.decoder_batch_stats))
  assert int(state.step) == 0
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())

  before = _copy(state)
  state, metrics = decoder_step(state, batch)
  _assert_trees_differ(before.decoder_params, state.decoder_params)
  _assert_trees_equal(before.encoder_params, _copy(state.encoder_params))
  _assert_trees_equal(before.encoder_batch_stats, _copy(state.encoder_batch_stats))
  _assert_trees_equal(before.encoder_opt_state, _copy(state.encoder_opt_state))
  assert int(state.step) == 1


def test_encoder_step_reports_the_objective_of_its_features():
  config = _config()
  mesh, state, encoder_step, _ = _setup(config, jax.devices()[:1])
  host_batch = _batch(config)
  before = _copy(state)
  _, metrics = encoder_step(state, sharding.shard_batch(host_batch, mesh))

  # Recompute the features outside the step, as docs/method.md#the-game describes them.
  encoder, decoder = models.create_models(config, IMAGE_SHAPE)
  enc_vars = {"params": before.encoder_params, "batch_stats": before.encoder_batch_stats}
  B, V = config.train.batch_size, config.data.num_views
  x_all = np.concatenate([host_batch["image"], host_batch["views"].reshape(V * B, *IMAGE_SHAPE)])
  z_all, updates = encoder.apply(enc_vars, x_all, train=True, mutable=["batch_stats"])
  Z, Z_aug = z_all[:B], z_all[B:].reshape(V, B, -1)
  Xhat = decoder.apply(
    {"params": before.decoder_params, "batch_stats": before.decoder_batch_stats},
    Z,
    train=True,
    mutable=["batch_stats"],
  )[0]
  Zhat = encoder.apply(
    {"params": before.encoder_params, "batch_stats": updates["batch_stats"]}, Xhat, train=False
  )
  expected = dict(
    rr.uctrl_objective(
      Z,
      Zhat,
      Z_aug,
      config.loss.eps_sq,
      config.loss.lambda_aug,
      config.loss.lambda_self,
      sample_distance=config.loss.sample_distance,
      sample_reduction=config.loss.sample_reduction,
      aug_target=config.loss.aug_target,
    )
  )
  if config.loss.rate_on_views:  # the default: ½ (R(Z) + mean_v R(Z_v)) in place of R(Z)

    def rate(z):  # NumPy's slogdet, independent of the library's Gram-side closed form
      z = np.asarray(z, np.float64)
      n, d = z.shape
      return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * config.loss.eps_sq) * z.T @ z)[1]

    expected["encoder_objective"] += 0.5 * (np.mean([rate(z) for z in Z_aug]) - rate(Z))
  for key in ("R", "delta_R_z_zhat", "aug", "self", "encoder_objective"):
    np.testing.assert_allclose(
      metrics[f"encoder/{key}"], expected[key], rtol=1e-4, atol=1e-5, err_msg=key
    )


@pytest.mark.parametrize("mode", ["uctrl", "ctrl_binary", "ctrl_multi"])
def test_eight_devices_give_the_single_device_iteration(mode):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices")
  config = _config(mode=mode)
  host_batch = _batch(config)
  results = []
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    mesh, state, encoder_step, decoder_step = _setup(config, devices)
    batch = sharding.shard_batch(host_batch, mesh)
    assert len(batch["views"].sharding.device_set) == len(devices)
    state, metrics = steps.train_iteration(
      encoder_step, decoder_step, state, batch, encoder_steps=2
    )
    results.append((jax.device_get(metrics), _copy(state)))
  (metrics_1, state_1), (metrics_8, state_8) = results
  assert metrics_1.keys() == metrics_8.keys()
  for key in metrics_1:
    np.testing.assert_allclose(metrics_8[key], metrics_1[key], rtol=2e-4, atol=2e-5, err_msg=key)
  # Parameters are not compared: Adam's first updates are ±lr wherever a gradient is
  # ≈ 0, so float noise there flips signs. The decoder step's terms and gradient norm,
  # computed from the encoder the first steps produced, carry the comparison instead.
  assert int(state_8.step) == int(state_1.step) == 1
  if mode == "ctrl_binary":
    np.testing.assert_allclose(
      metrics_1["encoder/encoder_objective"], metrics_1["encoder/delta_R_z_zhat"]
    )


def test_bad_encoder_steps_and_batch_raise():
  config = _config()
  mesh, state, encoder_step, decoder_step = _setup(config, jax.devices()[:1])
  with pytest.raises(ValueError, match="encoder_steps must be ≥ 1"):
    steps.train_iteration(encoder_step, decoder_step, state, None, encoder_steps=0)
  if jax.device_count() >= 8:
    with pytest.raises(ValueError, match="not divisible by its 8 local devices"):
      sharding.shard_batch(
        {"image": np.zeros((12, 2), np.float32)}, sharding.create_mesh(jax.devices()[:8])
      )


def _health_metrics(R, cos, mse):
  return {"encoder/R": R, "encoder/cos_z_zhat": cos, "decoder/recon_mse": mse}


def test_health_monitor_names_collapse_and_fooling():
  monitor = health.HealthMonitor(**tiny.get_config().train.health)
  assert monitor.update(50, _health_metrics(60.0, 0.3, 0.80)) == []
  assert monitor.update(100, _health_metrics(62.0, 0.5, 0.70)) == []
  collapse = monitor.update(150, _health_metrics(20.0, 0.5, 0.60))
  assert len(collapse) == 1 and "feature collapse" in collapse[0] and "62.00" in collapse[0]
  fooling = monitor.update(200, _health_metrics(61.0, 0.96, 0.78))
  assert len(fooling) == 1 and "decoder fooling" in fooling[0] and "0.960" in fooling[0]
  # A lasting condition is named once.
  assert monitor.update(210, _health_metrics(61.0, 0.96, 0.78)) == []
  # The same cosine with reconstructions that did improve is transcription, not fooling;
  # one logged step of it does not end the episode (clear_after = 3): no new warning.
  # The collapse, gone for 3 logged steps now, has ended.
  assert monitor.update(250, _health_metrics(61.0, 0.96, 0.30)) == [
    "step 250: feature collapse cleared: it held at 1 of the 1 logged steps from step 150 "
    "to step 150"
  ]
  assert monitor.update(260, _health_metrics(61.0, 0.96, 0.79)) == []


_DETAIL = (
  "cos(z, ẑ) = 0.960 while the reconstruction MSE 0.780 is still 98% of its first value 0.800"
)
_ONSET = "decoder fooling: " + _DETAIL


def _goes_on(step, held, logged):
  return (
    f"step {step}: decoder fooling goes on: it held at {held} of the {logged} logged steps "
    f"since step 2; now {_DETAIL}"
  )


def _fooling_run(holds_at, steps):
  """The warnings of a monitor (remind_every 3, clear_after 2) over logged steps 1..steps,
  with fooling at the steps of ``holds_at`` (R steady, no collapse): {step: [lines]}."""
  monitor = health.HealthMonitor(0.5, 0.75, 0.9, remind_every=3, clear_after=2)
  said = {1: monitor.update(1, _health_metrics(60.0, 0.3, 0.80))}  # the MSE's first value
  for step in range(2, steps + 1):
    fooled = step in holds_at
    said[step] = monitor.update(
      step, _health_metrics(60.0, 0.96 if fooled else 0.3, 0.78 if fooled else 0.2)
    )
  return {step: lines for step, lines in said.items() if lines}


def test_health_monitor_tells_a_lasting_failure_at_its_start_now_and_then_and_its_end():
  # Reminders 3 logged steps in, then 6 more, then 12 more, ...
  assert _fooling_run(holds_at=range(2, 15), steps=18) == {
    2: [f"step 2: {_ONSET}"],
    5: [_goes_on(5, 4, 4)],
    11: [_goes_on(11, 10, 10)],
    16: [
      "step 16: decoder fooling cleared: it held at 13 of the 13 logged steps from step 2 to step 14"
    ],
  }


def test_health_monitor_keeps_a_flickering_failure_one_episode():
  """Fooling at every other logged step (a tiny run printed ten warnings in 76 steps so):
  one onset, reminders with the count, one end once it stayed away for clear_after logs."""
  assert _fooling_run(holds_at=range(2, 17, 2), steps=20) == {
    2: [f"step 2: {_ONSET}"],
    6: [_goes_on(6, 3, 5)],
    12: [_goes_on(12, 6, 11)],
    18: [
      "step 18: decoder fooling cleared: it held at 8 of the 15 logged steps from step 2 to step 16"
    ],
  }
  # A new onset after the end is a new episode.
  assert _fooling_run(holds_at={2, 6}, steps=6) == {
    2: [f"step 2: {_ONSET}"],
    4: [
      "step 4: decoder fooling cleared: it held at 1 of the 1 logged steps from step 2 to step 2"
    ],
    6: [f"step 6: {_ONSET}"],
  }


def test_check_finite_names_every_bad_term():
  nonfinite.check_finite(3, {"encoder/R": 1.0, "decoder/recon_mse": 0.5})
  with pytest.raises(FloatingPointError, match=r"step 7: decoder/grad_norm, encoder/R; stopping"):
    nonfinite.check_finite(
      7, {"encoder/R": float("nan"), "decoder/grad_norm": float("inf"), "encoder/aug": 0.1}
    )


def test_health_monitor_flags_the_noise_drawing_run_of_2026_11_29():
  # Logged (cos(z, ẑ), recon MSE) of configs/fashion_mnist.py at steps 50, 600, 1300:
  # its reconstructions stayed mostly noise (docs/experiments.md, "The default run").
  monitor = health.HealthMonitor(**tiny.get_config().train.health)
  assert monitor.update(50, _health_metrics(54.3, 0.506, 0.757)) == []
  assert monitor.update(600, _health_metrics(55.4, 0.817, 0.465)) == []
  assert "decoder fooling" in monitor.update(1300, _health_metrics(55.6, 0.794, 0.940))[0]


@pytest.mark.parametrize("rate_weight,delta_weight", [(0.0, 1.0), (1.0, 0.0), (0.5, 2.0)])
def test_ablation_weights_scale_r_and_delta_r_in_both_objectives(rate_weight, delta_weight):
  rng = np.random.default_rng(0)
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
  Z, Zhat = (jnp.asarray(unit(rng.normal(size=(32, 8))), jnp.float32) for _ in range(2))
  Z_aug = jnp.asarray(unit(rng.normal(size=(2, 32, 8))), jnp.float32)
  labels = jnp.zeros(32, jnp.int32)
  config = tiny.get_config()
  full = objectives.game_terms(config, Z, Zhat, Z_aug, labels)
  config.loss.rate_weight, config.loss.delta_weight = rate_weight, delta_weight
  ablated = objectives.game_terms(config, Z, Zhat, Z_aug, labels)
  lam1, lam2 = config.loss.lambda_aug, config.loss.lambda_self
  R, delta = float(full["R"]), float(full["delta_R_z_zhat"])
  # The expansion the weight scales: R(Z), or ½ (R(Z) + mean_v R(Z_v)) with rate_on_views.
  assert config.loss.rate_on_views == ("R_views" in full)
  expansion = 0.5 * (R + float(full["R_views"])) if "R_views" in full else R
  sample = lam1 * float(full["aug"]) + lam2 * float(full["self"])
  np.testing.assert_allclose(
    float(full["encoder_objective"]), expansion + delta - sample, rtol=1e-5
  )
  np.testing.assert_allclose(
    float(ablated["encoder_objective"]),
    rate_weight * expansion + delta_weight * delta - sample,
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    float(ablated["decoder_objective"]),
    rate_weight * expansion + delta_weight * delta + sample,
    rtol=1e-5,
  )
  assert float(ablated["R"]) == R  # the logged terms stay unweighted


def test_iteration_with_host_blas_limited_equals_the_plain_iteration():
  """Issue 8's optimisation (host_blas.limit_host_blas) changes threads, not the math."""
  import threadpoolctl  # pylint: disable=import-outside-toplevel

  config = _config(sample_distance="exact")  # the Cholesky-heavy sample terms too
  mesh, state, encoder_step, decoder_step = _setup(config, jax.devices()[:1])
  batch = sharding.shard_batch(_batch(config), mesh)
  start = _copy(state)
  runs = []
  for threads in (None, 1):
    state = sharding.replicate(jax.tree.map(jnp.asarray, start), mesh)
    with host_blas.limit_host_blas(threads):
      if threads == 1:
        blas = [
          i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]
        assert blas and set(blas) == {1}
      state, metrics = steps.train_iteration(encoder_step, decoder_step, state, batch, 1)
      runs.append((_copy(state), jax.device_get(metrics)))
  (state_a, metrics_a), (state_b, metrics_b) = runs
  assert metrics_a.keys() == metrics_b.keys()
  for key in metrics_a:
    np.testing.assert_allclose(metrics_b[key], metrics_a[key], rtol=1e-5, atol=1e-6, err_msg=key)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), state_a, state_b
  )


@pytest.mark.parametrize("mode", ["tcr", "simclr"])
def test_encoder_only_modes_build_no_decoder_and_raise_their_objective(mode):
  config = _config(mode=mode)
  mesh, state, encoder_step, decoder_step = _setup(config, jax.devices()[:1])
  assert decoder_step is None
  assert state.decoder_params == {} and state.decoder_batch_stats == {}
  host_batch = _batch(config)
  batch = sharding.shard_batch(host_batch, mesh)
  before = _copy(state)
  state, metrics = steps.train_iteration(encoder_step, None, state, batch, encoder_steps=1)
  assert int(state.step) == 1  # the encoder step ends an encoder-only iteration
  assert not any(k.startswith("decoder/") for k in metrics)
  _assert_trees_differ(before.encoder_params, state.encoder_params)

  # The step's objective is the mode's objective of the views' features (the clean
  # image is not encoded), and one small step raises it on this batch.
  encoder, _ = models.create_models(config, IMAGE_SHAPE)
  V, B = config.data.num_views, config.train.batch_size

  def objective(params, batch_stats):
    z = encoder.apply(
      {"params": params, "batch_stats": batch_stats},
      host_batch["views"].reshape(V * B, *IMAGE_SHAPE),
      train=True,
      mutable=["batch_stats"],
    )[0]
    return objectives.encoder_only_terms(config, z.reshape(V, B, -1))["encoder_objective"]

  np.testing.assert_allclose(
    metrics["encoder/encoder_objective"],
    objective(before.encoder_params, before.encoder_batch_stats),
    rtol=1e-4,
    atol=1e-5,
  )
  assert float(objective(state.encoder_params, before.encoder_batch_stats)) > float(
    metrics["encoder/encoder_objective"]
  )


def test_reconstruct_and_eval_loop_have_no_decoder_in_encoder_only_modes():
  config = _config(mode="tcr")
  assert loading.make_reconstruct(config, IMAGE_SHAPE) is None
  assert steps.make_steps(config, IMAGE_SHAPE)[1] is None


def test_decoder_step_with_running_statistics_ignores_the_views():
  config = _config()
  config.train.encoder_bn_in_decoder_step = "running"
  mesh, state, encoder_step, decoder_step = _setup(config, jax.devices()[:1])
  state, _ = encoder_step(state, sharding.shard_batch(_batch(config), mesh))
  start = _copy(state)
  results = []
  for view_seed in (1, 2):  # the same images, other views
    batch = _batch(config)
    batch["views"] = _batch(config, seed=view_seed)["views"]
    state = sharding.replicate(jax.tree.map(jnp.asarray, start), mesh)
    new, metrics = decoder_step(state, sharding.shard_batch(batch, mesh))
    results.append((_copy(new), jax.device_get(metrics)))
  (a, metrics_a), (b, metrics_b) = results
  _assert_trees_equal(a.decoder_params, b.decoder_params)
  _assert_trees_equal(a.encoder_batch_stats, start.encoder_batch_stats)
  assert "decoder/aug" not in metrics_a and "decoder/self" in metrics_a
  np.testing.assert_allclose(
    metrics_a["decoder/decoder_objective"], metrics_b["decoder/decoder_objective"]
  )
  # Z is f(x) with the running statistics, as evaluation computes it.
  encoder, decoder = models.create_models(config, IMAGE_SHAPE)
  enc_vars = {"params": start.encoder_params, "batch_stats": start.encoder_batch_stats}
  Z = encoder.apply(enc_vars, _batch(config)["image"], train=False)
  Xhat = decoder.apply(
    {"params": start.decoder_params, "batch_stats": start.decoder_batch_stats},
    Z,
    train=True,
    mutable=["batch_stats"],
  )[0]
  np.testing.assert_allclose(
    metrics_a["decoder/recon_mse"],
    np.mean(np.square(np.asarray(Xhat) - _batch(config)["image"])),
    rtol=1e-4,
  )


def test_each_player_has_its_own_adam_beta1():
  config = _config()
  config.train.encoder_b1, config.train.decoder_b1 = 0.9, 0.5
  enc_tx, dec_tx = make_optimizers(config)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}
  for tx, b1 in ((enc_tx, 0.9), (dec_tx, 0.5)):
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    # Adam's first moment after one step is (1 − β₁)·g.
    np.testing.assert_allclose(state[0].mu["w"], (1 - b1) * grads["w"], rtol=1e-6)


def _one_iteration(config):
  """(state, metrics, StableHLO of the encoder step) after one iteration on one device."""
  mesh, state, encoder_step, decoder_step = _setup(config, jax.devices()[:1])
  batch = sharding.shard_batch(_batch(config), mesh)
  hlo = encoder_step.lower(state, batch).as_text()
  state, metrics = steps.train_iteration(
    encoder_step, decoder_step, state, batch, config.train.encoder_steps
  )
  return state, jax.device_get(metrics), hlo


def test_bfloat16_iteration_agrees_with_float32():
  """``model.dtype = "bfloat16"``: bf16 convolutions, float32 parameters, BN statistics,
  Adam moments and terms; one iteration's terms within the stated tolerance of float32's.

  Measured (tiny config, 3 batches, 2026-12-03): every term and objective within 1.5e-3
  of float32's in units of max(|value|, 1), the gradient norms within 1.0% relative.
  Tolerances with ≥ 5× margin: 1e-2 and 5%.
  """
  f32_state, f32, f32_hlo = _one_iteration(_config())
  config = _config()
  config.model.dtype = "bfloat16"
  state, bf16, hlo = _one_iteration(config)

  convolution = r"stablehlo\.convolution.*->\s*tensor<[0-9x]+x{}>"
  assert re.search(convolution.format("bf16"), hlo)  # the nets run in bf16 ...
  assert not re.search(convolution.format("bf16"), f32_hlo)
  assert re.search(convolution.format("f32"), f32_hlo)
  for name in (
    "encoder_params",
    "encoder_batch_stats",
    "decoder_params",
    "decoder_batch_stats",
    "encoder_opt_state",
    "decoder_opt_state",
  ):  # ... on float32 state
    dtypes = {
      leaf.dtype
      for leaf in jax.tree.leaves(getattr(state, name))
      if jnp.issubdtype(leaf.dtype, jnp.floating)
    }
    assert dtypes == {jnp.dtype(jnp.float32)}, (name, dtypes)
  assert set(bf16) == set(f32)
  for key, want in f32.items():
    got = float(bf16[key])
    assert bf16[key].dtype == np.float32 and np.isfinite(got), key
    if key.endswith("/lr"):
      assert got == float(want)
    elif key.endswith("grad_norm"):
      assert abs(got - want) <= 0.05 * abs(want), (key, got, want)
    else:
      assert abs(got - want) <= 1e-2 * max(abs(want), 1.0), (key, got, want)
