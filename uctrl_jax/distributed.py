"""Multi-host start-up on JAX's own multi-controller runtime (``jax.distributed``).

One Python process per host runs the same program. ``initialize`` connects them
through ``jax.distributed.initialize``; afterwards ``jax.devices()`` lists every
device of every process, ``sharding.create_mesh`` builds one mesh over all of
them, each process feeds its own data shard (``input_pipeline``) and
``sharding.shard_batch`` turns the per-host batches into global arrays. XLA's
collectives (all-reduces of ``ZᵀZ``, sums and gradients) do the rest; nothing
here coordinates the processes by hand.

Where the settings come from, first match wins for each:

* arguments (``main.py --coordinator_address=… --num_processes=… --process_id=…``);
* environment: ``JAX_COORDINATOR_ADDRESS`` (read by jax itself),
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
* jax's cluster auto-detection: Cloud TPU pod slices, SLURM (``srun``), Open MPI
  (``mpirun``) need no settings at all, only ``enabled=True``
  (``main.py --distributed``).

Call it before anything touches a JAX device (``jax.devices()``, any array).
"""

from __future__ import annotations

import itertools
import os
from typing import Callable, Optional, Sequence

from absl import logging
import jax

# Environment variables that ask for multi-process start-up on their own.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name} = {value!r} is not an integer") from None


def _launched_as_many_tasks() -> Optional[str]:
  """Names the launcher when this process is one of several it started, else None."""
  for name, launcher in (
    ("SLURM_STEP_NUM_TASKS", "srun"),
    ("SLURM_NTASKS", "srun"),
    ("OMPI_COMM_WORLD_SIZE", "mpirun"),
  ):
    try:
      if int(os.environ.get(name, "1")) > 1:
        return f"{launcher} (${name} = {os.environ[name]})"
    except ValueError:
      pass
  return None


def initialize(
  *,
  enabled: bool = False,
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  local_device_ids: Optional[Sequence[int]] = None,
  initialization_timeout: int = 300,
) -> bool:
  """Starts ``jax.distributed`` when asked to; returns whether it did.

  Asked means ``enabled``, or any of the three settings given as an argument or in
  the environment (see the module docstring). Settings left unset are auto-detected
  by jax (TPU pod, SLURM, Open MPI); on a plain machine they must all be given.

  On CPU, cross-process collectives need an implementation; jax 0.9.2 defaults to
  gloo over TCP (``jax_cpu_collectives_implementation``). If that option was set
  to none, gloo is chosen here, since without it the first all-reduce over two
  processes fails; an explicit ``mpi`` is kept.

  Args:
    enabled: start even when nothing is set (cluster auto-detection).
    coordinator_address: ``host:port`` of process 0's coordinator service, the
      same on every process.
    num_processes: number of processes (hosts) in the job.
    process_id: this process, in ``[0, num_processes)``.
    local_device_ids: restrict this process to these local devices (e.g. one GPU
      per process); None: all of them.
    initialization_timeout: seconds to wait for every process to connect.
  Returns:
    True when ``jax.distributed.initialize`` ran, False for a single-process run.
  Raises:
    ValueError: malformed settings, or a partial set (e.g. a coordinator address
      without ``num_processes``) where jax cannot detect the rest.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  asked = enabled or any(v is not None for v in (coordinator_address, num_processes, process_id))
  if not asked:
    launcher = _launched_as_many_tasks()
    if launcher:
      logging.warning(
        "started by %s but not as a distributed job: each process will train "
        "on its own; pass --distributed to join them into one job",
        launcher,
      )
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes = {num_processes} must be ≥ 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id = {process_id} is not in [0, {num_processes})")
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info(
    "jax.distributed.initialize(coordinator_address=%s, num_processes=%s, "
    "process_id=%s) (None: auto-detected)",
    coordinator_address,
    num_processes,
    process_id,
  )
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    local_device_ids=local_device_ids,
    initialization_timeout=initialization_timeout,
  )
  return True


_barrier_ids = itertools.count()  # every process creates its barriers in the same order
BARRIER_TIMEOUT_S = 3600  # a dead peer ends the job sooner: the runtime's heartbeat


def meet_before_first_run(fn: Callable, name: str) -> Callable:
  """``fn`` (jitted) that, with several processes, compiles at its first call and waits
  there for every process before it runs.

  Why: on CPU the processes' collectives go through gloo, which gives the peers 30 s
  to join a collective the first time a compiled program runs (``Gloo context
  initialization failed: ... GetKeyValue() timed out``). Compilation takes minutes on
  a loaded machine or for a big model, and not equally long everywhere. The wait
  here is the distributed runtime's own barrier (through orbax), without that limit.
  Later calls go straight to ``fn``, whose jit cache holds what was compiled here.
  With one process, ``fn`` itself is returned.

  Args:
    fn: a ``jax.jit`` function whose arguments keep their shapes and shardings.
    name: for the barrier's id and the log.
  """
  if jax.process_count() == 1:
    return fn
  met = False

  def run(*args, **kwargs):
    nonlocal met
    if not met:
      fn.lower(*args, **kwargs).compile()
      from orbax.checkpoint import multihost  # pylint: disable=import-outside-toplevel

      logging.info("%s compiled; waiting for the other processes", name)
      multihost.get_barrier_sync_fn()(
        key=f"uctrl_jax_{name}_{next(_barrier_ids)}", timeout_ms=BARRIER_TIMEOUT_S * 1000
      )
      met = True
    return fn(*args, **kwargs)

  return run


def describe() -> str:
  """One line about this process's place in the job, for the log."""
  local = jax.local_devices()
  return (
    f"JAX process {jax.process_index()}/{jax.process_count()}: {len(local)} local "
    f"{local[0].platform} device(s) {[d.id for d in local]} of {jax.device_count()} "
    f"in all ({local[0].device_kind})"
  )
