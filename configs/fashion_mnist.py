"""Fashion-MNIST (28×28×1), the offline default (SPEC §5)."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  return config
