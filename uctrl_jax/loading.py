"""A trained run, read back: ``load(workdir)`` and the eval-mode ``encode``/``decode``
of a state (running batch-norm statistics), which the trainer's pictures and in-training
evaluations use too; ``Loaded.encode_images``/``reconstruct_images`` take images as users
hold them (uint8, any size and count) and prepare them as the input pipeline does.

Needs jax, flax, optax, orbax and ml_collections, not TensorFlow (tests/test_tf_free.py).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from uctrl_jax import models
from uctrl_jax import objectives
from uctrl_jax.state import TrainState, create_train_state

if TYPE_CHECKING:
  import ml_collections

Array = jax.Array

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

  ``encode_images``/``reconstruct_images`` take images as users hold them (any count,
  uint8, another size or channel count) and prepare them as the input pipeline does.

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

  def encode_images(self, images, batch_size: Optional[int] = None) -> np.ndarray:
    """The features of ``images``, prepared as the input pipeline prepares the data.

    Args:
      images: ``(n, H, W)`` or ``(n, H, W, C)``, any ``n``: uint8 in [0, 255], or floats
        in [-1, 1] (the pipeline's range). ``to_model_input`` converts them to the run's
        ``config.data.image_shape``: channels (1 ↔ 3) and size (resized as the pipeline
        resizes).
      batch_size: rows per call (default ``config.evals.batch_size``); the last batch is
        padded, so every ``n`` runs the one compiled shape.
    Returns:
      ``(n, d)`` float32: unit rows (a VAE's: the posterior means ``μ``).
    """
    return self._batched(self.encode, images, batch_size)

  def reconstruct_images(self, images, batch_size: Optional[int] = None) -> np.ndarray:
    """``g(f(x))`` of ``images`` (as ``encode_images`` takes them): ``(n, S, S, C)``
    float32 in [-1, 1] at the run's image shape."""
    if self.decode is None:
      raise ValueError(
        f"an encoder-only run (loss.mode {self.config.loss.mode!r}) has no decoder: "
        "nothing to reconstruct with"
      )
    return self._batched(lambda x: self.decode(self.encode(x)), images, batch_size)

  def _batched(self, fn: Callable[[Array], Array], images, batch_size) -> np.ndarray:
    from uctrl_jax.evaluators import common  # pylint: disable=import-outside-toplevel

    shape = tuple(int(v) for v in self.config.data.image_shape)
    images = as_image_batch(images)
    size = int(batch_size or self.config.evals.batch_size)
    return common.batched(lambda x: fn(to_model_input(x, shape)), images, size, exact=True)


def as_image_batch(images) -> np.ndarray:
  """``images`` as ``(n, H, W, C)``, checked: uint8, or floats in [-1, 1]; C 1 or 3.

  Raises:
    ValueError: no images, another rank, channel count or dtype, or floats outside
      [-1, 1] (e.g. [0, 255] as floats); one line saying what is expected.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or not len(images) or images.shape[-1] not in (1, 3):
    raise ValueError(
      f"images must be (n, H, W) or (n, H, W, C) with n ≥ 1 and C 1 or 3; got {images.shape}"
      + (
        " (drop the alpha channel first, e.g. PIL's convert('RGB'))"
        if images.shape[-1:] == (4,)
        else ""
      )
    )
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"images must be uint8 in [0, 255] or floats in [-1, 1]; got {images.dtype}")
  low, high = float(np.min(images)), float(np.max(images))
  if not (-1.001 <= low and high <= 1.001):  # NaN fails too
    raise ValueError(
      f"float images must be in [-1, 1] (the input pipeline's range); these span "
      f"[{low:.4g}, {high:.4g}] (pass uint8 for [0, 255])"
    )
  return images


@functools.partial(jax.jit, static_argnums=1)
def to_model_input(images: Array, image_shape: Tuple[int, int, int]) -> Array:
  """``(B, H, W, C)`` uint8 or floats in [-1, 1] → ``(B, S, S, C')`` float32 in [-1, 1],
  ``image_shape = (S, S, C')``, as the input pipeline prepares an image.

  uint8 maps to [-1, 1] as ``x / 127.5 − 1``; one channel is copied to three, three
  made one with PIL's ``convert("L")`` weights (ITU-R 601-2 luma); another size is resized
  as ``input_pipeline`` resizes (bilinear, antialiased: ``tf.image.resize(...,
  antialias=True)``), then clipped to [-1, 1].
  """
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 127.5 - 1.0
  channels = image_shape[-1]
  if x.shape[-1] == 3 and channels == 1:
    x = x @ jnp.array([[0.299], [0.587], [0.114]], jnp.float32)
  elif x.shape[-1] == 1 and channels == 3:
    x = jnp.repeat(x, 3, axis=-1)
  if tuple(x.shape[1:3]) != tuple(image_shape[:2]):
    x = jax.image.resize(x, (x.shape[0], *image_shape), method="linear", antialias=True)
  return jnp.clip(x, -1.0, 1.0)


def complete_config(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A saved run's config with the settings added since it was written: the one place
  where an old ``config.json`` meets today's code (``uctrl_jax/defaults.py``'s values, or
  ``_BEFORE_THE_KEY_EXISTED``'s)."""
  import ml_collections  # pylint: disable=import-outside-toplevel,redefined-outer-name

  from uctrl_jax import defaults  # pylint: disable=import-outside-toplevel

  def fill(node, reference, path):
    for key, value in reference.items():
      if key not in node:
        node[key] = _BEFORE_THE_KEY_EXISTED.get(path + (key,), value)
      elif isinstance(value, ml_collections.ConfigDict) and hasattr(node[key], "items"):
        fill(node[key], value, path + (key,))

  config = ml_collections.ConfigDict(saved.to_dict(), type_safe=False)
  fill(config, defaults.get_config(), ())
  return config


def read_saved_config(workdir: str) -> ml_collections.ConfigDict:
  """``WORKDIR/config.json`` as the run saved it (``complete_config`` adds today's keys).

  Raises:
    checkpointing.RunLoadError: ``workdir`` holds no run, or its config does not read
      back; one line naming the file.
  """
  from uctrl_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from uctrl_jax import workdir_files  # pylint: disable=import-outside-toplevel

  path = workdir_files.path(workdir, checkpointing.CONFIG_FILENAME)
  if not path.is_file():
    raise checkpointing.RunLoadError(
      f"{workdir} holds no run: no {path} (train one there with main.py "
      f"--workdir={workdir}, or name the directory of a trained run)"
    )
  try:
    return checkpointing.load_config(workdir)
  except (OSError, ValueError) as e:
    raise checkpointing.RunLoadError(
      f"cannot read the run's config {path}: {type(e).__name__}: {_first_line(e)}"
    ) from e


def load(workdir: str, step: Optional[int] = None) -> Loaded:
  """The encoder and decoder of the checkpoint at ``step`` (latest when None) in ``workdir``
  (a local directory or ``gs://...``).

  Needs only the work directory (``config.json`` and ``checkpoints/``), not the data.

  Raises:
    checkpointing.RunLoadError: ``workdir`` holds no run, no checkpoint (of ``step``),
      or one that cannot be read; the message is one line.
  """
  from uctrl_jax import checkpointing  # pylint: disable=import-outside-toplevel

  saved = read_saved_config(workdir)
  try:
    config = complete_config(saved)
    image_shape = tuple(config.data.image_shape)
  except (ValueError, AttributeError, KeyError, TypeError) as e:
    raise checkpointing.RunLoadError(
      f"cannot read the run's config {workdir}/{checkpointing.CONFIG_FILENAME}: "
      f"{type(e).__name__}: {_first_line(e)}"
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
