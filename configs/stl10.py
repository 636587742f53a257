"""STL-10 (96×96×3, train/test splits) with the ResNet-18 pair; tfds data must be prepared.

    python main.py --config=configs/stl10.py --workdir=/tmp/uctrl_stl10

configs/cifar.py at 96×96 (the decoder's first linear map alone is about 9.4 M
parameters there).

Run so far (2026-12-03): 20 iterations of this command on CPU with random CIFAR-shaped
images resized to 96×96 (`npz:`, width 8, d = 16, batch 16: tests/test_configs.py, a slow
test). Not run: real STL-10, the full width or length, any accelerator; no quality
figures.
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.data.name = "stl10"
  config.data.image_size = 96
  return config
