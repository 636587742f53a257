"""CIFAR-100 (32×32×3) with the ResNet-18 pair; the tfds data must be prepared.

    python main.py --config=configs/cifar100.py --workdir=/tmp/uctrl_cifar100

configs/cifar.py with the CIFAR-100 data (100 classes for the supervised ctrl_multi mode).

Run so far (2026-12-03): 20 iterations of this command on CPU with random CIFAR-shaped
images (`npz:`, width 8, d = 16, batch 16: tests/test_configs.py). Not run: real
CIFAR-100, the full width or length, any accelerator; no quality figures.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.data.name = "cifar100"
  config.loss.num_classes = 100
  return config
