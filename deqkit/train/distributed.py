"""``torch.distributed`` when launched by ``torchrun``: process group, device, and reductions of metrics."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "launched_by_torchrun", "resolve_device", "setup"]


def launched_by_torchrun() -> bool:
    """True when ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ...) names several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``; a clear error for anything else."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch.cuda.is_available() is False (no GPU, or a CPU-only torch "
                           "build); use device='cpu' or 'auto'")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, metrics and the progress bar."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum each value over all processes (float64, so counts stay exact)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: list[float], op: dist.ReduceOp) -> list[float]:
        if not self.distributed:
            return list(values)
        # gloo and nccl both reduce float64 (nccl needs the tensor on the GPU)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the process group (if this context joined it); with ``wait``, once every process got here."""
        if self.initialised_here and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA), else run alone."""
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10))
        initialised_here = True
    return DistContext(rank, world, dev, initialised_here)
