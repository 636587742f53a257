"""A convolution's kernel gradient on XLA:CPU: XLA's own against the same sum as matmuls.

The ResNet-18 iteration is slower in JAX than in PyTorch on CPU, and the per-convolution
timing of ``train_step_bench.py --per_op`` puts the gap in the kernel gradients (XLA's
backprop-filter convolution). This bench times the kernel gradient of one NHWC / HWIO
convolution written five ways, each checked against XLA's value first:

* ``xla``: ``jax.vjp`` of ``lax.conv_general_dilated`` in the kernel (what runs in training);
* ``im2col``: the kh·kw shifted (strided) inputs stacked, one ``(kh·kw·C) × (N·Ho·Wo)``
  times ``(N·Ho·Wo) × O`` matmul;
* ``offsets``: one ``C × O`` matmul per kernel offset, on its strided slice of the input;
* ``flat_offsets`` (stride 1 only): the same on contiguous row ranges of the padded input
  flattened to ``(N·Hp·Wp, C)``, the output gradient zero-padded to the same grid (no
  strided copy: offset ``(i, j)`` is a shift by ``i·Wp + j`` rows);
* ``patches``: ``lax.conv_general_dilated_patches`` and an einsum;

and ``im2col_matmul``: im2col's matmul alone, its stacked operand built beforehand (what
the kernel gradient would cost if the shifted inputs were free).

Set ``XLA_FLAGS`` (``--xla_cpu_use_onednn=true``, ``--xla_cpu_use_xnnpack=true``) before
the run to time XLA's flags. Shapes (``--shapes``): the ResNet-18 encoder's at batch 144
(``configs/cifar.py``'s 16 images × (1 + 8 views)), or ``tiny`` (the test's).

Usage:
  python -m benchmarks.conv_kernel_grad_bench [--shapes resnet18|tiny] [--repeats R]
"""

from __future__ import annotations

import argparse

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import jax_loop

_NHWC = ("NHWC", "HWIO", "NHWC")
_SAME = ((1, 1), (1, 1))

# (input (N, H, W, C), kernel (kh, kw, C, O), stride, padding)
SHAPES = {
  "resnet18": [
    ((144, 32, 32, 3), (3, 3, 3, 64), 1, _SAME),
    ((144, 32, 32, 64), (3, 3, 64, 64), 1, _SAME),
    ((144, 32, 32, 64), (3, 3, 64, 128), 2, _SAME),
    ((144, 32, 32, 64), (1, 1, 64, 128), 2, ((0, 0), (0, 0))),
    ((144, 16, 16, 128), (3, 3, 128, 128), 1, _SAME),
    ((144, 4, 4, 512), (3, 3, 512, 512), 1, _SAME),
  ],
  "tiny": [
    ((2, 6, 5, 3), (3, 3, 3, 4), 1, _SAME),
    ((2, 7, 6, 3), (3, 3, 3, 4), 2, _SAME),
    ((2, 6, 6, 3), (1, 1, 3, 4), 2, ((0, 0), (0, 0))),
  ],
}


def _conv(x, kernel, stride, padding):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_NHWC)


def xla(x, g, kernel_shape, stride, padding):
  """XLA's kernel gradient. x: (N, H, W, C); g: (N, Ho, Wo, O). Returns (kh, kw, C, O)."""
  kernel = jnp.zeros(kernel_shape, x.dtype)
  return jax.vjp(lambda k: _conv(x, k, stride, padding), kernel)[1](g)[0]


def _shifted(x, g, kernel_shape, stride, padding) -> list:
  """The kh·kw strided slices of the padded input that meet g, each (N, Ho, Wo, C)."""
  kh, kw = kernel_shape[:2]
  n, ho, wo, _ = g.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  last = (n, stride * (ho - 1) + 1, stride * (wo - 1) + 1, x.shape[3])
  return [
    lax.slice(
      xp, (0, i, j, 0), tuple(a + b for a, b in zip(last, (0, i, j, 0))), (1, stride, stride, 1)
    )
    for i in range(kh)
    for j in range(kw)
  ]


def _columns(x, g, kernel_shape, stride, padding):
  """im2col's operand: the shifted inputs side by side, (N·Ho·Wo, kh·kw·C)."""
  kh, kw, c, _ = kernel_shape
  return jnp.stack(_shifted(x, g, kernel_shape, stride, padding), axis=3).reshape(-1, kh * kw * c)


def _columns_times_g(cols, g):
  return cols.T @ g.reshape(-1, g.shape[3])


def im2col(x, g, kernel_shape, stride, padding):
  cols = _columns(x, g, kernel_shape, stride, padding)
  return _columns_times_g(cols, g).reshape(kernel_shape)


def offsets(x, g, kernel_shape, stride, padding):
  c, o = kernel_shape[2:]
  g2 = g.reshape(-1, o)
  parts = [s.reshape(-1, c).T @ g2 for s in _shifted(x, g, kernel_shape, stride, padding)]
  return jnp.stack(parts).reshape(kernel_shape)


def flat_offsets(x, g, kernel_shape, stride, padding):
  if stride != 1:
    raise ValueError("flat_offsets is for stride 1")
  kh, kw, c, o = kernel_shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  hp, wp = xp.shape[1:3]
  flat_x = xp.reshape(-1, c)
  # g on the padded grid: row t of flat_g meets row t + i·wp + j of flat_x at offset (i, j),
  # and the zero rows keep each sum inside its own image.
  flat_g = jnp.pad(g, ((0, 0), (0, hp - g.shape[1]), (0, wp - g.shape[2]), (0, 0))).reshape(-1, o)
  rows = flat_x.shape[0] - ((kh - 1) * wp + kw - 1)
  parts = [
    lax.dynamic_slice_in_dim(flat_x, i * wp + j, rows).T @ flat_g[:rows]
    for i in range(kh)
    for j in range(kw)
  ]
  return jnp.stack(parts).reshape(kernel_shape)


def patches(x, g, kernel_shape, stride, padding):
  kh, kw, c, o = kernel_shape
  p = lax.conv_general_dilated_patches(
    x, (kh, kw), (stride, stride), padding, dimension_numbers=_NHWC
  )
  # The patches' channels run C-major: (C, kh, kw).
  return jnp.einsum("nhwp,nhwo->po", p, g).reshape(c, kh, kw, o).transpose(1, 2, 0, 3)


FORMS = {
  "xla": xla,
  "im2col": im2col,
  "offsets": offsets,
  "flat_offsets": flat_offsets,
  "patches": patches,
}


def run(shapes: str, repeats: int, seed: int = 0) -> list:
  """Rows ``(input shape, kernel shape, stride, {form: (ms, relative max error vs xla)})``
  for ``FORMS`` and ``im2col_matmul`` (error 0: not a gradient), timed interleaved
  (``jax_loop.interleaved``, medians of ``repeats`` rounds); forms that do not apply
  (``flat_offsets`` at stride 2) are left out."""
  rng = np.random.default_rng(seed)
  rows = []
  for x_shape, kernel_shape, stride, padding in SHAPES[shapes]:
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    out = jax.eval_shape(lambda x: _conv(x, jnp.zeros(kernel_shape), stride, padding), x)
    g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    args = (x, g, kernel_shape, stride, padding)
    reference = xla(*args)
    fns, errors = {}, {}
    for name, form in FORMS.items():
      if name == "flat_offsets" and stride != 1:
        continue
      fn = jax.jit(form, static_argnums=(2, 3, 4))
      value = fn(*args)
      errors[name] = float(jnp.max(jnp.abs(value - reference)) / jnp.max(jnp.abs(reference)))
      fns[name] = jax_loop.timed(lambda fn=fn: jax.block_until_ready(fn(*args)))
    cols = jax.jit(_columns, static_argnums=(2, 3, 4))(*args)
    matmul = jax.jit(_columns_times_g)
    fns["im2col_matmul"] = jax_loop.timed(lambda: jax.block_until_ready(matmul(cols, g)))
    errors["im2col_matmul"] = 0.0
    seconds = jax_loop.interleaved(fns, repeats)
    results = {name: (jax_loop.median_ms(seconds[name]["total"]), errors[name]) for name in fns}
    rows.append((x_shape, kernel_shape, stride, results))
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", choices=sorted(SHAPES), default="resnet18")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  rows = run(args.shapes, args.repeats)
  print(
    f"Kernel gradient, ms (medians of {args.repeats} interleaved rounds); jax {jax.__version__}, {jax.devices()[0].platform}"
  )
  columns = [*FORMS, "im2col_matmul"]
  print("| input | kernel / stride | " + " | ".join(columns) + " |")
  print("|---|---|" + "---:|" * len(columns))
  for x_shape, kernel_shape, stride, results in rows:
    cells = [f"{results[f][0]:.1f}" if f in results else "—" for f in columns]
    print(f"| {x_shape} | {kernel_shape} / {stride} | " + " | ".join(cells) + " |")
  worst = max(err for *_, results in rows for _, err in results.values())
  print(f"largest difference from XLA's value: {worst:.1e} (relative to its largest entry)")


if __name__ == "__main__":
  main()
