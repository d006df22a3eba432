"""Rank coordination for a multi-stage schedule under torchrun (one process per device).

Training a stage is collective (``trainer.fit`` wraps the model in DDP); everything around it is
file work that exactly one process must do: building noise/RIR assets, estimating and caching the
EWC Fisher, decoding the eval sets, writing ``eval.json`` and the report. Rank 0 does it; the other
ranks wait and receive rank 0's result (or its error, so no rank hangs when rank 0 fails).

The waits use their own gloo group with a long timeout: while rank 0 decodes or estimates a Fisher
the others only sit in a barrier, and the training group's timeout (minutes with NCCL) is meant for
collectives that should be quick.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")

WAIT_TIMEOUT = datetime.timedelta(hours=4)


class RankError(RuntimeError):
    """Rank 0 failed while doing work the other ranks were waiting for."""


@dataclass
class Ranks:
    """This process's place in the run; every method is a no-op shortcut in a single process."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    wait_group: Any = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self.wait_group)

    def run_on_main(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` on rank 0; every rank returns its (pickled) result, or raises if rank 0 failed."""
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        message: list = [None]
        if self.is_main:
            try:
                message[0] = ("ok", fn())
            except BaseException as e:  # noqa: BLE001 - tell the waiting ranks, then re-raise here
                message[0] = ("error", f"{type(e).__name__}: {e}")
                dist.broadcast_object_list(message, src=0, group=self.wait_group)
                raise
        dist.broadcast_object_list(message, src=0, group=self.wait_group)
        status, value = message[0]
        if status != "ok":
            raise RankError(f"rank 0 failed while {what}: {value}")
        return value

    def main_first(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` on rank 0, then on the other ranks (e.g. rank 0 writes a cache, the others read it)."""
        if not self.enabled:
            return fn()
        result = self.run_on_main(lambda: _Done(fn()), what)
        return result.value if self.is_main else fn()


class _Done:
    """Rank 0's local result, kept local: only the fact that it finished is broadcast."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.value = None


def _resolve_device_kind(requested: str) -> str:
    import torch

    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


@contextlib.contextmanager
def schedule_ranks(device: str) -> Iterator[Ranks]:
    """Join the process group torchrun describes (if any) for the whole schedule; leave it at the end.

    ``device`` is the stages' ``train.device`` (``auto``/``cpu``/``cuda``): it picks the training
    backend (NCCL for CUDA, gloo for CPU). ``trainer.fit`` then reuses this group for every stage.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        yield Ranks()
        return
    from synthasr.train.trainer import setup_distributed

    info = setup_distributed(_resolve_device_kind(device))
    group: Optional[Any] = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    try:
        yield Ranks(info.world_size, info.rank, info.local_rank, group)
    finally:
        if info.owns_group:
            dist.destroy_process_group()
