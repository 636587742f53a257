"""The command line: ``python main.py --mode=train|eval|embed`` and the installed
``uctrl train|eval|embed``, one set of flags and one ``main`` for both.

    uctrl train --config=configs/fashion_mnist.py --workdir=W   # python main.py --config=...
    uctrl eval --workdir=W                                       # the run's own config.json
    uctrl embed --workdir=W [--split=test] [--data=image_folder:PATH] [--out=FILE.npz]

Thin, as in flax's examples: parse flags, then hand the config to the library (``train``,
``evaluate``, ``embed``). An evaluation or embedding reads the run's ``config.json``
(``run_config.for_existing_run``): ``--config.evals.*`` may change, what the model was
trained on may not.

The user's input errors (a bad flag or config value, bad data, a work directory without
a run or held by another training) print one line, ``error: ...``, and exit 1; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
COMMANDS = ("train", "eval", "embed")
# `uctrl`'s config when none is given: every key exists, so `uctrl eval --workdir=W
# --config.evals.knn.k=5` parses its overrides; `uctrl train` asks for a file.
PACKAGE_DEFAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "defaults.py")
UCTRL_USAGE = """uCTRL: unsupervised closed-loop transcription in JAX/Flax.

USAGE: uctrl train --config=configs/fashion_mnist.py --workdir=DIR [--config.KEY=VALUE ...]
       uctrl eval --workdir=DIR [--config.evals.KEY=VALUE ...]
       uctrl embed --workdir=DIR [--split=NAME] [--data=image_folder:PATH|npz:PATH] [--out=FILE]

train: trains (and evaluates) as the config says, resuming the run in DIR if any.
eval: evaluates the latest checkpoint of DIR with the run's own config.json.
embed: writes the encoder's features of a split (or of --data) to DIR/embeddings/.
"""

_state = {"default_config": None, "program": "main.py"}


@contextlib.contextmanager
def _flag_errors_in_one_line(argv):
  """A bad command line (an override of an unknown config key, a value of the wrong type,
  an unknown flag) → ``error: ...`` and exit 1, without absl's or ml_collections'
  traceback."""
  try:
    yield
  except (flags.Error, KeyError, AttributeError, OSError) as e:
    from uctrl_jax import config_checks  # pylint: disable=import-outside-toplevel

    message = config_checks.command_line_error(e, argv, _config_file(argv))
    raise SystemExit(f"error: {message}") from None


def _config_file(argv) -> str:
  """The config file ``argv`` names (``--config=PATH`` or ``--config PATH``, the last
  wins), or the default one."""
  path = _state["default_config"]
  for i, arg in enumerate(argv):
    if re.fullmatch(r"--?config", arg) and i + 1 < len(argv):
      path = argv[i + 1]
    elif re.match(r"--?config=", arg):
      path = arg.split("=", 1)[1]
  return path


def _config_package_importable(argv) -> None:
  """A config file inside a package (``configs/fashion_mnist.py`` beside
  ``configs/__init__.py``) imports its siblings as that package (``from configs import
  default``): the package's parent directory joins ``sys.path`` (last, shadowing nothing),
  as the script's directory does for ``python main.py`` but not for the ``uctrl``
  command."""
  path = _config_file(argv).split(":", 1)[0]
  package = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
  if os.path.isfile(os.path.join(package, "__init__.py")):
    parent = os.path.dirname(package)
    if parent not in sys.path:
      sys.path.append(parent)


def define_flags(default_config: str, program: str = "main.py") -> None:
  """Defines the flags (once per process); ``default_config``: the config file read when
  ``--config`` is not given."""
  _state.update(default_config=default_config, program=program)
  _config_package_importable(sys.argv)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
  flags.DEFINE_enum(
    "mode",
    "train",
    list(COMMANDS),
    "Train (and evaluate); evaluate the latest checkpoint in --workdir; or write its "
    "features (embed). eval and embed read the run's own config.json.",
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
      "config",
      default_config,
      "Experiment config file (train). With eval/embed: optional, its config.evals used "
      "and its data and model checked against the run's.",
      lock_config=True,
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
  # embed (uctrl_jax/embed.py).
  flags.DEFINE_string(
    "split",
    None,
    "embed: the split to embed (slices too: 'train[:10%]'); default: the evaluation's "
    "test and train splits (config.evals), or every split of --data.",
  )
  flags.DEFINE_string(
    "data",
    None,
    "embed: other images, 'image_folder:PATH' or 'npz:PATH' (any config.data.name), read "
    "with the run's preprocessing (image size, channels).",
  )
  flags.DEFINE_string(
    "out", None, "embed: the .npz file to write (one split); default WORKDIR/embeddings/."
  )


def parse_flags(argv):
  """main.py's flag parser: absl's, with one-line errors."""
  with _flag_errors_in_one_line(argv):
    return FLAGS(argv)


def parse_command(argv):
  """``uctrl COMMAND --flags...``: the command becomes ``--mode``; ``uctrl --help`` and
  ``uctrl`` alone print the usage."""
  if len(argv) < 2 or argv[1] in ("-h", "--help", "-help", "--helpshort", "--helpfull"):
    print(
      UCTRL_USAGE + "\nFlags: uctrl COMMAND --help.",
      file=sys.stdout if len(argv) > 1 else sys.stderr,
    )
    raise SystemExit(0 if len(argv) > 1 else 1)
  command = argv[1]
  if command not in COMMANDS:
    raise SystemExit(f"error: unknown command {command!r}: uctrl {' | '.join(COMMANDS)}")
  if any(arg.split("=", 1)[0] in ("--mode", "-mode") for arg in argv[2:]):
    raise SystemExit(f"error: uctrl {command} takes no --mode (the command is the mode)")
  return parse_flags([argv[0], f"--mode={command}", *argv[2:]])


def _check_mode_flags() -> None:
  """Flags of one mode given with another: a one-line error rather than silence."""
  from uctrl_jax import config_checks  # pylint: disable=import-outside-toplevel

  misplaced = [f"--{n}" for n in ("split", "data", "out") if FLAGS[n].present]
  if misplaced and FLAGS.mode != "embed":
    raise config_checks.ConfigError(f"{', '.join(misplaced)}: only with --mode=embed (uctrl embed)")
  if FLAGS.mode == "train" and _state["program"] == "uctrl" and not FLAGS["config"].present:
    raise config_checks.ConfigError(
      "uctrl train needs --config=FILE (e.g. configs/fashion_mnist.py of the repository)"
    )


def _run(mode: str) -> None:
  """Hands over to the library: train, evaluate or embed."""
  from uctrl_jax import train  # TensorFlow (data) stays off accelerators once imported.

  if mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    return
  from uctrl_jax import run_config  # pylint: disable=import-outside-toplevel

  # The run's own config.json, with the command line's evaluation options.
  config = run_config.for_existing_run(
    FLAGS.workdir,
    FLAGS.config,
    overrides=FLAGS["config"].override_values,
    config_file=FLAGS["config"].config_filename if FLAGS["config"].present else None,
  )
  if mode == "eval":
    # Latest checkpoint of --workdir; writes results.json, results.md and figures/ there.
    from uctrl_jax import evaluate  # pylint: disable=import-outside-toplevel

    evaluate.evaluate(config, FLAGS.workdir)
  else:
    from uctrl_jax import embed  # pylint: disable=import-outside-toplevel

    embed.embed(config, FLAGS.workdir, split=FLAGS.split, data=FLAGS.data, out=FLAGS.out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  with _flag_errors_in_one_line(sys.argv):
    FLAGS.config.keys()  # a config file that did not load raises at first use (ml_collections)
  from uctrl_jax import console  # pylint: disable=import-outside-toplevel
  from uctrl_jax import distributed  # pylint: disable=import-outside-toplevel

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
  from uctrl_jax import checkpointing, config_checks, datasets, workdir_files  # pylint: disable=g-multiple-import

  logging.info("%s", distributed.describe())
  try:
    _check_mode_flags()
    _run(FLAGS.mode)
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


def run_uctrl() -> None:
  """The ``uctrl`` console command (pyproject.toml ``[project.scripts]``)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.modules["__main__"].__doc__ = UCTRL_USAGE  # absl's --help shows the main module's
  define_flags(PACKAGE_DEFAULTS, program="uctrl")
  app.run(main, flags_parser=parse_command)
