"""MNIST (28×28×1) with the DCGAN pair; the tfds data must be prepared (network once).

    python main.py --config=configs/mnist.py --workdir=/tmp/uctrl_mnist

Same settings as configs/fashion_mnist.py (same image shape; its recipe was measured on
Fashion-MNIST). Run so far (2026-12-03): 20 iterations of this command on CPU with random
CIFAR-shaped images resized to 28×28 (`npz:`, width 8, d = 16, batch 16:
tests/test_configs.py). Not run on MNIST itself; no quality figures.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.data.name = "mnist"
  return config
