"""Device mesh and data-parallel placement (big_vision style: jit + NamedSharding).

The batch is sharded over the ``data`` axis of a mesh that spans every device of
every process (one process per host; ``uctrl_jax/distributed.py`` joins them);
parameters and optimizer states are replicated. Because the rate terms reduce
``ZᵀZ`` and sums over the *global* batch inside ``jit`` (docs/method.md#closed-forms-the-code-uses),
a step on 8 devices, in one process or spread over several hosts, computes the same objective
as on 1.

The mesh has two axes, ``(data, model)``, shaped by ``config.mesh``. ``model`` is
the extension point for model-parameter sharding (FSDP-style) and must be 1 for
now: a ``state_sharding(state, mesh)`` giving each parameter and optimizer-state
leaf a ``NamedSharding`` with a ``PartitionSpec`` over ``model`` (e.g. a conv
kernel's output-channel axis) would replace ``replicate`` where ``train.py``
places the fresh state; checkpoint restores already follow the target's
shardings, and the batch stays split over ``data`` only.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"  # parameter sharding: extension point, size 1 for now

# Batch keys whose leading axis is not the example axis: views are (V, B, ...).
_EXAMPLE_AXIS = {"views": 1}


def mesh_shape(mesh_config: Optional[Mapping[str, int]], num_devices: int) -> tuple[int, int]:
  """``(data, model)`` sizes from ``config.mesh``; -1 (default for ``data``) takes the rest.

  Raises:
    NotImplementedError: ``model`` ≠ 1 (parameter sharding is not implemented;
      see the module docstring for where it would go).
    ValueError: sizes that do not multiply to ``num_devices``.
  """
  mesh_config = dict(mesh_config or {})
  unknown = set(mesh_config) - {DATA_AXIS, MODEL_AXIS}
  if unknown:
    raise ValueError(
      f"config.mesh has unknown axes {sorted(unknown)}; known: {DATA_AXIS!r}, {MODEL_AXIS!r}"
    )
  data, model = int(mesh_config.get(DATA_AXIS, -1)), int(mesh_config.get(MODEL_AXIS, 1))
  if model != 1:
    raise NotImplementedError(
      f"config.mesh.model = {model}: model-parameter sharding (FSDP-style) is not "
      "implemented; parameters are replicated, so the model axis must be 1 (see "
      "uctrl_jax/sharding.py for where per-parameter shardings would go)"
    )
  if data == -1:
    data = num_devices // model
  if data < 1 or data * model != num_devices:
    raise ValueError(
      f"config.mesh (data={mesh_config.get(DATA_AXIS, -1)}, model={model}) "
      f"does not cover the {num_devices} devices; use data=-1 for all of them"
    )
  return data, model


def create_mesh(
  devices: Optional[Sequence[jax.Device]] = None, mesh_config: Optional[Mapping[str, int]] = None
) -> Mesh:
  """A ``(data, model)`` mesh over ``devices`` (default: every device of every process).

  Args:
    devices: the devices to use, in mesh order; None: ``jax.devices()``, arranged
      by ``mesh_utils.create_device_mesh`` (ring order on TPU slices; plain order
      elsewhere).
    mesh_config: ``config.mesh``: ``{"data": -1, "model": 1}`` by default.
  Returns:
    A Mesh of shape ``(data, model)``, axis names ``("data", "model")``.
  """
  shape = mesh_shape(mesh_config, len(jax.devices() if devices is None else devices))
  if devices is None:
    device_array = mesh_utils.create_device_mesh(shape)
  else:
    device_array = np.asarray(list(devices)).reshape(shape)
  return Mesh(device_array, (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, key: str) -> NamedSharding:
  """Sharding of batch entry ``key``: its example axis split over ``data``."""
  spec = [None] * _EXAMPLE_AXIS.get(key, 0) + [DATA_AXIS]
  return NamedSharding(mesh, P(*spec))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch → global arrays sharded over ``data``.

  Each process passes its own rows (its shard from the input pipeline); the
  global batch is their concatenation in the mesh's device order: process order
  on CPU and GPU, possibly interleaved on a TPU slice's ring. Every key is split
  the same way, so rows stay paired across keys, and the objective does not
  depend on the order of examples.

  Args:
    batch: {"image": (b, H, W, C), "views": (V, b, H, W, C), "label": (b,), ...}
      with ``b`` = this process's rows, divisible by its local device count.
    mesh: from ``create_mesh``.
  Returns:
    The same keys as global ``jax.Array``s of ``process_count · b`` rows.
  """
  local_devices = mesh.local_mesh.size
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    rows = value.shape[_EXAMPLE_AXIS.get(key, 0)]
    if rows % local_devices:
      raise ValueError(
        f"batch[{key!r}] has {rows} rows on this process, not divisible by its "
        f"{local_devices} local devices; choose config.train.batch_size as a "
        f"multiple of the device count {mesh.size}"
      )
    out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, key), value)
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` on all devices of ``mesh`` (of every process).

  With several processes, each must pass the same values (e.g. built from the same
  seed). They are not compared: ``jax.device_put`` would compare them with a
  cross-process collective, and on CPU (gloo) that collective fails when the
  processes reach it more than 30 s apart, as at start-up on a loaded machine.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(leaf):
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(put, tree)
