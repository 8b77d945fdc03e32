"""Several processes, one computation: `jax.distributed` set up as mimictheory needs it.

`initialize` calls `jax.distributed.initialize` (before any other JAX work), with

- JAX's CPU collectives (gloo) when the processes have CPUs only, so that barriers and the
  all-reduces of data-parallel training work across processes without GPUs (the tests: 2
  processes on 127.0.0.1);
- one timeout for start-up, heartbeats and shut-down: when a process dies, the coordination
  service notices its missing heartbeats and stops the others with a message ("Terminating
  process because the JAX distributed service detected fatal errors ... another task died"),
  rather than leaving them waiting at a barrier forever.

Without arguments JAX finds the cluster itself (SLURM, Open MPI, Kubernetes, Cloud TPU); with
them it is `coordinator_address` ("host:port" of process 0), `num_processes` and
`process_id`.
"""
from __future__ import annotations

__all__ = ["initialize", "TIMEOUT_S"]

#: seconds for start-up, heartbeats and shut-down
TIMEOUT_S = 60


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = TIMEOUT_S) -> tuple[int, int]:
  """Join the computation; returns (this process's index, the number of processes).

  In every process, before any other JAX work (the call waits for the others):

  >>> import mimictheory as mt
  >>> mt.initialize_distributed.__name__   # e.g. mt.initialize_distributed("host0:1234", 4, rank)
  'initialize'
  """
  import jax
  from jax._src import distributed as jax_distributed
  if jax_distributed.global_state.client is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s),
                               heartbeat_timeout_seconds=int(timeout_s),
                               shutdown_timeout_seconds=int(timeout_s))
  return jax.process_index(), jax.process_count()
