"""CIFAR-100 (32×32×3) with the ResNet-18 pair; the tfds data must be prepared.

    python main.py --config=configs/cifar100.py --workdir=/tmp/uctrl_cifar100

Same settings as configs/cifar.py. Not yet run: expected figures come with the
trainer issue's measurements.
"""
from configs import cifar


def get_config():
  config = cifar.get_config()
  config.data.name = "cifar100"
  config.loss.num_classes = 100
  return config
