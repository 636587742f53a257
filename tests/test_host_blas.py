"""uctrl_jax/host_blas.py: the cap reaches jaxlib's LAPACK library even when it is entered
before the first LAPACK call (as the trainer enters it), in a fresh process."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: enter the cap first, then run the first Cholesky (which makes jaxlib
# load its LAPACK), then report every BLAS pool threadpoolctl sees, at entry and after.
_PROBE = """
import json, threadpoolctl, jax.numpy as jnp
from uctrl_jax import host_blas
pools = lambda: {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
with host_blas.limit_host_blas(1):
  at_entry = pools()
  jnp.linalg.cholesky(2 * jnp.eye(4)).block_until_ready()
  after = pools()
print(json.dumps({"at_entry": at_entry, "after": after}))
"""


def test_cap_entered_before_the_first_lapack_call_reaches_jaxlibs_lapack():
  proc = subprocess.run(
    [sys.executable, "-c", _PROBE],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  seen = json.loads(proc.stdout.strip().splitlines()[-1])
  # No BLAS library appears after the cap was entered (it would run uncapped) ...
  assert seen["after"].keys() == seen["at_entry"].keys(), seen
  # ... jaxlib's (scipy's OpenBLAS) is among those capped, and every pool is at 1 thread.
  assert any("scipy_openblas" in path and "64_" not in path for path in seen["after"]), seen
  assert set(seen["after"].values()) == {1}, seen
