"""The objective each ``config.loss.mode`` trains: the uCTRL game, its CTRL relatives, the
encoder-only self-supervised baselines (EMP-SSL's TCR, SimCLR's NT-Xent) and the generative
baselines (an autoencoder, a VAE).

Modes (``LOSS_MODES``):

* ``"uctrl"`` — the closed-loop maximin game (``rate_reduction.uctrl_objective``).
* ``"ctrl_binary"`` — only ``ΔR(Z, Ẑ)`` is played (CTRL-Binary).
* ``"ctrl_multi"`` — supervised CTRL-Multi (labels).
* ``"tcr"`` — EMP-SSL (Tong et al. 2023), encoder only: maximise the mean total coding
  rate ``R(Z_v)`` of each of the ``V`` views while pulling every view's feature to the
  mean of the sample's views (cosine); the uCTRL encoder objective without ``g``.
* ``"simclr"`` — SimCLR's NT-Xent over ``V ≥ 2`` views (temperature
  ``config.loss.temperature``), encoder only.
* ``"autoencoder"`` — ``f`` and ``g`` trained together to minimise the pixel MSE of
  ``g(f(x))`` on the clean images (``f``'s features unit rows, as uCTRL's).
* ``"vae"`` — a VAE with the same networks: ``f``'s head gives a Gaussian posterior
  ``q(z|x) = N(μ, diag σ²)`` (``models``' ``"gaussian"`` head, no normalisation), ``g``
  decodes ``z = μ + σ·ε``; minimises the negative ELBO (``vae_terms``).

The encoder-only modes (``ENCODER_ONLY_MODES``) build and step no decoder: the trainer
keeps the decoder's slots of the state empty and evaluators that need ``g`` report
"n/a". They exist so that a user can ask, with the same trainer, data, encoder,
augmentations, evaluators and budget, whether the game costs the features anything.

The generative modes (``GENERATIVE_MODES``) ask the same of the generation half: what a
user would train instead of the game, with the same ``f``, ``g``, data and evaluators.
They read no augmented views (the training pipeline makes none: ``training_views``) and
take one joint step per iteration, each network with its own optimizer. A VAE's features,
for every evaluator and ``uctrl_jax.load(...).encode``, are the posterior means ``μ``;
``prior_sample`` draws the ``z`` its decoder generates from.

Every function here is pure and jit-able; features are float32 rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from uctrl_jax import rate_reduction as rr

Array = jax.Array

LOSS_MODES = ("uctrl", "ctrl_binary", "ctrl_multi", "tcr", "simclr", "autoencoder", "vae")
ENCODER_ONLY_MODES = ("tcr", "simclr")
GENERATIVE_MODES = ("autoencoder", "vae")


def uses_decoder(config) -> bool:
  """Whether ``config.loss.mode`` builds and trains ``g`` (all but the encoder-only modes)."""
  return config.loss.mode not in ENCODER_ONLY_MODES


def feature_head(mode: str) -> str:
  """The encoder head that ``loss.mode = mode`` trains (``models.FEATURE_HEADS``):
  ``"gaussian"`` (μ and log σ² of a VAE's posterior) or ``"sphere"`` (unit rows)."""
  return "gaussian" if mode == "vae" else "sphere"


def reads_views(config) -> bool:
  """Whether ``config.loss.mode`` trains on augmented views; the generative modes train on
  the clean images alone."""
  return config.loss.mode not in GENERATIVE_MODES


def training_views(config) -> int:
  """Augmented views per image that training reads: ``config.data.num_views``, or 0 where
  the mode reads none (which so does not pay for views it would never encode)."""
  return int(config.data.num_views) if reads_views(config) else 0


def views_mean_invariance(Z_views: Array) -> Array:
  """``(n,)``: per sample, the mean over its views of ``1 − cos(z_v, z̄)``.

  ``z̄`` is the mean of the sample's ``V`` view features (EMP-SSL's target; the cosine
  does not see ``z̄``'s norm). Gradients flow into ``z̄`` too, as in EMP-SSL.

  Args:
    Z_views: (V, n, d) float32 features of V views of n samples.
  """
  target = rr.views_mean_target(Z_views)  # (n, d)
  return jnp.mean(1.0 - jnp.sum(rr.l2_normalize(Z_views) * target[None], axis=-1), axis=0)


def mean_views_rate(Z_views: Array, eps_sq) -> Array:
  """``()``: ``mean_v R(Z_v)``, the coding rate of each view's batch, averaged over views.

  Args:
    Z_views: (V, n, d) float32 features of V views of n samples.
  """
  return jnp.mean(jax.vmap(lambda Z: rr.coding_rate(Z, eps_sq))(Z_views))


def tcr_objective(Z_views: Array, eps_sq, lambda_inv) -> dict:
  """EMP-SSL's objective, to maximise: ``mean_v R(Z_v) − λ · mean_{v,i} (1 − cos(z_vi, z̄_i))``.

  Args:
    Z_views: (V, n, d) float32 features of V views of a batch of n samples.
    eps_sq: ε² of the coding rate (EMP-SSL: 0.2).
    lambda_inv: λ ≥ 0, weight of the invariance term (EMP-SSL: 200).
  Returns:
    dict of () float32: ``R`` (mean rate of the views), ``aug`` (mean invariance term)
    and ``encoder_objective`` (maximised).
  """
  R = mean_views_rate(Z_views, eps_sq)
  aug = jnp.mean(views_mean_invariance(Z_views))
  return {"R": R, "aug": aug, "aug_per_sample": aug, "encoder_objective": R - lambda_inv * aug}


def nt_xent(Z_views: Array, temperature) -> Array:
  """SimCLR's NT-Xent loss over ``V ≥ 2`` views, to minimise: () float32.

  Every one of the ``V·n`` features is an anchor; its positives are the other ``V − 1``
  views of its sample, and the softmax runs over all ``V·n − 1`` other features:

      loss = − mean_a mean_{p ∈ P(a)} log [ exp(s_ap / T) / Σ_{k ≠ a} exp(s_ak / T) ],

  ``s`` the cosine similarity. For ``V = 2`` this is exactly SimCLR's NT-Xent (one
  positive per anchor); for more views it is the multi-positive form.

  Args:
    Z_views: (V, n, d) float32 features (normalised here).
    temperature: T > 0.
  """
  V, n, _ = Z_views.shape
  Z = rr.l2_normalize(Z_views.reshape(V * n, -1))
  logits = (Z @ Z.T) / temperature  # (Vn, Vn)
  eye = jnp.eye(V * n, dtype=bool)
  log_prob = logits - jax.nn.logsumexp(jnp.where(eye, -jnp.inf, logits), axis=1, keepdims=True)
  sample = jnp.tile(jnp.arange(n), V)
  positive = (sample[:, None] == sample[None, :]) & ~eye  # (Vn, Vn), V − 1 per row
  per_anchor = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / (V - 1)
  return -jnp.mean(per_anchor)


def simclr_objective(Z_views: Array, temperature, eps_sq) -> dict:
  """``{"nt_xent", "R", "encoder_objective"}``: SimCLR as an objective to maximise.

  ``R`` (the coding rate of the first view at ``eps_sq``) is a diagnostic outside the
  objective, so that the trainer's collapse check reads the same quantity in every mode.
  """
  loss = nt_xent(Z_views, temperature)
  return {
    "nt_xent": loss,
    "R": jax.lax.stop_gradient(rr.coding_rate(Z_views[0], eps_sq)),
    "encoder_objective": -loss,
  }


def encoder_only_terms(config, Z_views: Array) -> dict:
  """The terms of an encoder-only mode (``tcr``, ``simclr``) on ``Z_views: (V, B, d)``."""
  loss = config.loss
  if loss.mode == "tcr":
    return tcr_objective(Z_views, loss.eps_sq, loss.lambda_aug)
  if loss.mode == "simclr":
    return simclr_objective(Z_views, loss.temperature, loss.eps_sq)
  raise ValueError(
    f"config.loss.mode = {loss.mode!r} is not an encoder-only mode {ENCODER_ONLY_MODES}"
  )


def game_terms(config, Z: Array, Zhat: Array, Z_aug: Array, labels: Array) -> dict:
  """The closed-loop game's terms for ``config.loss.mode`` (docs/method.md#the-game).

  Args:
    Z, Zhat: (B, d) float32 global-batch features of ``X`` and ``X̂``.
    Z_aug: (V, B, d) features of the views, or None where they were not encoded (the
      decoder step with running statistics): the augmentation term, constant in ``η``,
      is then left out of both objectives and of the returned terms.
    labels: (B,) int32 (used by the supervised ``ctrl_multi`` only).
  Returns:
    dict of () float32 with at least ``encoder_objective`` (maximised) and
    ``decoder_objective`` (minimised).
  """
  loss = config.loss
  if loss.mode == "ctrl_multi":
    terms = dict(rr.ctrl_multi_objective(Z, Zhat, labels, loss.num_classes, loss.eps_sq))
    terms["encoder_objective"] = terms["decoder_objective"] = terms["objective"]
    return terms
  binary = loss.mode == "ctrl_binary"
  lambda_aug = 0.0 if binary or Z_aug is None else loss.lambda_aug
  terms = dict(
    rr.uctrl_objective(
      Z,
      Zhat,
      Z[None] if Z_aug is None else Z_aug,
      loss.eps_sq,
      lambda_aug,
      0.0 if binary else loss.lambda_self,
      sample_distance=loss.sample_distance,
      sample_reduction=loss.sample_reduction,
      aug_target=loss.aug_target,
    )
  )
  if Z_aug is None:
    del terms["aug"], terms["aug_per_sample"]
  if binary:  # CTRL-Binary: only ΔR(Z, Ẑ) is played.
    terms["encoder_objective"] = terms["decoder_objective"] = terms["delta_R_z_zhat"]
    return terms
  expansion, shift = terms["R"], 0.0
  if loss.rate_on_views and Z_aug is not None:
    # The expansion term over the image and its views alike (EMP-SSL expands each view):
    # ½ (R(Z) + mean_v R(Z_v)) in place of R(Z). Constant in η, so the decoder step, which
    # may not encode the views, leaves it out.
    terms["R_views"] = mean_views_rate(Z_aug, loss.eps_sq)
    expansion = 0.5 * (terms["R"] + terms["R_views"])
    shift = 0.5 * (terms["R_views"] - terms["R"])
  # Ablation weights (experiments/ablations.py): 0 removes the expansion or ΔR(Z, Ẑ) from
  # both players.
  w_rate, w_delta = loss.rate_weight, loss.delta_weight
  if (w_rate, w_delta) != (1.0, 1.0):
    shift = shift + (w_rate - 1.0) * expansion + (w_delta - 1.0) * terms["delta_R_z_zhat"]
  if "R_views" in terms or (w_rate, w_delta) != (1.0, 1.0):
    terms["encoder_objective"] = terms["encoder_objective"] + shift
    terms["decoder_objective"] = terms["decoder_objective"] + shift
  return terms


def autoencoder_terms(X: Array, Xhat: Array) -> dict:
  """The autoencoder's loss, to minimise: the pixel MSE of ``X̂ = g(f(X))``.

  Args:
    X, Xhat: (B, H, W, C) images in [-1, 1].
  Returns:
    dict of () float32: ``loss`` = ``recon_mse`` (mean over pixels and batch).
  """
  mse = jnp.mean(jnp.square(Xhat.astype(jnp.float32) - X.astype(jnp.float32)))
  return {"loss": mse, "recon_mse": mse}


def gaussian_nll(X: Array, Xhat: Array, sigma_sq) -> Array:
  """``(B,)``: ``−log N(x | x̂, σ² I)`` per image, summed over its ``D`` pixels:
  ``|x − x̂|² / (2σ²) + (D/2) log(2π σ²)``.

  Args:
    X, Xhat: (B, H, W, C) images; sigma_sq: the likelihood's fixed variance σ² > 0.
  """
  diff = (Xhat.astype(jnp.float32) - X.astype(jnp.float32)).reshape(X.shape[0], -1)
  D = diff.shape[1]
  return jnp.sum(diff * diff, axis=1) / (2.0 * sigma_sq) + 0.5 * D * jnp.log(
    2.0 * jnp.pi * sigma_sq
  )


def gaussian_kl(mu: Array, log_var: Array) -> Array:
  """``(B,)``: ``KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)``.

  Args:
    mu, log_var: (B, d) float32 posterior means and log-variances.
  """
  return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(log_var) - 1.0 - log_var, axis=-1)


def reparameterize(key: Array, mu: Array, log_var: Array) -> Array:
  """``z = μ + σ·ε``, ``ε ~ N(0, I)`` from ``key``: (B, d) float32, differentiable in μ, σ."""
  eps = jax.random.normal(key, mu.shape, jnp.float32)
  return mu + jnp.exp(0.5 * log_var) * eps


def has_prior(config) -> bool:
  """Whether ``config.loss.mode`` trains a generative model with a prior to sample from
  (the VAE's ``N(0, I)``)."""
  return config.loss.mode == "vae"


def prior_sample(key: Array, n: int, d: int) -> Array:
  """``(n, d)`` float32 draws from a VAE's prior ``N(0, I)``: decode them
  (``uctrl_jax.load(workdir).decode``) for unconditional samples of a ``"vae"`` run."""
  return jax.random.normal(key, (n, d), jnp.float32)


def vae_terms(X: Array, Xhat: Array, mu: Array, log_var: Array, sigma_sq) -> dict:
  """The VAE's negative ELBO, to minimise, and its parts (batch means of per-image values).

  ``loss = E_q[−log p(x | z)] + KL(q(z | x) ‖ N(0, I))``, the expectation estimated with
  the one sample ``z`` that ``X̂ = g(z)`` decodes; ``p(x | z) = N(x̂, σ² I)`` with σ²
  fixed (``config.loss.vae_sigma_sq``).

  Args:
    X, Xhat: (B, H, W, C) images and the decoded sample.
    mu, log_var: (B, d) float32 posterior parameters.
    sigma_sq: σ² > 0 of the likelihood.
  Returns:
    dict of () float32: ``loss`` (negative ELBO, nats per image), ``recon_nll``, ``kl``,
    ``recon_mse`` (pixel MSE of the sample's decoding) and ``posterior_var`` (the mean
    over images and dimensions of σ²: near 1 where the posterior has collapsed onto
    the prior).
  """
  nll = jnp.mean(gaussian_nll(X, Xhat, sigma_sq))
  kl = jnp.mean(gaussian_kl(mu, log_var))
  return {
    "loss": nll + kl,
    "recon_nll": nll,
    "kl": kl,
    "recon_mse": autoencoder_terms(X, Xhat)["recon_mse"],
    "posterior_var": jnp.mean(jnp.exp(log_var)),
  }
