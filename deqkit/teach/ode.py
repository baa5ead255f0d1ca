"""Notebook 02: the fixed point as the steady state of dz/dt = f(z) − z, in two dimensions.

``f(z) = tanh(a·M z)`` with one of two matrices M: ``"pitchfork"`` (symmetric coupling: one stable equilibrium
for small a, then a saddle at the origin between two stable ones) and ``"spiral"`` (a rotation: a stable spiral,
then — past a Hopf bifurcation — a limit cycle and no stable equilibrium at all).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import ConvergenceWarning
from ..solvers import solve
from . import fast_mode
from .widgets import Panel, figure

SYSTEMS = ("pitchfork", "spiral")
ODE_METHODS = ("tsit5", "dopri5", "bosh3")
NEAR_ORIGIN = (0.05, 0.02)  # a start next to the origin, which is an equilibrium of both systems


def system_matrix(system: str, a: float) -> torch.Tensor:
    """Return ``a·M``, the float64 2×2 matrix of ``f(z) = tanh(a·M z)``.

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
        ``"pitchfork"``: ``M = [[1, 0.5], [0.5, 1]]``; ``"spiral"``: ``M`` the rotation by 1.2 rad.
    a : float
        Gain, the bifurcation parameter.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError
        If ``system`` is unknown.
    """
    if system == "pitchfork":
        m = [[1.0, 0.5], [0.5, 1.0]]
    elif system == "spiral":
        c, s = math.cos(1.2), math.sin(1.2)
        m = [[c, -s], [s, c]]
    else:
        raise ValueError(f"unknown system {system!r}; choose one of {SYSTEMS}")
    return a * torch.tensor(m, dtype=torch.float64)


def vector_field(system: str, a: float):
    """Return the map ``f(z) = tanh(a·M z)`` whose steady state the notebook seeks (the flow is ``f(z) − z``).

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
    a : float
        See :func:`system_matrix`.

    Returns
    -------
    callable
        Maps float64 points of shape ``(batch, 2)`` to the same shape.

    Raises
    ------
    ValueError
        If ``system`` is unknown.
    """
    w = system_matrix(system, a)
    return lambda z: torch.tanh(z @ w.T)


def starts() -> torch.Tensor:
    """Return the phase portrait's starting points: :data:`NEAR_ORIGIN`, then eight on a circle of radius 1.8.

    Returns
    -------
    torch.Tensor
        float64, shape ``(9, 2)``.
    """
    angles = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:-1] + 0.3
    ring = 1.8 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return torch.cat([torch.tensor([NEAR_ORIGIN], dtype=torch.float64), ring])


def equilibria(system: str, a: float) -> list[tuple[np.ndarray, bool]]:
    """Every equilibrium Broyden finds from a grid of starts, with its stability (all Re λ(J − I) < 0).

    Broyden runs from a 9×9 grid over ``[−2, 2]²`` to ``‖f(z) − z‖∞ ≤ 1e-10``; starts that fail are ignored, as
    are answers outside ``[−3, 3]²`` and duplicates (within 1e-4).

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
    a : float
        See :func:`system_matrix`.

    Returns
    -------
    list of (numpy.ndarray, bool)
        Each equilibrium, shape ``(2,)``, and whether it is stable for ``dz/dt = f(z) − z``.
    """
    f = vector_field(system, a)
    g = torch.linspace(-2, 2, 9, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # starts that fail are simply not equilibria
        z, stats = solve(f, grid, method="broyden", abstol=1e-10, reltol=0, max_steps=60)
    found: list[tuple[np.ndarray, bool]] = []
    for zi in z[stats.converged]:
        if zi.abs().max() > 3 or any(np.abs(zi.numpy() - p).max() < 1e-4 for p, _ in found):
            continue
        jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], zi)
        stable = bool((torch.linalg.eigvals(jac - torch.eye(2, dtype=jac.dtype)).real < 0).all())
        found.append((zi.numpy(), stable))
    return found


def phase_panel(system: str = "pitchfork", a: float = 1.2, ode_method: str = "tsit5", abstol: float = 1e-5,
                reltol: float = 1e-5) -> Panel:
    """Phase portrait with ODE trajectories to steady state, their step sizes and cost, and where Broyden lands.

    From each of :func:`starts`, ``dynamic_ss`` without polishing integrates ``dz/dt = f(z) − z`` for at most
    200 steps (80 in fast mode); the equilibria of :func:`equilibria` are marked ● (stable) or ○ (unstable).

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
    a : float
        See :func:`system_matrix`.
    ode_method : str
        An adaptive ODE method of :class:`~deqkit.solvers.DynamicSS` (e.g. ``"tsit5"``, ``"dopri5"``, ``"bosh3"``).
    abstol, reltol : float
        The termination rule (see :func:`deqkit.solve`).

    Returns
    -------
    Panel

    Raises
    ------
    ValueError
        If ``system`` or ``ode_method`` is unknown.

    Warns
    -----
    deqkit.ConvergenceWarning
        Once, with the first failing trajectory's message, when some did not reach steady state.
    """
    f = vector_field(system, a)
    max_steps = 80 if fast_mode() else 200
    fig, (ax, ax_dt, ax_nfe) = figure(3, width=3.6, height=3.4)
    grid = np.linspace(-2.2, 2.2, 25)
    gx, gy = np.meshgrid(grid, grid)
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))
    vel = (f(pts) - pts).numpy()
    speed = np.hypot(vel[:, 0], vel[:, 1]).reshape(gx.shape)
    ax.streamplot(gx, gy, vel[:, 0].reshape(gx.shape), vel[:, 1].reshape(gx.shape), color=speed, cmap="Greys",
                  density=0.8, linewidth=0.6, arrowsize=0.6)
    rows, failed = [], []
    for i, z0 in enumerate(starts()):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            z, stats = solve(f, z0[None], method="dynamic_ss", ode_method=ode_method, polish=None, abstol=abstol,
                             reltol=reltol, max_steps=max_steps, record=True)
        for w in caught:  # keep deqkit's non-convergence warnings for below; pass any other warning on
            if issubclass(w.category, ConvergenceWarning):
                failed.append(w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        traj = torch.cat(stats.trajectory).numpy()
        color = f"C{i % 10}"
        ax.plot(traj[:, 0], traj[:, 1], "-", color=color, lw=1.0)
        ax.plot(traj[:, 0], traj[:, 1], ".", color=color, ms=3)
        times = np.array(stats.times)
        ax_dt.semilogy(times[1:], np.diff(times), ".-", color=color, ms=3, lw=0.8)
        ax_nfe.plot(times, stats.nfe_history, "-", color=color, lw=1.0)
        if stats.all_converged:
            ax_nfe.plot(times[-1], stats.nfe_history[-1], "o", color=color, ms=4)
        rows.append((z0.numpy(), z[0].numpy(), stats))
    if failed:  # show the learner deqkit's own warning once, not once per trajectory
        warnings.warn(failed[0], stacklevel=2)
    for p, stable in equilibria(system, a):
        ax.plot(*p, "o", ms=8, mfc="k" if stable else "w", mec="k", zorder=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # shown in the legend instead
        zb, sb = solve(f, torch.tensor([NEAR_ORIGIN], dtype=torch.float64), method="broyden", abstol=1e-10,
                       reltol=0, max_steps=60)
    ax.plot(*zb[0].numpy(), "x", color="tab:red", ms=10, mew=2, zorder=6,
            label="Broyden from ★" + ("" if sb.all_converged else " (not converged)"))
    ax.plot(*NEAR_ORIGIN, "*", color="tab:red", ms=9, zorder=6)
    ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2), aspect="equal", title=f"{system}, a = {a:.2f}: dz/dt = f(z) − z")
    ax.legend(fontsize=7, loc="lower right")
    ax_dt.set(xlabel="t", ylabel="step size", title=f"{ode_method}: accepted steps")
    ax_nfe.set(xlabel="t", ylabel="evaluations of f", title="cost (● = termination rule fires)")
    first = rows[0][2]
    end = first.trajectory[-1][0]
    ode = (f"the ODE settles at ({end[0]:+.3f}, {end[1]:+.3f})" if first.all_converged else
           f"the ODE is still moving after {first.steps} steps, at ({end[0]:+.3f}, {end[1]:+.3f})")
    newton = f"({float(zb[0, 0]):+.3f}, {float(zb[0, 1]):+.3f})" + ("" if sb.all_converged else ", not converged")
    text = (f"● stable equilibrium, ○ unstable. {len(rows) - len(failed)}/{len(rows)} trajectories reached "
            f"‖dz/dt‖∞ ≤ {abstol:g} or ≤ {reltol:g}·‖f(z)‖∞ within {max_steps} steps. "
            f"From ★ = {NEAR_ORIGIN}: {ode}; Broyden (Newton-type) lands on {newton}.")
    return Panel(fig, text)
