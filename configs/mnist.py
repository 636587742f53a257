"""MNIST (28×28×1) with the DCGAN pair; the tfds data must be prepared (network once).

    python main.py --config=configs/mnist.py --workdir=/tmp/uctrl_mnist

Same settings as configs/fashion_mnist.py (same image shape; its recipe was measured on
Fashion-MNIST). What it has run: docs/experiments.md#what-the-shipped-configs-have-run.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.data.name = "mnist"
  return config
