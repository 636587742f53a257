"""PyTorch twin of one uCTRL iteration: the baseline of benchmarks/train_step_bench.py.

The same nets as ``uctrl_jax/models.py`` (DCGAN and ResNet-18 pairs, same layer
shapes, so the same parameter counts; NCHW instead of NHWC), the same objective as
``uctrl_jax/objectives.game_terms`` for ``loss.mode = "uctrl"`` (every log-det a
Cholesky on the smaller Gram side; exact or cosine sample-wise terms; the views' mean
as the invariance target or the image; R expanded over the views), stepped exactly as
``uctrl_jax/steps.py`` steps them (see ``TorchUCTRL``: BN statistics of each pass,
per-player Adam and learning-rate schedules). Benchmark code only: PyTorch is not a
runtime dependency of the project (``.venv/bin/pip install torch==2.13.0``, the CPU build).

Parameter initialisation follows the JAX models' families (N(0, 0.02) for DCGAN,
He fan-out for ResNet) but not their random streams; ``load_jax_variables`` copies a
JAX state's weights in, so that both sides can be checked to compute the same
iteration (benchmarks/train_step_bench.py's ``check_iteration_agrees``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

Tensor = torch.Tensor

_DCGAN_SIZE = 32  # as uctrl_jax/models.py: 28×28 is padded to 32 (value −1) and cropped back
_PAD_VALUE = -1.0


# ----------------------------------------------------------------------------
# Objective (docs/method.md#coding-rates, #the-game), the formulas of uctrl_jax/rate_reduction.py.
# ----------------------------------------------------------------------------


def _logdet_i_plus(scale: Tensor, G: Tensor) -> Tensor:
  """``logdet(I + scale·G)`` for PSD ``G: (..., m, m)``, ``scale: (...)``, by Cholesky."""
  eye = torch.eye(G.shape[-1], dtype=G.dtype)
  L = torch.linalg.cholesky(eye + scale[..., None, None] * G)
  return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def pair_rates(Z: Tensor, Zhat: Tensor, eps_sq: float):
  """``(R(Z ∪ Ẑ), R(Z), R(Ẑ))`` with their own row counts, on the smaller Gram side.

  Args:
    Z: (n, d); Zhat: (m, d).
  Returns:
    three () tensors.
  """
  n, d = Z.shape
  m = Zhat.shape[0]
  counts = torch.tensor([n + m, n, m], dtype=Z.dtype)
  if n + m < d:
    # Row side: the Grams of Z and Ẑ are blocks of the union's (n+m) × (n+m) Gram.
    U = torch.cat([Z, Zhat])
    K = U @ U.T
    alpha = d / (counts * eps_sq)
    return (
      0.5 * _logdet_i_plus(alpha[0], K),
      0.5 * _logdet_i_plus(alpha[1], K[:n, :n]),
      0.5 * _logdet_i_plus(alpha[2], K[n:, n:]),
    )
  # d side: the union's Gram is ZᵀZ + ẐᵀẐ; one batched factorisation for all three.
  G, Ghat = Z.T @ Z, Zhat.T @ Zhat
  rates = 0.5 * _logdet_i_plus(d / (counts * eps_sq), torch.stack([G + Ghat, G, Ghat]))
  return rates[0], rates[1], rates[2]


def cosine_distance(U: Tensor, V: Tensor) -> Tensor:
  """Row-wise ``1 − cos(uᵢ, vᵢ)`` of (n, d) pairs, norms clipped at 1e-8 → (n,)."""
  norm = lambda X: torch.sqrt(torch.clamp((X * X).sum(1), min=1e-16))  # noqa: E731
  return 1.0 - (U * V).sum(1) / (norm(U) * norm(V))


def pairwise_rate_distance(U: Tensor, V: Tensor, eps_sq: float) -> Tensor:
  """Exact ``ΔR(uᵢ, vᵢ)`` (docs/method.md#sample-wise-distance) in the cancellation-free form of
  rate_reduction.py → (n,)."""
  a = U.shape[1] / (2.0 * eps_sq)
  uu, vv = (U * U).sum(1), (V * V).sum(1)
  plus, minus = ((U + V) ** 2).sum(1), ((U - V) ** 2).sum(1)
  cross = torch.clamp(0.25 * (plus * minus - (uu - vv) ** 2), min=0.0)
  return 0.5 * torch.log1p(a * (uu + vv) + a * a * cross) - 0.25 * (
    torch.log1p(2 * a * uu) + torch.log1p(2 * a * vv)
  )


def coding_rates(Z: Tensor, eps_sq: float) -> Tensor:
  """``R(Z_v)`` of each of a batch of feature sets ``Z: (..., n, d)`` → ``(...)``, on the
  smaller Gram side (as ``rate_reduction.coding_rate``)."""
  n, d = Z.shape[-2:]
  G = Z @ Z.transpose(-1, -2) if n < d else Z.transpose(-1, -2) @ Z
  alpha = torch.full(Z.shape[:-2], d / (n * eps_sq), dtype=Z.dtype)
  return 0.5 * _logdet_i_plus(alpha, G)


def _sample_term(Z: Tensor, Zs: Tensor, dist) -> Tensor:
  """(n,): ``dist(Z, Z_v)`` per row, mean over the ``Zs: (V, n, d)``."""
  return torch.stack([dist(Z, Zv) for Zv in Zs]).mean(0)


def _aug_term(Z: Tensor, Z_aug: Tensor, dist, aug_target: str) -> Tensor:
  """(n,): the augmentation term per row (``rate_reduction._aug_term``)."""
  if aug_target == "image":
    return _sample_term(Z, Z_aug, dist)
  if aug_target != "mean":
    raise ValueError(f"aug_target {aug_target!r}")
  mean = Z_aug.mean(0)
  target = mean * torch.rsqrt(torch.clamp((mean * mean).sum(1, keepdim=True), min=1e-16))
  return 0.5 * (_sample_term(target, Z[None], dist) + _sample_term(target, Z_aug, dist))


def uctrl_objective(
  Z: Tensor,
  Zhat: Tensor,
  Z_aug: Tensor,
  eps_sq: float,
  lambda_aug: float,
  lambda_self: float,
  *,
  sample_distance: str,
  sample_reduction: str,
  aug_target: str,
) -> dict:
  """``rate_reduction.uctrl_objective`` in PyTorch (same keys, same values).

  Args:
    Z, Zhat: (n, d) features; Z_aug: (n, d) or (V, n, d) views' features.
  Returns:
    dict of () tensors: R, delta_R_z_zhat, aug, self, aug_per_sample,
    self_per_sample, encoder_objective, decoder_objective.
  """
  if Z_aug.dim() == 2:
    Z_aug = Z_aug[None]
  n = Z.shape[0]
  R_union, R, R_zhat = pair_rates(Z, Zhat, eps_sq)
  delta = R_union - 0.5 * (R + R_zhat)
  if sample_distance == "exact":
    dist = lambda U, V: pairwise_rate_distance(U, V, eps_sq)  # noqa: E731
  elif sample_distance == "cosine":
    dist = cosine_distance
  else:
    raise ValueError(f"sample_distance {sample_distance!r}")
  aug_sum = _aug_term(Z, Z_aug, dist, aug_target).sum()
  self_sum = dist(Z, Zhat).sum()
  scale = 1.0 if sample_reduction == "sum" else 1.0 / n
  aug, self_ = aug_sum * scale, self_sum * scale
  return {
    "R": R,
    "delta_R_z_zhat": delta,
    "aug": aug,
    "self": self_,
    "aug_per_sample": aug_sum / n,
    "self_per_sample": self_sum / n,
    "encoder_objective": R + delta - lambda_aug * aug - lambda_self * self_,
    "decoder_objective": R + delta + lambda_aug * aug + lambda_self * self_,
  }


def game_terms(config, Z: Tensor, Zhat: Tensor, Z_aug) -> dict:
  """``objectives.game_terms`` for ``loss.mode = "uctrl"``, in PyTorch (same keys and values).

  Args:
    Z, Zhat: (B, d); Z_aug: (V, B, d), or None where the views were not encoded (the
      decoder step on running statistics): the augmentation term is then left out.
  """
  loss = config.loss
  if loss.mode != "uctrl":
    raise ValueError(f"the PyTorch twin plays loss.mode 'uctrl' only; got {loss.mode!r}")
  terms = uctrl_objective(
    Z,
    Zhat,
    Z[None] if Z_aug is None else Z_aug,
    loss.eps_sq,
    0.0 if Z_aug is None else loss.lambda_aug,
    loss.lambda_self,
    sample_distance=loss.sample_distance,
    sample_reduction=loss.sample_reduction,
    aug_target=loss.aug_target,
  )
  if Z_aug is None:
    del terms["aug"], terms["aug_per_sample"]
  expansion, shift = terms["R"], 0.0
  if loss.rate_on_views and Z_aug is not None:
    # ½ (R(Z) + mean_v R(Z_v)) in place of R(Z), as objectives.game_terms.
    terms["R_views"] = coding_rates(Z_aug, loss.eps_sq).mean()
    expansion = 0.5 * (terms["R"] + terms["R_views"])
    shift = 0.5 * (terms["R_views"] - terms["R"])
  w_rate, w_delta = loss.rate_weight, loss.delta_weight
  if (w_rate, w_delta) != (1.0, 1.0):
    shift = shift + (w_rate - 1.0) * expansion + (w_delta - 1.0) * terms["delta_R_z_zhat"]
  terms["encoder_objective"] = terms["encoder_objective"] + shift
  terms["decoder_objective"] = terms["decoder_objective"] + shift
  return terms


# ----------------------------------------------------------------------------
# Nets (uctrl_jax/models.py, layer for layer).
# ----------------------------------------------------------------------------


class BatchNorm2d(nn.BatchNorm2d):
  """PyTorch's BN (momentum 0.1 = flax's 0.9, eps 1e-5), with flax's running statistics
  where the encoder step needs them (``TorchUCTRL.encoder_step``).

  * ``recording``: a training-mode pass normalises as PyTorch does but leaves the running
    statistics alone and keeps the batch's mean and biased variance, differentiable, in
    ``recorded``;
  * ``running``: a ``(mean, var)`` pair of differentiable tensors that an eval-mode pass
    normalises with in place of the buffers.
  """

  def __init__(self, c: int):
    super().__init__(c, momentum=0.1, eps=1e-5)
    self.recording, self.recorded, self.running = False, None, None

  def forward(self, x: Tensor) -> Tensor:
    if self.training and self.recording:
      var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
      self.recorded = (mean, var)
      return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
    if not self.training and self.running is not None:
      # PyTorch's eval-mode BN has no derivative in its statistics: the same affine map.
      mean, var = self.running
      scale = self.weight * torch.rsqrt(var + self.eps)
      return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]
    return super().forward(x)


_bn = BatchNorm2d


def _l2_normalize(z: Tensor) -> Tensor:
  return z * torch.rsqrt(torch.clamp((z * z).sum(-1, keepdim=True), min=1e-12))


class Upsample2x(nn.Module):
  """``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``; pixel_shuffle = 3×3 conv to 4·C_out + shuffle."""

  def __init__(self, cin: int, cout: int, method: str, bias: bool = False):
    super().__init__()
    if method == "pixel_shuffle":
      self.op = nn.Sequential(nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=bias), nn.PixelShuffle(2))
    elif method == "conv_transpose":
      self.op = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias)
    elif method == "resize_conv":
      self.op = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
      )
    else:
      raise ValueError(f"unknown upsample {method!r}")

  def forward(self, x: Tensor) -> Tensor:
    return self.op(x)


class DCGANEncoder(nn.Module):
  """``x (B, C, S, S) -> Z (B, d)`` unit rows; S ∈ {28, 32}, 28 padded to 32 with −1."""

  def __init__(self, image_shape: Sequence[int], feature_dim: int, width: int):
    super().__init__()
    s, _, c = image_shape
    self.pad = _DCGAN_SIZE - s
    w = width
    self.body = nn.Sequential(
      nn.Conv2d(c, w, 4, 2, 1, bias=True),
      nn.LeakyReLU(0.2),
      nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False),
      _bn(2 * w),
      nn.LeakyReLU(0.2),
      nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False),
      _bn(4 * w),
      nn.LeakyReLU(0.2),
    )
    self.head = nn.Linear(4 * 4 * 4 * w, feature_dim)

  def forward(self, x: Tensor) -> Tensor:
    if self.pad:
      p = self.pad
      x = F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2), value=_PAD_VALUE)
    # Flattened in (H, W, C) order, as flax's NHWC reshape: the JAX head's weights fit as they are.
    return _l2_normalize(self.head(self.body(x).permute(0, 2, 3, 1).flatten(1)))


class FeatureStem(nn.Module):
  """``(B, d) -> (B, F, s, s)``: linear map (no bias) + BN + ReLU."""

  def __init__(self, feature_dim: int, spatial: int, features: int):
    super().__init__()
    self.spatial, self.features = spatial, features
    self.linear = nn.Linear(feature_dim, spatial * spatial * features, bias=False)
    self.bn = _bn(features)

  def forward(self, z: Tensor) -> Tensor:
    # Unflattened as (H, W, C), as flax's NHWC reshape (see DCGANEncoder.forward).
    h = self.linear(z).view(z.shape[0], self.spatial, self.spatial, self.features)
    return F.relu(self.bn(h.permute(0, 3, 1, 2)))


class DCGANDecoder(nn.Module):
  """``z (B, d) -> x̂ (B, C, S, S)`` in [−1, 1]: stem to 4×4×4w, three 2× upsamplings, crop."""

  def __init__(self, image_shape: Sequence[int], feature_dim: int, width: int, upsample: str):
    super().__init__()
    self.size, _, c = image_shape
    w = width
    self.body = nn.Sequential(
      FeatureStem(feature_dim, _DCGAN_SIZE // 8, 4 * w),
      Upsample2x(4 * w, 2 * w, upsample),
      _bn(2 * w),
      nn.ReLU(),
      Upsample2x(2 * w, w, upsample),
      _bn(w),
      nn.ReLU(),
      Upsample2x(w, c, upsample, bias=True),
      nn.Tanh(),
    )

  def forward(self, z: Tensor) -> Tensor:
    x = self.body(z)
    top = (x.shape[-1] - self.size) // 2
    return x[:, :, top : top + self.size, top : top + self.size]


class ResBlock(nn.Module):
  """Basic block; ``resample`` None, "down" (stride-2 conv) or "up" (Upsample2x first)."""

  def __init__(self, cin: int, cout: int, resample=None, upsample: Optional[str] = None):
    super().__init__()
    stride = 2 if resample == "down" else 1
    self.conv1 = (
      Upsample2x(cin, cout, upsample)
      if resample == "up"
      else nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    )
    self.bn1, self.conv2, self.bn2 = (
      _bn(cout),
      nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
      _bn(cout),
    )
    self.shortcut = None
    if resample is not None or cin != cout:
      layers = [nn.Upsample(scale_factor=2, mode="nearest")] if resample == "up" else []
      self.shortcut = nn.Sequential(*layers, nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

  def forward(self, x: Tensor) -> Tensor:
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


_STAGES = (1, 2, 4, 8)


class ResNet18Encoder(nn.Module):
  """CIFAR-stem ResNet-18 trunk, global average pool, linear map, L2 normalise."""

  def __init__(self, image_shape: Sequence[int], feature_dim: int, width: int):
    super().__init__()
    c = image_shape[-1]
    layers = [nn.Conv2d(c, width, 3, 1, 1, bias=False), _bn(width), nn.ReLU()]
    cin = width
    for stage, mult in enumerate(_STAGES):
      for block in range(2):
        layers.append(ResBlock(cin, width * mult, "down" if stage > 0 and block == 0 else None))
        cin = width * mult
    self.body = nn.Sequential(*layers)
    self.head = nn.Linear(cin, feature_dim)

  def forward(self, x: Tensor) -> Tensor:
    return _l2_normalize(self.head(self.body(x).mean((2, 3))))


class ResNet18Decoder(nn.Module):
  """Mirror of ResNet18Encoder: stem to (S/8)²×8w, upsampling stages, 3×3 conv, tanh."""

  def __init__(self, image_shape: Sequence[int], feature_dim: int, width: int, upsample: str):
    super().__init__()
    s, _, c = image_shape
    cin = width * _STAGES[-1]
    layers = [FeatureStem(feature_dim, s // 2 ** (len(_STAGES) - 1), cin)]
    for stage, mult in enumerate(reversed(_STAGES)):
      for block in range(2):
        layers.append(
          ResBlock(cin, width * mult, "up" if stage > 0 and block == 0 else None, upsample)
        )
        cin = width * mult
    layers += [nn.Conv2d(cin, c, 3, 1, 1, bias=True), nn.Tanh()]
    self.body = nn.Sequential(*layers)

  def forward(self, z: Tensor) -> Tensor:
    return self.body(z)


def _init(module: nn.Module, family: str) -> None:
  """The JAX models' init families: N(0, 0.02) (DCGAN) / He fan-out (ResNet), zero biases."""
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
      if family == "dcgan":
        nn.init.normal_(m.weight, 0.0, 0.02)
      else:
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      if m.bias is not None:
        nn.init.zeros_(m.bias)


def create_models(config, image_shape: Sequence[int]):
  """``(encoder, decoder)`` for ``config.model`` (as ``models.create_models``), float32."""
  m = config.model
  width, d = int(m.width), int(m.feature_dim)
  upsample = m.upsample
  enc_cls = {"dcgan": DCGANEncoder, "resnet18": ResNet18Encoder}[m.encoder]
  dec_cls = {"dcgan": DCGANDecoder, "resnet18": ResNet18Decoder}[m.decoder]
  encoder = enc_cls(image_shape, d, width)
  decoder = dec_cls(image_shape, d, width, upsample)
  _init(encoder, m.encoder)
  _init(decoder, m.decoder)
  return encoder, decoder


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def _leaf_layers(module: nn.Module) -> list:
  """The layers that hold weights, in definition order (= the JAX modules' call order)."""
  kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
  return [m for m in module.modules() if isinstance(m, kinds)]


def _flax_leaf_paths(params: dict, path=()) -> list:
  """Paths ``"A_0/B_1"`` of the flax modules that own parameters, in ``params``' key order."""
  out = []
  for key, value in params.items():
    if any(isinstance(v, dict) for v in value.values()):
      out += _flax_leaf_paths(value, path + (key,))
    else:
      out.append("/".join(path + (key,)))
  return out


def flax_layer_paths(flax_module, example) -> list:
  """Paths (``"ResBlock_0/Conv_1"``) of the JAX net's modules that own parameters, in call
  order, which is the twin's definition order (``_leaf_layers``).

  Flax numbers its modules by call, while the arrays of a jitted state come with sorted
  keys: the order is read from an abstract ``init`` on ``example`` (an input it takes).
  """
  import jax  # pylint: disable=import-outside-toplevel

  ordered = []

  def init():
    variables = flax_module.init(jax.random.key(0), example, train=False)
    ordered.append(variables["params"])  # a plain dict here, in call order
    return variables

  jax.eval_shape(init)
  return _flax_leaf_paths(ordered[0])


def load_jax_variables(module: nn.Module, paths, params, batch_stats) -> None:
  """Copies a JAX net's weights and BN statistics (``params``, ``batch_stats``, e.g. a
  ``TrainState``'s) into its twin ``module``; ``paths``: ``flax_layer_paths`` of the net.

  Conv kernels (H, W, I, O) become (O, I, H, W), dense ones (I, O) become (O, I); the
  DCGAN head and stem flatten in (H, W, C) order on both sides. Resize-conv decoders
  only: pixel_shuffle and conv_transpose lay their kernels out differently.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel

  layers = _leaf_layers(module)
  if len(layers) != len(paths):
    raise ValueError(f"{len(layers)} torch layers against {len(paths)} flax modules")

  def lookup(tree, path):
    for key in path.split("/"):
      tree = tree[key]
    return {k: torch.from_numpy(np.array(v)) for k, v in tree.items()}

  with torch.no_grad():
    for layer, path in zip(layers, paths):
      p = lookup(params, path)
      if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        stats = lookup(batch_stats, path)
        for name, value in (
          ("weight", p["scale"]),
          ("bias", p["bias"]),
          ("running_mean", stats["mean"]),
          ("running_var", stats["var"]),
        ):
          getattr(layer, name).copy_(value)
        continue
      kernel = p["kernel"]
      kernel = kernel.permute(3, 2, 0, 1) if kernel.dim() == 4 else kernel.T
      if kernel.shape != layer.weight.shape:
        raise ValueError(f"cannot load {path} {tuple(kernel.shape)} into {layer}")
      layer.weight.copy_(kernel)
      if layer.bias is not None:
        layer.bias.copy_(p["bias"])


# ----------------------------------------------------------------------------
# The alternating steps (uctrl_jax/steps.py's make_steps).
# ----------------------------------------------------------------------------


def _batch_norms(module: nn.Module) -> list:
  return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module):
  """Training-mode BN (batch statistics) that leaves the running statistics as they are.

  JAX's steps discard the other player's BN updates; momentum 0 makes PyTorch's update
  ``(1 − 0)·running + 0·batch`` an exact no-op at the same cost.
  """
  bns = _batch_norms(module)
  saved = [bn.momentum for bn in bns]
  for bn in bns:
    bn.momentum = 0.0
  try:
    yield
  finally:
    for bn, momentum in zip(bns, saved):
      bn.momentum = momentum


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
  module.eval()
  try:
    yield
  finally:
    module.train()


@contextlib.contextmanager
def _frozen_params(module: nn.Module):
  """No weight gradients for ``module`` (gradients still flow through it to its input)."""
  module.requires_grad_(False)
  try:
    yield
  finally:
    module.requires_grad_(True)


def _grad_norm(module: nn.Module) -> Tensor:
  return torch.sqrt(sum((p.grad * p.grad).sum() for p in module.parameters() if p.grad is not None))


def learning_rate(config, base_lr: float, step: int) -> float:
  """``state.learning_rate_schedule(config, base_lr)`` at ``step``: the optional linear
  warm-up, then cosine decay over ``train.num_steps`` or a constant rate."""
  t = config.train
  lr = base_lr * (t.batch_size / 256.0 if t.scale_lr_by_batch else 1.0)
  warmup = int(t.warmup_steps)
  if step < warmup:
    return lr * step / warmup
  if t.schedule != "cosine":
    return lr
  decay = max(t.num_steps, warmup + 1) - warmup
  return lr * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, decay) / decay))


class TorchUCTRL:
  """Encoder and decoder with their Adam optimizers, stepped as uctrl_jax/steps.py does.

  * ``encoder_step``: one training-mode encoder pass over ``[X; X_a]`` (updates the
    encoder's running statistics), ``X̂ = g(Z)`` in training mode without gradient and
    without touching the decoder's statistics, ``Ẑ = f(X̂)`` with the just-updated
    running statistics (``train.encoder_bn_on_xhat = "running"``; ``"batch"``: batch
    statistics, running ones untouched), Adam step on ``−encoder_objective`` w.r.t. θ.
  * ``decoder_step``: ``Z = f(X)`` on the running statistics, views not encoded
    (``train.encoder_bn_in_decoder_step = "running"``; ``"batch"``: ``[X; X_a]`` in
    training mode, statistics untouched), no gradient; ``X̂ = g(Z)`` in training mode
    (updates the decoder's statistics), ``Ẑ = f(X̂)`` as in the encoder step with
    gradients flowing through ``f`` to ``X̂`` but not into θ; Adam step on
    ``decoder_objective`` w.r.t. η.

  Each player's Adam has its own rate, β₁ and schedule (``state.make_optimizers``): the
  rates are set from ``learning_rate`` at the iteration's index before each update.
  Both steps return the terms JAX logs (objective terms, cosines, grad norm, lr, MSE).
  """

  def __init__(self, config, image_shape: Sequence[int], seed: int = 0):
    torch.manual_seed(seed)
    t = config.train
    for key, choices in (
      ("encoder_bn_on_xhat", ("running", "batch")),
      ("encoder_bn_in_decoder_step", ("running", "batch")),
    ):
      if t[key] not in choices:
        raise ValueError(f"train.{key} = {t[key]!r}; choose from {choices}")
    self.config, self.image_shape = config, tuple(image_shape)
    self.step = 0  # iterations completed (state.step)
    self._paths = None  # flax_layer_paths of both nets, for load_jax_weights
    self.encoder, self.decoder = create_models(config, image_shape)
    self.encoder.train()
    self.decoder.train()
    self.enc_opt = torch.optim.Adam(
      self.encoder.parameters(), lr=t.encoder_lr, betas=(t.encoder_b1, t.b2)
    )
    self.dec_opt = torch.optim.Adam(
      self.decoder.parameters(), lr=t.decoder_lr, betas=(t.decoder_b1, t.b2)
    )

  def load_jax_weights(self, state) -> None:
    """Both nets' weights and BN statistics from a JAX ``TrainState`` (of
    ``models.create_models(config, image_shape)``), and its step (the schedules read it);
    each side keeps its own optimizer state."""
    if self.config.model.upsample != "resize_conv":
      raise ValueError("load_jax_weights: resize_conv decoders only (see load_jax_variables)")
    if self._paths is None:
      import numpy as np  # pylint: disable=import-outside-toplevel
      from uctrl_jax import models  # pylint: disable=import-outside-toplevel

      flax_encoder, flax_decoder = models.create_models(self.config, self.image_shape)
      self._paths = (
        flax_layer_paths(flax_encoder, np.zeros((1, *self.image_shape), np.float32)),
        flax_layer_paths(flax_decoder, np.zeros((1, self.config.model.feature_dim), np.float32)),
      )
    load_jax_variables(
      self.encoder, self._paths[0], state.encoder_params, state.encoder_batch_stats
    )
    load_jax_variables(
      self.decoder, self._paths[1], state.decoder_params, state.decoder_batch_stats
    )
    self.step = int(state.step)

  def _set_lr(self, opt, base_lr: float) -> float:
    lr = learning_rate(self.config, base_lr, self.step)
    for group in opt.param_groups:
      group["lr"] = lr
    return lr

  def _encode_images_and_views(self, X: Tensor, views: Tensor):
    B = X.shape[0]
    z_all = self.encoder(torch.cat([X, views.reshape(-1, *X.shape[1:])]))
    return z_all[:B], z_all[B:].reshape(views.shape[0], B, -1)

  def _encode_reconstructions(self, Xhat: Tensor, running=None) -> Tensor:
    """``Ẑ = f(X̂)`` with the configured statistics; never updates them. ``running``:
    per BN layer of the encoder, the ``(mean, var)`` to use in place of its buffers."""
    if self.config.train.encoder_bn_on_xhat == "batch":
      with _frozen_running_stats(self.encoder):
        return self.encoder(Xhat)
    bns = _batch_norms(self.encoder)
    for bn, stats in zip(bns, running or [None] * len(bns)):
      bn.running = stats
    try:
      with _eval_mode(self.encoder):
        return self.encoder(Xhat)
    finally:
      for bn in bns:
        bn.running = None

  def encoder_step(self, X: Tensor, views: Tensor) -> Mapping[str, Tensor]:
    """X: (B, C, H, W); views: (V, B, C, H, W) → logged terms (tensors).

    As steps.py's encoder step: ``f(X̂)`` reads the running statistics that the pass over
    ``[X; X_a]`` has just updated, as functions of θ (flax's update
    ``0.9·running + 0.1·batch``, the biased variance, is not cut from the gradient), so
    θ's gradient has a path through them too; they are written back after the update.
    """
    bns = _batch_norms(self.encoder)
    for bn in bns:
      bn.recording = True
    try:
      Z, Z_aug = self._encode_images_and_views(X, views)
    finally:
      for bn in bns:
        bn.recording = False
    m = bns[0].momentum if bns else 0.0
    running = [
      (
        (1 - m) * bn.running_mean + m * bn.recorded[0],
        (1 - m) * bn.running_var + m * bn.recorded[1],
      )
      for bn in bns
    ]
    with torch.no_grad(), _frozen_running_stats(self.decoder):
      Xhat = self.decoder(Z)  # X̂ held constant (docs/method.md#the-game)
    Zhat = self._encode_reconstructions(Xhat, running)
    terms = game_terms(self.config, Z, Zhat, Z_aug)
    terms["cos_z_zhat"] = (1.0 - cosine_distance(Z, Zhat)).mean()
    terms["cos_z_zaug"] = torch.stack([1.0 - cosine_distance(Z, Zv) for Zv in Z_aug]).mean()
    self.enc_opt.zero_grad(set_to_none=True)
    (-terms["encoder_objective"]).backward()
    terms["lr"] = torch.tensor(self._set_lr(self.enc_opt, self.config.train.encoder_lr))
    self.enc_opt.step()
    terms["grad_norm"] = _grad_norm(self.encoder)
    with torch.no_grad():
      for bn, (mean, var) in zip(bns, running):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.recorded = None
    return {k: v.detach() for k, v in terms.items()}

  def decoder_step(self, X: Tensor, views: Tensor) -> Mapping[str, Tensor]:
    """X: (B, C, H, W); views: (V, B, C, H, W) → logged terms (tensors)."""
    with torch.no_grad():
      if self.config.train.encoder_bn_in_decoder_step == "running":
        # f as evaluation runs it; the views' term is constant in η (as steps.py).
        with _eval_mode(self.encoder):
          Z, Z_aug = self.encoder(X), None
      else:
        with _frozen_running_stats(self.encoder):
          Z, Z_aug = self._encode_images_and_views(X, views)
    Xhat = self.decoder(Z)
    # Gradients flow through f to X̂ only: freezing θ spares the weight gradients that
    # JAX, differentiating w.r.t. η alone, never computes either.
    with _frozen_params(self.encoder):
      Zhat = self._encode_reconstructions(Xhat)
    terms = game_terms(self.config, Z, Zhat, Z_aug)
    terms["recon_mse"] = ((Xhat - X) ** 2).mean()
    self.dec_opt.zero_grad(set_to_none=True)
    terms["decoder_objective"].backward()
    terms["lr"] = torch.tensor(self._set_lr(self.dec_opt, self.config.train.decoder_lr))
    self.dec_opt.step()
    terms["grad_norm"] = _grad_norm(self.decoder)
    self.step += 1
    return {k: v.detach() for k, v in terms.items()}

  def iteration(self, X: Tensor, views: Tensor) -> dict:
    """``config.train.encoder_steps`` encoder steps, then one decoder step."""
    for _ in range(self.config.train.encoder_steps):
      enc = self.encoder_step(X, views)
    dec = self.decoder_step(X, views)
    return {
      **{f"encoder/{k}": v for k, v in enc.items()},
      **{f"decoder/{k}": v for k, v in dec.items()},
    }
