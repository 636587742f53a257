"""A trained run, read back: ``load(workdir)`` and the eval-mode ``encode``/``decode``
of a state (running batch-norm statistics), which the trainer's pictures and in-training
evaluations use too.

Needs jax, flax, optax, orbax and ml_collections, not TensorFlow (tests/test_tf_free.py).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Tuple

import jax

from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax.state import TrainState, create_train_state

if TYPE_CHECKING:
  import ml_collections

Array = jax.Array

# The defaults, read by path: `uctrl_jax.load` works from any directory, also where the
# repository root (the `configs` package) is not on sys.path, as after `pip install -e .`.
_DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py"
)

# Settings whose value, for a run saved before the setting existed, is not today's
# default: what the code did then. Every other missing key takes today's default.
_BEFORE_THE_KEY_EXISTED = {
  ("model", "upsample"): "pixel_shuffle",
  ("loss", "aug_target"): "image",
  ("loss", "rate_on_views"): False,
  ("train", "encoder_bn_in_decoder_step"): "batch",
  ("train", "encoder_b1"): 0.5,  # one β₁ for both players then (train.b1)
  ("train", "decoder_b1"): 0.5,
}


def eval_mode_loop(config, image_shape) -> Tuple[Callable, Optional[Callable]]:
  """``encode(state, x) -> Z`` and ``decode(state, Z) -> x̂`` with running BN statistics;
  ``decode`` is None in the encoder-only modes. A VAE's ``encode`` gives the posterior
  means ``μ`` (deterministic), and its ``decode`` takes any ``z ∈ R^d``."""
  encoder, decoder = models.create_models(config, image_shape)

  def encode(state: TrainState, x: Array) -> Array:
    return encoder.apply(
      {"params": state.encoder_params, "batch_stats": state.encoder_batch_stats}, x, train=False
    )

  def decode(state: TrainState, Z: Array) -> Array:
    return decoder.apply(
      {"params": state.decoder_params, "batch_stats": state.decoder_batch_stats}, Z, train=False
    )

  return encode, (decode if objectives.uses_decoder(config) else None)


def make_reconstruct(config, image_shape) -> Optional[Callable]:
  """Jitted ``reconstruct(state, x) -> g(f(x))`` in eval mode (running BN statistics);
  None in the encoder-only modes."""
  encode, decode = eval_mode_loop(config, image_shape)
  if decode is None:
    return None
  return jax.jit(lambda state, x: decode(state, encode(state, x)))


class Loaded(NamedTuple):
  """A trained closed loop: ``encode(x) -> Z`` and ``decode(Z) -> x̂``, both jitted, eval mode.

  Of a ``loss.mode = "vae"`` run, ``encode`` gives the posterior means ``μ`` (not unit
  rows) and ``decode(objectives.prior_sample(key, n, config.model.feature_dim))`` draws
  ``n`` unconditional samples from the prior.
  """

  encode: Callable[[Array], Array]  # (B, H, W, C) in [-1, 1] -> (B, d) float32 (unit rows,
  # but for a VAE)
  decode: Optional[Callable[[Array], Array]]  # (B, d) -> (B, H, W, C) in [-1, 1]; None
  # for an encoder-only run (config.loss.mode "tcr" or "simclr")
  config: ml_collections.ConfigDict
  state: TrainState
  extra: dict  # the checkpoint's JSON record: step, batches_consumed, train_seconds, ...


def complete_config(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A saved run's config with the settings added since it was written: the one place
  where an old ``config.json`` meets today's code (``configs/default.py``'s values, or
  ``_BEFORE_THE_KEY_EXISTED``'s)."""
  import ml_collections  # pylint: disable=import-outside-toplevel,redefined-outer-name

  spec = importlib.util.spec_from_file_location("uctrl_jax_default_config", _DEFAULT_CONFIG)
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)

  def fill(node, reference, path):
    for key, value in reference.items():
      if key not in node:
        node[key] = _BEFORE_THE_KEY_EXISTED.get(path + (key,), value)
      elif isinstance(value, ml_collections.ConfigDict) and hasattr(node[key], "items"):
        fill(node[key], value, path + (key,))

  config = ml_collections.ConfigDict(saved.to_dict(), type_safe=False)
  fill(config, default.get_config(), ())
  return config


def load(workdir: str, step: Optional[int] = None) -> Loaded:
  """The encoder and decoder of the checkpoint at ``step`` (latest when None) in ``workdir``.

  Needs only the work directory (``config.json`` and ``checkpoints/``), not the data.

  Raises:
    checkpointing.RunLoadError: ``workdir`` holds no run, no checkpoint (of ``step``),
      or one that cannot be read; the message is one line.
  """
  from uctrl_jax import checkpointing  # pylint: disable=import-outside-toplevel

  path = os.path.join(workdir, checkpointing.CONFIG_FILENAME)
  if not os.path.isfile(path):
    raise checkpointing.RunLoadError(
      f"{workdir} holds no run: no {path} (train one there with main.py "
      f"--workdir={workdir}, or name the directory of a trained run)"
    )
  try:
    config = complete_config(checkpointing.load_config(workdir))
    image_shape = tuple(config.data.image_shape)
  except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
    raise checkpointing.RunLoadError(
      f"cannot read the run's config {path}: {type(e).__name__}: {_first_line(e)}"
    ) from e
  target = create_train_state(config, image_shape, jax.random.key(0))
  try:
    # Read-only: a training running in `workdir` keeps its save under way.
    with checkpointing.Checkpointer(workdir, read_only=True) as checkpointer:
      state, extra = checkpointer.restore(target, step)
  except FileNotFoundError as e:
    raise checkpointing.RunLoadError(f"{workdir} holds no checkpoint to load: {e}") from e
  except Exception as e:  # orbax/tensorstore raise many types for damaged files
    raise checkpointing.RunLoadError(
      f"the checkpoint in {workdir} cannot be read: {type(e).__name__}: {_first_line(e)}"
    ) from e
  encode, decode = (f and jax.jit(f) for f in eval_mode_loop(config, image_shape))
  # The state is an argument, not a closed-over constant: compiles fast at any size.
  return Loaded(
    lambda x: encode(state, x), decode and (lambda Z: decode(state, Z)), config, state, extra
  )


def _first_line(e: BaseException) -> str:
  return str(e).splitlines()[0][:300] if str(e) else ""
