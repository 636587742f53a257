"""CIFAR-100 (32×32×3) with the ResNet-18 pair; the tfds data must be prepared.

    python main.py --config=configs/cifar100.py --workdir=/tmp/uctrl_cifar100

configs/cifar.py with the CIFAR-100 data (100 classes for the supervised ctrl_multi mode).
What it has run: docs/experiments.md#what-the-shipped-configs-have-run.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.data.name = "cifar100"
  config.loss.num_classes = 100
  return config
