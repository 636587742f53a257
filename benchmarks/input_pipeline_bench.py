"""Augmented images per second from the input pipeline, next to the trainer's need.

Runs the training pipeline (shuffle, V augmentations per image, batching) for
CIFAR-shaped data (random uint8 32×32×3, read as `npz:`) and the real
Fashion-MNIST (prepared offline from the Debian files if needed), with V = 1, 2,
and prints images/s (each image with its V views) after a warm-up.

    .venv/bin/python -m benchmarks.input_pipeline_bench [--batches 30]
        [--batch_size 512] [--data_dir DIR]

The comparison column uses a prototype trainer's rate, measured before this project's
trainer existed (about 0.34 uCTRL iterations/s at batch 512, 28×28 DCGAN, on a 2-core
machine; docs/benchmarks.md), i.e. about 174 images/s.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top

from configs import default  # pylint: disable=g-import-not-at-top
from uctrl_jax import input_pipeline  # pylint: disable=g-import-not-at-top

# Prototype figure (docs/benchmarks.md), not a measurement of this project's trainer.
PROTOTYPE_ITERATIONS_PER_S = 0.34
PROTOTYPE_BATCH = 512


def images_per_second(config, num_batches: int, warmup: int = 3) -> float:
  """Steady-ish rate of the training pipeline: images (with views) per second."""
  it = input_pipeline.create_dataset(
    config, "train", process_index=0, process_count=1
  ).as_numpy_iterator()
  for _ in range(warmup):  # Fills the shuffle buffer and starts the threads.
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * config.train.batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--batch_size", type=int, default=512)
  parser.add_argument(
    "--data_dir", default=None, help="tfds data dir for Fashion-MNIST (None: tfds default)"
  )
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    cifar_like = os.path.join(tmp, "cifar_like.npz")
    rng = np.random.default_rng(0)
    np.savez(
      cifar_like,
      x=rng.integers(0, 256, (10_000, 32, 32, 3), np.uint8),
      y=rng.integers(0, 10, 10_000),
    )
    cases = [
      ("CIFAR-shaped mock 32x32x3", f"npz:{cifar_like}", 32),
      ("Fashion-MNIST 28x28x1", "fashion_mnist", 28),
    ]
    trainer = PROTOTYPE_ITERATIONS_PER_S * PROTOTYPE_BATCH
    print(
      f"cpus: {os.cpu_count()}, batch {args.batch_size}, "
      f"{args.batches} timed batches after 3 warm-up batches"
    )
    print(
      f"trainer consumption (PROTOTYPE figure, docs/benchmarks.md): "
      f"{PROTOTYPE_ITERATIONS_PER_S} it/s x {PROTOTYPE_BATCH} "
      f"= {trainer:.0f} images/s"
    )
    print(f"{'data':28s} {'V':>2s} {'images/s':>9s} {'views/s':>9s} {'x trainer':>9s}")
    for label, name, size in cases:
      for num_views in (1, 2):
        config = default.get_config()
        config.data.name = name
        config.data.data_dir = args.data_dir
        config.data.image_size = size
        config.data.num_views = num_views
        config.train.batch_size = args.batch_size
        rate = images_per_second(config, args.batches)
        print(
          f"{label:28s} {num_views:2d} {rate:9.0f} {rate * num_views:9.0f} {rate / trainer:9.1f}",
          flush=True,
        )


if __name__ == "__main__":
  main()
