"""Speed of the uCTRL objective: this library vs naive JAX vs PyTorch, side by side.

Runs, interleaved in one process (machines here are noisy, so only ratios measured
together mean anything), forward and forward+gradient of the full uCTRL objective
(docs/method.md#the-game, exact sample-wise terms, 1 augmented view) on unit-norm features, d = 128:

* ``jax (uctrl_jax)``: ``rate_reduction.uctrl_objective`` (closed-form pairwise terms).
* ``jax naive``: the same objective with one d × d log-det per sample for the two
  sample-wise terms, the direct transcription of their definition.
* ``torch (CTRL style)``: PyTorch as CTRL's reference code writes rates
  (``torch.logdet(I + scalar * W @ W.T)`` with ``W = Zᵀ``), batched d × d log-dets per
  sample for the sample-wise terms.
* ``torch closed form``: PyTorch with this library's formulas (fair comparison of
  frameworks on the same math).

Plus the pairwise term alone: closed form vs one log-det per sample (JAX).

Needs PyTorch's CPU wheel, which is kept out of the runtime requirements:
``.venv/bin/pip install torch==2.13.0``.

Usage:
  .venv/bin/python -m benchmarks.rate_reduction_bench [--sizes 1024,4096] [--repeats 15]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyTorch's OpenMP workers otherwise spin for a while after each call and steal the
# cores from the JAX run that follows in the interleaved timing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from uctrl_jax import rate_reduction as rr  # noqa: E402

from benchmarks.jax_loop import unit_rows  # noqa: E402

EPS_SQ = 0.5
LAMBDA_AUG = 10.0
LAMBDA_SELF = 10.0


# ----------------------------------------------------------------------------
# Naive JAX: every rate a d × d log-det, one per sample for the sample-wise terms.
# ----------------------------------------------------------------------------


def _naive_rate(Z):
  n, d = Z.shape
  return 0.5 * jnp.linalg.slogdet(jnp.eye(d) + d / (n * EPS_SQ) * Z.T @ Z)[1]


def _naive_distance(Z, Zhat):
  return _naive_rate(jnp.concatenate([Z, Zhat])) - 0.5 * (_naive_rate(Z) + _naive_rate(Zhat))


def naive_pairwise(U, V):
  return jax.vmap(lambda u, v: _naive_distance(u[None], v[None]))(U, V)


def naive_encoder_objective(Z, Zhat, Z_aug):
  return (
    _naive_rate(Z)
    + _naive_distance(Z, Zhat)
    - LAMBDA_AUG * jnp.sum(naive_pairwise(Z, Z_aug))
    - LAMBDA_SELF * jnp.sum(naive_pairwise(Z, Zhat))
  )


def project_encoder_objective(Z, Zhat, Z_aug):
  # The form the naive and PyTorch twins write: exact ΔR per sample, Σᵢ, each view vs z.
  terms = rr.uctrl_objective(
    Z,
    Zhat,
    Z_aug,
    EPS_SQ,
    LAMBDA_AUG,
    LAMBDA_SELF,
    sample_distance="exact",
    sample_reduction="sum",
    aug_target="image",
  )
  return terms["encoder_objective"]


# ----------------------------------------------------------------------------
# PyTorch.
# ----------------------------------------------------------------------------


def torch_objectives():
  import torch

  def rate_ctrl(Z):
    """CTRL's compute_discrimn_loss_empirical, on W = Zᵀ: (d, m), features as columns."""
    W = Z.T
    p, m = W.shape
    I = torch.eye(p)
    return torch.logdet(I + p / (m * EPS_SQ) * W.matmul(W.T)) / 2.0

  def distance_ctrl(Z, Zhat):
    return rate_ctrl(torch.cat([Z, Zhat])) - 0.5 * (rate_ctrl(Z) + rate_ctrl(Zhat))

  def pairwise_ctrl(U, V):
    # The definition per sample, batched: (n, d, 2) column pairs, (n, d, 1) singletons.
    d = U.shape[1]
    I = torch.eye(d)
    pair = torch.stack([U, V], dim=2)
    r_pair = torch.logdet(I + d / (2 * EPS_SQ) * pair @ pair.transpose(1, 2)) / 2.0
    r_u = torch.logdet(I + d / EPS_SQ * U[:, :, None] @ U[:, None, :]) / 2.0
    r_v = torch.logdet(I + d / EPS_SQ * V[:, :, None] @ V[:, None, :]) / 2.0
    return r_pair - 0.5 * (r_u + r_v)

  def rate_closed(Z):
    n, d = Z.shape
    M = torch.eye(d) + d / (n * EPS_SQ) * Z.T @ Z
    return torch.log(torch.diagonal(torch.linalg.cholesky(M))).sum()  # ½ · 2 Σ log diag L

  def distance_closed(Z, Zhat):
    return rate_closed(torch.cat([Z, Zhat])) - 0.5 * (rate_closed(Z) + rate_closed(Zhat))

  def pairwise_closed(U, V):
    a = U.shape[1] / (2 * EPS_SQ)
    uu, vv = (U * U).sum(1), (V * V).sum(1)
    plus, minus = ((U + V) ** 2).sum(1), ((U - V) ** 2).sum(1)
    cross = torch.clamp(0.25 * (plus * minus - (uu - vv) ** 2), min=0.0)
    return 0.5 * torch.log1p(a * (uu + vv) + a * a * cross) - 0.25 * (
      torch.log1p(2 * a * uu) + torch.log1p(2 * a * vv)
    )

  def make(rate, distance, pairwise):
    def objective(Z, Zhat, Z_aug):
      return (
        rate(Z)
        + distance(Z, Zhat)
        - LAMBDA_AUG * pairwise(Z, Z_aug).sum()
        - LAMBDA_SELF * pairwise(Z, Zhat).sum()
      )

    return objective

  return (
    torch,
    make(rate_ctrl, distance_ctrl, pairwise_ctrl),
    make(rate_closed, distance_closed, pairwise_closed),
  )


# ----------------------------------------------------------------------------
# Timing.
# ----------------------------------------------------------------------------


def interleaved_medians(fns, repeats, warmup=2):
  """Median wall time (s) of each zero-argument callable, runs interleaved round-robin."""
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(ts) for name, ts in times.items()}


def case_callables(n, d, with_naive):
  rng = np.random.default_rng(0)
  Z = unit_rows(rng, n, d)
  Zhat = unit_rows(rng, n, d) + Z
  Z_aug = unit_rows(rng, n, d) + Z
  args = tuple(jnp.asarray(a) for a in (Z, Zhat, Z_aug))
  fns = {}

  def jax_pair(objective):
    fwd = jax.jit(objective)
    grad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))
    return (lambda: jax.block_until_ready(fwd(*args)), lambda: jax.block_until_ready(grad(*args)))

  fns["jax (uctrl_jax)"] = jax_pair(project_encoder_objective)
  if with_naive:
    fns["jax naive"] = jax_pair(naive_encoder_objective)

  torch, torch_ctrl, torch_closed = torch_objectives()
  targs = [torch.tensor(a) for a in (Z, Zhat, Z_aug)]

  def torch_pair(objective):
    def fwd():
      with torch.no_grad():
        return objective(*targs).item()

    def grad():
      leaves = [a.clone().requires_grad_(True) for a in targs]
      objective(*leaves).backward()
      return leaves[0].grad

    return fwd, grad

  if with_naive:
    fns["torch (CTRL style)"] = torch_pair(torch_ctrl)
  fns["torch closed form"] = torch_pair(torch_closed)

  # Agreement check before timing: every implementation computes the same number.
  reference = float(project_encoder_objective(*args))
  for name, objective in [
    ("jax naive", naive_encoder_objective),
    ("torch (CTRL style)", torch_ctrl),
    ("torch closed form", torch_closed),
  ]:
    if name in fns:
      value = float(objective(*(targs if name.startswith("torch") else args)))
      if not np.isclose(value, reference, rtol=1e-3, atol=1e-2):
        raise AssertionError(f"{name} gives {value}, uctrl_jax gives {reference}")
  return fns, args


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1024,4096", help="comma-separated batch sizes n")
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument(
    "--naive-max-n",
    type=int,
    default=1024,
    help="skip the per-sample log-det variants above this n",
  )
  args = parser.parse_args()

  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
    f"d = {args.dim}, ε² = {EPS_SQ}, medians of {args.repeats} interleaved runs\n"
  )
  print(
    "| n | implementation | forward (ms) | fwd+grad (ms) | fwd ratio to uctrl_jax | grad ratio to uctrl_jax |"
  )
  print("|---|---|---|---|---|---|")
  for n in [int(s) for s in args.sizes.split(",")]:
    fns, jargs = case_callables(n, args.dim, with_naive=n <= args.naive_max_n)
    flat = {}
    for name, (fwd, grad) in fns.items():
      flat[(name, "fwd")] = fwd
      flat[(name, "grad")] = grad
    med = interleaved_medians(flat, args.repeats)
    base_f, base_g = med[("jax (uctrl_jax)", "fwd")], med[("jax (uctrl_jax)", "grad")]
    for name in fns:
      f, g = med[(name, "fwd")], med[(name, "grad")]
      print(
        f"| {n} | {name} | {1e3 * f:.2f} | {1e3 * g:.2f} | {f / base_f:.2f} | {g / base_g:.2f} |"
      )

    if n <= args.naive_max_n:
      U, V = jargs[0], jargs[2]
      closed = jax.jit(lambda U, V: rr.pairwise_rate_distance(U, V, EPS_SQ))
      naive = jax.jit(naive_pairwise)
      np.testing.assert_allclose(closed(U, V), naive(U, V), rtol=1e-3, atol=1e-4)
      pm = interleaved_medians(
        {
          "closed": lambda: jax.block_until_ready(closed(U, V)),
          "naive": lambda: jax.block_until_ready(naive(U, V)),
        },
        args.repeats,
      )
      print(
        f"| {n} | pairwise term alone: closed form {1e3 * pm['closed']:.3f} ms vs one log-det "
        f"per sample {1e3 * pm['naive']:.1f} ms | | | **{pm['naive'] / pm['closed']:.0f}× faster** | |"
      )


if __name__ == "__main__":
  main()
