"""Multi-host runs on JAX's own multi-controller runtime: one process per host (or per GPU), all
running the same program over one global `Mesh` (https://docs.jax.dev/en/latest/multi_process.html).

Who does what in a run of N processes:
  - every process computes the same global batch from (seed, step) and feeds only the rows of
    its own devices (train/train_step.shard_batch); parameters are replicated over the mesh;
  - every process calls orbax's CheckpointManager (its multi-process API requires it); orbax
    writes each replicated array once and process 0 writes the metadata;
  - process 0 alone prepares the data, writes config.json / vocab.json, metrics.jsonl, plots,
    train_summary.json, samples and reports; the others wait at a barrier where they need
    those files. The workdir must be on a filesystem all hosts share (NFS, Lustre, gcsfuse).

`initialize` must run before anything touches a jax backend (jax.devices(), jit, ...).
Single-process runs never start the distributed runtime and never import jax here.
"""

from __future__ import annotations

import sys

from absl import logging

# off: one process (the default; nothing changes) unless --coordinator_address/--num_processes/
# --process_id are given. auto: start the runtime when JAX detects a cluster environment (SLURM,
# Open MPI, Cloud TPU pod, GKE TPU), else run alone. on: start it, and fail when neither the
# flags nor the environment say how.
MODES = ("off", "auto", "on")
_NO_CLUSTER = "coordinator_address should be defined"  # jax's ValueError when nothing detected


class DistributedSetupError(ValueError):
    """The distributed flags contradict each other or name no cluster."""


def initialize(
    mode: str = "off",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> bool:
    """Starts `jax.distributed` when the run is distributed; returns True when it did.

    Explicit values (`coordinator_address` 'host:port', `num_processes`, `process_id`) start it
    whatever `mode` is; missing ones are filled in by JAX's cluster detection. Raises
    DistributedSetupError for an unknown mode, when explicit values or mode 'on' still leave the
    coordinator unknown, or for values jax rejects.
    """
    if mode not in MODES:
        raise DistributedSetupError(f"--distributed must be one of {MODES}, got {mode!r}")
    explicit = {
        k: v
        for k, v in dict(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        ).items()
        if v is not None
    }
    if mode == "off" and not explicit:
        return False
    import jax

    try:
        jax.distributed.initialize(**explicit, initialization_timeout=initialization_timeout)
    except ValueError as e:
        if _NO_CLUSTER not in str(e):
            raise DistributedSetupError(f"jax.distributed.initialize: {e}") from e
        if mode == "on" or explicit:
            raise DistributedSetupError(
                "a distributed run needs --coordinator_address (or a cluster environment JAX "
                "detects: SLURM, Open MPI, Cloud TPU pod); none was found"
            ) from e
        logging.info("--distributed=auto: no cluster environment detected; one process")
        return False
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )  # fmt: skip
    return True


def process_count() -> int:
    """Processes in the run (1 when jax was never imported, as in a single-process prepare)."""
    if "jax" not in sys.modules:
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    if "jax" not in sys.modules:
        return 0
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """True in the process that writes the run's files (process 0)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op for one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Process 0's `flag` on every process: for decisions taken from a local clock (a wall-time
    limit), which would otherwise let processes leave the training loop at different steps."""
    if process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.bool_)))
