"""STL-10 (96×96×3, train/test splits) with the ResNet-18 pair; tfds data must be prepared.

    python main.py --config=configs/stl10.py --workdir=/tmp/uctrl_stl10

configs/cifar.py at 96×96 (the decoder's first linear map alone is about 9.4 M
parameters there). What it has run: docs/experiments.md#what-the-shipped-configs-have-run.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.data.name = "stl10"
  config.data.image_size = 96
  return config
