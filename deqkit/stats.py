"""Statistics of one fixed-point solve (forward or backward)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SolverStats"]


@dataclass
class SolverStats:
    """What a solve cost and how far it got, per sample.

    Attributes
    ----------
    method : str
        The solver that ran, e.g. ``"anderson"`` or ``"dynamic_ss(tsit5)"``.
    nfe : int
        Evaluations of the map (``f`` forward; one vector-Jacobian product each, backward).
    steps : int
        Solver steps taken: iterations; for ``dynamic_ss``, attempted ODE steps (accepted or rejected) plus
        polishing iterations.
    converged : torch.Tensor
        Bool tensor, shape ``(batch,)``: the sample met the termination rule.
    residual : torch.Tensor
        ``‖f(z) − z‖∞`` per sample at the returned ``z``.
    relative_residual : torch.Tensor
        ``residual / ‖f(z)‖∞`` per sample.
    history : list of float
        The largest residual over the batch after each step (index 0 is the starting point).
    nfe_history : list of int
        The number of evaluations spent when each ``history`` entry was recorded.
    wall_time : float
        Seconds spent in the solve.
    rejected_steps : int
        ODE methods only: steps the error control rejected.
    times : list of float
        ODE methods only: the integration time ``t`` of each ``history`` entry.
    converged_step, converged_nfe : torch.Tensor
        Long tensors, shape ``(batch,)``: the step and the evaluation count at which each sample met the termination
        rule; −1 for a sample that did not converge.
    trajectory : list of torch.Tensor
        The iterates, one per ``history`` entry, when the solve ran with ``record=True``.
    """

    method: str
    nfe: int
    steps: int
    converged: torch.Tensor
    residual: torch.Tensor
    relative_residual: torch.Tensor
    history: list[float] = field(default_factory=list)
    nfe_history: list[int] = field(default_factory=list)
    wall_time: float = 0.0
    rejected_steps: int = 0
    times: list[float] = field(default_factory=list)
    trajectory: list[torch.Tensor] = field(default_factory=list, repr=False)
    converged_step: torch.Tensor | None = None
    converged_nfe: torch.Tensor | None = None

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def num_converged(self) -> int:
        return int(self.converged.sum())

    def __repr__(self) -> str:
        """A summary: the counts and the worst residual, not the per-step lists (their lengths only)."""
        batch = self.converged.numel()
        extra = f", rejected_steps={self.rejected_steps}" if self.rejected_steps else ""
        recorded = f", trajectory=[{len(self.trajectory)} iterates]" if self.trajectory else ""
        return (
            f"SolverStats(method={self.method!r}, converged={self.num_converged}/{batch}, nfe={self.nfe}, "
            f"steps={self.steps}{extra}, max_residual={float(self.residual.max()):.3g}, "
            f"history=[{len(self.history)} entries]{recorded}, wall_time={self.wall_time * 1e3:.1f} ms)"
        )

    def __str__(self) -> str:
        batch = self.converged.numel()
        return (
            f"{self.method}: {self.num_converged}/{batch} converged, {self.steps} steps, {self.nfe} evaluations, "
            f"max residual {float(self.residual.max()):.2e}, {self.wall_time * 1e3:.1f} ms"
        )
