"""Stride-2 convolutions whose input gradient XLA:CPU computes fast: ``conv_general_dilated``.

The input gradient of a stride-2 convolution is a transposed (input-dilated) convolution.
XLA:CPU runs it several times slower than the forward pass for the DCGAN encoder's 4×4
kernels: at batch 576 (the default's ``[X; X_a]``), 52-108 ms for the second conv's input
gradient against 17 ms for the same values computed as below (docs/benchmarks.md). The
same convolution written on the space-to-depth input (2×2 blocks of pixels as channels)
has stride 1 and a kernel half as wide, and the input gradient of a stride-1 convolution
is a plain one.

``conv_general_dilated`` is a drop-in for ``lax.conv_general_dilated`` (flax's
``nn.Conv(conv_general_dilated=...)``): stride-2 NHWC convolutions with even kernels
run the forward pass and the kernel gradient as XLA's own convolution and take the input
gradient from the space-to-depth form; everything else is ``lax.conv_general_dilated``.
Odd kernels (ResNet's 3×3 and 1×1) stay XLA's: padded to even, they cost more in this form
than XLA's own gradient (measured). Values and kernel gradients are XLA's; the input
gradient is the same sum in another order (float32 rounding differs, ~1e-7 relative).
"""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array

_NHWC = ("NHWC", "HWIO", "NHWC")


def space_to_depth_conv(x: Array, kernel: Array, padding) -> Array:
  """A stride-2 convolution as a stride-1 one on the space-to-depth input.

  ``out[n, h, w, o] = Σ_{u, v, c} x_pad[n, 2h + u, 2w + v, c] · kernel[u, v, c, o]``: with
  ``xs[n, a, b, (i, j, c)] = x_pad[n, 2a + i, 2b + j, c]`` and the kernel padded with zeros
  to an even size, ``ks[a', b', (i, j, c), o] = kernel[2a' + i, 2b' + j, c, o]``, it is the
  'VALID' stride-1 convolution of ``xs`` with ``ks``.

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, C, O).
    padding: ((top, bottom), (left, right)).
  Returns:
    (N, Ho, Wo, O), ``Ho = (H + top + bottom − kh) // 2 + 1`` (as stride 2).
  """
  n, _, _, c = x.shape
  kh, kw, _, o = kernel.shape
  halves, pads = [], []
  for axis, (k, (lo, hi)) in enumerate(zip((kh, kw), padding)):
    size = x.shape[1 + axis]
    out = (size + lo + hi - k) // 2 + 1
    half = (k + 1) // 2
    need = 2 * (out + half - 1)  # padded rows the stride-1 form reads
    halves.append(half)
    pads.append((lo, need - size - lo))
  # Negative high padding crops rows no output reads (lax.pad allows it).
  xp = lax.pad(
    x, jnp.array(0, x.dtype), [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
  )
  hs, ws = halves
  xs = xp.reshape(n, xp.shape[1] // 2, 2, xp.shape[2] // 2, 2, c)
  xs = xs.transpose(0, 1, 3, 2, 4, 5).reshape(n, xp.shape[1] // 2, xp.shape[2] // 2, 4 * c)
  kp = jnp.pad(kernel, ((0, 2 * hs - kh), (0, 2 * ws - kw), (0, 0), (0, 0)))
  ks = kp.reshape(hs, 2, ws, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(hs, ws, 4 * c, o)
  return lax.conv_general_dilated(xs, ks, (1, 1), "VALID", dimension_numbers=_NHWC)


def _strided(x, kernel, padding):
  return lax.conv_general_dilated(x, kernel, (2, 2), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def stride2_conv(x: Array, kernel: Array, padding) -> Array:
  """``lax.conv_general_dilated(x, kernel, (2, 2), padding)`` on NHWC / HWIO, with the
  input gradient of ``space_to_depth_conv`` (module docstring).

  Args:
    x: (N, H, W, C); kernel: (kh, kw, C, O); padding: ((top, bottom), (left, right)), a
      hashable tuple of pairs.
  Returns:
    (N, Ho, Wo, O).
  """
  return _strided(x, kernel, padding)


def _stride2_fwd(x, kernel, padding):
  return _strided(x, kernel, padding), (x, kernel)


def _stride2_bwd(padding, residuals, g):
  x, kernel = residuals
  dx = jax.vjp(lambda x: space_to_depth_conv(x, kernel, padding), x)[1](g)[0]
  dk = jax.vjp(lambda k: _strided(x, k, padding), kernel)[1](g)[0]
  return dx, dk


stride2_conv.defvjp(_stride2_fwd, _stride2_bwd)


def _is_nhwc(dimension_numbers, lhs, rhs) -> bool:
  if dimension_numbers is None:
    return False
  want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == want


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """``lax.conv_general_dilated``, with ``stride2_conv`` where it applies: window strides
  (2, 2), an even kernel, NHWC / HWIO / NHWC, no dilation, groups or precision."""
  if isinstance(padding, str) and _is_nhwc(dimension_numbers, lhs, rhs):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  plain = (
    tuple(window_strides) == (2, 2)
    and rhs.ndim == 4
    and _is_nhwc(dimension_numbers, lhs, rhs)
    and rhs.shape[0] % 2 == 0
    and rhs.shape[1] % 2 == 0
    and not isinstance(padding, str)
    and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
    and feature_group_count == 1
    and batch_group_count == 1
    and precision is None
    and preferred_element_type is None
  )
  if plain:
    return stride2_conv(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
