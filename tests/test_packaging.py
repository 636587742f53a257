"""The package as a user installs it (issue 23): ``pip install .`` gives the ``uctrl``
command and ``uctrl_jax.__version__`` from any directory, the pinned dependencies, and no
top-level ``configs`` package.

The install goes into a fresh virtual environment without network: ``--no-deps
--no-index`` (the dependencies, ~600 MB from the registry, are the project venv's, made
visible by a ``.pth`` line), building the wheel from this checkout as ``pip install .``
does. A real install with downloads (``python -m venv v && v/bin/pip install .``) ran
by hand: docs/usage.md#installing-the-package.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(REPO, "pyproject.toml")


def _pyproject():
  with open(PYPROJECT, "rb") as f:
    return tomllib.load(f)


def test_dependencies_are_pinned_once():
  project = _pyproject()["project"]
  pins = dict(
    re.fullmatch(r"([\w.\-\[\]]+)==([\w.]+)", d).groups() for d in project["dependencies"]
  )
  assert {"jax", "jaxlib", "flax", "orbax-checkpoint", "tensorflow-cpu", "etils"} <= set(pins)
  assert not os.path.exists(os.path.join(REPO, "requirements.txt"))  # one source of pins
  extras = project["optional-dependencies"]
  assert {d.split("==")[0] for d in extras["dev"]} == {"pytest", "ruff", "setuptools"}
  for extra in ("cuda", "tpu"):  # the accelerator build of the same jax
    (spec,) = extras[extra]
    assert spec.split("==")[1] == pins["jax"], spec
  for line in open(os.path.join(REPO, "scripts", "setup.sh")):
    if "pip install" in line and not line.lstrip().startswith("#"):
      assert "-r " not in line
  assert 'pip install -q -e ".[dev]"' in open(os.path.join(REPO, "scripts", "setup.sh")).read()


def test_citation_names_the_paper():
  text = open(os.path.join(REPO, "CITATION.cff")).read()
  assert "Unsupervised Learning of Structured Representations via Closed-Loop Transcription" in (
    text
  )
  assert "arXiv:2210.16782" in text and "doi" not in text.lower()
  readme = open(os.path.join(REPO, "README.md")).read()
  assert "arxiv.org/abs/2210.16782" in readme and "CITATION.cff" in readme


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """``(venv python, venv bin)`` of a fresh venv holding ``pip install .`` of this checkout."""
  base = tmp_path_factory.mktemp("install")
  venv = base / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = subprocess.run(
    [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  # The project venv's packages (pip, setuptools, jax, ...) as plain path entries: their
  # own .pth files (this checkout's editable install among them) are not run.
  with open(os.path.join(site, "project_deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  # What `pip install .` reads, copied: setuptools writes build/ and *.egg-info beside it.
  source = base / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE", "uctrl_jax"):
    copy = shutil.copytree if os.path.isdir(os.path.join(REPO, name)) else shutil.copy
    kwargs = {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
    copy(os.path.join(REPO, name), source / name, **kwargs)
  proc = subprocess.run(
    [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    + [str(source)],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(python), str(venv / "bin"), str(base)


def _in(installed, *cmd):
  """Runs ``cmd`` in the venv from a directory outside the checkout."""
  python, bin_dir, base = installed
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
  return subprocess.run(cmd, cwd=base, capture_output=True, text=True, timeout=600, env=env)


def test_pip_install_gives_the_command_and_the_version(installed):
  python = installed[0]
  proc = _in(installed, "uctrl", "--help")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "uctrl train --config=" in proc.stdout and "uctrl embed" in proc.stdout
  code = (
    "import importlib.metadata as m, importlib.util, uctrl_jax; "
    "print(uctrl_jax.__version__, m.version('uctrl-jax'), uctrl_jax.__file__, "
    "importlib.util.find_spec('configs'))"
  )
  proc = _in(installed, python, "-c", code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  version, metadata_version, location, configs = proc.stdout.split()
  assert version == metadata_version == _version_in_source()
  assert location.startswith(os.path.dirname(os.path.dirname(python)))  # the venv's copy
  assert configs == "None"  # no top-level `configs` package on the user's path


def test_the_wheel_holds_the_package_and_its_metadata(installed):
  python = installed[0]
  code = (
    "import importlib.metadata as m; d = m.distribution('uctrl-jax'); "
    "print('\\n'.join(str(f) for f in d.files)); print('REQUIRES', *d.requires, sep='\\n'); "
    "print('SCRIPTS', *[e.value for e in d.entry_points if e.name == 'uctrl'])"
  )
  proc = _in(installed, python, "-c", code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  for module in (
    "uctrl_jax/defaults.py",
    "uctrl_jax/cli.py",
    "uctrl_jax/datasets/image_folder.py",
    "uctrl_jax/evaluators/knn.py",
  ):
    assert module in out, module
  assert not re.search(r"^configs/", out, re.M)
  assert "SCRIPTS uctrl_jax.cli:run_uctrl" in out
  requires = out.split("REQUIRES\n", 1)[1].split("SCRIPTS", 1)[0].split()
  assert set(_pyproject()["project"]["dependencies"]) <= set(requires)


def _version_in_source():
  text = open(os.path.join(REPO, "uctrl_jax", "__init__.py")).read()
  return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def test_the_command_reads_the_repositorys_configs_from_anywhere(installed, random_npz):
  # configs/tiny.py imports `from configs import default`: found beside the file, though the
  # command's directory is the venv's bin/ and `configs` is not installed.
  workdir = os.path.join(installed[2], "run")
  proc = _in(
    installed,
    "uctrl",
    "train",
    f"--config={os.path.join(REPO, 'configs', 'tiny.py')}",
    f"--workdir={workdir}",
    f"--config.data.name=npz:{random_npz((28, 28, 1))}",
    "--config.train.num_steps=0",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["width"] == 8  # tiny's
