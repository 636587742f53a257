"""The project's jitted uCTRL iteration, driven for timing: shared by the benchmarks.

Needs only jax, flax, optax, numpy and the TensorFlow-free modules of ``uctrl_jax``
(``train``'s steps, ``sharding``, ``objectives``), so that ``accelerator_bench.py`` runs
on accelerator images without TensorFlow, clu or ml_collections; ``train_step_bench.py``
adds PyTorch beside it.

* ``random_batch``: a host batch of the input pipeline's shapes, random pixels;
  ``unit_rows``: random features as the encoder outputs them.
* ``JaxLoop``: state and steps on one mesh; ``iteration()`` times each step,
  ``run(n)`` times ``n`` iterations back to back, ``compile_check()`` counts compilations,
  ``compile_steps()`` compiles ahead of time (and counts the FLOPs), ``reset()`` starts
  again from step 0.
* ``rate_terms_fwdgrad``: one iteration's rate terms and their gradient alone, on
  random features of the steps' shapes and sharding, and their FLOPs.
* ``compiled_flops``: XLA's cost analysis of a jitted call; ``matmul_peak``: the device's
  measured rate for one large matmul.
* ``count_compiles``, ``interleaved``, ``timed``, ``median_ms``: timing helpers.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from uctrl_jax import objectives
from uctrl_jax import sharding
from uctrl_jax import steps
from uctrl_jax.evaluators import common
from uctrl_jax.state import create_train_state


def random_batch(config, image_shape, seed=0) -> dict:
  """A host batch as ``input_pipeline`` yields it: image (B,H,W,C), views (V,B,H,W,C), label (B,)."""
  rng = np.random.default_rng(seed)
  B, V = config.train.batch_size, config.data.num_views
  return {
    "image": rng.uniform(-1, 1, (B, *image_shape)).astype(np.float32),
    "views": rng.uniform(-1, 1, (V, B, *image_shape)).astype(np.float32),
    "label": (np.arange(B) % 10).astype(np.int32),
  }


def unit_rows(rng, *shape):
  """Random float32 unit rows of ``shape = (..., d)``, as the encoder outputs them."""
  return common.l2_normalize(rng.standard_normal(shape).astype(np.float32))


@contextlib.contextmanager
def count_compiles():
  """Collects the names of the XLA compilations inside (``jax.log_compiles`` records)."""
  names = []

  class Handler(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if message.startswith("Finished XLA compilation of "):
        names.append(message[len("Finished XLA compilation of ") :].split(" in ")[0])

  logger = logging.getLogger("jax")
  handler, propagate = Handler(level=logging.DEBUG), logger.propagate
  logger.addHandler(handler)
  logger.propagate = False  # log_compiles writes WARNINGs; keep them off stderr
  try:
    with jax.log_compiles():
      yield names
  finally:
    logger.removeHandler(handler)
    logger.propagate = propagate


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
  """Runs zero-argument callables round-robin; each returns ``{label: seconds}``.

  Returns ``{name: {label: [seconds, ...]}}`` over the ``repeats`` timed rounds.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  out = {name: {} for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      for label, seconds in fn().items():
        out[name].setdefault(label, []).append(seconds)
  return out


def timed(fn):
  """Wraps a zero-argument callable into one that returns ``{"total": seconds}``."""

  def run():
    start = time.perf_counter()
    fn()
    return {"total": time.perf_counter() - start}

  return run


def median_ms(seconds) -> float:
  return 1e3 * statistics.median(seconds)


class JaxLoop:
  """This project's state and steps on one mesh, advanced one timed iteration at a time."""

  def __init__(self, config, image_shape, host_batch):
    self.config = config
    self.image_shape = image_shape
    self.mesh = sharding.create_mesh(mesh_config=config.mesh)
    self.reset()
    self.encoder_step, self.decoder_step = steps.make_steps(config, image_shape)
    self.host_batch = host_batch
    self.batch = sharding.shard_batch(host_batch, self.mesh)

  def reset(self) -> None:
    """A fresh state at step 0 (``create_train_state`` from ``config.seed``)."""
    self.state = sharding.replicate(
      create_train_state(self.config, self.image_shape, jax.random.key(self.config.seed)),
      self.mesh,
    )

  def compile_steps(self) -> float:
    """Compiles both steps ahead of time (the loop runs the compiled programs from then on)
    and returns XLA's FLOPs of one iteration: ``encoder_steps`` × the encoder step's plus
    the decoder step's (``compiled_flops``)."""
    self.encoder_step = self.encoder_step.lower(self.state, self.batch).compile()
    flops = self.config.train.encoder_steps * compiled_flops(self.encoder_step)
    if self.decoder_step is not None:
      self.decoder_step = self.decoder_step.lower(self.state, self.batch).compile()
      flops += compiled_flops(self.decoder_step)
    return flops

  def iteration(self, batch=None) -> dict:
    """One iteration (``steps.train_iteration``'s loop), each step timed to completion."""
    batch = self.batch if batch is None else batch
    times = {}
    start = time.perf_counter()
    for _ in range(self.config.train.encoder_steps):
      self.state, metrics = self.encoder_step(self.state, batch)
      jax.block_until_ready((self.state, metrics))
    mid = time.perf_counter()
    self.state, metrics = self.decoder_step(self.state, batch)
    jax.block_until_ready((self.state, metrics))
    end = time.perf_counter()
    times["encoder steps"], times["decoder step"], times["iteration"] = (
      mid - start,
      end - mid,
      end - start,
    )
    return times

  def run(self, iterations: int) -> float:
    """Seconds for ``iterations`` iterations back to back (``steps.train_iteration``, as
    the trainer runs them), blocked only at the end: throughput, no host sync per step."""
    start = time.perf_counter()
    for _ in range(iterations):
      self.state, metrics = steps.train_iteration(
        self.encoder_step,
        self.decoder_step,
        self.state,
        self.batch,
        self.config.train.encoder_steps,
      )
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start

  def compile_check(self, iterations: int = 3) -> list:
    """Compilations per iteration, each fed a freshly sharded host batch (as training is)."""
    per_iteration = []
    for i in range(iterations):
      host = random_batch(self.config, self.image_shape, seed=100 + i)
      with count_compiles() as names:
        self.iteration(sharding.shard_batch(host, self.mesh))
      per_iteration.append(list(names))
    return per_iteration


def compiled_flops(compiled) -> float:
  """FLOPs of one call of an ahead-of-time compiled program (``jit(f).lower(...).compile()``)
  by XLA's cost analysis (custom calls such as the CPU's LAPACK Cholesky count 0: they are
  not XLA ops)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
    analysis = analysis[0]
  return float(analysis.get("flops", 0.0))


def matmul_peak(dtype=jnp.float32, n=None, calls: int = 5) -> dict:
  """The device's measured matmul rate: FLOP/s of one ``n × n`` by ``n × n`` product in
  ``dtype`` (default precision, as the models' layers), the median of ``calls`` after a
  warm-up; ``n`` 2048 on CPU, 8192 on accelerators.

  Returns ``{"n", "dtype", "seconds", "flops_per_s"}``.
  """
  platform = jax.devices()[0].platform
  n = n or (2048 if platform == "cpu" else 8192)
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  product = jax.jit(jnp.matmul)
  jax.block_until_ready(product(a, b))
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(product(a, b))
    seconds.append(time.perf_counter() - start)
  best = statistics.median(seconds)
  return {"n": n, "dtype": jnp.dtype(dtype).name, "seconds": best, "flops_per_s": 2 * n**3 / best}


def rate_terms_fwdgrad(config, mesh, batch_size: int, seed: int = 0):
  """The rate terms of one iteration alone, on random features: ``(run, flops)``.

  ``run()`` computes, jitted and to completion, what the steps compute of the game's terms
  (``objectives.game_terms``) and their gradient with respect to the features: the
  encoder step's (``Z``, ``Ẑ`` (B, d) and the views' ``Z_aug`` (V, B, d)) ``encoder_steps``
  times, then the decoder step's (without the views where ``train.encoder_bn_in_decoder_step``
  is ``"running"``: it does not encode them). The rest of an iteration is the nets and
  Adam. ``flops``: XLA's cost analysis of those calls. The features are random unit rows
  sharded over ``data`` as in the steps: the Cholesky factorisations cost the same for
  any features.
  """
  rng = np.random.default_rng(seed)
  B, V, d = batch_size, config.data.num_views, config.model.feature_dim
  Z = unit_rows(rng, B, d)
  feats = sharding.shard_batch(
    {
      "z": Z,
      "zhat": unit_rows(rng, B, d) + 2 * Z,
      "views": unit_rows(rng, V, B, d) + 2 * Z,
      "label": (np.arange(B) % 10).astype(np.int32),
    },
    mesh,
  )

  def objective(Z, Zhat, Z_aug, labels):
    return objectives.game_terms(config, Z, Zhat, Z_aug, labels)["encoder_objective"]

  with_views = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))
  without_views = jax.jit(
    jax.value_and_grad(lambda Z, Zhat, labels: objective(Z, Zhat, None, labels), argnums=(0, 1))
  )
  enc_args = (feats["z"], feats["zhat"], feats["views"], feats["label"])
  decoder_sees_views = config.train.encoder_bn_in_decoder_step == "batch"
  dec_fn, dec_args = (
    (with_views, enc_args)
    if decoder_sees_views
    else (without_views, (feats["z"], feats["zhat"], feats["label"]))
  )
  k = config.train.encoder_steps

  def run():
    out = [with_views(*enc_args) for _ in range(k)] + [dec_fn(*dec_args)]
    return jax.block_until_ready(out)

  flops = k * compiled_flops(with_views.lower(*enc_args).compile()) + compiled_flops(
    dec_fn.lower(*dec_args).compile()
  )
  return run, flops
