"""Notebook 01: z ← tanh(W z + x), iterated until convergence — or not.

Two views: a 1-D map with its cobweb plot, and a d-dimensional one where the learner sets the spectral
radius of W and compares methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..diagnostics import spectral_radius
from ..solvers import solve
from .widgets import Panel, figure

# label -> (method, options): what the method dropdowns offer
METHODS: dict[str, tuple[str, dict]] = {
    "picard": ("picard", {}),
    "damped picard": ("picard", {"damping": 0.5}),
    "anderson": ("anderson", {}),
    "broyden": ("broyden", {}),
}
MAX_STEPS = 200


def _solve(f, z0: torch.Tensor, label: str, tol: float, max_steps: int = MAX_STEPS):
    method, options = METHODS[label]
    return solve(f, z0, method=method, abstol=tol, reltol=0.0, max_steps=max_steps, record=True, **options)


def cobweb_panel(w: float = 0.8, x: float = 0.5, method: str = "picard", tol: float = 1e-6) -> Panel:
    """1-D ``f(z) = tanh(w z + x)`` from ``z0 = 0``: the cobweb of the iterates and the residual per step.

    The slope ``f'(z*) = w (1 − tanh²(w z* + x))`` decides everything: ``|f'| < 1`` attracts plain iteration
    (monotonically if positive, alternating if negative), ``|f'| > 1`` repels it.

    Parameters
    ----------
    w, x : float
        Slope and offset inside the tanh.
    method : str
        A label of :data:`METHODS` (``"picard"``, ``"damped picard"``, ``"anderson"``, ``"broyden"``); at most
        200 steps.
    tol : float
        Absolute tolerance on ``|f(z) − z|`` (no relative one).

    Returns
    -------
    Panel

    Raises
    ------
    KeyError
        If ``method`` is not a label of :data:`METHODS`.
    """
    f = lambda z: torch.tanh(w * z + x)  # noqa: E731
    z0 = torch.zeros(1, 1, dtype=torch.float64)
    z, stats = _solve(f, z0, method, tol)
    traj = np.array([float(t) for t in stats.trajectory])
    fig, (ax, ax2) = figure(2)
    grid = np.linspace(-2.5, 2.5, 400)
    ax.plot(grid, np.tanh(w * grid + x), label=f"f(z) = tanh({w:.2f} z + {x:.2f})")
    ax.plot(grid, grid, "k--", lw=0.8, label="z")
    # cobweb: (z_k, z_k) → (z_k, f(z_k)) → (z_{k+1}, z_{k+1}) draws each step of the map
    fz = np.tanh(w * traj + x)
    xs, ys = [traj[0]], [traj[0]]
    for k in range(len(traj)):
        xs += [traj[k], traj[k + 1] if k + 1 < len(traj) else fz[k]]
        ys += [fz[k], traj[k + 1] if k + 1 < len(traj) else fz[k]]
    ax.plot(np.clip(xs, -2.5, 2.5), np.clip(ys, -2.5, 2.5), color="tab:red", lw=0.9, alpha=0.8, label="iterates")
    ax.plot(traj[0], traj[0], "o", color="tab:red", ms=4)
    ax.set(xlim=(-2.5, 2.5), ylim=(-1.2, 1.2), xlabel="z", title=f"{method}: cobweb from z0 = 0")
    ax.legend(fontsize=7, loc="upper left")
    ax2.semilogy(np.maximum(stats.history, 1e-17), marker=".")
    ax2.axhline(tol, color="gray", ls="--", lw=0.8, label="tolerance")
    ax2.set(xlabel="iteration", ylabel="|f(z) − z|", title="residual")
    ax2.legend(fontsize=7)
    zs = float(z)
    slope = w * (1 - math.tanh(w * zs + x) ** 2)
    verdict = ("|f'(z*)| < 1: z* attracts the iteration" if abs(slope) < 1 else
               "|f'(z*)| ≥ 1: z* repels plain iteration (Newton-type methods may still land on it)")
    state = "converged" if stats.all_converged else "not converged (best iterate shown)"
    text = f"<b>{state}</b> after {stats.steps} steps: z = {zs:.6f}, f'(z) = {slope:+.3f}. {verdict}."
    return Panel(fig, text)


def random_map(scale: float, x_scale: float, d: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric W with eigenvalues spread over [−scale, scale] (so ρ(W) = ‖W‖₂ = scale) and an input x.

    Parameters
    ----------
    scale : float
        Spectral radius (and norm) of ``W``; its eigenvalues are evenly spaced from ``−scale`` to ``scale``.
    x_scale : float
        Standard deviation of the input's entries.
    d : int
        Dimension.
    seed : int
        Seed of the random eigenvectors and input.

    Returns
    -------
    w : torch.Tensor
        float64, shape ``(d, d)``.
    x : torch.Tensor
        float64, shape ``(1, d)``.
    """
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    w = scale * (q * eig) @ q.T
    x = x_scale * torch.randn(1, d, generator=gen, dtype=torch.float64)
    return w, x


def iteration_panel(scale: float = 0.9, x_scale: float = 0.5, methods: Sequence[str] = ("picard", "anderson"),
                    tol: float = 1e-6) -> Panel:
    """d-dimensional ``z ← tanh(W z + x)``: residual per iteration of each method, and ρ(∂f/∂z) at its answer.

    Also plots the first four coordinates of the first method's iterates. ``W`` and ``x`` come from
    :func:`random_map` (``d = 40``); every solve starts from ``z = 0`` and takes at most 200 steps.

    Parameters
    ----------
    scale : float
        ρ(W) = ‖W‖₂.
    x_scale : float
        Standard deviation of the input's entries.
    methods : sequence of str
        Labels of :data:`METHODS`; an empty sequence means ``("picard",)``.
    tol : float
        Absolute tolerance on ``‖f(z) − z‖∞`` (no relative one).

    Returns
    -------
    Panel
        The text tabulates, per method, whether it converged, its steps and ρ(∂f/∂z) at its answer.

    Raises
    ------
    KeyError
        If a method is not a label of :data:`METHODS`.
    """
    w, x = random_map(scale, x_scale)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    z0 = torch.zeros_like(x)
    fig, (ax, ax2) = figure(2)
    rows = []
    first = None
    for label in methods or ("picard",):
        z, stats = _solve(f, z0, label, tol)
        first = first or (label, stats)
        ax.semilogy(np.maximum(stats.history, 1e-17), marker=".", ms=3, label=label)
        rho = float(spectral_radius(lambda zz: torch.tanh(zz @ w.T + x), z, iters=60)[0])
        rows.append(f"<tr><td>{label}</td><td>{'yes' if stats.all_converged else '<b>no</b>'}</td>"
                    f"<td>{stats.steps}</td><td>{rho:.3f}</td></tr>")
    ax.axhline(tol, color="gray", ls="--", lw=0.8)
    ax.set(xlabel="iteration", ylabel="‖f(z) − z‖∞", title=f"ρ(W) = ‖W‖₂ = {scale:.2f}")
    ax.legend(fontsize=7)
    label, stats = first
    traj = torch.stack(stats.trajectory)[:, 0, :4].numpy()
    ax2.plot(traj, marker=".", ms=3)
    ax2.set(xlabel="iteration", ylabel="z_i", title=f"{label}: first 4 coordinates")
    text = ("<table><tr><th>method</th><th>converged</th><th>steps</th><th>ρ(∂f/∂z) at its answer</th></tr>"
            + "".join(rows) + "</table>"
            "ρ &lt; 1 at the answer: a contraction there, plain iteration converges at rate ≈ ρ per step. "
            "ρ &gt; 1: plain iteration is pushed away.")
    return Panel(fig, text)
