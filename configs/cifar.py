"""CIFAR-10 (32×32×3) with the ResNet-18 pair; the tfds data must be prepared.

    python main.py --config=configs/cifar.py --workdir=/tmp/uctrl_cifar10

CTRL's CIFAR-10 setting of two encoder steps per decoder step (SPEC §3). Not yet run
on an accelerator: expected figures come with the trainer issue's measurements.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.data.num_views = 1
  config.model.encoder = "resnet18"
  config.model.decoder = "resnet18"
  config.train.encoder_steps = 2  # CTRL's CIFAR-10 setting (SPEC §3)
  config.train.batch_size = 512
  return config
