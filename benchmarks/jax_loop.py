"""The project's jitted uCTRL iteration, driven for timing: shared by the benchmarks.

Needs only jax, flax, optax, numpy and the TensorFlow-free modules of ``uctrl_jax``
(``train``'s steps, ``sharding``, ``objectives``), so that ``accelerator_bench.py`` runs
on accelerator images without TensorFlow, clu or ml_collections; ``train_step_bench.py``
adds PyTorch beside it.

* ``random_batch``: a host batch of the input pipeline's shapes, random pixels;
  ``unit_rows``: random features as the encoder outputs them.
* ``JaxLoop``: state and steps on one mesh; ``iteration()`` times each step,
  ``run(n)`` times ``n`` iterations back to back, ``compile_check()`` counts compilations.
* ``rate_terms_fwdgrad``: the objective's rate terms and their gradient alone, on
  random features of the steps' shapes and sharding.
* ``count_compiles``, ``interleaved``, ``timed``, ``median_ms``: timing helpers.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time

import jax
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
    self.state = sharding.replicate(
      create_train_state(config, image_shape, jax.random.key(config.seed)), self.mesh
    )
    self.encoder_step, self.decoder_step = steps.make_steps(config, image_shape)
    self.host_batch = host_batch
    self.batch = sharding.shard_batch(host_batch, self.mesh)

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


def rate_terms_fwdgrad(config, mesh, batch_size: int, seed: int = 0):
  """A zero-argument callable: the game's terms (``objectives.game_terms``) and their
  gradient with respect to ``(Z, Ẑ, Z_aug)``, jitted, run to completion.

  Each step of an iteration computes exactly this once on its features (the rest is the
  nets and Adam), so ``(encoder_steps + 1)`` × its time is the rate terms' part of an
  iteration. The features are random unit rows of the steps' shapes, ``Z``, ``Ẑ``
  ``(B, d)`` and ``Z_aug`` ``(V, B, d)``, sharded over ``data`` as in the steps: the
  Cholesky factorisations cost the same for any features.
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

  fwdgrad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))
  args = (feats["z"], feats["zhat"], feats["views"], feats["label"])
  return lambda: jax.block_until_ready(fwdgrad(*args))
