"""CIFAR-10 (32×32×3) with the ResNet-18 pair; the tfds data must be prepared.

    python main.py --config=configs/cifar.py --workdir=/tmp/uctrl_cifar10

What is CIFAR's here: the data, the ResNet-18 pair (w = 64), CTRL's two encoder steps per
decoder step (docs/method.md#the-game) and batch 512 (the default 2 000 iterations are about
20 epochs). The 8 views are default.py's: each is one more encoder pass per encoder step,
and an iteration does 2.5× the FLOPs of the paper's one-view setting (XLA's count; the
times per view count: docs/benchmarks.md#accelerators). The decoder's upsampling, the
sample-wise terms and the schedule are default.py's, which were measured on Fashion-MNIST
only. What it has run: docs/experiments.md#what-the-shipped-configs-have-run.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.image_size = 32
  config.model.encoder = "resnet18"
  config.model.decoder = "resnet18"
  config.train.encoder_steps = 2  # CTRL's CIFAR-10 setting (docs/method.md#the-game)
  config.train.batch_size = 512
  return config
