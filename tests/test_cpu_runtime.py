"""Guards the jax pin in pyproject.toml against a known XLA:CPU deadlock.

jaxlib 0.10.x splits batched LAPACK kernels (Cholesky, LU, ...) into sub-tasks on
XLA's intra-op CPU pool and blocks a pool thread until they finish; when as many such
kernels run at once as the pool has threads (2 on this machine), every thread waits
and the program never returns. The rate-reduction terms are batched Cholesky
factorisations, so a pin that reintroduces that jaxlib hangs training at random.
"""

import math
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import jax, jax.numpy as jnp
    def logdets(A, B, C, D):
      # Four independent batched factorisations that XLA may run concurrently.
      f = lambda M: jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(M), axis1=-2, axis2=-1)))
      return f(A) + f(B) + jnp.linalg.slogdet(C)[1].sum() + jnp.linalg.slogdet(D)[1].sum()
    M = jnp.eye(64) + jnp.zeros((256, 64, 64))
    step = jax.jit(logdets)
    for i in range(20):
      value = float(step(M, 2 * M, 3 * M, 4 * M))
    print("ok", value)
""")


def test_concurrent_batched_lapack_kernels_do_not_deadlock():
  try:
    result = subprocess.run(
      [sys.executable, "-c", PROGRAM],
      capture_output=True,
      text=True,
      timeout=120,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
  except subprocess.TimeoutExpired as e:
    raise AssertionError(
      "concurrent batched LAPACK kernels hung on the XLA CPU pool: the installed jaxlib "
      "has the ParallelBatchMap deadlock (see pyproject.toml)"
    ) from e
  assert result.returncode == 0, result.stderr[-2000:]
  status, value = result.stdout.split()[-2:]
  assert status == "ok"
  # Σ over the batch of ½·logdet(I) + ½·logdet(2I) + logdet(3I) + logdet(4I), d = 64.
  expected = 256 * 64 * (0.5 * math.log(2.0) + math.log(3.0) + math.log(4.0))
  assert math.isclose(float(value), expected, rel_tol=1e-4)
