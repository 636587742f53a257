"""uctrl_jax: unsupervised closed-loop transcription (uCTRL) in JAX/Flax."""


def load(workdir: str, step=None):
  """``train.load``: ``encode``/``decode`` callables of a trained run (see there).

  Imported lazily so that ``import uctrl_jax.rate_reduction`` stays free of TensorFlow.
  """
  from uctrl_jax import train  # pylint: disable=import-outside-toplevel
  return train.load(workdir, step)
