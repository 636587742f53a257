"""uctrl_jax: unsupervised closed-loop transcription (uCTRL) in JAX/Flax.

What a user needs, without importing the rest (``import uctrl_jax`` stays light):

- ``load(workdir)``: a trained run's encoder and decoder (``loading.load``), with
  ``encode_images``/``reconstruct_images`` for arrays of images of any size and count;
- ``rate_reduction``: the coding rates and objectives (``uctrl_jax.rate_reduction``);
- ``default_config()``: every setting and its default (``uctrl_jax/defaults.py``);
- ``__version__``, also the installed package's version (pyproject.toml reads it here).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "default_config", "load", "rate_reduction"]


def load(workdir: str, step=None):
  """``loading.load``: the trained run of ``workdir`` (see there).

  Imported lazily so that ``import uctrl_jax.rate_reduction`` stays free of orbax.
  """
  from uctrl_jax import loading  # pylint: disable=import-outside-toplevel

  return loading.load(workdir, step)


def default_config():
  """A fresh ``ml_collections.ConfigDict`` of every setting at its default."""
  from uctrl_jax import defaults  # pylint: disable=import-outside-toplevel

  return defaults.get_config()


def __getattr__(name: str):
  # `uctrl_jax.rate_reduction` without an import statement: the module, on first use.
  if name == "rate_reduction":
    import importlib  # pylint: disable=import-outside-toplevel

    return importlib.import_module("uctrl_jax.rate_reduction")
  raise AttributeError(f"module 'uctrl_jax' has no attribute {name!r}")
