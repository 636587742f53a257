"""The cap on the host's BLAS/LAPACK threads during training (``config.train.host_blas_threads``).

On CPU, jaxlib's Cholesky and triangular solves (the rate terms and their gradient) run
in scipy's OpenBLAS, whose spinning threads take the cores from XLA's own pool for the
ops that follow (docs/benchmarks.md#training-iteration-jax-vs-pytorch).

jaxlib loads that OpenBLAS (through ``scipy.linalg.cython_lapack``) at its first LAPACK
call, not at import: a cap entered before it reaches only the libraries already loaded, so
``limit_host_blas`` loads it first. Without that, training (which enters the cap before
its first step) ran with the OpenBLAS threads as found: 0.6× the speed
(docs/benchmarks.md#the-cap-that-missed-its-library).
"""

from __future__ import annotations

from typing import Optional


def limit_host_blas(num_threads: Optional[int]):
  """Context: the host's BLAS/LAPACK pools (numpy's and scipy's OpenBLAS) on ``num_threads``
  threads; None leaves them alone. Uses threadpoolctl, so it works after numpy is imported.
  """
  import threadpoolctl  # pylint: disable=import-outside-toplevel

  # jaxlib's LAPACK library (module docstring), loaded now so that the cap reaches it.
  import scipy.linalg.cython_lapack  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import

  if num_threads is None:
    return threadpoolctl.threadpool_limits(limits=None)
  return threadpoolctl.threadpool_limits(limits=int(num_threads), user_api="blas")
