"""PyTorch twin of one uCTRL iteration: the baseline of benchmarks/train_step_bench.py.

The same nets as ``uctrl_jax/models.py`` (DCGAN and ResNet-18 pairs, same layer
shapes, so the same parameter counts; NCHW instead of NHWC) and the same objective as
``uctrl_jax/rate_reduction.py`` (every log-det a Cholesky on the smaller Gram side;
exact or cosine sample-wise terms), stepped exactly as ``uctrl_jax/steps.py`` steps
them (see ``TorchUCTRL``). Benchmark code only: PyTorch is not a project dependency
(``.venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu``).

Parameter initialisation follows the JAX models' families (N(0, 0.02) for DCGAN,
He fan-out for ResNet) but not their random streams: the two sides never share
weights, only shapes, which is what a timing comparison needs.
"""

from __future__ import annotations

import contextlib
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
) -> dict:
  """``rate_reduction.uctrl_objective`` with ``aug_target="image"`` in PyTorch (same keys,
  same values).

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
  aug_sum = torch.stack([dist(Z, Zv) for Zv in Z_aug]).mean(0).sum()
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


# ----------------------------------------------------------------------------
# Nets (uctrl_jax/models.py, layer for layer).
# ----------------------------------------------------------------------------


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)  # = flax momentum 0.9


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
    return _l2_normalize(self.head(self.body(x).flatten(1)))


class FeatureStem(nn.Module):
  """``(B, d) -> (B, F, s, s)``: linear map (no bias) + BN + ReLU."""

  def __init__(self, feature_dim: int, spatial: int, features: int):
    super().__init__()
    self.spatial, self.features = spatial, features
    self.linear = nn.Linear(feature_dim, spatial * spatial * features, bias=False)
    self.bn = _bn(features)

  def forward(self, z: Tensor) -> Tensor:
    h = self.linear(z).view(z.shape[0], self.features, self.spatial, self.spatial)
    return F.relu(self.bn(h))


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


# ----------------------------------------------------------------------------
# The alternating steps (uctrl_jax/steps.py's make_steps).
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module):
  """Training-mode BN (batch statistics) that leaves the running statistics as they are.

  JAX's steps discard the other player's BN updates; momentum 0 makes PyTorch's update
  ``(1 − 0)·running + 0·batch`` an exact no-op at the same cost.
  """
  bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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


def _grad_norm(module: nn.Module) -> Tensor:
  return torch.sqrt(sum((p.grad * p.grad).sum() for p in module.parameters() if p.grad is not None))


class TorchUCTRL:
  """Encoder and decoder with their Adam optimizers, stepped as uctrl_jax/steps.py does.

  * ``encoder_step``: one training-mode encoder pass over ``[X; X_a]`` (updates the
    encoder's running statistics), ``X̂ = g(Z)`` in training mode without gradient and
    without touching the decoder's statistics, ``Ẑ = f(X̂)`` with running statistics,
    Adam step on ``−encoder_objective`` w.r.t. the encoder's parameters.
  * ``decoder_step``: ``Z, Z_a`` recomputed (training mode, no gradient, statistics
    untouched), ``X̂ = g(Z)`` in training mode (updates the decoder's statistics),
    ``Ẑ = f(X̂)`` with running statistics and gradients flowing through ``f`` to ``X̂``
    but not into the encoder's parameters, Adam step on ``decoder_objective``.

  The encoder step with ``encoder_bn_on_xhat = "running"`` only (the default).
  Both return the same logged terms as JAX (objective terms, cosines, grad norm, MSE).
  """

  def __init__(self, config, image_shape: Sequence[int], seed: int = 0):
    torch.manual_seed(seed)
    self.config = config
    self.encoder, self.decoder = create_models(config, image_shape)
    self.encoder.train()
    self.decoder.train()
    t = config.train
    self.enc_opt = torch.optim.Adam(
      self.encoder.parameters(), lr=t.encoder_lr, betas=(t.encoder_b1, t.b2)
    )
    self.dec_opt = torch.optim.Adam(
      self.decoder.parameters(), lr=t.decoder_lr, betas=(t.decoder_b1, t.b2)
    )

  def terms(self, Z, Zhat, Z_aug) -> dict:
    """``uctrl_objective`` with the weights and choices of ``config.loss``."""
    loss = self.config.loss
    return uctrl_objective(
      Z,
      Zhat,
      Z_aug,
      loss.eps_sq,
      loss.lambda_aug,
      loss.lambda_self,
      sample_distance=loss.sample_distance,
      sample_reduction=loss.sample_reduction,
    )

  def _encode_images_and_views(self, X: Tensor, views: Tensor):
    B = X.shape[0]
    z_all = self.encoder(torch.cat([X, views.reshape(-1, *X.shape[1:])]))
    return z_all[:B], z_all[B:].reshape(views.shape[0], B, -1)

  def encoder_step(self, X: Tensor, views: Tensor) -> Mapping[str, Tensor]:
    """X: (B, C, H, W); views: (V, B, C, H, W) → logged terms (tensors)."""
    Z, Z_aug = self._encode_images_and_views(X, views)
    with torch.no_grad(), _frozen_running_stats(self.decoder):
      Xhat = self.decoder(Z)  # X̂ held constant (docs/method.md#the-game)
    with _eval_mode(self.encoder):
      Zhat = self.encoder(Xhat)
    terms = self.terms(Z, Zhat, Z_aug)
    terms["cos_z_zhat"] = (1.0 - cosine_distance(Z, Zhat)).mean()
    terms["cos_z_zaug"] = torch.stack([1.0 - cosine_distance(Z, Zv) for Zv in Z_aug]).mean()
    self.enc_opt.zero_grad(set_to_none=True)
    (-terms["encoder_objective"]).backward()
    self.enc_opt.step()
    terms["grad_norm"] = _grad_norm(self.encoder)
    return {k: v.detach() for k, v in terms.items()}

  def decoder_step(self, X: Tensor, views: Tensor) -> Mapping[str, Tensor]:
    """X: (B, C, H, W); views: (V, B, C, H, W) → logged terms (tensors)."""
    with torch.no_grad(), _frozen_running_stats(self.encoder):
      Z, Z_aug = self._encode_images_and_views(X, views)
    Xhat = self.decoder(Z)
    # Gradients flow through f to X̂ only: freezing θ spares the weight gradients that
    # JAX, differentiating w.r.t. η alone, never computes either.
    self.encoder.requires_grad_(False)
    try:
      with _eval_mode(self.encoder):
        Zhat = self.encoder(Xhat)
    finally:
      self.encoder.requires_grad_(True)
    terms = self.terms(Z, Zhat, Z_aug)
    terms["recon_mse"] = ((Xhat - X) ** 2).mean()
    self.dec_opt.zero_grad(set_to_none=True)
    terms["decoder_objective"].backward()
    self.dec_opt.step()
    terms["grad_norm"] = _grad_norm(self.decoder)
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
