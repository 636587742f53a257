"""TensorFlow and tfds serve only the host-side data pipeline (issue 15).

In a process where importing ``tensorflow`` or ``tensorflow_datasets`` fails, as on an
accelerator image without them: ``uctrl_jax.rate_reduction``, ``models``,
``objectives``, ``state`` and ``steps`` import; ``create_train_state``, ``make_steps`` and
``train_iteration`` run one jitted iteration (8 simulated devices, conftest.py); a run
saved with ``checkpointing`` loads with ``uctrl_jax.load`` and encodes as the state it
was saved from. ``tests/test_accelerator_bench.py`` goes further (no clu or
ml_collections either).
"""

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CODE = r"""
import json, sys, tempfile
import jax, jax.numpy as jnp, numpy as np
from uctrl_jax import models, objectives, rate_reduction, sharding, steps
from uctrl_jax.state import create_train_state
from uctrl_jax import checkpointing
from uctrl_jax import loading
import uctrl_jax
from configs import tiny

shape = (28, 28, 1)
config = tiny.get_config()
mesh = sharding.create_mesh()
state = sharding.replicate(create_train_state(config, shape, jax.random.key(0)), mesh)
encoder_step, decoder_step = steps.make_steps(config, shape)
rng = np.random.default_rng(0)
B, V = config.train.batch_size, config.data.num_views
host = {"image": rng.uniform(-1, 1, (B, *shape)).astype(np.float32),
        "views": rng.uniform(-1, 1, (V, B, *shape)).astype(np.float32),
        "label": (np.arange(B) % 10).astype(np.int32)}
state, metrics = steps.train_iteration(encoder_step, decoder_step, state,
                                       sharding.shard_batch(host, mesh), config.train.encoder_steps)
metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}

# A run as train_and_evaluate leaves it: config.json (with the image shape) + a checkpoint.
workdir = tempfile.mkdtemp()
config.data.image_shape = shape
checkpointing.save_config(workdir, config)
with checkpointing.Checkpointer(workdir) as ckpt:
  ckpt.save(1, state, {"step": 1})
loaded = uctrl_jax.load(workdir)
encode, _ = loading.eval_mode_loop(config, shape)
x = jnp.asarray(host["image"][:4])
Z = loaded.encode(x)
print("RESULT " + json.dumps({
    "metrics": metrics,
    "load_step": loaded.extra["step"],
    "load_encode_max_diff": float(np.max(np.abs(np.asarray(Z) - np.asarray(encode(state, x))))),
    "decoded_shape": list(loaded.decode(Z).shape),
    "imported": sorted(m for m in ("tensorflow", "tensorflow_datasets", "clu") if m in sys.modules),
}))
"""


def _run(env, code):
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  [line] = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  return json.loads(line[len("RESULT ") :])


def test_blocker_blocks(env_without):
  proc = subprocess.run(
    [sys.executable, "-c", "import tensorflow"],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=env_without("tensorflow", "tensorflow_datasets"),
    timeout=60,
  )
  assert proc.returncode == 1 and "No module named 'tensorflow'" in proc.stderr, proc.stderr


def test_steps_and_load_without_tensorflow(env_without):
  result = _run(env_without("tensorflow", "tensorflow_datasets"), _CODE)
  metrics = result["metrics"]
  assert all(math.isfinite(v) for v in metrics.values()), metrics
  # A real iteration happened: the game's terms and both players' gradients.
  assert metrics["encoder/R"] > 1.0 and metrics["decoder/grad_norm"] > 0.0, metrics
  assert result["load_step"] == 1
  # The same weights; load's jit runs on one device, the state's on 8: rounding differs.
  assert result["load_encode_max_diff"] < 1e-6
  assert result["decoded_shape"] == [4, 28, 28, 1]
  assert result["imported"] == []
