"""Stopgap evaluation of a Fashion-MNIST run until uctrl_jax/evaluators/ exists.

    .venv/bin/python benchmarks/fashion_mnist_quick_eval.py WORKDIR

Prints, on the full 60k/10k split (the protocol of shared/CALIBRATION.md):
- weighted kNN top-1 of ``encode(x)`` (k = 20, cosine, T = 0.07), and of raw pixels;
- reconstruction class consistency: that kNN fit on real training pixels, applied to
  ``g(f(x_test))`` (chance 10%);
- reconstruction MSE of ``g(f(x_test))`` on [-1, 1].
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import uctrl_jax  # noqa: E402
from uctrl_jax import datasets  # noqa: E402


def split_arrays(source, split):
  """(N, 28, 28, 1) float32 in [-1, 1] and (N,) labels of a whole split."""
  batch = next(source.read(split).batch(100_000).as_numpy_iterator())
  return batch["image"].astype(np.float32) / 127.5 - 1.0, batch["label"]


@jax.jit
def _top20(queries, reference):
  return jax.lax.top_k(queries @ reference.T, 20)


def weighted_knn(train_x, train_y, test_x, num_classes=10, temperature=0.07):
  """Predicted labels (N_test,) of solo-learn's weighted kNN on cosine similarity."""
  def unit(x):
    x = x.reshape(len(x), -1)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
  reference, queries = jnp.asarray(unit(train_x)), unit(test_x)
  predictions = []
  for i in range(0, len(queries), 500):
    sims, idx = _top20(jnp.asarray(queries[i:i + 500]), reference)
    weights, labels = np.exp(np.asarray(sims) / temperature), train_y[np.asarray(idx)]
    votes = np.zeros((len(labels), num_classes))
    np.add.at(votes, (np.arange(len(labels))[:, None], labels), weights)
    predictions.append(votes.argmax(1))
  return np.concatenate(predictions)


def main(workdir):
  loop = uctrl_jax.load(workdir)
  source = datasets.open_dataset("fashion_mnist", data_dir=loop.config.data.data_dir)
  (x_train, y_train), (x_test, y_test) = split_arrays(source, "train"), split_arrays(source, "test")
  start = time.time()
  encode = lambda x: np.concatenate([np.asarray(loop.encode(x[i:i + 1000])) for i in range(0, len(x), 1000)])
  z_train, z_test = encode(x_train), encode(x_test)
  x_hat = np.concatenate([np.asarray(loop.decode(z_test[i:i + 1000])) for i in range(0, len(z_test), 1000)])
  print(f"step {int(loop.state.step)}; encoded 70k images in {time.time() - start:.0f} s")
  accuracy = lambda pred: 100.0 * np.mean(pred == y_test)
  print(f"kNN top-1, features:            {accuracy(weighted_knn(z_train, y_train, z_test)):.2f}")
  print(f"kNN top-1, raw pixels:          {accuracy(weighted_knn(x_train, y_train, x_test)):.2f}")
  print(f"reconstruction class consistency: {accuracy(weighted_knn(x_train, y_train, x_hat)):.2f}")
  print(f"reconstruction MSE:             {np.mean((x_hat - x_test) ** 2):.4f}")


if __name__ == "__main__":
  main(sys.argv[1])
