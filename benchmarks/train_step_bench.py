"""Speed of one uCTRL iteration: this project's jitted steps against a PyTorch step of the same nets.

One iteration = ``config.train.encoder_steps`` encoder steps + one decoder step, as
``uctrl_jax/steps.py`` computes them (``make_steps``, ``create_train_state``,
``sharding.shard_batch``), next to ``benchmarks/torch_uctrl.py``, which builds the same
nets layer for layer and plays the same game: today's default objective (the views'
mean as the invariance target, R expanded over the views, cosine sample-wise terms on
batch means), the same BN statistics in each pass (the decoder step on the encoder's
running statistics) and per-player Adam with its schedule. Runs alternate JAX / PyTorch
in one process (machines here are noisy: only ratios measured together mean anything);
medians per step and per iteration, their spread, and the JAX / PyTorch ratio (> 1: JAX
is slower).

Cases (``--cases``, comma-separated; ``--batch_size`` / ``--num_views`` / ``--width`` /
``--upsample`` override any of them):

* ``default``: configs/fashion_mnist.py as shipped, the README's command (DCGAN pair
  w = 32, 28×28×1, batch 64, 4 views, d = 128).
* ``cifar_resnet18_b16``: configs/cifar.py (ResNet-18 pair w = 64, 32×32×3, 8 views,
  two encoder steps per decoder step) at batch 16: 144 images per encoder pass, about
  25 s an iteration per framework on a 2-core CPU: use few repeats.
* ``tiny``: configs/tiny.py (a smoke case for the tests).

The JAX column is the iteration as ``train.train_and_evaluate`` runs it: scipy's
OpenBLAS (the LAPACK behind jaxlib's CPU Cholesky and triangular solves) limited to
``config.train.host_blas_threads`` (1) by ``host_blas.limit_host_blas``. Optional columns
side by side: ``--blas_as_found``, OpenBLAS's threads as found (the project before
issue 8: they contend with XLA's pool); ``--lax_convs``, the models' stride-2
convolutions as ``lax.conv_general_dilated`` (before issue 25: XLA:CPU's slow input
gradient, ``uctrl_jax/strided_conv.py``).

Also, per case:

* start-up checks: both frameworks' objectives agree on identical random features
  (d side and row side of the Gram); the nets have equal parameter counts; and
  ``check_iteration_agrees``: from the same weights on the same batch, every term each
  step logs, its gradient norm and the stepped player's Adam update agree (the twin
  takes the JAX state's weights before each step);
* recompilation: the first iterations run under ``jax.log_compiles``; the iterations
  after the first must compile nothing (asserted, and printed);
* ``--breakdown``: the JAX iteration split into timed sub-jits (encoder / decoder
  passes, the views' concatenation, rate terms, optimizer updates, host → device
  transfer) next to the same parts in PyTorch;
* ``--pipeline`` (Fashion-MNIST cases): iteration time fed by the real input pipeline
  (``input_pipeline.create_dataset``, tfds data prepared in ``--data_dir``, default
  ``~/tensorflow_datasets``) against pre-loaded device batches.

Usage:
  .venv/bin/python -m benchmarks.train_step_bench --cases default --repeats 15
      [--breakdown] [--per_op] [--pipeline] [--lax_convs] [--blas_as_found]
      [--batch_size B] [--num_views V] [--width W] [--upsample OP] [--json PATH]

Needs PyTorch's CPU build, which is kept out of the project's runtime requirements:
``.venv/bin/pip install torch==2.13.0`` (CPU wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyTorch's OpenMP workers otherwise spin for a while after each call and steal the
# cores from the JAX run that follows in the interleaved timing (4× slower JAX runs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import threadpoolctl  # noqa: E402

from configs import cifar, fashion_mnist, tiny  # noqa: E402
from benchmarks.jax_loop import JaxLoop, interleaved, median_ms, random_batch, timed, unit_rows  # noqa: E402
from uctrl_jax import host_blas  # noqa: E402
from uctrl_jax import models  # noqa: E402
from uctrl_jax import objectives  # noqa: E402
from uctrl_jax import sharding  # noqa: E402
from uctrl_jax.state import make_optimizers  # noqa: E402


def _case_config(get_config, batch_size=None):
  config = get_config()
  if batch_size is not None:
    config.train.batch_size = batch_size
  return config


# name -> (config factory, image shape (H, W, C)).
CASES = {
  "default": (lambda: _case_config(fashion_mnist.get_config), (28, 28, 1)),
  "cifar_resnet18_b16": (lambda: _case_config(cifar.get_config, 16), (32, 32, 3)),
  "tiny": (lambda: _case_config(tiny.get_config), (28, 28, 1)),
}


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _relative_difference(a, b) -> float:
  """``|a − b| / max(|b|, 1)``: relative for the large terms, absolute for the small ones
  (ΔR(Z, Ẑ) is a difference of log-dets of size R, so its error is R's)."""
  return abs(float(a) - float(b)) / max(abs(float(b)), 1.0)


def check_objectives_agree(config, sizes=(16, 256), num_views=2, tol=1e-5) -> float:
  """Feeds identical random (Z, Ẑ, Z_aug) to ``objectives.game_terms`` and to
  ``torch_uctrl.game_terms``; raises AssertionError on any term that differs.

  ``sizes``: batch sizes n, chosen so that both Gram sides are exercised (2n < d and
  2n ≥ d for d = config.model.feature_dim). Returns the largest difference
  (``_relative_difference``).
  """
  import torch
  from benchmarks import torch_uctrl

  d = config.model.feature_dim
  worst = 0.0
  for n in sizes:
    rng = np.random.default_rng(n)
    Z = unit_rows(rng, n, d)
    # Correlated with Z, as the loop's features are: the terms are then far from trivial.
    Zhat = unit_rows(rng, n, d) + 2 * Z
    Z_aug = unit_rows(rng, num_views, n, d) + 2 * Z
    labels = np.zeros(n, np.int32)
    for views in (Z_aug, None):  # the encoder step's terms, and the decoder step's
      ref = jax.device_get(objectives.game_terms(config, Z, Zhat, views, labels))
      got = torch_uctrl.game_terms(
        config, *(None if a is None else torch.from_numpy(a) for a in (Z, Zhat, views))
      )
      if set(got) != set(ref):
        raise AssertionError(f"terms differ: torch {sorted(got)}, jax {sorted(ref)}")
      for key, value in ref.items():
        diff = _relative_difference(got[key], value)
        if not diff <= tol:
          raise AssertionError(
            f"objective term {key!r} at n = {n}: torch {float(got[key])}, jax {float(value)}"
          )
        worst = max(worst, diff)
  return worst


def nchw(host_batch):
  """The twin's inputs from a host batch: X (B, C, H, W), views (V, B, C, H, W)."""
  import torch

  return (
    torch.from_numpy(np.ascontiguousarray(host_batch["image"].transpose(0, 3, 1, 2))),
    torch.from_numpy(np.ascontiguousarray(host_batch["views"].transpose(0, 1, 4, 2, 3))),
  )


def check_iteration_agrees(
  jl: JaxLoop, model, iterations: int = 2, tol=1e-4, grad_tol=1e-2, update_tol=0.05
) -> dict:
  """Both frameworks step from the same weights on the same batch.

  Before each step (``encoder_steps`` encoder steps, then the decoder step, for
  ``iterations`` iterations) the twin ``model`` (``torch_uctrl.TorchUCTRL``) takes the
  JAX state's weights, BN statistics and step (``load_jax_weights``); each side keeps
  its own Adam state, so the checks from the second update on cover β₁, β₂ and the
  schedules. Compared after each step: every term the step logs (``tol``, in
  ``_relative_difference``), the gradient norm (relative, ``grad_tol``) and the stepped
  player's new parameters: the fraction of them whose updates differ by more than a
  tenth of the step's learning rate (``update_tol``; Adam moves every entry by about
  lr, and one whose gradient is ~0 can move either way in either framework, a few per
  thousand at most, while a wrong rate or schedule moves them all). Advances ``jl``'s
  state. Raises AssertionError on a difference.

  Returns:
    the largest difference of each kind: ``{"terms", "grad_norm", "update"}``.
  """
  import torch

  X, views = nchw(jl.host_batch)
  worst = {"terms": 0.0, "grad_norm": 0.0, "update": 0.0}
  params = lambda module: torch.cat([p.detach().flatten() for p in module.parameters()])  # noqa: E731
  scratch = type(model)(jl.config, jl.image_shape)  # reads the JAX parameters after a step
  for it in range(iterations):
    for player in ["encoder"] * jl.config.train.encoder_steps + ["decoder"]:
      model.load_jax_weights(jax.device_get(jl.state))
      jl.state, metrics = getattr(jl, f"{player}_step")(jl.state, jl.batch)
      want = {k.split("/", 1)[1]: v for k, v in jax.device_get(metrics).items()}
      got = getattr(model, f"{player}_step")(X, views)
      if set(got) != set(want):
        raise AssertionError(f"{player} step logs differ: torch {sorted(got)}, jax {sorted(want)}")
      scratch.load_jax_weights(jax.device_get(jl.state))
      after = params(getattr(scratch, player))
      diffs = {
        "terms": max(_relative_difference(got[k], want[k]) for k in want if k != "grad_norm"),
        "grad_norm": abs(float(got["grad_norm"]) / float(want["grad_norm"]) - 1.0),
        "update": float(
          ((params(getattr(model, player)) - after).abs() > 0.1 * float(want["lr"])).double().mean()
        ),
      }
      for kind, limit in (("terms", tol), ("grad_norm", grad_tol), ("update", update_tol)):
        if not diffs[kind] <= limit:
          raise AssertionError(
            f"iteration {it}, {player} step: {kind} differ by {diffs[kind]:.2e} (> {limit}): "
            f"torch {dict((k, float(v)) for k, v in got.items())}, "
            f"jax {dict((k, float(v)) for k, v in want.items())}"
          )
        worst[kind] = max(worst[kind], diffs[kind])
  return worst


def paired_ratio(a, b):
  """Median and quartiles of the per-round ratios ``a[i] / b[i]`` (rounds interleaved, so
  each ratio is measured under one load)."""
  ratios = [x / y for x, y in zip(a, b)]
  if len(ratios) < 2:
    return ratios[0], ratios[0], ratios[0]
  q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
  return median, q1, q3


def openblas_threads():
  """Threads of scipy's OpenBLAS (the LAPACK of JAX on CPU), or None if not loaded."""
  import scipy.linalg.cython_lapack  # noqa: F401  pylint: disable=import-outside-toplevel

  counts = [
    i["num_threads"]
    for i in threadpoolctl.threadpool_info()
    if i["internal_api"] == "openblas" and "scipy.libs" in i["filepath"]
  ]
  return counts[0] if counts else None


BLAS_AS_FOUND = openblas_threads()


def lax_convs_loop(jl: JaxLoop) -> JaxLoop:
  """``jl``'s case with the models' stride-2 convolutions as ``lax.conv_general_dilated``
  (before issue 25) in place of ``strided_conv.conv_general_dilated``; compiled here."""
  from uctrl_jax import strided_conv  # pylint: disable=import-outside-toplevel

  ours = strided_conv.conv_general_dilated
  strided_conv.conv_general_dilated = jax.lax.conv_general_dilated  # read when traced
  try:
    loop = JaxLoop(jl.config, jl.image_shape, jl.host_batch)
    loop.iteration()
  finally:
    strided_conv.conv_general_dilated = ours
  return loop


def with_openblas(num_threads, fn):
  """``fn`` wrapped to run under ``host_blas.limit_host_blas(num_threads)`` (None: as found)."""

  def run():
    with host_blas.limit_host_blas(num_threads):
      return fn()

  return run


# ----------------------------------------------------------------------------
# The two iterations.
# ----------------------------------------------------------------------------


class TorchLoop:
  """``torch_uctrl.TorchUCTRL`` on the same host batch (NCHW, pre-loaded)."""

  def __init__(self, config, image_shape, host_batch):
    from benchmarks import torch_uctrl

    self.model = torch_uctrl.TorchUCTRL(config, image_shape, seed=config.seed)
    self.encoder_steps = config.train.encoder_steps
    self.X, self.views = nchw(host_batch)

  def iteration(self) -> dict:
    start = time.perf_counter()
    for _ in range(self.encoder_steps):
      self.model.encoder_step(self.X, self.views)
    mid = time.perf_counter()
    self.model.decoder_step(self.X, self.views)
    end = time.perf_counter()
    return {"encoder steps": mid - start, "decoder step": end - mid, "iteration": end - start}


# ----------------------------------------------------------------------------
# Breakdown of the JAX iteration into sub-jits.
# ----------------------------------------------------------------------------


def _decoder_step_encodes_views(config) -> bool:
  return config.train.encoder_bn_in_decoder_step == "batch"


def torch_parts(tl: TorchLoop, config) -> dict:
  """The PyTorch counterparts of ``breakdown``'s sub-jits: name -> zero-argument callable.

  Same inputs and modes as the JAX parts; training-mode passes leave the running
  statistics as they are (as the JAX parts do, which never write them back).
  """
  import torch
  from benchmarks import torch_uctrl

  model, X, views = tl.model, tl.X, tl.views
  enc, dec = model.encoder, model.decoder
  B, V, d = X.shape[0], views.shape[0], config.model.feature_dim
  x_all = torch.cat([X, views.reshape(-1, *X.shape[1:])])
  g = torch.Generator().manual_seed(0)
  z_all_cot = torch.randn(B * (1 + V), d, generator=g)
  z_cot, x_cot = z_all_cot[:B], torch.randn(X.shape, generator=g)
  frozen, eval_mode = torch_uctrl._frozen_running_stats, torch_uctrl._eval_mode
  with torch.no_grad(), frozen(enc), frozen(dec):
    z_all = enc(x_all)
    Z, Z_aug = z_all[:B], z_all[B:].reshape(V, B, d)
    Xhat = dec(Z)
    with eval_mode(enc):
      Zhat = enc(Xhat)

  def objective(Z, Zhat, Z_aug):
    return torch_uctrl.game_terms(config, Z, Zhat, Z_aug)["encoder_objective"]

  def backward(module, out, cot):
    module.zero_grad(set_to_none=True)
    (out * cot).sum().backward()

  def concat():
    torch.cat([X, views.reshape(-1, *X.shape[1:])])

  def enc_fwd_train():
    with torch.no_grad(), frozen(enc):
      enc(x_all)

  def enc_fwdbwd_train():
    with frozen(enc):
      backward(enc, enc(x_all), z_all_cot)

  def enc_fwd_eval():
    with torch.no_grad(), eval_mode(enc):
      enc(X)

  def enc_fwdbwd_eval_params():
    with eval_mode(enc):
      backward(enc, enc(Xhat), z_cot)

  def enc_fwdbwd_eval_input():
    x = Xhat.clone().requires_grad_(True)
    with torch_uctrl._frozen_params(enc), eval_mode(enc):
      (enc(x) * z_cot).sum().backward()

  def dec_fwd_train():
    with torch.no_grad(), frozen(dec):
      dec(Z)

  def dec_fwdbwd_train():
    with frozen(dec):
      backward(dec, dec(Z), x_cot)

  def rate_fwdgrad(views):
    def run():
      leaves = [a.clone().requires_grad_(True) for a in (Z, Zhat, Z_aug)]
      objective(*leaves[:2], leaves[2] if views else None).backward()

    return run

  def adam(module, opt):
    grads = [torch.full_like(p, 1e-3) for p in module.parameters()]

    def step():
      for p, gr in zip(module.parameters(), grads):
        p.grad = gr
      opt.step()

    return step

  return {
    "concat": concat,
    "enc_fwd_train": enc_fwd_train,
    "enc_fwdbwd_train": enc_fwdbwd_train,
    "enc_fwd_eval": enc_fwd_eval,
    "enc_fwdbwd_eval_params": enc_fwdbwd_eval_params,
    "enc_fwdbwd_eval_input": enc_fwdbwd_eval_input,
    "dec_fwd_train": dec_fwd_train,
    "dec_fwdbwd_train": dec_fwdbwd_train,
    "rate_fwdgrad_views": rate_fwdgrad(True),
    "rate_fwdgrad": rate_fwdgrad(_decoder_step_encodes_views(config)),
    "adam_encoder": adam(enc, model.enc_opt),
    "adam_decoder": adam(dec, model.dec_opt),
  }


def breakdown(loop: JaxLoop, tl: TorchLoop, repeats: int):
  """The JAX iteration split into timed sub-jits, next to the same parts in PyTorch.

  Each JAX part is its own jit on copies of the current parameters; a part's backward
  is the VJP of a random cotangent (the cost does not depend on which). The encoder
  step is: [X; X_a] concatenated, encoder fwd+bwd on it (train), decoder fwd (train),
  encoder fwd+bwd on X̂ (running stats, w.r.t. θ), rate terms with the views fwd+grad,
  Adam; the decoder step: encoder fwd on X (running stats; with
  ``encoder_bn_in_decoder_step = "batch"``, on [X; X_a] in training mode), decoder
  fwd+bwd (train, w.r.t. η), encoder fwd+bwd on X̂ (w.r.t. the input), rate terms
  fwd+grad, Adam. All parts of both frameworks run round-robin, with both whole
  iterations among them.

  Returns:
    ``(rows, iteration_ms, extra)``: rows ``(component, jax ms, torch ms or None, times
    per iteration)``; the median measured iterations ``{"jax": ms, "torch": ms}``; and
    ``(label, jax ms, torch ms or None)`` reference timings (whole steps).
  """
  config, image_shape = loop.config, loop.image_shape
  encoder, decoder = models.create_models(config, image_shape)
  enc_tx, dec_tx = make_optimizers(config)
  # Copies: the steps donate the state, which would delete arrays shared with it.
  s = jax.tree.map(jnp.copy, loop.state)
  ep, es, dp, ds = s.encoder_params, s.encoder_batch_stats, s.decoder_params, s.decoder_batch_stats
  X, views, labels = loop.batch["image"], loop.batch["views"], loop.batch["label"]
  B, V, d = X.shape[0], views.shape[0], config.model.feature_dim
  concat = jax.jit(lambda X, views: jnp.concatenate([X, views.reshape((V * B,) + X.shape[1:])]))
  x_all = concat(X, views)
  rng = np.random.default_rng(0)
  z_all_cot = jnp.asarray(rng.standard_normal((B * (1 + V), d)), jnp.float32)
  z_cot = z_all_cot[:B]
  x_cot = jnp.asarray(rng.standard_normal(X.shape), jnp.float32)

  def enc_train(p, x):
    return encoder.apply({"params": p, "batch_stats": es}, x, train=True, mutable=["batch_stats"])

  def enc_eval(p, x):
    return encoder.apply({"params": p, "batch_stats": es}, x, train=False)

  def dec_train(p, z):
    return decoder.apply({"params": p, "batch_stats": ds}, z, train=True, mutable=["batch_stats"])

  def vjp_params(f, cot):
    def loss(p, x):
      out = f(p, x)
      out = out[0] if isinstance(out, tuple) else out
      return jnp.sum(out * cot)

    return jax.jit(jax.grad(loss))

  def objective(Z, Zhat, Z_aug):
    return objectives.game_terms(config, Z, Zhat, Z_aug, labels)["encoder_objective"]

  Z = jax.jit(lambda p, x: enc_train(p, x)[0][:B])(ep, x_all)
  # Views' features keep the step's layout (V, B, d) split over B, not over V.
  Z_aug = jax.jit(
    lambda p, x: enc_train(p, x)[0][B:].reshape(V, B, d),
    out_shardings=sharding.batch_sharding(loop.mesh, "views"),
  )(ep, x_all)
  Xhat = jax.jit(lambda p, z: dec_train(p, z)[0])(dp, Z)
  Zhat = jax.jit(enc_eval)(ep, Xhat)
  enc_grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), ep)
  dec_grads = jax.tree.map(lambda x: 1e-3 * jnp.ones_like(x), dp)
  enc_opt, dec_opt = enc_tx.init(ep), dec_tx.init(dp)
  dec_views = _decoder_step_encodes_views(config)

  def adam(tx):
    def update(params, grads, opt_state):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    return jax.jit(update)

  def rate_fwdgrad(views):
    if views:
      return jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2))), (Z, Zhat, Z_aug)
    grad = jax.value_and_grad(lambda Z, Zhat: objective(Z, Zhat, None), argnums=(0, 1))
    return jax.jit(grad), (Z, Zhat)

  j = {
    "concat": (concat, (X, views)),
    "enc_fwd_train": (jax.jit(enc_train), (ep, x_all)),
    "enc_fwdbwd_train": (vjp_params(enc_train, z_all_cot), (ep, x_all)),
    "enc_fwd_eval": (jax.jit(enc_eval), (ep, X)),
    "enc_fwdbwd_eval_params": (vjp_params(enc_eval, z_cot), (ep, Xhat)),
    "enc_fwdbwd_eval_input": (
      jax.jit(jax.grad(lambda x, p: jnp.sum(enc_eval(p, x) * z_cot))),
      (Xhat, ep),
    ),
    "dec_fwd_train": (jax.jit(dec_train), (dp, Z)),
    "dec_fwdbwd_train": (vjp_params(dec_train, x_cot), (dp, Z)),
    "rate_fwdgrad_views": rate_fwdgrad(True),
    "rate_fwdgrad": rate_fwdgrad(dec_views),
    "adam_encoder": (adam(enc_tx), (ep, enc_grads, enc_opt)),
    "adam_decoder": (adam(dec_tx), (dp, dec_grads, dec_opt)),
  }
  fns = {
    ("jax", name): timed(lambda f=f, a=a: jax.block_until_ready(f(*a)))
    for name, (f, a) in j.items()
  }
  fns[("jax", "h2d")] = timed(
    lambda: jax.block_until_ready(sharding.shard_batch(loop.host_batch, loop.mesh))
  )
  fns[("jax", "iteration")] = loop.iteration
  fns.update({("torch", name): timed(fn) for name, fn in torch_parts(tl, config).items()})
  fns[("torch", "iteration")] = tl.iteration
  med = {"jax": {}, "torch": {}}
  for (framework, name), res in interleaved(fns, repeats).items():
    for label, secs in res.items():
      med[framework][name if label == "total" else label] = median_ms(secs)

  k = config.train.encoder_steps
  n_all = B * (1 + V)
  rows = [  # (label, key, times per iteration)
    (f"[X; X_a] concatenated ({n_all} images)", "concat", k),
    (f"encoder fwd+bwd, train, [X; X_a] ({n_all} images), w.r.t. θ", "enc_fwdbwd_train", k),
    (f"decoder fwd, train ({B})", "dec_fwd_train", k),
    (f"encoder fwd+bwd, running stats, X̂ ({B}), w.r.t. θ", "enc_fwdbwd_eval_params", k),
    ("rate terms fwd+grad (Z, Ẑ, Z_a)", "rate_fwdgrad_views", k),
    ("Adam update, encoder", "adam_encoder", k),
    (
      f"encoder fwd, train, [X; X_a] ({n_all})"
      if dec_views
      else f"encoder fwd, running stats, X ({B})",
      "enc_fwd_train" if dec_views else "enc_fwd_eval",
      1,
    ),
    (f"decoder fwd+bwd, train ({B}), w.r.t. η", "dec_fwdbwd_train", 1),
    (f"encoder fwd+bwd, running stats, X̂ ({B}), w.r.t. X̂", "enc_fwdbwd_eval_input", 1),
    ("rate terms fwd+grad (Z, Ẑ" + (", Z_a)" if dec_views else ")"), "rate_fwdgrad", 1),
    ("Adam update, decoder", "adam_decoder", 1),
  ]
  table = [(label, med["jax"][key], med["torch"].get(key), n) for label, key, n in rows]
  table.append(("host → device batch (shard_batch), per batch", med["jax"]["h2d"], None, 1))
  extra = [
    ("encoder steps, measured", "encoder steps"),
    ("decoder step, measured", "decoder step"),
  ]
  extra = [(label, med["jax"][key], med["torch"][key]) for label, key in extra]
  return table, {f: med[f]["iteration"] for f in med}, extra


def conv_layers(tl: TorchLoop) -> list:
  """The convolutions of one iteration's passes, as the twin runs them: ``(label, input
  (N, C, H, W), torch Conv2d)``, for the encoder on ``[X; X_a]`` and the decoder on ``Z``
  (the other passes run the same layers on B images)."""
  import torch

  model, X, views = tl.model, tl.X, tl.views
  found = []

  def hook(name):
    def record(module, inputs, _):
      found.append((name, tuple(inputs[0].shape), module))

    return record

  handles = [
    m.register_forward_hook(hook(f"{net} {name}"))
    for net, module in (("encoder", model.encoder), ("decoder", model.decoder))
    for name, m in module.named_modules()
    if isinstance(m, torch.nn.Conv2d)
  ]
  try:
    with torch.no_grad():
      z = model._encode_images_and_views(X, views)[0]
      model.decoder(z)
  finally:
    for h in handles:
      h.remove()
  return found


def per_op(tl: TorchLoop, repeats: int) -> list:
  """Each convolution of the iteration's big passes (``conv_layers``) alone: forward,
  input gradient and kernel gradient, JAX (as uctrl_jax calls it:
  ``strided_conv.conv_general_dilated``, NHWC) against PyTorch (NCHW), interleaved.

  Returns rows ``(label, input shape, kernel (kh, kw, cin, cout, stride), {part: (jax ms,
  torch ms)})`` for the parts ``fwd``, ``dx`` (none for the encoder's first conv: its
  input is data) and ``dw``.
  """
  import torch
  from torch.nn import grad as torch_grad
  import torch.nn.functional as F

  from uctrl_jax import strided_conv

  rng = np.random.default_rng(0)
  rows, fns = [], {}
  for i, (label, (n, c, h, w), conv) in enumerate(conv_layers(tl)):
    kh, kw = conv.kernel_size
    stride, (ph, pw) = conv.stride[0], conv.padding
    cout = conv.out_channels
    x_t = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
    k_t = conv.weight.detach().clone()
    y_t = F.conv2d(x_t, k_t, stride=stride, padding=(ph, pw))
    g_t = torch.randn(y_t.shape)
    x_j = jnp.asarray(x_t.numpy().transpose(0, 2, 3, 1))
    k_j = jnp.asarray(k_t.numpy().transpose(2, 3, 1, 0))
    g_j = jnp.asarray(g_t.numpy().transpose(0, 2, 3, 1))
    dn = jax.lax.conv_dimension_numbers(x_j.shape, k_j.shape, ("NHWC", "HWIO", "NHWC"))

    def conv_j(x, k, stride=stride, ph=ph, pw=pw, dn=dn):
      pads = ((ph, ph), (pw, pw))
      return strided_conv.conv_general_dilated(x, k, (stride, stride), pads, dimension_numbers=dn)

    fwd = jax.jit(conv_j)
    dx = jax.jit(lambda x, k, g, f=conv_j: jax.vjp(lambda x: f(x, k), x)[1](g)[0])
    dw = jax.jit(lambda x, k, g, f=conv_j: jax.vjp(lambda k: f(x, k), k)[1](g)[0])
    kw_t = dict(stride=stride, padding=(ph, pw))
    parts = {
      "fwd": (
        lambda f=fwd, x=x_j, k=k_j: jax.block_until_ready(f(x, k)),
        lambda x=x_t, k=k_t, a=kw_t: F.conv2d(x, k, **a),
      ),
      "dw": (
        lambda f=dw, x=x_j, k=k_j, g=g_j: jax.block_until_ready(f(x, k, g)),
        lambda x=x_t, k=k_t, g=g_t, a=kw_t: torch_grad.conv2d_weight(x, k.shape, g, **a),
      ),
    }
    if i > 0:  # the encoder's first conv reads data: no input gradient
      parts["dx"] = (
        lambda f=dx, x=x_j, k=k_j, g=g_j: jax.block_until_ready(f(x, k, g)),
        lambda x=x_t, k=k_t, g=g_t, a=kw_t: torch_grad.conv2d_input(x.shape, k, g, **a),
      )
    for part, (fj, ft) in parts.items():
      fns[(i, part, "jax")] = timed(fj)
      fns[(i, part, "torch")] = timed(ft)
    rows.append((label, (n, h, w, c), (kh, kw, c, cout, stride), list(parts)))
  med = {key: median_ms(res["total"]) for key, res in interleaved(fns, repeats).items()}
  return [
    (label, shape, kernel, {p: (med[(i, p, "jax")], med[(i, p, "torch")]) for p in parts})
    for i, (label, shape, kernel, parts) in enumerate(rows)
  ]


# ----------------------------------------------------------------------------
# Real input pipeline against pre-loaded batches.
# ----------------------------------------------------------------------------


def pipeline_comparison(loop: JaxLoop, data_dir, rounds: int, block: int) -> dict:
  """Per-iteration time fed by ``input_pipeline.create_dataset`` vs a pre-loaded device batch.

  Blocks of ``block`` consecutive iterations of each kind alternate for ``rounds``
  rounds (blocks, not single iterations: the pipeline's prefetch buffer refills while
  the pre-loaded block runs, so single alternations would hide its cost). A pipeline
  iteration includes ``next(it)`` and ``shard_batch``, as ``train_and_evaluate`` does.
  Also: the pipeline alone (batches/s with no training beside it).
  """
  from uctrl_jax import input_pipeline

  config = loop.config.copy_and_resolve_references()
  if data_dir is not None:
    config.data.data_dir = data_dir
  it = input_pipeline.create_dataset(
    config, "train", process_index=0, process_count=1
  ).as_numpy_iterator()
  start = time.perf_counter()
  next(it)  # opens the files, fills the shuffle buffer
  first_batch = time.perf_counter() - start
  for _ in range(config.data.prefetch + 1):
    next(it)
  start = time.perf_counter()
  alone = 2 * block
  for _ in range(alone):
    next(it)
  alone_ms = 1e3 * (time.perf_counter() - start) / alone
  loop.iteration(sharding.shard_batch(next(it), loop.mesh))  # warm
  per = {"pipeline": [], "pre-loaded": []}
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(block):
      loop.iteration(sharding.shard_batch(next(it), loop.mesh))
    per["pipeline"].append((time.perf_counter() - start) / block)
    start = time.perf_counter()
    for _ in range(block):
      loop.iteration()
    per["pre-loaded"].append((time.perf_counter() - start) / block)
  return {
    "first_batch_s": first_batch,
    "pipeline_alone_ms_per_batch": alone_ms,
    "pipeline_ms": median_ms(per["pipeline"]),
    "preloaded_ms": median_ms(per["pre-loaded"]),
  }


# ----------------------------------------------------------------------------
# Main.
# ----------------------------------------------------------------------------


def run_case(name: str, args) -> dict:
  import torch
  from benchmarks import torch_uctrl

  make_config, image_shape = CASES[name]
  config = make_config()
  for section, key in (
    ("model", "width"),
    ("model", "upsample"),
    ("train", "batch_size"),
    ("data", "num_views"),
  ):
    if getattr(args, key) is not None:
      config[section][key] = getattr(args, key)
  t, m, loss = config.train, config.model, config.loss
  print(f"## {name}\n")
  print(
    f"{m.encoder}/{m.decoder} w = {m.width}, upsample {m.upsample}, "
    f"d = {m.feature_dim}, image {image_shape}, batch {t.batch_size}, V = {config.data.num_views}, "
    f"{t.encoder_steps} encoder step(s) per iteration; loss {loss.mode}, "
    f"{loss.sample_distance} sample terms ({loss.sample_reduction}), "
    f"λ₁ = {loss.lambda_aug}, λ₂ = {loss.lambda_self}, ε² = {loss.eps_sq}; "
    f"Adam b1 = {t.encoder_b1} / {t.decoder_b1} (encoder / decoder)\n"
  )
  result = {"case": name, "batch_size": t.batch_size, "encoder_steps": t.encoder_steps}

  worst = check_objectives_agree(config, sizes=(16, max(config.model.feature_dim, 64)))
  print(
    f"- check: torch and JAX objectives agree on identical random features "
    f"(row and d side of the Gram; largest difference {worst:.1e})"
  )
  host_batch = random_batch(config, image_shape)
  jl = JaxLoop(config, image_shape, host_batch)
  tl = TorchLoop(config, image_shape, host_batch)
  counts = {
    "encoder": (
      models.count_params(jl.state.encoder_params),
      torch_uctrl.count_params(tl.model.encoder),
    ),
    "decoder": (
      models.count_params(jl.state.decoder_params),
      torch_uctrl.count_params(tl.model.decoder),
    ),
  }
  for net, (cj, ct) in counts.items():
    if cj != ct:
      raise AssertionError(f"{net} parameter counts differ: jax {cj}, torch {ct}")
  print(
    f"- check: same nets, parameters: encoder {counts['encoder'][0]:,}, "
    f"decoder {counts['decoder'][0]:,} (both frameworks)"
  )

  start = time.perf_counter()
  compiles = jl.compile_check(args.compile_iterations)
  first_s = time.perf_counter() - start
  later = [names for names in compiles[1:] if names]
  print(
    f"- check: compilations per iteration under jax.log_compiles: "
    f"{[len(n) for n in compiles]} (first iteration: {', '.join(compiles[0]) or 'none'}; "
    f"{first_s:.1f} s for all {len(compiles)})"
  )
  result["compiles_per_iteration"] = [len(n) for n in compiles]
  if later:
    raise AssertionError(f"recompilation after the first iteration: {compiles[1:]}")
  # Both sides from step 0 (fresh Adam states), then timed from where the check ends.
  jl.reset()
  tl = TorchLoop(config, image_shape, host_batch)
  agree = check_iteration_agrees(jl, tl.model, iterations=args.check_iterations)
  result["agreement"] = agree
  print(
    f"- check: from the same weights on the same batch ({args.check_iterations} iterations, "
    f"each step from the JAX state), the logged terms agree to {agree['terms']:.1e}, the "
    f"gradient norms to {agree['grad_norm']:.1e} (relative); Adam updates more than "
    f"lr/10 apart: a fraction {agree['update']:.1e} of the parameters"
  )
  print(
    f"- threads: torch {torch.get_num_threads()}, scipy OpenBLAS (JAX's LAPACK) "
    f"{openblas_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
    f"load average {os.getloadavg()[0]:.1f}\n"
  )

  # "jax" is the iteration as train_and_evaluate runs it (host BLAS limited to
  # config.train.host_blas_threads). Optional columns: the same with OpenBLAS's pools as
  # found (the project before issue 8: its threads contend with XLA's pool), and with
  # lax's own stride-2 convolutions (before issue 25: XLA:CPU's slow input gradient).
  blas = config.train.host_blas_threads
  contestants = {"jax": with_openblas(blas, jl.iteration), "torch": tl.iteration}
  columns = {}
  if args.blas_as_found and openblas_threads() not in (None, blas):
    contestants["jax_blas_as_found"] = jl.iteration
    columns["jax_blas_as_found"] = f"JAX, OpenBLAS {openblas_threads()} threads"
  if args.lax_convs:
    contestants["jax_lax_convs"] = with_openblas(blas, lax_convs_loop(jl).iteration)
    columns["jax_lax_convs"] = "JAX, lax's stride-2 convs"
  res = interleaved(contestants, args.repeats, warmup=1)
  print(
    f"Medians of {args.repeats} alternating runs (ms; JAX / PyTorch: the median of the "
    f"rounds' ratios, [quartiles]):\n"
  )
  print(
    f"| part | JAX (uctrl_jax, OpenBLAS {blas} thread) | PyTorch | JAX / PyTorch |"
    + "".join(f" {title} | that / PyTorch |" for title in columns.values())
  )
  print("|---|---|---|---|" + "---|---|" * len(columns))
  result["side_by_side_ms"] = {}
  for label in ("encoder steps", "decoder step", "iteration"):
    a, b = median_ms(res["jax"][label]), median_ms(res["torch"][label])
    ratio, q1, q3 = paired_ratio(res["jax"][label], res["torch"][label])
    row = {"jax": a, "torch": b, "ratio": ratio, "ratio_quartiles": [q1, q3]}
    line = f"| {label} | {a:.0f} | {b:.0f} | {ratio:.2f} [{q1:.2f}–{q3:.2f}] |"
    for key in columns:
      c = median_ms(res[key][label])
      ratio_c, q1_c, q3_c = paired_ratio(res[key][label], res["torch"][label])
      row.update({key: c, f"ratio_{key}": ratio_c, f"ratio_{key}_quartiles": [q1_c, q3_c]})
      line += f" {c:.0f} | {ratio_c:.2f} [{q1_c:.2f}–{q3_c:.2f}] |"
    print(line)
    result["side_by_side_ms"][label] = row
  it_ms = result["side_by_side_ms"]["iteration"]
  print(
    f"\niterations/s: JAX {1e3 / it_ms['jax']:.2f}, PyTorch {1e3 / it_ms['torch']:.2f}"
    + "".join(f", {title} {1e3 / it_ms[key]:.2f}" for key, title in columns.items())
    + "\n"
  )

  if args.pipeline and config.data.name == "fashion_mnist":
    with host_blas.limit_host_blas(blas):
      p = pipeline_comparison(jl, args.data_dir, args.pipeline_rounds, args.pipeline_block)
    result["pipeline"] = p
    print(
      f"Input pipeline (fashion_mnist, V = {config.data.num_views}, blocks of "
      f"{args.pipeline_block} iterations, median of {args.pipeline_rounds} rounds):\n"
    )
    print("| iteration fed by | ms / iteration |")
    print("|---|---|")
    print(f"| input_pipeline.create_dataset + shard_batch | {p['pipeline_ms']:.0f} |")
    print(f"| pre-loaded device batch | {p['preloaded_ms']:.0f} |")
    print(
      f"\npipeline / pre-loaded: {p['pipeline_ms'] / p['preloaded_ms']:.2f}; the pipeline "
      f"alone: {p['pipeline_alone_ms_per_batch']:.0f} ms/batch "
      f"({t.batch_size * 1e3 / p['pipeline_alone_ms_per_batch']:.0f} images/s); first batch "
      f"(shuffle buffer fill) {p['first_batch_s']:.1f} s\n"
    )

  if args.breakdown:
    reps = args.breakdown_repeats or args.repeats
    with host_blas.limit_host_blas(blas):  # the parts as the trainer runs them
      table, it_ms, extra = breakdown(jl, tl, reps)
    result["breakdown_ms"] = {
      label: {"jax": a, "torch": b, "per_iteration": n} for label, a, b, n in table
    }
    result["breakdown_iteration_ms"] = it_ms
    result["breakdown_reference_ms"] = {label: {"jax": a, "torch": b} for label, a, b in extra}
    print(
      f"Iteration breakdown (JAX sub-jits and the same parts in PyTorch, medians of "
      f"{reps}, all interleaved):\n"
    )
    print(
      "| component | JAX ms | PyTorch ms | JAX / PyTorch | × per iteration "
      "| JAX ms per iteration | % of JAX iteration |"
    )
    print("|---|---|---|---|---|---|---|")
    total = {"jax": 0.0, "torch": 0.0}
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    for label, a, b, n in table:
      total["jax"] += a * n
      total["torch"] += (b or 0.0) * n
      ratio = "—" if b is None else f"{a / b:.2f}"
      print(
        f"| {label} | {a:.1f} | {fmt(b)} | {ratio} | {n} | {a * n:.1f} "
        f"| {100 * a * n / it_ms['jax']:.0f} |"
      )
    print(
      f"| **sum of parts** (per iteration) | {total['jax']:.0f} | {total['torch']:.0f} "
      f"| {total['jax'] / total['torch']:.2f} | | | {100 * total['jax'] / it_ms['jax']:.0f} |"
    )
    print(
      f"| **iteration, measured** (pre-loaded batch) | {it_ms['jax']:.0f} | "
      f"{it_ms['torch']:.0f} | {it_ms['jax'] / it_ms['torch']:.2f} | | | 100 |"
    )
    for label, a, b in extra:
      print(f"| (reference) {label} | {a:.1f} | {b:.1f} | {a / b:.2f} | | | |")
    print()

  if args.per_op:
    reps = args.breakdown_repeats or args.repeats
    rows = per_op(tl, reps)
    result["per_op_ms"] = {
      label: {"input_nhwc": shape, "kernel": kernel, **parts}
      for label, shape, kernel, parts in rows
    }
    print(
      f"Per convolution (each alone, JAX as uctrl_jax calls it vs PyTorch, ms, medians of "
      f"{reps}, interleaved; dx: input gradient, dw: kernel gradient):\n"
    )
    print("| layer | input (N, H, W, C) | kernel (kh, kw, in, out) / stride | fwd | dx | dw |")
    print("|---|---|---|---|---|---|")
    sums = {p: [0.0, 0.0] for p in ("fwd", "dx", "dw")}
    for label, shape, (kh, kw, c, o, st), parts in rows:
      cells = []
      for p in ("fwd", "dx", "dw"):
        if p not in parts:
          cells.append("—")
          continue
        a, b = parts[p]
        sums[p][0] += a
        sums[p][1] += b
        cells.append(f"{a:.1f} / {b:.1f} ({a / b:.2f})")
      print(f"| {label} | {shape} | {kh}×{kw}×{c}×{o} / {st} | " + " | ".join(cells) + " |")
    print(
      "| **sum** | | | "
      + " | ".join(f"{a:.0f} / {b:.0f} ({a / b:.2f})" for a, b in sums.values())
      + " |\n"
    )
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--cases",
    default="default",
    help=f"comma-separated, from {', '.join(CASES)}",
  )
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--breakdown", action="store_true", help="time the JAX iteration's parts")
  parser.add_argument(
    "--blas_as_found",
    action="store_true",
    help="a column with scipy's OpenBLAS threads as found (before issue 8)",
  )
  parser.add_argument(
    "--lax_convs",
    action="store_true",
    help="a column with lax's own stride-2 convolutions (before issue 25)",
  )
  parser.add_argument(
    "--per_op",
    action="store_true",
    help="time each convolution's forward, input and kernel gradient in both frameworks",
  )
  parser.add_argument(
    "--breakdown_repeats",
    type=int,
    default=None,
    help="repeats of the breakdown (default --repeats)",
  )
  parser.add_argument(
    "--pipeline",
    action="store_true",
    help="Fashion-MNIST cases: real input pipeline vs pre-loaded batches",
  )
  parser.add_argument(
    "--data_dir", default=None, help="tfds data dir (None: ~/tensorflow_datasets)"
  )
  parser.add_argument("--pipeline_rounds", type=int, default=3)
  parser.add_argument("--pipeline_block", type=int, default=5)
  parser.add_argument("--width", type=int, default=None, help="override config.model.width")
  parser.add_argument(
    "--upsample", default=None, choices=models.UPSAMPLES, help="override config.model.upsample"
  )
  parser.add_argument(
    "--batch_size", type=int, default=None, help="override config.train.batch_size"
  )
  parser.add_argument("--num_views", type=int, default=None, help="override config.data.num_views")
  parser.add_argument("--compile_iterations", type=int, default=3)
  parser.add_argument(
    "--check_iterations",
    type=int,
    default=2,
    help="iterations of check_iteration_agrees (same weights, same batch)",
  )
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)
  if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)  # tables as they come, also into a pipe
  names = [c for c in args.cases.split(",") if c]
  unknown = [c for c in names if c not in CASES]
  if unknown:
    parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")

  import torch

  print(
    f"# uCTRL iteration: JAX {jax.__version__} ({jax.devices()[0].platform}, "
    f"{jax.device_count()} device(s)) vs PyTorch {torch.__version__}; "
    f"{os.cpu_count()} CPUs\n"
  )
  results = [run_case(name, args) for name in names]
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "jax": jax.__version__,
          "torch": torch.__version__,
          "cpus": os.cpu_count(),
          "cases": results,
        },
        f,
        indent=2,
      )
  return results


if __name__ == "__main__":
  main()
