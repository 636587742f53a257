"""Encoder ``f`` and decoder ``g`` of the closed loop, in Flax linen.

Their roles: docs/method.md#the-closed-loop.

Image sizes: square S = b·2^k with a base b of 4..7 and 16 ≤ S ≤ 256 (16, 20, 24, 28,
32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256; ``accepted_image_sizes``), the
same for both families; any other size is refused with the nearest accepted ones
(``image_size_error``). The architecture follows S and is logged at start-up
(``describe_architecture``); at 28 and 32 (DCGAN) and 32 and 96 (ResNet-18) it is the one
these sizes always had, so older checkpoints load.

Families, chosen by config name (``config.model.encoder`` / ``config.model.decoder``):

* ``"dcgan"`` — CTRL's DCGAN pair (DCGAN at 32×32), one stride-2 stage per halving of S
  down to its base b (``dcgan_stages``). Encoder: 4×4 stride-2 convs (``w, 2w, 4w, 8w,
  8w, …`` channels; 32 → 16 → 8 → 4 at 32; BatchNorm on all but the first;
  LeakyReLU(0.2)) and CTRL's final 4×4 "valid" conv on the ``b×b`` map, which *is* the
  linear map to ``d`` and is written as one. Decoder: the mirror image — CTRL's first
  4×4 transposed conv on a 1×1 input, i.e. a linear map ``d → b×b×(last width)``, + BN +
  ReLU, one 2× upsampling per halving (``2w, w, C`` at 32; BN + ReLU between them),
  tanh. Nothing runs at 2×2: XLA:CPU's convs there are pathologically slow
  (docs/benchmarks.md#measured-on-the-machine-before-the-trainer-existed). **28×28 is
  padded to 32×32
  at the encoder input** with the value −1 (black, the MNIST/Fashion-MNIST background
  in [−1, 1]) and the decoder's 32×32 output is **centre-cropped back to 28×28**, so
  one architecture (and one parameter count, up to the channels ``C``) serves both.
* ``"resnet18"`` — encoder: ResNet-18, stages of two basic blocks at ``w, 2w, 4w, 8w``
  channels, global average pool, linear map to ``d``. Stem and halvings follow S
  (``resnet18_halvings``): the CIFAR stem (3×3 stride-1 conv, no max-pool) up to 96,
  ImageNet's 7×7 stride-2 conv above (and its max-pool too where the last map would
  still exceed 12×12); stages 2-4 halve (stage 4 not below 32, so the last map stays
  ≥ 4×4). Decoder: its mirror — a linear map ``d → (last map)²×8w`` + BN + ReLU, stages
  of two basic blocks at ``8w, 4w, 2w, w`` whose first block upsamples 2× where the
  encoder's halves, one more 2× upsampling (+ BN + ReLU) per halving of the stem, then
  a 3×3 conv to ``C`` and tanh. At 96 (STL-10) the linear map is ``d × 12²·8w`` ≈ 9.4 M
  parameters at w = 64.

Every encoder ends in ``rate_reduction.l2_normalize`` of a float32 linear map
(docs/method.md#the-closed-loop), so its rows are float32 unit vectors whatever the compute
dtype. The one exception is the VAE baseline (``config.loss.mode = "vae"``;
``objectives.feature_head`` picks the head): its ``"gaussian"`` head maps to ``2d`` values,
the mean ``μ`` and log-variance ``log σ²`` of a diagonal Gaussian posterior, not normalised. The encoder returns ``μ``
(the features every evaluator reads) and, called with ``posterior=True``, ``(μ, log σ²)``.

Upsampling (``config.model.upsample``), the decoder's only family-independent choice:

* ``"conv_transpose"`` — 4×4 stride-2 transposed conv (CTRL's). Its weight gradient is
  very slow in XLA:CPU (docs/benchmarks.md); fine on GPU/TPU. Avoid it with
  ``resnet18`` on CPU.
* ``"pixel_shuffle"`` — 3×3 conv to ``4·C_out`` channels, then ``depth_to_space``.
  A stride-2 4×4 transposed conv is exactly such a conv with a sparsity pattern on
  its kernel, so this family contains CTRL's; it has 9/4 × the parameters.
* ``"resize_conv"`` — nearest-neighbour 2× resize, then a 3×3 conv (Odena et al.
  2016: no checkerboard artefacts).

Their speed on CPU: docs/benchmarks.md.

Conventions. Images ``x: (B, H, W, C)`` float32 in [−1, 1] (NHWC). ``train=True``
uses batch statistics and updates the running ones (mutable ``"batch_stats"``;
PyTorch's momentum 0.1 = flax ``momentum=0.9``, eps 1e-5); ``train=False`` uses the
running statistics. ``config.model.dtype`` is the compute dtype (``"float32"`` or
``"bfloat16"``); parameters and the encoder's output are float32, and so is the
decoder's output. Convs followed by BatchNorm carry no bias (BN's shift replaces it);
the others (encoder's first conv, linear heads, decoder's output conv) do. The DCGAN
encoder's 4×4 stride-2 convs run through ``strided_conv.conv_general_dilated``: XLA's own
values and kernel gradients, the input gradient in space-to-depth form (XLA:CPU's
transposed convolution is slow there; docs/benchmarks.md).

Public API::

  create_models(config, image_shape) -> (encoder, decoder)
  init_models(config, image_shape, rng) -> dict(encoder_params, encoder_batch_stats,
                                               decoder_params, decoder_batch_stats)
  encoder.apply({"params": p, "batch_stats": s}, x, train=False) -> Z (B, d) float32
  (gaussian head: posterior=True -> (μ, log σ²), each (B, d) float32)
  decoder.apply({"params": p, "batch_stats": s}, z, train=False) -> x̂ (B, H, W, C)
  (with train=True pass mutable=["batch_stats"]; apply returns (out, {"batch_stats":…}))
  count_params(tree) -> int;  depth_to_space(x, r)
  accepted_image_sizes(); image_size_error(S) -> None or why not
  describe_architecture(config, image_shape) -> one line per net
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from uctrl_jax import objectives
from uctrl_jax import rate_reduction as rr
from uctrl_jax import strided_conv

Array = jax.Array

ENCODERS = ("dcgan", "resnet18")
DECODERS = ("dcgan", "resnet18")
UPSAMPLES = ("conv_transpose", "pixel_shuffle", "resize_conv")
FEATURE_HEADS = ("sphere", "gaussian")  # unit rows | a VAE's posterior (μ, log σ²)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Square image sizes S (H = W = S) both families accept: S = b·2^k with a base b of
# 4..7 (the smallest map; nothing runs at 2×2, slow in XLA:CPU) and S in this range.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
_MAX_BASE = 7
_PADDED_SIZES = {28: 32}  # DCGAN: 28×28 runs padded to 32×32 (its architecture since CTRL)
_PAD_VALUE = -1.0  # black in [-1, 1]: the MNIST-family background
_MAX_WIDTH_MULT = 8  # DCGAN stages stop doubling their width at 8w, ResNet-18's widest
_RESNET_MAX_MAP = 12  # ResNet-18's last map is at most 12×12 (STL-10's 96 / 8)

# DCGAN / CTRL init: N(0, 0.02) conv and linear weights. ResNet: He init (fan_out), as
# torchvision. Both keep flax's default (ones / zeros) for BatchNorm.
_dcgan_init = nn.initializers.normal(0.02)
_resnet_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# ----------------------------------------------------------------------------
# Pure helpers.
# ----------------------------------------------------------------------------


def depth_to_space(x: Array, r: int = 2) -> Array:
  """Pixel shuffle: ``(B, H, W, r·r·C) -> (B, r·H, r·W, C)``.

  TensorFlow's ``depth_to_space`` (DCR) channel order:
  ``out[b, r·h + i, r·w + j, c] = x[b, h, w, (i·r + j)·C + c]``. A reshape and a
  transpose, so XLA fuses it into the neighbouring ops.
  """
  b, h, w, rrc = x.shape
  if rrc % (r * r):
    raise ValueError(f"depth_to_space: channels {rrc} not divisible by r² = {r * r}")
  c = rrc // (r * r)
  x = x.reshape(b, h, w, r, r, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (b, h, i, w, j, c)
  return x.reshape(b, h * r, w * r, c)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays (or of ``ShapeDtypeStruct``s)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def _pad_to(x: Array, size: int) -> Array:
  """Centre-pads ``(B, H, W, C)`` to ``(B, size, size, C)`` with ``_PAD_VALUE``."""
  ph, pw = size - x.shape[1], size - x.shape[2]
  if ph == 0 and pw == 0:
    return x
  pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
  return jnp.pad(x, pads, constant_values=_PAD_VALUE)


def _crop_to(x: Array, h: int, w: int) -> Array:
  """Centre-crops ``(B, H', W', C)`` to ``(B, h, w, C)``; the inverse of ``_pad_to``."""
  top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
  return x[:, top : top + h, left : left + w, :]


def _halvings(size: int) -> Optional[int]:
  """k where ``size = b·2^k`` with a base ``4 ≤ b ≤ 7`` (halved while the half is ≥ 4);
  None when the halvings end at a base above 7 (``size`` has no such form)."""
  k = 0
  while size % 2 == 0 and size // 2 >= 4:
    size, k = size // 2, k + 1
  return k if size <= _MAX_BASE else None


def accepted_image_sizes() -> Tuple[int, ...]:
  """Every square image size S both families accept: ``S = b·2^k``, ``4 ≤ b ≤ 7``,
  ``MIN_IMAGE_SIZE ≤ S ≤ MAX_IMAGE_SIZE`` (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, ...)."""
  return tuple(s for s in range(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE + 1) if _halvings(s) is not None)


def image_size_error(size: int) -> Optional[str]:
  """None when square images of side ``size`` are accepted; else one line saying the rule
  and the nearest accepted sizes."""
  accepted = accepted_image_sizes()
  if size in accepted:
    return None
  nearest = [s for s in accepted if s < size][-1:] + [s for s in accepted if s > size][:1]
  return (
    f"image size {size} is not accepted: square sizes S = b·2^k with b in 4..7 and "
    f"{MIN_IMAGE_SIZE} ≤ S ≤ {MAX_IMAGE_SIZE} ({', '.join(map(str, accepted[:13]))}, …); "
    f"nearest: {' or '.join(map(str, nearest))}"
  )


def dcgan_stages(size: int) -> Tuple[int, Tuple[int, ...]]:
  """``(S', widths)`` of the DCGAN pair at image size ``size``: it works at ``S'``
  (``size``; 32 for 28, padded) and halves it once per entry of ``widths``, the width
  multipliers ``1, 2, 4, 8, 8, …`` of its stride-2 stages, down to a base of 4..7."""
  padded = _PADDED_SIZES.get(size, size)
  return padded, tuple(min(2**i, _MAX_WIDTH_MULT) for i in range(_halvings(padded)))


def resnet18_halvings(size: int) -> Tuple[int, int]:
  """``(stem, stages)``: how often ResNet-18's stem and its stages halve an image of side
  ``size``. The stages halve three times (stages 2-4), twice below 32 (the map stays
  ≥ 4); the stem halves only while the last map would exceed 12×12 (CIFAR's 3×3 stem up
  to 96; a 7×7 stride-2 conv, then also a 3×3 stride-2 max-pool above)."""
  stages = min(3, _halvings(size))
  stem = 0
  while size >> (stages + stem) > _RESNET_MAX_MAP:
    stem += 1
  return stem, stages


def describe_architecture(config, image_shape: Sequence[int]) -> list[str]:
  """One line per net of ``create_models(config, image_shape)``, its maps and widths, for
  the start-up summary: ``encoder dcgan: 64→32→16→8→4, widths 8/16/32/64``."""
  size, c, w = int(image_shape[0]), int(image_shape[-1]), int(config.model.width)
  lines = []
  for role in ("encoder", "decoder"):
    if config.model[role] == "dcgan":
      padded, mults = dcgan_stages(size)
      maps = [padded >> i for i in range(len(mults) + 1)]
      widths = [w * k for k in mults]
      if role == "encoder":
        text = (f"{size} padded to " if padded != size else "") + "→".join(map(str, maps))
      else:
        text = "→".join(map(str, maps[::-1])) + (f" cropped to {size}" if padded != size else "")
        widths = widths[::-1] + [c]
    else:
      stem, stages = resnet18_halvings(size)
      maps = [(size >> stem) >> min(i, stages) for i in range(len(_STAGES))]
      widths = [w * k for k in _STAGES]
      if role == "encoder":
        kind = ("CIFAR 3×3", "7×7 stride-2", "7×7 stride-2 + max-pool")[stem]
        text = f"{kind} stem{f' {size}→{maps[0]}' if stem else ''}, stages " + "→".join(
          map(str, maps)
        )
      else:
        widths = widths[::-1]
        text = "stages " + "→".join(map(str, maps[::-1]))
        text += f", {stem} more 2× to {size} (the stem's mirror)" if stem else ""
    upsample = f", {config.model.upsample} upsampling" if role == "decoder" else ""
    lines.append(
      f"{role} {config.model[role]}: {text}, widths {'/'.join(map(str, widths))}{upsample}"
    )
  return lines


def _check_input(name: str, x: Array, image_shape: Sequence[int]) -> None:
  if tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(
      f"{name} was built for images of shape {tuple(image_shape)} "
      f"(H, W, C); got a batch of shape {tuple(x.shape)}"
    )


# ----------------------------------------------------------------------------
# Shared building blocks.
# ----------------------------------------------------------------------------


def _batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
  # PyTorch/CTRL defaults (momentum 0.1 there is 0.9 here); flax reduces the batch
  # statistics in float32 also under bf16 compute.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


class Upsample2x(nn.Module):
  """``(B, H, W, C_in) -> (B, 2H, 2W, features)`` by the chosen ``method``.

  With ``use_bias``, ``pixel_shuffle`` has one bias per output channel *and* sub-pixel
  position (``4·features``), the others ``features``.
  """

  features: int
  method: str
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(
      nn.Conv, use_bias=self.use_bias, dtype=self.dtype, kernel_init=self.kernel_init
    )
    if self.method == "conv_transpose":
      # 'SAME' with stride 2 gives exactly 2H × 2W (PyTorch's k=4, s=2, p=1).
      return nn.ConvTranspose(
        self.features,
        (4, 4),
        strides=(2, 2),
        padding="SAME",
        use_bias=self.use_bias,
        dtype=self.dtype,
        kernel_init=self.kernel_init,
      )(x)
    if self.method == "pixel_shuffle":
      return depth_to_space(conv(4 * self.features, (3, 3), padding="SAME")(x), 2)
    if self.method == "resize_conv":
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour 2×
      return conv(self.features, (3, 3), padding="SAME")(x)
    raise ValueError(f"unknown upsample {self.method!r}; choose one of {UPSAMPLES}")


class ResBlock(nn.Module):
  """ResNet basic block, ``(B, H, W, C_in) -> (B, H', W', features)``.

  ``resample``: ``None`` (H' = H), ``"down"`` (H' = H/2: first 3×3 conv has stride 2,
  shortcut 1×1 stride-2 conv + BN — the encoder's) or ``"up"`` (H' = 2H: first conv
  is ``Upsample2x(upsample)``, shortcut nearest 2× + 1×1 conv + BN — the decoder's).
  The shortcut is a projection whenever the shape changes, identity otherwise.
  """

  features: int
  resample: Optional[str] = None
  upsample: Optional[str] = None  # the decoder's config.model.upsample; read with "up" only
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_resnet_init)
    stride = 2 if self.resample == "down" else 1
    if self.resample == "up":
      y = Upsample2x(self.features, self.upsample, dtype=self.dtype, kernel_init=_resnet_init)(x)
    else:
      y = conv(self.features, (3, 3), strides=stride, padding=((1, 1), (1, 1)))(x)
    y = nn.relu(_batch_norm(train, self.dtype)(y))
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)))(y)
    y = _batch_norm(train, self.dtype)(y)

    shortcut = x
    if self.resample is not None or x.shape[-1] != self.features:
      if self.resample == "up":
        shortcut = jnp.repeat(jnp.repeat(shortcut, 2, axis=1), 2, axis=2)
      shortcut = conv(self.features, (1, 1), strides=stride)(shortcut)
      shortcut = _batch_norm(train, self.dtype)(shortcut)
    return nn.relu(y + shortcut.astype(y.dtype))


class FeatureHead(nn.Module):
  """``(B, ...) -> (B, d)`` float32 features: flatten, linear map, then by ``head``:

  * ``"sphere"``: L2 normalise (unit rows);
  * ``"gaussian"``: the map gives ``2d`` values, a diagonal Gaussian's mean ``μ`` and
    log-variance; returns ``μ``, or ``(μ, log σ²)`` with ``posterior=True``.

  The linear map runs in float32 (it is small) so the features the float32 rate terms
  see are not rounded to bf16 (docs/method.md#coding-rates).
  """

  feature_dim: int
  head: str
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, h: Array, posterior: bool = False):
    h = h.reshape(h.shape[0], -1).astype(jnp.float32)
    gaussian = self.head == "gaussian"
    if self.head not in FEATURE_HEADS or (posterior and not gaussian):
      raise ValueError(f"posterior={posterior} with feature head {self.head!r}")
    out = nn.Dense(
      self.feature_dim * (2 if gaussian else 1), dtype=jnp.float32, kernel_init=self.kernel_init
    )(h)
    if not gaussian:
      return rr.l2_normalize(out)
    mu, log_var = jnp.split(out, 2, axis=-1)
    return (mu, log_var) if posterior else mu


class FeatureStem(nn.Module):
  """``(B, d) -> (B, s, s, features)``: linear map (no bias) + BN + ReLU.

  The decoder's entry, the mirror of ``FeatureHead`` (CTRL's first 4×4 transposed
  conv on a 1×1 input is exactly this linear map).
  """

  spatial: int
  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    h = nn.Dense(
      self.spatial * self.spatial * self.features,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=self.kernel_init,
    )(z.astype(self.dtype))
    h = h.reshape(z.shape[0], self.spatial, self.spatial, self.features)
    return nn.relu(_batch_norm(train, self.dtype)(h))


# ----------------------------------------------------------------------------
# DCGAN family (CTRL).
# ----------------------------------------------------------------------------


class DCGANEncoder(nn.Module):
  """CTRL's DCGAN encoder: ``x (B, S, S, C) -> Z (B, d)`` float32 unit rows.

  S is any accepted size (``accepted_image_sizes``); 28 is padded to 32 with −1. One
  4×4 stride-2 conv per halving down to the base b (``dcgan_stages``: 32 → 16 → 8 → 4
  with ``w, 2w, 4w`` channels, 64 → … → 4 with ``w … 8w``; BN after all but the first,
  DCGAN's rule; LeakyReLU 0.2), then ``FeatureHead`` (of kind ``head``) on the
  flattened ``b·b·(last width)`` map (CTRL's last 4×4 conv).
  ``depth`` (``config.model.encoder_depth``, 0 in CTRL) adds that many 3×3 stride-1
  convs (+ BN + LeakyReLU) after each strided one, at its width and resolution.
  """

  image_shape: Tuple[int, int, int]
  feature_dim: int
  width: int
  dtype: Any
  depth: int
  head: str

  @nn.compact
  def __call__(self, x: Array, train: bool, posterior: bool = False):
    _check_input("DCGANEncoder", x, self.image_shape)
    padded, mults = dcgan_stages(self.image_shape[0])
    h = _pad_to(x, padded).astype(self.dtype)
    for i, mult in enumerate(mults):
      h = nn.Conv(
        self.width * mult,
        (4, 4),
        strides=2,
        padding=((1, 1), (1, 1)),
        use_bias=(i == 0),
        dtype=self.dtype,
        kernel_init=_dcgan_init,
        conv_general_dilated=strided_conv.conv_general_dilated,
      )(h)
      if i > 0:
        h = _batch_norm(train, self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
      for _ in range(self.depth):  # extra 3×3 convs at this resolution (depth > 0)
        h = nn.Conv(
          self.width * mult,
          (3, 3),
          padding=((1, 1), (1, 1)),
          use_bias=False,
          dtype=self.dtype,
          kernel_init=_dcgan_init,
        )(h)
        h = nn.leaky_relu(_batch_norm(train, self.dtype)(h), 0.2)
    return FeatureHead(self.feature_dim, kernel_init=_dcgan_init, head=self.head)(h, posterior)


class DCGANDecoder(nn.Module):
  """CTRL's DCGAN decoder (mirrored): ``z (B, d) -> x̂ (B, S, S, C)`` in [−1, 1].

  The encoder's mirror (``dcgan_stages``): ``FeatureStem`` to the ``b×b`` base at the
  last width (``4×4×4w`` at 32: CTRL's first transposed conv), then one ``Upsample2x``
  per halving (``2w, w, C`` at 32; BN + ReLU after all but the last), tanh, centre-crop
  to S (28 from 32).
  """

  image_shape: Tuple[int, int, int]
  width: int
  upsample: str
  dtype: Any

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    padded, mults = dcgan_stages(self.image_shape[0])
    h = FeatureStem(
      padded >> len(mults), self.width * mults[-1], dtype=self.dtype, kernel_init=_dcgan_init
    )(z, train)
    for mult in reversed(mults[:-1]):
      h = Upsample2x(self.width * mult, self.upsample, dtype=self.dtype, kernel_init=_dcgan_init)(h)
      h = nn.relu(_batch_norm(train, self.dtype)(h))
    h = Upsample2x(
      self.image_shape[-1], self.upsample, use_bias=True, dtype=self.dtype, kernel_init=_dcgan_init
    )(h)
    x = jnp.tanh(h.astype(jnp.float32))
    return _crop_to(x, *self.image_shape[:2])


# ----------------------------------------------------------------------------
# ResNet-18 family.
# ----------------------------------------------------------------------------

_STAGES = (1, 2, 4, 8)  # channel multipliers of the four ResNet stages
_BLOCKS_PER_STAGE = 2  # ResNet-18


class ResNet18Encoder(nn.Module):
  """ResNet-18: ``x (B, S, S, C) -> Z (B, d)`` float32 unit rows.

  The stem (``resnet18_halvings``): up to S = 96 CIFAR's, a 3×3 stride-1 conv (w) + BN +
  ReLU, no max-pool; above, ImageNet's 7×7 stride-2 conv, then also its 3×3 stride-2
  max-pool where the last map would still exceed 12×12. Four stages of two basic blocks
  (``w, 2w, 4w, 8w``; stages 2-4 start with a stride-2 block, stage 4 not below 32 so
  the last map stays ≥ 4×4); global average pool; ``FeatureHead`` (of kind ``head``).
  At w = 64 the trunk with the CIFAR stem is the standard CIFAR ResNet-18 without its
  classifier: 11 168 832 parameters.
  """

  image_shape: Tuple[int, int, int]
  feature_dim: int
  width: int
  dtype: Any
  head: str

  @nn.compact
  def __call__(self, x: Array, train: bool, posterior: bool = False):
    _check_input("ResNet18Encoder", x, self.image_shape)
    stem, stages = resnet18_halvings(self.image_shape[0])
    kernel, pad = (7, 3) if stem else (3, 1)
    h = nn.Conv(
      self.width,
      (kernel, kernel),
      strides=2 if stem else 1,
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      dtype=self.dtype,
      kernel_init=_resnet_init,
    )(x.astype(self.dtype))
    h = nn.relu(_batch_norm(train, self.dtype)(h))
    if stem == 2:
      h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, mult in enumerate(_STAGES):
      for block in range(_BLOCKS_PER_STAGE):
        down = "down" if 0 < stage <= stages and block == 0 else None
        h = ResBlock(self.width * mult, resample=down, dtype=self.dtype)(h, train)
    h = jnp.mean(h.astype(jnp.float32), axis=(1, 2))  # global average pool
    return FeatureHead(self.feature_dim, head=self.head)(h, posterior)


class ResNet18Decoder(nn.Module):
  """Mirror of ``ResNet18Encoder``: ``z (B, d) -> x̂ (B, S, S, C)`` in [−1, 1].

  ``FeatureStem`` to the encoder's last map at ``8w`` (``(S/8)×(S/8)`` up to S = 96);
  four stages of two basic blocks (``8w, 4w, 2w, w``; the stages mirroring the
  encoder's stride-2 ones start with an upsampling block, its first conv being
  ``Upsample2x(upsample)``); one ``Upsample2x`` (w) + BN + ReLU per halving of the
  encoder's stem; 3×3 conv (with bias) to C; tanh.
  """

  image_shape: Tuple[int, int, int]
  width: int
  upsample: str
  dtype: Any

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    stem, stages = resnet18_halvings(self.image_shape[0])
    h = FeatureStem(
      self.image_shape[0] >> (stem + stages), self.width * _STAGES[-1], dtype=self.dtype
    )(z, train)
    for stage, mult in enumerate(reversed(_STAGES)):
      for block in range(_BLOCKS_PER_STAGE):
        # Decoder stage j mirrors encoder stage 4 - j's downsampling (stages 1..stages).
        up = "up" if 0 < len(_STAGES) - stage <= stages and block == 0 else None
        h = ResBlock(self.width * mult, resample=up, upsample=self.upsample, dtype=self.dtype)(
          h, train
        )
    for _ in range(stem):  # the stem's mirror
      h = Upsample2x(self.width, self.upsample, dtype=self.dtype, kernel_init=_resnet_init)(h)
      h = nn.relu(_batch_norm(train, self.dtype)(h))
    h = nn.Conv(
      self.image_shape[-1],
      (3, 3),
      padding=((1, 1), (1, 1)),
      dtype=self.dtype,
      kernel_init=_resnet_init,
    )(h)
    return jnp.tanh(h.astype(jnp.float32))


# ----------------------------------------------------------------------------
# Factory.
# ----------------------------------------------------------------------------

_ENCODER_CLASSES = {"dcgan": DCGANEncoder, "resnet18": ResNet18Encoder}
_DECODER_CLASSES = {"dcgan": DCGANDecoder, "resnet18": ResNet18Decoder}


def _choice(model_config, key: str, choices):
  """``model_config[key]``, checked against ``choices``."""
  value = model_config[key]
  if value not in choices:
    raise ValueError(
      f"config.model.{key} = {value!r} is not supported; choose one of {tuple(choices)}"
    )
  return value


def _check_image_shape(image_shape) -> Tuple[int, int, int]:
  if len(image_shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C); got {tuple(image_shape)}")
  h, w, c = (int(v) for v in image_shape)
  if h != w or c < 1:
    raise ValueError(
      f"the models take square images (H = W) with C ≥ 1 channels; got image_shape "
      f"{tuple(image_shape)}"
    )
  error = image_size_error(h)
  if error:
    raise ValueError(f"image_shape {tuple(image_shape)}: {error}")
  return h, w, c


def create_models(config, image_shape: Sequence[int]) -> Tuple[nn.Module, nn.Module]:
  """The ``(encoder, decoder)`` linen modules named by ``config.model``.

  Reads ``encoder``, ``decoder``, ``feature_dim``, ``upsample``, ``width``,
  ``encoder_depth`` and ``dtype`` (``uctrl_jax/defaults.py`` holds their defaults), and the
  encoder's head from ``config.loss.mode`` (``objectives.feature_head``: a VAE's is
  ``"gaussian"``).
  ``image_shape = (H, W, C)`` of the images the encoder reads and the decoder writes.
  Raises ``ValueError`` naming the bad value for an unknown name, upsample or dtype, a
  non-positive width / feature_dim, or an image size the family does not support
  (``image_size_error``).
  """
  m = config.model
  enc_name = _choice(m, "encoder", ENCODERS)
  dec_name = _choice(m, "decoder", DECODERS)
  upsample = _choice(m, "upsample", UPSAMPLES)
  dtype = DTYPES[_choice(m, "dtype", tuple(DTYPES))]
  width = int(m.width)
  feature_dim = m.feature_dim
  if feature_dim is None or int(feature_dim) < 1:
    raise ValueError(f"config.model.feature_dim must be a positive int; got {feature_dim!r}")
  if width < 1:
    raise ValueError(f"config.model.width must be a positive int; got {width!r}")
  shape = _check_image_shape(image_shape)
  depth = int(m.encoder_depth)
  if depth < 0 or (depth and enc_name != "dcgan"):
    raise ValueError(
      f"config.model.encoder_depth = {depth} must be ≥ 0, and > 0 only with "
      f"the 'dcgan' encoder (got {enc_name!r})"
    )
  extra = {"depth": depth} if enc_name == "dcgan" else {}
  encoder = _ENCODER_CLASSES[enc_name](
    image_shape=shape,
    feature_dim=int(feature_dim),
    width=width,
    dtype=dtype,
    head=objectives.feature_head(config.loss.mode),
    **extra,
  )
  decoder = _DECODER_CLASSES[dec_name](
    image_shape=shape, width=width, upsample=upsample, dtype=dtype
  )
  return encoder, decoder


def init_models(
  config, image_shape: Sequence[int], rng: Array, *, with_decoder: bool = True
) -> dict:
  """Initial variables of ``create_models(config, image_shape)``.

  Returns ``dict(encoder_params, encoder_batch_stats, decoder_params,
  decoder_batch_stats)`` (float32 pytrees; BN running mean 0, variance 1). Jitted,
  with a batch of 2 (initialisation does not depend on the batch size). Without the
  decoder (encoder-only objectives) its two entries are empty dicts; the encoder's
  initialisation is the same either way.
  """
  encoder, decoder = create_models(config, image_shape)
  k_enc, k_dec = jax.random.split(rng)
  x = jnp.zeros((2, *image_shape), jnp.float32)
  z = jnp.zeros((2, encoder.feature_dim), jnp.float32)

  @jax.jit
  def init(k_enc, k_dec):
    dec_vars = (
      decoder.init(k_dec, z, train=False) if with_decoder else {"params": {}, "batch_stats": {}}
    )
    return encoder.init(k_enc, x, train=False), dec_vars

  enc_vars, dec_vars = init(k_enc, k_dec)
  return dict(
    encoder_params=enc_vars["params"],
    encoder_batch_stats=enc_vars["batch_stats"],
    decoder_params=dec_vars["params"],
    decoder_batch_stats=dec_vars["batch_stats"],
  )
