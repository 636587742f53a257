"""Device mesh and data-parallel placement (big_vision style: jit + NamedSharding).

The batch is sharded over the ``data`` axis of a mesh that spans every device of
every process; parameters and optimizer states are replicated. Because the rate
terms reduce ``ZᵀZ`` and sums over the *global* batch inside ``jit`` (SPEC §2), a
step on 8 devices computes the same objective as on 1.

Model-parameter sharding (FSDP-style) is an extension point: ``state_sharding``
returns replicated placements today; a ``model`` mesh axis and per-parameter
``PartitionSpec``s would go there.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Batch keys whose leading axis is not the example axis: views are (V, B, ...).
_EXAMPLE_AXIS = {"views": 1}


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with every device (all processes) on the ``data`` axis."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, key: str) -> NamedSharding:
  """Sharding of batch entry ``key``: its example axis split over ``data``."""
  spec = [None] * _EXAMPLE_AXIS.get(key, 0) + [DATA_AXIS]
  return NamedSharding(mesh, P(*spec))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch → global arrays sharded over ``data``.

  Each process passes its own rows (its shard from the input pipeline); the
  global batch is their concatenation in process order.

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
      raise ValueError(f"batch[{key!r}] has {rows} rows on this process, not divisible by its "
                       f"{local_devices} local devices; choose config.train.batch_size as a "
                       f"multiple of the device count {mesh.size}")
    out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, key), value)
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` on all devices of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))
