"""``torch.distributed`` when launched by ``torchrun``: process group, device, and reductions of metrics."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "launched_by_torchrun", "resolve_device", "setup"]


def launched_by_torchrun() -> bool:
    """Return True when ``torchrun``'s environment names several processes (``WORLD_SIZE`` > 1 and ``RANK`` set)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """Turn a device choice into a ``torch.device``; a clear error for anything else.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        ``"auto"``: CUDA when available, else CPU.
    local_rank : int
        This process's index on its node; picks GPU ``local_rank % device_count``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If ``device`` is not one of the three choices.
    RuntimeError
        If ``device="cuda"`` but CUDA is not available.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' but torch.cuda.is_available() is False (no GPU, or a CPU-only torch "
            "build); use device='cpu' or 'auto'"
        )
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device.

    Attributes
    ----------
    rank : int
        This process's rank, 0 to ``world_size − 1``.
    world_size : int
        Number of processes (1 when not launched by ``torchrun``).
    device : torch.device
    initialised_here : bool
        Whether :func:`setup` created the process group (and :meth:`close` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def distributed(self) -> bool:
        """Whether several processes take part (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, metrics and the progress bar."""
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum each value over all processes (float64, so counts stay exact).

        A collective: every process must call it with a list of the same length. Alone, returns a copy.

        Parameters
        ----------
        values : list of float

        Returns
        -------
        list of float
            The sums, in the same order.
        """
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: list[float]) -> list[float]:
        """Take each value's maximum over all processes; a collective, like :meth:`sum`.

        Parameters
        ----------
        values : list of float

        Returns
        -------
        list of float
            The maxima, in the same order.
        """
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: list[float], op: dist.ReduceOp.RedOpType) -> list[float]:
        if not self.distributed:
            return list(values)
        # gloo and nccl both reduce float64 (nccl needs the tensor on the GPU)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def barrier(self) -> None:
        """Wait until every process gets here (nothing to wait for when running alone)."""
        if self.distributed:
            dist.barrier()

    def close(self, wait: bool = True) -> None:
        """Leave the process group if :func:`setup` created it; with ``wait``, once every process got here.

        Parameters
        ----------
        wait : bool
            Pass a barrier first. Use False after an error: the other processes may never reach it.
        """
        if self.initialised_here and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA), else run alone.

    Under ``torchrun``, the rank and world size come from ``RANK`` and ``WORLD_SIZE``, the GPU from
    ``LOCAL_RANK`` (default: the rank). A process group that already exists is used as it is.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        See :func:`resolve_device`.

    Returns
    -------
    DistContext
        Call its :meth:`~DistContext.close` when done.

    Raises
    ------
    ValueError
        If ``device`` is not one of the three choices.
    RuntimeError
        If ``device="cuda"`` but CUDA is not available.
    """
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
