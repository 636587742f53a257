"""Fashion-MNIST (28×28×1), the offline default (docs/method.md), sized for 2 CPU cores.

    python main.py --config=configs/fashion_mnist.py --workdir=/tmp/uctrl_fashion_mnist

The recipe of configs/default.py at width 32, 4 views, batch 64 and 1 500 iterations; its
results are the README's "Results at a glance". How the recipe was chosen: docs/recipes.md; the
earlier probes that chose the decoder, the sample-wise terms and the learning-rate decay:
docs/experiments.md#what-chose-the-defaults.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  # About a third of width 64's time per iteration (docs/experiments.md#what-chose-the-defaults).
  config.model.width = 32
  # 4 views: the fastest setting that keeps the 8 views' quality (docs/minutes_to_quality.md).
  config.data.num_views = 4
  config.train.batch_size = 64  # the recipe's batch (docs/recipes.md)
  config.train.num_steps = 1_500  # 4× as many do not lift the features (docs/recipes.md)
  config.train.log_every = 50
  config.train.image_every = 500
  config.train.checkpoint_every = 500
  config.train.eval_every = 500
  return config
