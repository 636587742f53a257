"""uCTRL entry point: `python main.py --config=configs/fashion_mnist.py --workdir=DIR`.

Thin, as in flax's examples: parse flags, then hand the config to the library.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
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
  from uctrl_jax import train  # TensorFlow (data) stays off accelerators once imported.
  logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  if FLAGS.mode == "eval":
    # Evaluators land with the evaluation issue; say so rather than fake a result.
    raise SystemExit("--mode=eval is not implemented yet (the evaluation issue adds "
                     "uctrl_jax/evaluators/). Nothing was evaluated.")
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
