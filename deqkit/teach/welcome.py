"""Notebook 00: a ten-line DEQ, z = tanh(W z + x), solved and plotted."""

from __future__ import annotations

import torch

from ..solvers import solve
from ..stats import SolverStats
from .widgets import Panel, figure


def tiny_deq(scale: float = 0.8, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, SolverStats]:
    """Solve z = tanh(W z + x) for a random W with ‖W‖₂ = ``scale``, by plain iteration in float64.

    The solve starts from ``z = 0`` and stops at ``‖f(z) − z‖∞ ≤ 1e-10`` or after 200 iterations (with a
    :class:`~deqkit.ConvergenceWarning`).

    Parameters
    ----------
    scale : float
        Spectral norm of ``W``; below 1, ``f`` is a contraction and the iteration converges.
    d : int
        Dimension of ``z``.
    seed : int
        Seed of ``W`` and of the input ``x`` (``0.3 · N(0, 1)`` per entry).

    Returns
    -------
    x : torch.Tensor
        Shape ``(d,)``.
    z_star : torch.Tensor
        Shape ``(d,)``: the fixed point (the lowest-residual iterate if the solve did not converge).
    stats : SolverStats
    """
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=gen, dtype=torch.float64)
    w *= scale / torch.linalg.matrix_norm(w, 2)
    x = 0.3 * torch.randn(1, d, generator=gen, dtype=torch.float64)
    z, stats = solve(lambda z: torch.tanh(z @ w.T + x), torch.zeros_like(x), method="picard",
                     abstol=1e-10, reltol=0, max_steps=200)
    return x[0], z[0], stats


def welcome_panel(scale: float = 0.8) -> Panel:
    """Residual ‖f(z) − z‖∞ per iteration (log scale) and the fixed point, for ‖W‖₂ = ``scale``.

    Parameters
    ----------
    scale : float
        Spectral norm of ``W`` in :func:`tiny_deq`.

    Returns
    -------
    Panel
        The text gives the iterations taken, or the residual reached when the solve did not converge (the
        solver's :class:`~deqkit.ConvergenceWarning` is not caught).
    """
    x, z, stats = tiny_deq(scale)
    history = stats.history
    fig, (ax1, ax2) = figure(2)
    ax1.semilogy(history, marker=".")
    ax1.set(xlabel="iteration", ylabel="‖f(z) − z‖∞", title=f"z ← tanh(Wz + x), ‖W‖₂ = {scale:.2f}")
    ax1.axhline(1e-10, color="gray", ls="--", lw=0.8)
    ax2.bar(range(len(z)), z.numpy(), label="z*")
    ax2.plot(range(len(x)), torch.tanh(x).numpy(), "k.", label="tanh(x) (one layer)")
    ax2.set(xlabel="coordinate", title="the equilibrium z*")
    ax2.legend(fontsize=8)
    if stats.all_converged:
        return Panel(fig, f"{stats.steps} iterations to reach ‖f(z) − z‖∞ ≤ 1e-10")
    return Panel(fig, f"not converged: after {stats.steps} iterations ‖f(z) − z‖∞ = {float(stats.residual.max()):.2e} "
                      "(above 1e-10); deqkit warned (ConvergenceWarning)")
