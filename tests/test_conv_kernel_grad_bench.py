"""benchmarks/conv_kernel_grad_bench.py: each form of the kernel gradient is the same sum.

Checked against a brute-force NumPy loop over the kernel offsets (the definition
``dK[i, j, c, o] = Σ_{n, h, w} x_pad[n, s·h + i, s·w + j, c] · g[n, h, w, o]``), at odd
sizes, both strides and a 1×1 kernel, so a timing row never compares a wrong formula.
"""

import numpy as np
import pytest

from benchmarks import conv_kernel_grad_bench as bench


def _brute_force(x, g, kernel_shape, stride, padding):
  kh, kw, c, o = kernel_shape
  xp = np.pad(x, ((0, 0), *padding, (0, 0)))
  _, ho, wo, _ = g.shape
  out = np.zeros(kernel_shape, np.float64)
  for i in range(kh):
    for j in range(kw):
      window = xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
      out[i, j] = np.einsum("nhwc,nhwo->co", window, g)
  return out


@pytest.mark.parametrize("x_shape, kernel_shape, stride, padding", bench.SHAPES["tiny"])
def test_every_form_is_the_kernel_gradient(x_shape, kernel_shape, stride, padding):
  rng = np.random.default_rng(1)
  x = rng.standard_normal(x_shape).astype(np.float32)
  size = lambda n, k, p: (n + sum(p) - k) // stride + 1  # noqa: E731
  g_shape = (
    x_shape[0],
    size(x_shape[1], kernel_shape[0], padding[0]),
    size(x_shape[2], kernel_shape[1], padding[1]),
    kernel_shape[3],
  )
  g = rng.standard_normal(g_shape).astype(np.float32)
  want = _brute_force(x.astype(np.float64), g.astype(np.float64), kernel_shape, stride, padding)
  for name, form in bench.FORMS.items():
    if name == "flat_offsets" and stride != 1:
      with pytest.raises(ValueError, match="stride 1"):
        form(x, g, kernel_shape, stride, padding)
      continue
    got = np.asarray(form(x, g, kernel_shape, stride, padding))
    assert got.shape == kernel_shape, name
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_run_reports_every_applicable_form_with_its_agreement():
  rows = bench.run("tiny", repeats=1)
  assert len(rows) == len(bench.SHAPES["tiny"])
  for _, _, stride, results in rows:
    expected = {*bench.FORMS, "im2col_matmul"} - ({"flat_offsets"} if stride != 1 else set())
    assert set(results) == expected
    assert all(ms > 0 and err < 1e-5 for ms, err in results.values())
