"""Gradients through a fixed point: implicit (steady-state adjoint), unrolled, one-step.

At ``z* = f(z*, x)`` the implicit function theorem gives ``dz*/dθ = (I − J)⁻¹ ∂f/∂θ`` with ``J = ∂f/∂z``.
The layer returns ``out = f(z*, x)`` evaluated once more with autograd on ("re-attached"), so ``out`` carries
the graph to ``x`` and to every parameter of ``f`` however ``f`` holds them. For an incoming gradient ``g``
the exact gradient of ``out`` is ``u ∂f/∂(θ, x)`` with ``u = g (I − J)⁻¹``, i.e. the fixed point of

    u = g + uJ      (a vector–Jacobian product per evaluation)

:class:`ImplicitAdjoint` swaps ``g`` for ``u`` on the way back; any forward solver or GMRES finds ``u``.
``"one_step"`` keeps ``u = g`` (the Jacobian-free gradient); ``"unrolled"`` backpropagates through the solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DivergenceError
from .solvers import run
from .stats import SolverStats

BACKWARD_MODES = ("implicit", "unrolled", "one_step")


@dataclass
class AdjointConfig:
    """What the backward solve needs: the map, the solver and its tolerances, where to report."""

    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    solver: Any
    abstol: float
    reltol: float
    max_steps: int | None
    strict: bool
    report: Callable[[SolverStats], None]


class ImplicitAdjoint(torch.autograd.Function):
    """Identity on the forward pass; on the backward pass ``g ↦ u`` with ``u = g + uJ`` at ``z*``."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, z_star: torch.Tensor, x: torch.Tensor,
                config: AdjointConfig) -> torch.Tensor:
        ctx.z_star, ctx.x, ctx.config = z_star.detach(), x.detach(), config
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "deqkit: double backward (create_graph=True) through the implicit DEQ gradient is not supported: "
                "its backward pass is itself a fixed-point solve. Use DEQ(..., backward='unrolled') for "
                "higher-order derivatives."
            )
        cfg = ctx.config
        bad = ~torch.isfinite(grad)
        if bad.any():  # one check per backward, not per step: name the real culprit, not the solver
            raise DivergenceError(
                f"deqkit: the gradient arriving at the DEQ's output contains NaN or Inf ({int(bad.sum())} entries, "
                f"{int(bad.flatten(1).any(1).sum())} of {grad.shape[0]} samples) before the backward solve started: "
                "the loss or a layer after the DEQ produced it (check them, e.g. with "
                "torch.autograd.set_detect_anomaly(True))."
            )
        z = ctx.z_star.requires_grad_()
        with torch.enable_grad():
            fz = cfg.f(z, ctx.x)

        def vjp_map(u: torch.Tensor) -> torch.Tensor:
            (uj,) = torch.autograd.grad(fz, z, u, retain_graph=True, allow_unused=True)
            return grad + (torch.zeros_like(u) if uj is None else uj)

        sol = run(cfg.solver, vjp_map, grad, abstol=cfg.abstol, reltol=cfg.reltol, max_steps=cfg.max_steps,
                  strict=cfg.strict)
        cfg.report(sol.stats)
        return sol.z, None, None, None
