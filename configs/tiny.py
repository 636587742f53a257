"""A tiny config for tests and smoke runs: narrow DCGAN, d = 16, batch 16, 28×28.

    python main.py --config=configs/tiny.py --workdir=/tmp/uctrl_tiny

Expected: nothing useful is learned; it exercises every code path in seconds. Run by
the tests throughout (tests/test_configs.py runs this command with `npz:` data).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  config.data.num_views = 2
  config.data.shuffle_buffer = 256
  config.model.width = 8
  config.model.feature_dim = 16
  config.train.batch_size = 16
  config.train.num_steps = 4
  config.train.log_every = 1
  config.train.image_every = 2
  config.train.checkpoint_every = 2
  config.train.eval_every = 4
  config.evals.during_training.max_train_examples = 64
  config.evals.during_training.max_test_examples = 32
  return config
