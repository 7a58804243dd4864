"""Running under torchrun / srun: who this process is, and the few collectives a run needs.

PyTorch's own distributed runtime does the scheduling; this module only reads its
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, or SLURM's ``SLURM_PROCID`` /
``SLURM_NTASKS`` / ``SLURM_LOCALID``), starts the process group (NCCL/RCCL on GPUs, gloo on
CPU), and offers a barrier, a broadcast from rank 0 and a gather. A single process (no
such environment) gets a context whose collectives are no-ops, so the same code path runs
everywhere.

How a run shares the work: every rank walks the same list of (time, lead) jobs; for each,
rank 0 fetches the inputs once and broadcasts them, and each rank computes its own share
of the samples (round-robin). Because sample ``i`` of time ``t`` always gets the same
noise, the store is the same whatever the number of ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from corrdiff_tools.errors import RunError

T = TypeVar("T")
J = TypeVar("J")  # what a fetch is asked for (a job)
R = TypeVar("R")  # what it returns

_ENV_SETS = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


def launched_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or SLURM's environment; (0, 1, 0) alone."""
    for rank, world, local in _ENV_SETS:
        if world in os.environ and int(os.environ[world]) > 1:
            return int(os.environ[rank]), int(os.environ[world]), int(os.environ.get(local, 0))
    return 0, 1, 0


@dataclass
class Context:
    """A process's place in a run; collectives are no-ops when ``world == 1``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0 (creates the store, fetches, reports)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: T | None) -> T:
        """Rank 0's ``value`` on every rank (others pass None)."""
        if not self.enabled:
            return value  # type: ignore[return-value]
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        """Tear the process group down."""
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def start(use_gpu: bool) -> Context:
    """Join the process group if launched by torchrun or srun, else a single-process context."""
    rank, world, local_rank = launched_ranks()
    context = Context(rank, world, local_rank)
    if not context.enabled:
        return context
    import torch
    import torch.distributed as dist

    if "MASTER_ADDR" not in os.environ:
        raise RunError(
            "launched with several ranks but no MASTER_ADDR/MASTER_PORT: start the run with "
            "torchrun, or export them in the SLURM script (see the README)"
        )
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    backend = "nccl" if use_gpu else "gloo"
    if use_gpu:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return context


def share(samples: Sequence[int], context: Context, dealt: int = 0) -> tuple[int, ...]:
    """The samples of one job that fall to this rank, dealing pieces round-robin.

    ``dealt`` is how many pieces earlier jobs dealt out, so the deal continues across
    jobs and ranks stay balanced (3 samples x 2 times on 2 ranks: 3 pieces each).
    """
    start = (context.rank - dealt) % context.world
    return tuple(samples[start :: context.world])


def broadcast_fetch(fetch: Callable[[J], R], context: Context) -> Callable[[J], R]:
    """Wrap ``fetch`` so rank 0 fetches and every rank receives the result (or the error).

    Rank 0's failure is sent to the others as a message, so no rank waits forever.
    """
    if not context.enabled:
        return fetch

    def shared(job: J) -> R:
        result: tuple[str, Any] | None = None
        error: BaseException | None = None
        if context.is_root:
            try:
                result = ("ok", fetch(job))
            except Exception as err:  # noqa: BLE001 - sent on, then re-raised below
                error = err
                result = ("error", str(err))
        status, payload = context.broadcast(result)
        if error is not None:
            raise error
        if status == "error":
            raise RunError(f"rank 0 could not fetch inputs: {payload}")
        return payload

    return shared
