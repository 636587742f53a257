"""uctrl_jax: unsupervised closed-loop transcription (uCTRL) in JAX/Flax.

The package's entry point for users: ``uctrl_jax.load(workdir)`` (``loading.load``).
"""


def load(workdir: str, step=None):
  """``loading.load``: ``encode``/``decode`` callables of a trained run (see there).

  Imported lazily so that ``import uctrl_jax.rate_reduction`` stays free of orbax.
  """
  from uctrl_jax import loading  # pylint: disable=import-outside-toplevel

  return loading.load(workdir, step)
