"""uCTRL entry point: `python main.py --config=configs/fashion_mnist.py --workdir=DIR`.

Thin, as in flax's examples: parse flags, then hand the config to the library.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (and evaluate), or evaluate the "
                  "latest checkpoint in --workdir.")
config_flags.DEFINE_config_file("config", "configs/fashion_mnist.py", "Experiment config file.",
                                lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from uctrl_jax import input_pipeline  # TensorFlow stays off accelerators once imported.
  config = FLAGS.config
  # The data side exists: prepare/open the dataset so a fresh machine is ready to train.
  info = input_pipeline.get_dataset_info(config)
  logging.info("dataset %s: %s images, %s, %d classes", info.name, info.image_shape,
               info.num_examples, info.num_classes)
  print(f"dataset {info.name!r} ready: image shape {info.image_shape}, "
        f"splits {info.num_examples}, {info.num_classes} classes")
  # Training and evaluation land with the trainer issue; say so rather than fake a run.
  raise SystemExit(f"--mode={FLAGS.mode}: training is not implemented yet "
                   "(the trainer issue adds uctrl_jax/train.py). Nothing was trained.")


if __name__ == "__main__":
  app.run(main)
