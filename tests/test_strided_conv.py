"""uctrl_jax/strided_conv.py: lax's stride-2 convolution with a space-to-depth input gradient."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from uctrl_jax import strided_conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _dn(x, k):
  return lax.conv_dimension_numbers(x.shape, k.shape, NHWC)


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
  "size,kernel,padding",
  [
    (32, 4, ((1, 1), (1, 1))),  # the DCGAN encoder's convs
    (28, 4, ((1, 1), (1, 1))),
    (15, 4, ((1, 1), (1, 1))),  # odd size
    (9, 4, ((0, 2), (1, 0))),  # uneven padding
    (10, 2, "VALID"),  # rows no output reads
    (16, 6, "SAME"),  # padding by name
  ],
)
def test_values_and_gradients_are_lax_convs(size, kernel, padding):
  x = _random((3, size, size, 2), 0)
  k = _random((kernel, kernel, 2, 5), 1)

  def ref(x, k):
    return lax.conv_general_dilated(x, k, (2, 2), padding, dimension_numbers=_dn(x, k))

  def new(x, k):
    return strided_conv.conv_general_dilated(x, k, (2, 2), padding, dimension_numbers=_dn(x, k))

  y_ref, vjp_ref = jax.vjp(ref, x, k)
  y_new, vjp_new = jax.vjp(new, x, k)
  g = _random(y_ref.shape, 2)
  (dx_ref, dk_ref), (dx_new, dk_new) = vjp_ref(g), vjp_new(g)
  np.testing.assert_array_equal(y_new, y_ref)  # XLA's own forward pass
  np.testing.assert_array_equal(dk_new, dk_ref)  # and kernel gradient
  # The input gradient: the same sums in another order.
  np.testing.assert_allclose(dx_new, dx_ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(dx_ref))))


def test_space_to_depth_form_is_the_strided_convolution():
  x, k = _random((2, 12, 12, 3), 3), _random((4, 4, 3, 4), 4)
  pad = ((1, 1), (1, 1))
  # Brute force: out[n, h, w, o] = Σ x_pad[n, 2h + u, 2w + v, c] k[u, v, c, o].
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((2, 6, 6, 4), np.float64)
  for h in range(6):
    for w in range(6):
      patch = xp[:, 2 * h : 2 * h + 4, 2 * w : 2 * w + 4, :]
      want[:, h, w, :] = np.einsum("nuvc,uvco->no", patch, np.asarray(k))
  got = strided_conv.space_to_depth_conv(x, k, pad)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _conv_input_dilations(jaxpr) -> list:
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found.append(tuple(eqn.params["lhs_dilation"]))
    for sub in jax.core.jaxprs_in_params(eqn.params):
      found += _conv_input_dilations(sub)
  return found


def test_the_input_gradient_has_no_transposed_convolution():
  """The point of the module: XLA:CPU's slow input-dilated convolution is not emitted."""
  x, k = _random((2, 16, 16, 3), 5), _random((4, 4, 3, 8), 6)

  def loss(conv):
    def f(x):
      return jnp.sum(conv(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_dn(x, k)))

    return f

  plain = jax.make_jaxpr(jax.grad(loss(lax.conv_general_dilated)))(x).jaxpr
  ours = jax.make_jaxpr(jax.grad(loss(strided_conv.conv_general_dilated)))(x).jaxpr
  assert (2, 2) in _conv_input_dilations(plain)
  assert _conv_input_dilations(ours) and (2, 2) not in _conv_input_dilations(ours)


@pytest.mark.parametrize(
  "kernel,strides,kwargs",
  [
    (3, (2, 2), {}),  # odd kernels: XLA's own input gradient is the faster one (ResNet's)
    (1, (2, 2), {}),
    (4, (1, 1), {}),
    (4, (2, 2), {"rhs_dilation": (2, 2)}),
    (4, (2, 2), {"precision": lax.Precision.HIGHEST}),
  ],
)
def test_other_convolutions_are_lax_as_they_are(kernel, strides, kwargs):
  """Values and input gradients bit for bit: the space-to-depth path is not taken."""
  x, k = _random((2, 8, 8, 3), 7), _random((kernel, kernel, 3, 4), 8)

  def grad(conv):
    def f(x):
      out = conv(x, k, strides, ((1, 1), (1, 1)), dimension_numbers=_dn(x, k), **kwargs)
      return jnp.sum(out * jnp.arange(out.size).reshape(out.shape))

    return jax.value_and_grad(f)(x)

  (want, dx_want), (got, dx_got) = (
    grad(lax.conv_general_dilated),
    grad(strided_conv.conv_general_dilated),
  )
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(dx_got, dx_want)
