"""The alternating maximin update of uCTRL (SPEC §3): state, encoder and decoder steps.

One iteration = ``config.train.encoder_steps`` encoder updates maximising the encoder
objective with ``X̂`` held constant, then one decoder update minimising the decoder
objective with gradients through ``f`` but only ``η`` updated. Both steps are jitted
once with the state donated; the batch arrives sharded over the ``data`` mesh axis
(``uctrl_jax/sharding.py``) and the rate terms see the global batch.

``train_and_evaluate(config, workdir)`` runs the loop: batches from
``input_pipeline``, the steps, console + TensorBoard scalars (clu) with a progress/ETA
line, reconstruction grids, a health monitor (feature collapse, decoder fooling), a
non-finite guard, and orbax checkpoints with automatic resume (``checkpointing``), saved
on SIGTERM/SIGINT too (see ``train_and_evaluate`` for the reliability measures).
Resuming restores the whole state and continues the data stream exactly where it was
(``create_dataset(..., skip_batches=...)``), so an interrupted run repeats the
uninterrupted one's batches. Every ``config.train.eval_every`` steps and at the end the
cheap evaluators of ``config.evals.during_training`` run on a subset of both splits
(``PeriodicEval``) and are logged as ``eval/...`` scalars beside the losses.

Batch-norm semantics, provisional until the trainer issue measures them:
- the encoder sees ``[X; X_a]`` in one training-mode pass (one set of batch statistics
  for real images and their views); its running statistics update in encoder steps
  only;
- ``f(X̂)`` uses the running statistics (``config.train.encoder_bn_on_xhat =
  "running"``, run B/E of shared/CALIBRATION.md) or ``"batch"`` statistics of ``X̂``;
- the decoder runs in training mode in both steps; its running statistics update in
  decoder steps only.
"""
from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import optax

from uctrl_jax import distributed
from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr
from uctrl_jax import sharding

# Accelerator images often lack TensorFlow, tfds, clu and ml_collections: the steps
# (create_train_state, make_steps, train_iteration) import and run without any of them,
# `load` without TensorFlow (tests/test_tf_free.py, test_accelerator_bench.py). So the
# loop's host-side pieces (input_pipeline: TensorFlow; clu's writers; checkpointing and
# validation: ml_collections; threadpoolctl) are imported where they are used.
if TYPE_CHECKING:
  import ml_collections

Array = jax.Array
Metrics = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree, so it is jitted and checkpointed whole."""
  step: Array  # () int32, iterations completed
  encoder_params: Any
  encoder_batch_stats: Any
  decoder_params: Any
  decoder_batch_stats: Any
  encoder_opt_state: Any
  decoder_opt_state: Any


def learning_rate_schedule(config: ml_collections.ConfigDict, base_lr: float) -> optax.Schedule:
  """``base_lr`` (× global batch / 256 when ``train.scale_lr_by_batch``), with optional
  linear warm-up and cosine decay over ``train.num_steps``."""
  t = config.train
  lr = base_lr * (t.batch_size / 256.0 if t.get("scale_lr_by_batch", False) else 1.0)
  warmup = int(t.get("warmup_steps", 0))
  if t.get("schedule", "constant") == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(t.num_steps, warmup + 1))
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)],
                                [warmup])
  return optax.constant_schedule(lr)


def make_optimizers(config) -> Tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """Adam for each player with its own learning rate and β₁ (``train.encoder_lr``,
  ``encoder_b1``; ``decoder_lr``, ``decoder_b1``) and a shared β₂ (CTRL: lr 1.5e-4,
  β = (0.5, 0.999) for both; SPEC §3).

  The schedules run over iterations (``state.step``, the rate each step logs as
  ``*/lr``), while optax counts updates: the encoder, updated ``train.encoder_steps``
  times per iteration, reads its schedule at ``count // encoder_steps``."""
  t = config.train
  encoder_lr = learning_rate_schedule(config, t.encoder_lr)
  return (optax.adam(lambda count: encoder_lr(count // t.encoder_steps), b1=t.encoder_b1, b2=t.b2),
          optax.adam(learning_rate_schedule(config, t.decoder_lr), b1=t.decoder_b1, b2=t.b2))


def create_train_state(config, image_shape, rng: Array) -> TrainState:
  """Fresh parameters (``models.init_models``) and optimizer states at step 0.

  In the encoder-only modes (``objectives.ENCODER_ONLY_MODES``) the decoder's fields are
  empty dicts: no decoder is built.
  """
  variables = models.init_models(config, image_shape, rng,
                                 with_decoder=objectives.uses_decoder(config))
  enc_tx, dec_tx = make_optimizers(config)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      encoder_params=variables["encoder_params"],
      encoder_batch_stats=variables["encoder_batch_stats"],
      decoder_params=variables["decoder_params"],
      decoder_batch_stats=variables["decoder_batch_stats"],
      encoder_opt_state=enc_tx.init(variables["encoder_params"]),
      decoder_opt_state=dec_tx.init(variables["decoder_params"]))


def _encode_images_and_views(encoder, variables, batch):
  """``f`` on ``[X; X_a]`` in one training-mode pass → Z (B, d), Z_aug (V, B, d), stats."""
  X, views = batch["image"], batch["views"]
  num_views, B = views.shape[:2]
  x_all = jnp.concatenate([X, views.reshape((num_views * B,) + X.shape[1:])])
  z_all, updates = encoder.apply(variables, x_all, train=True, mutable=["batch_stats"])
  return z_all[:B], z_all[B:].reshape(num_views, B, -1), updates["batch_stats"]


def _encode_reconstructions(encoder, config, variables, Xhat):
  """``Ẑ = f(X̂)`` with the configured batch-norm statistics; never updates them."""
  if config.train.get("encoder_bn_on_xhat", "running") == "running":
    return encoder.apply(variables, Xhat, train=False)
  return encoder.apply(variables, Xhat, train=True, mutable=["batch_stats"])[0]


def _with_grad_norm(prefix: str, terms: dict, grads, lr) -> dict:
  return {**{f"{prefix}/{k}": v for k, v in terms.items()},
          f"{prefix}/grad_norm": optax.tree.norm(grads), f"{prefix}/lr": lr}


def make_steps(config, image_shape) -> Tuple[Callable, Optional[Callable]]:
  """Jitted ``encoder_step(state, batch)`` and ``decoder_step(state, batch)``.

  Each returns ``(new_state, metrics)``; ``state`` is donated. ``batch`` holds
  ``image`` (B, H, W, C), ``views`` (V, B, H, W, C) and ``label`` (B,), global arrays
  (``sharding.shard_batch``). In the game the encoder step does not advance
  ``state.step``; the decoder step, which ends an iteration, does. In the encoder-only
  modes (``objectives.ENCODER_ONLY_MODES``) ``decoder_step`` is None, the encoder step
  sees the views only and ends the iteration.
  """
  encoder, decoder = models.create_models(config, image_shape)
  enc_tx, dec_tx = make_optimizers(config)
  enc_lr = learning_rate_schedule(config, config.train.encoder_lr)
  dec_lr = learning_rate_schedule(config, config.train.decoder_lr)
  game = objectives.uses_decoder(config)
  running_stats_in_decoder_step = config.train.encoder_bn_in_decoder_step == "running"

  def encoder_loss(enc_params, state, batch):
    enc_vars = {"params": enc_params, "batch_stats": state.encoder_batch_stats}
    Z, Z_aug, new_stats = _encode_images_and_views(encoder, enc_vars, batch)
    # The encoder step holds X̂ constant (SPEC §3): no gradient flows into g.
    Xhat = jax.lax.stop_gradient(decoder.apply(
        {"params": state.decoder_params, "batch_stats": state.decoder_batch_stats}, Z,
        train=True, mutable=["batch_stats"])[0])
    Zhat = _encode_reconstructions(encoder, config, {"params": enc_params, "batch_stats": new_stats}, Xhat)
    terms = objectives.game_terms(config, Z, Zhat, Z_aug, batch["label"])
    terms["cos_z_zhat"] = jnp.mean(1.0 - rr.cosine_distance(Z, Zhat))
    terms["cos_z_zaug"] = jnp.mean(1.0 - jax.vmap(rr.cosine_distance, (None, 0))(Z, Z_aug))
    return -terms["encoder_objective"], (terms, new_stats)

  def encoder_only_loss(enc_params, state, batch):
    views = batch["views"]
    num_views, B = views.shape[:2]
    z, updates = encoder.apply({"params": enc_params, "batch_stats": state.encoder_batch_stats},
                               views.reshape((num_views * B,) + views.shape[2:]), train=True,
                               mutable=["batch_stats"])
    Z_views = z.reshape(num_views, B, -1)
    terms = objectives.encoder_only_terms(config, Z_views)
    # The first view against the others: the invariance the game logs as cos(z, z_a).
    terms["cos_z_zaug"] = jnp.mean(
        1.0 - jax.vmap(rr.cosine_distance, (None, 0))(Z_views[0], Z_views[1:]))
    return -terms["encoder_objective"], (terms, updates["batch_stats"])

  def decoder_loss(dec_params, state, batch):
    enc_vars = {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}
    if running_stats_in_decoder_step:
      # f as evaluation runs it; the views are not encoded: the augmentation term does
      # not depend on η, so it is left out of the decoder's objective here.
      Z, Z_aug = encoder.apply(enc_vars, batch["image"], train=False), None
    else:
      Z, Z_aug, _ = _encode_images_and_views(encoder, enc_vars, batch)
    Xhat, updates = decoder.apply({"params": dec_params, "batch_stats": state.decoder_batch_stats},
                                  Z, train=True, mutable=["batch_stats"])
    # Gradients flow through f into η; only η is updated (only dec_params are differentiated).
    Zhat = _encode_reconstructions(encoder, config, enc_vars, Xhat)
    terms = objectives.game_terms(config, Z, Zhat, Z_aug, batch["label"])
    # Pixel error of g(f(x)): not in the objective, but the health monitor's fooling check.
    terms["recon_mse"] = jnp.mean(jnp.square(Xhat - batch["image"]))
    return terms["decoder_objective"], (terms, updates["batch_stats"])

  @functools.partial(jax.jit, donate_argnums=0)
  def encoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    loss = encoder_loss if game else encoder_only_loss
    grads, (terms, new_stats) = jax.grad(loss, has_aux=True)(state.encoder_params, state, batch)
    updates, opt_state = enc_tx.update(grads, state.encoder_opt_state, state.encoder_params)
    new_state = state.replace(encoder_params=optax.apply_updates(state.encoder_params, updates),
                              encoder_batch_stats=new_stats, encoder_opt_state=opt_state,
                              step=state.step + (0 if game else 1))
    return new_state, _with_grad_norm("encoder", terms, grads, enc_lr(state.step))

  @functools.partial(jax.jit, donate_argnums=0)
  def decoder_step(state: TrainState, batch) -> Tuple[TrainState, Metrics]:
    grads, (terms, new_stats) = jax.grad(decoder_loss, has_aux=True)(state.decoder_params, state, batch)
    updates, opt_state = dec_tx.update(grads, state.decoder_opt_state, state.decoder_params)
    new_state = state.replace(decoder_params=optax.apply_updates(state.decoder_params, updates),
                              decoder_batch_stats=new_stats, decoder_opt_state=opt_state,
                              step=state.step + 1)
    return new_state, _with_grad_norm("decoder", terms, grads, dec_lr(state.step))

  return encoder_step, (decoder_step if game else None)


def train_iteration(encoder_step, decoder_step, state: TrainState, batch,
                    encoder_steps: int) -> Tuple[TrainState, dict]:
  """One iteration on one batch: ``encoder_steps`` encoder updates, then one decoder update
  (none when ``decoder_step`` is None: an encoder-only mode, one encoder update).

  Returns the new state and the metrics of the last encoder step and the decoder step.
  """
  if encoder_steps < 1:
    raise ValueError(f"config.train.encoder_steps must be ≥ 1; got {encoder_steps}")
  if decoder_step is None:
    return encoder_step(state, batch)
  for _ in range(encoder_steps):
    state, enc_metrics = encoder_step(state, batch)
  state, dec_metrics = decoder_step(state, batch)
  return state, {**enc_metrics, **dec_metrics}


def _eval_mode_loop(config, image_shape) -> Tuple[Callable, Optional[Callable]]:
  """``encode(state, x) -> Z`` and ``decode(state, Z) -> x̂`` with running BN statistics;
  ``decode`` is None in the encoder-only modes."""
  encoder, decoder = models.create_models(config, image_shape)

  def encode(state: TrainState, x: Array) -> Array:
    return encoder.apply({"params": state.encoder_params, "batch_stats": state.encoder_batch_stats},
                         x, train=False)

  def decode(state: TrainState, Z: Array) -> Array:
    return decoder.apply({"params": state.decoder_params, "batch_stats": state.decoder_batch_stats},
                         Z, train=False)
  return encode, (decode if objectives.uses_decoder(config) else None)


def make_reconstruct(config, image_shape) -> Optional[Callable]:
  """Jitted ``reconstruct(state, x) -> g(f(x))`` in eval mode (running BN statistics);
  None in the encoder-only modes."""
  encode, decode = _eval_mode_loop(config, image_shape)
  if decode is None:
    return None
  return jax.jit(lambda state, x: decode(state, encode(state, x)))


def limit_host_blas(num_threads: Optional[int]):
  """Context: the host's BLAS/LAPACK pools (numpy's and scipy's OpenBLAS) on ``num_threads``.

  On CPU, jaxlib's Cholesky and triangular solves (the rate terms and their gradient)
  run in scipy's OpenBLAS, whose threads keep spinning after each call and take the
  cores from XLA's own pool for the ops that follow (``config.train.host_blas_threads``,
  issue 8: 1 thread made the Fashion-MNIST iteration about 20% faster on 2 cores).
  None leaves the pools alone. Uses threadpoolctl, so it works after numpy is imported.
  """
  import threadpoolctl  # pylint: disable=import-outside-toplevel
  if num_threads is None:
    return threadpoolctl.threadpool_limits(limits=None)
  return threadpoolctl.threadpool_limits(limits=int(num_threads), user_api="blas")


class PeriodicEval:
  """The in-training evaluation: ``config.evals.during_training`` on the current state.

  ``during_training.names`` (default kNN and reconstruction) run on the first
  ``max_train_examples`` / ``max_test_examples`` of each split, read once on first use
  (the splits are not read at all when ``names`` is empty or ``eval_every`` is 0).
  Every process computes the same metrics (the same images, the replicated state;
  tested with two processes); the caller's writer logs process 0's.
  """

  def __init__(self, config: ml_collections.ConfigDict, image_shape: Tuple[int, ...]):
    evals = config.get("evals", None) or {}
    during = evals.get("during_training", None) or {}
    self.names = tuple(during.get("names", ()))
    self.every = int(config.train.get("eval_every", 0) or 0)
    splits = [evals.get("train_split", "train"), evals.get("test_split", "test")]
    from uctrl_jax import input_pipeline  # pylint: disable=import-outside-toplevel
    available = input_pipeline.get_dataset_info(config).num_examples
    missing = [s for s in splits if s.split("[", 1)[0] not in available]
    if self.names and self.every > 0 and missing:
      # A single .npz file holds a train split only: train anyway, without evaluations.
      logging.warning("in-training evaluation off: %s has no split %s (it has %s); set "
                      "config.evals.train_split / test_split", config.data.name,
                      " or ".join(map(repr, missing)), ", ".join(sorted(available)))
      self.names = ()
    self._config = config.copy_and_resolve_references()
    if self.names:
      with self._config.unlocked():
        self._config.evals.max_train_examples = during.get("max_train_examples", None)
        self._config.evals.max_test_examples = during.get("max_test_examples", None)
    encode, decode = _eval_mode_loop(config, image_shape)
    self._encode = jax.jit(encode)
    self._decode = None if decode is None else jax.jit(decode)
    self._data, self._evaluators = None, None

  def due(self, step: int, last: bool) -> bool:
    return bool(self.names) and self.every > 0 and (step % self.every == 0 or last)

  def __call__(self, state: TrainState) -> dict:
    """``{"eval/<evaluator>/<metric>": float}`` of ``state`` (eval-mode BN statistics)."""
    # evaluate.py imports this module (create_train_state, load): imported here, once.
    from uctrl_jax import evaluate  # pylint: disable=import-outside-toplevel
    from uctrl_jax import evaluators  # pylint: disable=import-outside-toplevel
    if self._data is None:
      self._data = evaluate.load_data(self._config)
      # Those the labels allow; the one line on the others is logged here, once.
      self._evaluators, note = evaluators.without_labels(
          evaluators.build(self._config, names=self.names), self._data)
      if note:
        logging.info("in-training evaluation: %s", note)
    batch_size = int(self._config.evals.get("batch_size", 500))
    metrics = evaluators.run_all(self._evaluators, lambda x: self._encode(state, x),
                                 None if self._decode is None else lambda Z: self._decode(state, Z),
                                 self._data,
                                 batch_size=batch_size, log_labels=False)
    return {f"eval/{k}": v for k, v in metrics.items()}


class HealthMonitor:
  """Names the game's two known failures as they happen (shared/CALIBRATION.md).

  * Feature collapse: ``R(Z)`` falls below ``collapse_fraction`` of its running maximum.
  * Decoder fooling: ``cos(z, ẑ)`` above ``fooling_cos`` while the reconstruction MSE
    is still above ``fooling_mse_fraction`` of its first logged value, i.e. ``f∘g ≈ id``
    without ``g∘f ≈ id``.
  """

  # fooling_cos 0.75: the 2026-11-29 Fashion-MNIST run drew noise at cos(z, ẑ) ≈ 0.8
  # (prototypes: 0.8-0.96), while a faithful transcription has cos near 1 and falling MSE.
  def __init__(self, collapse_fraction: float = 0.5, fooling_cos: float = 0.75,
               fooling_mse_fraction: float = 0.9):
    self.collapse_fraction = collapse_fraction
    self.fooling_cos = fooling_cos
    self.fooling_mse_fraction = fooling_mse_fraction
    self.max_rate = -math.inf
    self.first_mse: Optional[float] = None

  def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
    """Returns the warnings for the metrics logged at ``step``."""
    warnings = []
    rate = float(metrics["encoder/R"])
    self.max_rate = max(self.max_rate, rate)
    if rate < self.collapse_fraction * self.max_rate:
      warnings.append(f"step {step}: feature collapse: R(Z) = {rate:.2f} fell below "
                      f"{self.collapse_fraction:.0%} of its running maximum {self.max_rate:.2f}")
    if "decoder/recon_mse" not in metrics:  # encoder-only modes: nothing to fool
      return warnings
    mse = float(metrics["decoder/recon_mse"])
    self.first_mse = mse if self.first_mse is None else self.first_mse
    cos = float(metrics["encoder/cos_z_zhat"])
    if cos > self.fooling_cos and mse > self.fooling_mse_fraction * self.first_mse:
      warnings.append(f"step {step}: decoder fooling: cos(z, ẑ) = {cos:.3f} while the "
                      f"reconstruction MSE {mse:.3f} is still {mse / self.first_mse:.0%} of its "
                      f"first value {self.first_mse:.3f}")
    return warnings


@jax.jit
def _finite_per_leaf(leaves: list) -> Array:
  """(L,) bool: whether each array in ``leaves`` is entirely finite (one small transfer)."""
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def nonfinite_state_leaves(state: Any) -> list[str]:
  """Paths (``jax.tree_util.keystr``) of the floating-point arrays of ``state`` that hold
  a NaN or an infinity; [] when all are finite. One jitted reduction per call."""
  named = [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_leaves_with_path(state)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not named:
    return []
  finite = jax.device_get(_finite_per_leaf([x for _, x in named]))
  return [name for (name, _), ok in zip(named, finite) if not ok]


def check_finite(step: int, metrics: Mapping[str, float], state: Any = None) -> None:
  """Raises FloatingPointError naming every non-finite logged term (before any checkpoint).

  Args:
    step: the step the values belong to (named in the message).
    metrics: host scalars, e.g. ``jax.device_get`` of a step's metrics; may be empty.
    state: optional ``TrainState`` (any pytree); its floating-point arrays are checked
      too (parameters, batch statistics, optimizer moments), so a NaN that has not yet
      reached a logged term still stops the run before it is checkpointed.
  """
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(float(v)))
  if state is not None:
    leaves = nonfinite_state_leaves(state)
    if leaves:
      more = f" and {len(leaves) - 3} more arrays" if len(leaves) > 3 else ""
      bad.append(f"state {', '.join(leaves[:3])}{more}")
  if bad:
    raise FloatingPointError(f"non-finite values at step {step}: {', '.join(bad)}; stopping "
                             "without writing a checkpoint of this state")


_CONSOLE_TERMS = (("R", "encoder/R"), ("ΔR(Z,Ẑ)", "encoder/delta_R_z_zhat"),
                  ("aug", "encoder/aug_per_sample"), ("self", "encoder/self_per_sample"),
                  ("enc", "encoder/encoder_objective"), ("dec", "decoder/decoder_objective"),
                  ("cos(z,ẑ)", "encoder/cos_z_zhat"), ("cos(z,z_a)", "encoder/cos_z_zaug"),
                  ("mse", "decoder/recon_mse"))


def _console_line(step: int, num_steps: int, metrics: Mapping[str, float]) -> str:
  terms = " ".join(f"{name} {float(metrics[key]):.4g}" for name, key in _CONSOLE_TERMS
                   if key in metrics)
  return f"step {step}/{num_steps} | {terms}"


def _flat_hparams(tree: Mapping[str, Any], prefix: str = "") -> dict:
  """``{"train.batch_size": 128, ...}``; values TensorBoard cannot show become strings."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flat_hparams(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
  return flat


class _StopSignals:
  """SIGTERM / SIGINT → a request to stop at the next iteration boundary.

  A context manager: ``__enter__`` installs handlers that only record the signal (the
  loop checks ``requested`` once per iteration, saves a checkpoint and returns);
  ``__exit__`` puts the previous handlers back. A second SIGINT raises
  KeyboardInterrupt at once (Ctrl-C twice: stop now, without the checkpoint; orbax's
  atomic commit leaves the previous checkpoints intact).

  With several processes a local flag could stop them at different steps, and the
  checkpoint save is collective; there SIGTERM is left to jax's preemption service
  (``jax.distributed``, enabled by default), which agrees on a step across processes
  (``multihost_utils.reached_preemption_sync_point``), and no handler is installed.
  Handlers need the main thread; elsewhere none is installed either.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: Optional[str] = None  # name of the first signal
    self._previous = {}
    self._multi_process = jax.process_count() > 1
    self._sync_point_available = True

  def __enter__(self) -> "_StopSignals":
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      for sig in self._SIGNALS:
        self._previous[sig] = signal.getsignal(sig)
        signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = self.received or signal.Signals(signum).name

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      # None: a handler installed outside Python, which cannot be reinstated from here.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()

  def requested(self, step: int) -> Optional[str]:
    """What asks the run to stop after ``step`` (a signal name), or None. Every process
    must call this at every step (the multi-process sync point needs it)."""
    if not self._multi_process:
      return self.received
    if self._sync_point_available:
      from jax.experimental import multihost_utils
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return "preemption notice"
      except RuntimeError:  # no preemption service (jax.distributed not initialised)
        self._sync_point_available = False
        logging.info("jax's preemption service is off: SIGTERM is not caught")
    return None


def _inject_nan(state: TrainState, metrics: dict) -> Tuple[TrainState, dict]:
  """Test-only fault (``config.train.fault_inject_nan_at_step``): NaN in every encoder
  parameter and in the logged encoder objective, as a diverged step would leave them."""
  state = state.replace(encoder_params=jax.tree.map(lambda x: x * jnp.nan, state.encoder_params))
  return state, {**metrics, "encoder/encoder_objective": jnp.float32(jnp.nan)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains uCTRL as ``config`` says, in ``workdir``, resuming from its latest checkpoint.

  Writes to ``workdir``: ``checkpoints/`` (orbax), ``config.json``, TensorBoard event
  files, ``reconstructions/step_*.png`` (inputs above ``g(f(x))``), ``eval/*`` scalars of
  the in-training evaluators (``PeriodicEval``). Only process 0 writes logs and
  pictures; every process takes part in checkpoints (orbax).

  Reliability:

  * Validation: ``validation.validate_config`` runs first (names, ranges, batch vs.
    devices, image size vs. model, a writable workdir whose earlier ``config.json``
    agrees on the architecture and data) and raises ``ConfigError`` before any compile.
  * Preemption: SIGTERM or SIGINT (single process) is noted by a handler and acted on
    at the end of the iteration under way: the state is checked, saved as a checkpoint
    of that step, a warning says so and the function returns (a second Ctrl-C stops at
    once). Handlers are restored on return. A ``kill -9`` loses at most the steps since
    the last checkpoint (``checkpoint_every``): orbax commits a step by renaming its
    temporary directory, and the uncommitted remains are neither listed nor restored.
  * Non-finite values: the logged terms (every ``log_every`` steps) and every array of
    the state (at log steps and before every checkpoint, one jitted reduction) are
    checked; a NaN or infinity is never checkpointed. ``train.on_nonfinite = "stop"``
    (default) raises FloatingPointError naming the terms/arrays and the step, leaving
    the last checkpoint intact. ``"rollback"`` restores the last checkpoint and goes
    on, at most ``train.max_rollbacks`` (3) times, with the data stream continuing
    where it was: the batches of the rolled-back steps are skipped, not replayed, so
    the retried steps see new data (replaying them would most likely diverge again).
  * Unreadable checkpoint: a resume falls back to the newest step that restores (and
    holds finite values), with a warning; the damaged steps are moved to
    ``checkpoints_unreadable/``. If none restores it raises, never restarting from
    step 0 over the run's history.

  Determinism and resume: the same config and seed give the same batches
  (``input_pipeline``: streams seeded from ``(seed, process)``) and, on one backend
  and device count, the same losses. Each checkpoint records ``batches_consumed``, the
  number of batches this process read from the stream; a resume restores the whole
  state and reopens the stream with ``create_dataset(..., skip_batches=
  batches_consumed)``, so it sees exactly the batches the uninterrupted run would
  have (``batches_consumed`` = step unless a rollback skipped batches). Not exact:
  after a rollback (by design, see above); when the seed, global batch size or process
  count changes between runs (the stream itself changes; ``validation`` warns); on a
  different device count or backend (reduction order changes the floats; GPU
  reductions may be nondeterministic unless XLA is told otherwise); the health
  monitor's running references (max ``R(Z)``, first MSE) restart at the resumed step;
  and steps between the last checkpoint and a kill are logged twice to TensorBoard.

  Returns:
    The final state (replicated over the mesh); after a preemption, the state saved.
  Raises:
    validation.ConfigError: a bad config or workdir, before anything is compiled.
    FloatingPointError: non-finite values with ``on_nonfinite = "stop"`` (or rollbacks
      exhausted, or nothing to roll back to).
    checkpointing.RunLoadError: checkpoints exist but none can be restored.
  """
  # pylint: disable=import-outside-toplevel
  from clu import metric_writers, periodic_actions
  from uctrl_jax import checkpointing, image_grid, input_pipeline, validation
  # pylint: enable=import-outside-toplevel
  t = config.train
  validation.validate_config(config, workdir)
  process_index, process_count = jax.process_index(), jax.process_count()
  on_nonfinite = t.get("on_nonfinite", None) or "stop"
  max_rollbacks = t.get("max_rollbacks", None)
  max_rollbacks = 3 if max_rollbacks is None else int(max_rollbacks)
  fault_step = t.get("fault_inject_nan_at_step", None)
  mesh = sharding.create_mesh(mesh_config=config.get("mesh"))
  info = input_pipeline.get_dataset_info(config)
  image_shape = info.image_shape
  validation.check_training_labels(config, info)
  if config.data.get("image_size", None) is None:
    # "Keep the stored size": the shape is known only now, still before any compile.
    validation.check_image_shape(config, image_shape)
    validation.check_workdir_compatible(config, workdir, image_shape)
  state = sharding.replicate(create_train_state(config, image_shape, jax.random.key(config.seed)),
                             mesh)
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=t.max_to_keep)
  batches_consumed, train_seconds_before = 0, 0.0
  restored = checkpointer.restore_latest_readable(
      state, check=lambda s: check_finite(int(s.step), {}, s))
  if restored is not None:
    state, extra = restored
    # Checkpoints written before `batches_consumed` existed read step batches.
    batches_consumed = int(extra.get("batches_consumed", int(state.step)))
    train_seconds_before = float(extra.get("train_seconds", 0.0))
    logging.info("resumed from %s at step %d", workdir, int(state.step))
  # The saved config records the image shape too, so `load` can rebuild the models.
  saved_config = config.copy_and_resolve_references()
  with saved_config.unlocked():
    saved_config.data.image_shape = tuple(image_shape)
  checkpointing.save_config(workdir, saved_config)
  start = int(state.step)

  batches = input_pipeline.create_dataset(
      config, config.data.train_split, process_index=process_index,
      process_count=process_count, training=True,
      skip_batches=batches_consumed).as_numpy_iterator()
  encoder_step, decoder_step = make_steps(config, image_shape)
  # Several processes: each compiles a step, then all meet, so no collective times out.
  encoder_step = distributed.meet_before_first_run(encoder_step, "encoder_step")
  if decoder_step is not None:
    decoder_step = distributed.meet_before_first_run(decoder_step, "decoder_step")
  reconstruct = make_reconstruct(config, image_shape)
  periodic_eval = PeriodicEval(config, image_shape)
  writer = metric_writers.create_default_writer(workdir, just_logging=process_index > 0)
  new_progress = lambda: periodic_actions.ReportProgress(  # noqa: E731
      num_train_steps=t.num_steps, writer=writer, every_steps=t.log_every)
  progress = new_progress()
  monitor = HealthMonitor(**t.get("health", {}))
  if start == 0:
    writer.write_hparams(_flat_hparams(config.to_dict()))

  # Training time (the loop without its evaluations), summed over resumes: what the
  # "minutes" of a run mean when runs are compared at equal budget.
  loop_start, eval_seconds = time.time(), 0.0

  def train_seconds() -> float:
    return train_seconds_before + time.time() - loop_start - eval_seconds

  def save(step: int, state: TrainState) -> None:
    checkpointer.save(step, state, extra={"step": step, "examples_seen": step * t.batch_size,
                                          "batches_consumed": batches_consumed,
                                          "train_seconds": train_seconds()})

  rollbacks, injected, step, stop = 0, False, start, None
  try:
    with _StopSignals() as stop_signals, limit_host_blas(t.get("host_blas_threads", None)):
      while step < t.num_steps:
        host_batch = next(batches)
        batches_consumed += 1
        state, metrics = train_iteration(encoder_step, decoder_step, state,
                                         sharding.shard_batch(host_batch, mesh), t.encoder_steps)
        step += 1  # iterations done
        if step == fault_step and not injected:
          injected = True  # once per call, so that a rollback can get past it
          state, metrics = _inject_nan(state, metrics)
        progress(step)
        last = step == t.num_steps
        log_now = step % t.log_every == 0 or last
        save_now = step % t.checkpoint_every == 0 or last
        # Kept once seen: a multi-process sync point answers yes at one step only.
        stop = stop or stop_signals.requested(step)
        if log_now:
          metrics = jax.device_get(metrics)
        if log_now or save_now or stop:
          try:
            # The state is checked wherever it could reach a checkpoint, so a NaN born
            # between log steps is not saved either.
            check_finite(step, metrics if log_now else {}, state)
          except FloatingPointError as e:
            last_good = checkpointer.latest_step()
            if on_nonfinite != "rollback" or last_good is None or rollbacks >= max_rollbacks:
              why = ("" if on_nonfinite != "rollback" else
                     "; no checkpoint to roll back to" if last_good is None else
                     f"; {rollbacks} rollbacks done already")
              kept = ("no checkpoint was written" if last_good is None else
                      f"the last checkpoint, step {last_good} in {checkpointer.directory}, is "
                      "intact")
              raise FloatingPointError(f"{e}{why}; {kept}") from None
            rollbacks += 1
            state, _ = checkpointer.restore(state, last_good)  # `state` gives shapes only
            logging.warning("%s; rolled back to the checkpoint of step %d (rollback %d of %d); "
                            "the data stream goes on at batch %d, skipping the batches of "
                            "steps %d-%d", str(e).split("; stopping")[0], last_good, rollbacks,
                            max_rollbacks, batches_consumed, last_good + 1, step)
            step = last_good
            progress = new_progress()  # it insists on consecutive steps
            continue
        if log_now:
          writer.write_scalars(step, metrics)
          logging.info("%s", _console_line(step, t.num_steps, metrics))
          for warning in monitor.update(step, metrics):
            logging.warning("%s", warning)
        if (step % t.image_every == 0 or last) and process_index == 0 and reconstruct:
          # Two rows of inputs over reconstructions.
          k = min(8, host_batch["image"].shape[0] // 2)
          x = host_batch["image"][:2 * k]
          xhat = jax.device_get(reconstruct(state, x))
          image_grid.save_png(os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"),
                              image_grid.image_grid([x[:k], xhat[:k], x[k:], xhat[k:]]))
        if save_now or stop:
          save(step, state)
        if periodic_eval.due(step, last) and not stop:  # after the save: a failure loses nothing
          eval_start = time.time()
          eval_metrics = periodic_eval(state)
          eval_seconds += time.time() - eval_start
          writer.write_scalars(step, eval_metrics)
          logging.info("step %d/%d | %s", step, t.num_steps, " ".join(
              f"{k[5:]} {v:.4g}" for k, v in eval_metrics.items() if "seconds" not in k))
        if stop:
          logging.warning("%s received: saved the checkpoint of step %d in %s and stopped; "
                          "run the same command again to resume", stop, step,
                          checkpointer.directory)
          break
  finally:
    writer.flush()
    checkpointer.close()
  logging.info("step %d/%d: %.1f min of training in all (evaluations excluded)", step,
               t.num_steps, train_seconds() / 60)
  return state


class Loaded(NamedTuple):
  """A trained closed loop: ``encode(x) -> Z`` and ``decode(Z) -> x̂``, both jitted, eval mode."""
  encode: Callable[[Array], Array]  # (B, H, W, C) in [-1, 1] -> (B, d) float32 unit rows
  decode: Optional[Callable[[Array], Array]]  # (B, d) -> (B, H, W, C) in [-1, 1]; None
  # for an encoder-only run (config.loss.mode "tcr" or "simclr")
  config: ml_collections.ConfigDict
  state: TrainState
  extra: dict  # the checkpoint's JSON record: step, batches_consumed, train_seconds, ...


def load(workdir: str, step: Optional[int] = None) -> Loaded:
  """The encoder and decoder of the checkpoint at ``step`` (latest when None) in ``workdir``.

  Needs only the work directory (``config.json`` and ``checkpoints/``), not the data.

  Raises:
    checkpointing.RunLoadError: ``workdir`` holds no run, no checkpoint (of ``step``),
      or one that cannot be read; the message is one line.
  """
  from uctrl_jax import checkpointing  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, checkpointing.CONFIG_FILENAME)
  if not os.path.isfile(path):
    raise checkpointing.RunLoadError(
        f"{workdir} holds no run: no {path} (train one there with main.py "
        f"--workdir={workdir}, or name the directory of a trained run)")
  try:
    config = checkpointing.load_config(workdir)
    image_shape = tuple(config.data.image_shape)
  except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
    raise checkpointing.RunLoadError(
        f"cannot read the run's config {path}: {type(e).__name__}: {_first_line(e)}") from e
  target = create_train_state(config, image_shape, jax.random.key(0))
  try:
    with checkpointing.Checkpointer(workdir) as checkpointer:
      state, extra = checkpointer.restore(target, step)
  except FileNotFoundError as e:
    raise checkpointing.RunLoadError(f"{workdir} holds no checkpoint to load: {e}") from e
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    raise checkpointing.RunLoadError(
        f"the checkpoint in {workdir} cannot be read: {type(e).__name__}: "
        f"{_first_line(e)}") from e
  encode, decode = (f and jax.jit(f) for f in _eval_mode_loop(config, image_shape))
  # The state is an argument, not a closed-over constant: compiles fast at any size.
  return Loaded(lambda x: encode(state, x), decode and (lambda Z: decode(state, Z)), config,
                state, extra)


def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0][:300] if str(e) else ""
