"""uCTRL entry point: `python main.py --config=configs/fashion_mnist.py --workdir=DIR`.

Thin, as in flax's examples: parse flags, then hand the config to the library.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from uctrl_jax import console  # noqa: E402
from uctrl_jax import distributed  # noqa: E402

FLAGS = flags.FLAGS
DEFAULT_CONFIG = "configs/fashion_mnist.py"


@contextlib.contextmanager
def _flag_errors_in_one_line(argv):
  """A bad command line (an override of an unknown config key, a value of the wrong type,
  an unknown flag) → ``error: ...`` and exit 1, without absl's or ml_collections'
  traceback."""
  try:
    yield
  except (flags.Error, KeyError, AttributeError, OSError) as e:
    from uctrl_jax import config_checks  # pylint: disable=import-outside-toplevel

    raise SystemExit(
      f"error: {config_checks.command_line_error(e, argv, DEFAULT_CONFIG)}"
    ) from None


def _parse_flags(argv):
  with _flag_errors_in_one_line(argv):
    return FLAGS(argv)


flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval"],
  "Train (and evaluate), or evaluate the latest checkpoint in --workdir.",
)
flags.DEFINE_bool(
  "verbose",
  False,
  "Show every library's INFO logging (absl, orbax, tfds, "
  "clu, jax) in absl's format; by default the console shows this project's "
  "lines and everyone's warnings.",
)
# Without --config on the command line, the default file and the overrides are read here.
with _flag_errors_in_one_line(sys.argv):
  config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Experiment config file.", lock_config=True
  )
flags.mark_flags_as_required(["workdir"])
# Multi-host (uctrl_jax/distributed.py): one process per host, joined by jax.distributed.
flags.DEFINE_bool(
  "distributed",
  False,
  "Join the other processes of a multi-host job "
  "(jax.distributed.initialize). Alone, jax auto-detects TPU pod slices, SLURM "
  "and Open MPI; elsewhere give the three flags below (or $JAX_COORDINATOR_ADDRESS, "
  "$JAX_NUM_PROCESSES, $JAX_PROCESS_ID), any of which implies --distributed.",
)
flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0, the same on every process."
)
flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in the job.")
flags.DEFINE_integer("process_id", None, "This process's index, in [0, num_processes).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  with _flag_errors_in_one_line(sys.argv):
    FLAGS.config.keys()  # a config file that did not load raises at first use (ml_collections)
  console.configure(verbose=FLAGS.verbose)
  # Before anything touches a device: jax.distributed must come first.
  distributed.initialize(
    enabled=FLAGS.distributed,
    coordinator_address=FLAGS.coordinator_address,
    num_processes=FLAGS.num_processes,
    process_id=FLAGS.process_id,
  )
  if not FLAGS.verbose:
    console.import_tensorflow_quietly()
  from uctrl_jax import train  # TensorFlow (data) stays off accelerators once imported.
  from uctrl_jax import checkpointing, config_checks, datasets, workdir_files  # pylint: disable=g-multiple-import

  logging.info("%s", distributed.describe())
  try:
    if FLAGS.mode == "eval":
      # Latest checkpoint of --workdir; writes results.json, results.md and figures/ there.
      from uctrl_jax import evaluate

      evaluate.evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (
    config_checks.ConfigError,
    datasets.DataError,
    checkpointing.RunLoadError,
    checkpointing.CheckpointWriteError,
    workdir_files.WorkdirBusyError,
    FloatingPointError,
  ) as e:
    # Errors of the user's input (config, data, work directory), of the machine (a full
    # disk) and a diverged run: their one-line messages say what to fix; a traceback would
    # only bury them. Any other exception is a bug and keeps its traceback.
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
