"""Measuring a training step: wall time and peak tensor memory (used by notebook 05 and the benchmarks).

Timings for learners and benchmarks are medians of repeats, after an untimed warm-up step.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .adjoint import GradientSpec, Implicit, as_gradient
from .errors import ConvergenceWarning
from .layer import DEQ
from .problems import tanh_problem
from .settings import check_int
from .solvers import SolverSpec

__all__ = ["StepCost", "make_cost_model", "measure_step", "peak_memory", "training_step"]


# What torch's profiler writes straight to the process's stderr (below Python, so no warning filter sees it): a
# start/stop line per run from Kineto, and c10's notice that a block allocated before the run was freed during it
# (harmless here: the peak is read from the allocator's own running total, which counts every block).
_PROFILER_CHATTER = re.compile(r"USDT:.*profiler_(start|stop)|CPUAllocator\.cpp.*Memory block of unknown size")


@contextlib.contextmanager
def _profiler_chatter_dropped() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file meanwhile; then pass on every line but the profiler's chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [
                line for line in tmp.read().decode(errors="replace").splitlines() if not _PROFILER_CHATTER.search(line)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def peak_memory(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn()``; return its result and the peak bytes of tensor memory allocated while it ran.

    Method: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made through
    PyTorch's allocators together with the allocator's running total of live bytes. The peak is the largest
    running total during ``fn`` minus the total just before its first allocation, i.e. the most memory that
    ``fn`` held at once beyond what was live when it started. Frees of blocks allocated before the call are not
    reported by the profiler, so free such tensors (e.g. ``zero_grad(set_to_none=True)``) before calling.
    torch has no public peak counter for CPU memory (``torch.cuda.max_memory_allocated`` is CUDA-only), so this
    reads the profiler's event tree, which is not a public API (checked by ``tests/test_measure.py``).

    Parameters
    ----------
    fn : callable
        Called once, without arguments.

    Returns
    -------
    result : object
        What ``fn()`` returned.
    peak : int
        Peak bytes; 0 when ``fn`` allocated nothing.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _profiler_chatter_dropped(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            extra = node.extra_fields
            events.append((node.start_time_ns, extra.alloc_size, extra.total_allocated))
        stack.extend(node.children)
    if not events:
        return result, 0
    events.sort(key=lambda e: e[0])
    start = events[0][2] - events[0][1]
    return result, max(0, max(total for _, _, total in events) - start)


@dataclass(frozen=True)
class StepCost:
    """Cost of one training step (see :func:`measure_step`).

    Attributes
    ----------
    mode : str
        The gradient method's name.
    iterations : int
        The forward's ``max_steps``.
    seconds : float
        Median wall time of a step.
    peak_bytes : int
        Peak tensor memory of a step (see :func:`peak_memory`).
    steps : int
        Forward iterations actually taken.
    times : tuple of float
        Wall time of every timed step (``seconds`` is their median).
    """

    mode: str
    iterations: int
    seconds: float
    peak_bytes: int
    steps: int
    times: tuple[float, ...] = ()


def training_step(model: DEQ, x: torch.Tensor, target: torch.Tensor) -> None:
    """One forward + backward pass of a mean-squared-error loss (gradients accumulate in the parameters)."""
    loss = (model(x) - target).pow(2).mean()
    loss.backward()


def make_cost_model(
    mode: GradientSpec, iterations: int, d: int, batch: int, norm: float = 0.9, solver: SolverSpec = "picard"
) -> tuple[DEQ, torch.Tensor, torch.Tensor]:
    """A tanh DEQ whose forward takes exactly ``iterations`` steps (its tolerance is out of reach).

    With ``mode="implicit"`` the backward solve is GMRES to a relative tolerance of 1e-4.

    Parameters
    ----------
    mode : str or Gradient
        The gradient method.
    iterations : int
        The forward's ``max_steps``.
    d, batch, norm
        As for :func:`deqkit.problems.tanh_problem` (orthogonal ``W``, float32).
    solver : str or Solver
        The forward solver.

    Returns
    -------
    model : DEQ
    x : torch.Tensor
        Shape ``(batch, d)``.
    target : torch.Tensor
        Zeros shaped like ``x``.
    """
    backward = Implicit(abstol=0.0, reltol=1e-4) if mode == "implicit" else as_gradient(mode)
    block, x = tanh_problem(d, norm, batch=batch)
    model = DEQ(block, solver=solver, backward=backward, abstol=1e-30, reltol=0, max_steps=iterations, max_nfe=None)
    return model, x, torch.zeros_like(x)


def measure_step(
    mode: GradientSpec,
    iterations: int,
    *,
    d: int,
    batch: int,
    repeats: int,
    norm: float = 0.9,
    solver: SolverSpec = "picard",
) -> StepCost:
    """Median wall time and peak tensor memory of one training step of :func:`make_cost_model`'s DEQ.

    The forward's tolerance is unreachable, so it runs exactly ``iterations`` steps; the non-convergence warning
    that follows is expected and not shown. One untimed warm-up step precedes the ``repeats`` timed ones; the
    memory is measured on a further step.

    Parameters
    ----------
    mode, iterations, d, batch, norm, solver
        As for :func:`make_cost_model`.
    repeats : int
        Timed steps (≥ 1).

    Returns
    -------
    StepCost
    """
    repeats = check_int("repeats", repeats, 1)
    model, x, target = make_cost_model(mode, iterations, d, batch, norm, solver)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the unreachable tolerance is the point
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            training_step(model, x, target)
            times.append(time.perf_counter() - start)
        # free what the last step left behind (gradients, solver statistics, the equilibrium's graph) before
        # measuring: a block allocated before the profiler starts and freed during the step would lower the
        # running total it reads
        model.zero_grad(set_to_none=True)
        model.last_stats = model.last_equilibrium = None
        _, peak = peak_memory(lambda: training_step(model, x, target))
    return StepCost(
        model.backward.name, iterations, statistics.median(times[1:]), peak, _forward_steps(model), tuple(times[1:])
    )


def _forward_steps(model: DEQ) -> int:
    """Steps of the layer's last forward solve (its statistics are reset before the measured step)."""
    if model.last_stats is None:
        raise RuntimeError("the layer has not run since its statistics were reset")
    return model.last_stats.forward.steps
