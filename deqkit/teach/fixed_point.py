"""Notebook 01: z ← tanh(W z + x), iterated until convergence — or not.

Two views: a 1-D map with its cobweb plot, and a d-dimensional one where the learner sets the spectral
radius of W and compares methods.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..diagnostics import spectral_radius
from ..errors import ConvergenceWarning
from ..settings import check_int
from ..solvers import Picard, Solver, solve
from .limits import choice, within
from .menus import solver_menu
from .widgets import Panel, attempt, figure

#: What the method dropdowns offer: configured solvers, each under its own label.
METHODS: dict[str, Solver] = solver_menu("picard", Picard(damping=0.5), "anderson", "broyden")
MAX_STEPS = 200
ZLIM = 2.5  # the cobweb's z range


def _solve(f, z0: torch.Tensor, label: str, tol: float, max_steps: int = MAX_STEPS):
    return solve(f, z0, solver=METHODS[label], abstol=tol, reltol=0.0, max_steps=max_steps, record=True)


def fixed_points_1d(w: float, x: float) -> list[tuple[float, float]]:
    """Every fixed point of ``f(z) = tanh(w z + x)`` and the slope ``f'(z*)`` there, in increasing order.

    They lie in (−1, 1) (tanh's range). Each sign change of ``f(z) − z`` on a grid of 2001 points brackets
    one; Broyden's method (the 1-D secant method) started in the bracket refines it to ``|f(z) − z| ≤ 1e-13``
    (where it does not, e.g. at a double root, the bracket's midpoint is kept, within 5e-4). Points closer
    than the grid spacing are one fixed point.

    Parameters
    ----------
    w, x : float
        Slope and offset inside the tanh.

    Returns
    -------
    list of (float, float)
        ``(z*, f'(z*))`` with ``f'(z*) = w (1 − z*²)``.
    """
    grid = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)
    gap = torch.tanh(w * grid + x) - grid
    left = torch.nonzero(torch.sign(gap[:-1]) * torch.sign(gap[1:]) <= 0).flatten()
    starts = torch.where(gap[left] == 0, grid[left], 0.5 * (grid[left] + grid[left + 1]))[:, None]
    if not len(starts):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # such a start keeps its midpoint (see above)
        z, stats = solve(
            lambda z: torch.tanh(w * z + x), starts, solver="broyden", abstol=1e-13, reltol=0, max_steps=50
        )
    z = torch.where(stats.converged[:, None], z, starts)[:, 0]
    points: list[float] = []
    for zi in sorted(z.tolist(), key=lambda v: abs(math.tanh(w * v + x) - v)):  # most accurate first
        if all(abs(zi - p) > 1e-3 for p in points):
            points.append(zi)
    return [(zi, w * (1 - zi * zi)) for zi in sorted(points)]


def _staircase(ax, g, traj: np.ndarray, color: str, label: str) -> None:
    """Cobweb of the 1-D map ``g``: (z_k, z_k) → (z_k, g(z_k)) → (z_{k+1}, z_{k+1}) for each step."""
    nxt = g(traj)
    xs, ys = [traj[0]], [traj[0]]
    for zk, gk in zip(traj, nxt):
        xs += [zk, gk]
        ys += [gk, gk]
    ax.plot(np.clip(xs, -ZLIM, ZLIM), np.clip(ys, -ZLIM, ZLIM), color=color, lw=0.9, alpha=0.8, label=label)


def _draw_iterates(ax, method: str, w: float, x: float, traj: np.ndarray) -> None:
    """The cobweb a method really walks: plain and damped iteration walk a staircase, the others jump."""
    f = lambda z: np.tanh(w * z + x)  # noqa: E731
    solver = METHODS[method]
    if isinstance(solver, Picard):
        damping = solver.damping
        g = lambda z: z + damping * (f(z) - z)  # noqa: E731
        if damping != 1:
            grid = np.linspace(-ZLIM, ZLIM, 400)
            ax.plot(grid, g(grid), ":", color="tab:purple", lw=1, label=f"z + {damping:g}(f(z) − z)")
        _staircase(ax, g, traj, "tab:red", "iterates (cobweb)")
    else:  # Anderson and Broyden mix past iterates: they jump from point to point, no staircase
        shown = np.clip(traj, -ZLIM, ZLIM)
        ax.plot(shown, f(shown), ":", color="tab:red", lw=0.8)
        ax.plot(shown, f(shown), "o", color="tab:red", ms=3, label="(z_k, f(z_k)): jumps, not a staircase")
        for k, zk in enumerate(shown[:6]):
            ax.annotate(str(k), (zk, f(zk)), textcoords="offset points", xytext=(3, 3), fontsize=6)
    ax.plot(traj[0], traj[0], "o", color="tab:red", ms=4)


def _local_rate(method: str, slope: float) -> str:
    """What decides whether ``method`` is attracted to a fixed point with ``f'(z*) = slope``."""
    side, compare = ("attracts", "<") if abs(slope) < 1 else ("repels", "≥")
    if abs(abs(slope) - 1) < 1e-9:  # a double root: first order decides nothing
        return "|f'| = 1: neither attracting nor repelling at first order; plain iteration creeps at best"
    if method == "picard":
        return f"|f'| {compare} 1: z* {side} plain iteration"
    solver = METHODS[method]
    if isinstance(solver, Picard) and solver.damping != 1:
        beta = solver.damping
        rate = 1 - beta * (1 - slope)
        return (
            f"Damped iteration's slope 1 − {beta:g}(1 − f') = {rate:+.3f}: "
            f"{'|·| < 1, it attracts the damped iteration' if abs(rate) < 1 else '|·| ≥ 1, it repels it'}"
        )
    return f"|f'| {compare} 1: z* {side} plain iteration, but {method} does not iterate f"


def _verdict(method: str, w: float, x: float, traj: np.ndarray, z_end: float, converged: bool) -> str:
    """The readout: where the method ended, judged by f' at the true fixed point(s), not at its last iterate."""
    points = fixed_points_1d(w, x)
    steps = len(traj) - 1
    listed = "; ".join(f"z* = {z:+.6f}, f'(z*) = {s:+.3f}" for z, s in points)
    if converged:
        z, s = min(points, key=lambda p: abs(p[0] - z_end))
        text = f"<b>converged</b> after {steps} steps to z* = {z:+.6f}, f'(z*) = {s:+.3f}. {_local_rate(method, s)}."
        if steps == 0:
            text += " It started on it: f(0) = tanh(x) = 0 when x = 0, so z0 = 0 is an exact fixed point."
        return text + (f" All fixed points: {listed}." if len(points) > 1 else "")
    text = f"<b>not converged</b> after {steps} steps; the last two iterates are {traj[-2]:+.4f}, {traj[-1]:+.4f}"
    if abs(traj[-1] - traj[-3]) < 1e-6 < abs(traj[-1] - traj[-2]):
        text += " — a 2-cycle: each step jumps to the other side of z*"
    return (
        text + ". " + "; ".join(f"z* = {z:+.6f}, f'(z*) = {s:+.3f}: {_local_rate(method, s)}" for z, s in points) + "."
    )


def cobweb_panel(w: float = 0.8, x: float = 0.5, method: str = "picard", tol: float = 1e-6) -> Panel:
    """1-D ``f(z) = tanh(w z + x)`` from ``z0 = 0``: the iterates on the graph of f, and the residual per step.

    Plain and damped iteration are drawn as the cobweb (staircase) of the map they iterate; Anderson and
    Broyden, which combine past iterates, as the points ``(z_k, f(z_k))`` they visit. Every fixed point is
    marked (● attracting, |f'(z*)| < 1; ○ repelling), and the readout gives ``f'`` at the true fixed points.

    Parameters
    ----------
    w, x : float
        Slope and offset inside the tanh.
    method : str
        A label of :data:`METHODS` (``"picard"``, ``"picard(damping=0.5)"``, ``"anderson"``, ``"broyden"``); at most
        200 steps.
    tol : float
        Absolute tolerance on ``|f(z) − z|`` (no relative one).

    Returns
    -------
    Panel

    Raises
    ------
    ValueError
        If ``method`` is not a label of :data:`METHODS`, or ``w``, ``x`` or ``tol`` is outside the sliders'
        ranges (``|w| ≤ 3``, ``|x| ≤ 1``, ``1e-12 ≤ tol ≤ 0.1``), where the fixed points marked and named are no
        longer checked to be all of them.
    """
    why = "the fixed points are found on a grid checked for these values only, so others could be missed"
    w, x = within("w", w, -3.0, 3.0, why), within("x", x, -1.0, 1.0, why)
    tol = within(
        "tol",
        tol,
        1e-12,
        0.1,
        "a float64 residual cannot go below ~1e-16, and above 0.1 any iterate near the curve would pass",
    )
    choice("method", method, METHODS)
    f = lambda z: torch.tanh(w * z + x)  # noqa: E731
    z, stats = _solve(f, torch.zeros(1, 1, dtype=torch.float64), method, tol)
    traj = np.array([float(t) for t in stats.trajectory])
    fig, (ax, ax2) = figure(2, layout="fixed")
    grid = np.linspace(-ZLIM, ZLIM, 400)
    ax.plot(grid, np.tanh(w * grid + x), label=f"f(z) = tanh({w:.2f} z + {x:.2f})")
    ax.plot(grid, grid, "k--", lw=0.8, label="z")
    _draw_iterates(ax, method, w, x, traj)
    for zs, slope in fixed_points_1d(w, x):
        ax.plot(zs, zs, "o", ms=7, mec="k", mfc="k" if abs(slope) < 1 else "w", zorder=5)
    ax.set(xlim=(-ZLIM, ZLIM), ylim=(-1.2, 1.2), xlabel="z", title=f"{method} from z0 = 0 (● attracts, ○ repels)")
    ax.legend(fontsize=6, loc="upper left")
    ax2.semilogy(np.maximum(stats.history, 1e-17), marker=".")
    ax2.axhline(tol, color="gray", ls="--", lw=0.8, label="tolerance")
    ax2.set(xlabel="iteration", ylabel="|f(z) − z|", title="residual")
    ax2.legend(fontsize=7)
    return Panel(fig, _verdict(method, w, x, traj, float(z), stats.all_converged))


def random_map(scale: float, x_scale: float, d: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric W with eigenvalues spread over [−scale, scale] (so ρ(W) = ‖W‖₂ = scale) and an input x.

    ``scale`` and ``x_scale`` must be finite and ≥ 0 (else ``ValueError``): a NaN would fill W with NaN.

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
    within("scale", scale, 0.0, 1e3, "ρ(W) is a non-negative number")
    within("x_scale", x_scale, 0.0, 1e3, "a standard deviation is a non-negative number")
    check_int("d", d, 1)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    eig = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    w = scale * (q * eig) @ q.T
    x = x_scale * torch.randn(1, d, generator=gen, dtype=torch.float64)
    return w, x


def _row(label: str, result, err: Exception | None, f) -> str:
    """One row of the race's table: converged, steps, ρ(∂f/∂z) at the answer (converged rows only) — or the error."""
    if err is not None:
        return (
            f"<tr><td>{label}</td><td colspan=3><b>failed</b>: {type(err).__name__}: "
            f"{html.escape(str(err).split('. ')[0])}</td></tr>"
        )
    z, stats = result
    if not stats.all_converged:  # its last iterate is no fixed point: a ρ there would describe nothing
        return f"<tr><td>{label}</td><td><b>no</b></td><td>{stats.steps}</td><td>— (no answer)</td></tr>"
    rho = float(spectral_radius(f, z, iters=60)[0])
    return f"<tr><td>{label}</td><td>yes</td><td>{stats.steps}</td><td>{rho:.3f}</td></tr>"


def _check_iteration_settings(
    scale: float, x_scale: float, methods: Sequence[str], tol: float
) -> tuple[float, float, float]:
    """:func:`iteration_panel`'s arguments as floats, or its ``ValueError`` naming the range and why."""
    why = "the slider's range, where the panel's text was checked to describe what the methods do"
    scale, x_scale = within("scale", scale, 0.1, 2.5, why), within("x_scale", x_scale, 0.0, 2.0, why)
    tol = within(
        "tol",
        tol,
        1e-12,
        0.1,
        "a float64 residual cannot go below ~1e-16, and above 0.1 any iterate near the curve would pass",
    )
    for method in methods:
        choice("method", method, METHODS)
    return scale, x_scale, tol


def iteration_panel(
    scale: float = 0.9, x_scale: float = 0.5, methods: Sequence[str] = ("picard", "anderson"), tol: float = 1e-6
) -> Panel:
    """d-dimensional ``z ← tanh(W z + x)``: residual per iteration of each method, and ρ(∂f/∂z) at its answer.

    Also plots the first four coordinates of the first method's iterates. ``W`` and ``x`` come from
    :func:`random_map` (``d = 40``); every solve starts from ``z = 0`` and takes at most 200 steps. A method
    that raises (e.g. :class:`~deqkit.DivergenceError`) gets its error in its row; the others still plot.

    Parameters
    ----------
    scale : float
        ρ(W) = ‖W‖₂.
    x_scale : float
        Standard deviation of the input's entries. At 0, ``z = 0`` is an exact fixed point and the start.
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
    ValueError
        If a method is not a label of :data:`METHODS`, or ``scale``, ``x_scale`` or ``tol`` is outside the
        sliders' ranges (``0.1 ≤ scale ≤ 2.5``, ``0 ≤ x_scale ≤ 2``, ``1e-12 ≤ tol ≤ 0.1``).
    """
    scale, x_scale, tol = _check_iteration_settings(scale, x_scale, methods, tol)
    w, x = random_map(scale, x_scale)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    z0 = torch.zeros_like(x)
    fig, (ax, ax2) = figure(2, layout="fixed")
    rows, first = [], None
    for label in methods or ("picard",):
        result, err = attempt(_solve, f, z0, label, tol)
        rows.append(_row(label, result, err, f))
        if result is not None:
            stats = result[1]
            first = first or (label, stats)
            ax.semilogy(np.maximum(stats.history, 1e-17), marker=".", ms=3, label=label)
    ax.axhline(tol, color="gray", ls="--", lw=0.8)
    ax.set(xlabel="iteration", ylabel="‖f(z) − z‖∞", title=f"ρ(W) = ‖W‖₂ = {scale:.2f}")
    ax.legend(fontsize=7)
    if first is not None:
        label, stats = first
        ax2.plot(torch.stack(stats.trajectory)[:, 0, :4].numpy(), marker=".", ms=3)
        ax2.set(xlabel="iteration", ylabel="z_i", title=f"{label}: first 4 coordinates")
    text = (
        "<table><tr><th>method</th><th>converged</th><th>steps</th><th>ρ(∂f/∂z) at its answer</th></tr>"
        + "".join(rows)
        + "</table>"
        "ρ &lt; 1 at the answer: it attracts plain iteration, whose error shrinks there by about ρ per step — "
        f"slowly when ρ is near 1, so {MAX_STEPS} steps may not be enough. ρ &gt; 1: plain iteration is pushed "
        "away."
    )
    if x_scale == 0:
        text += (
            " <b>Input scale 0:</b> f(0) = tanh(0) = 0, so the start z = 0 is already an exact fixed point: "
            "every method stops at step 0, whatever ρ — stable or not, nothing pushes the iteration off it."
        )
    return Panel(fig, text)


def rate_exercise(observed: float, rho: float) -> str | None:
    """Check notebook 01's exercise: plain iteration's per-step factor on ``random_map(0.95, 0.5)`` and ρ there.

    Parameters
    ----------
    observed : float
        The learner's per-step shrink factor of the residual, from the last ten residuals.
    rho : float
        The learner's spectral radius of ``∂f/∂z`` at the fixed point.

    Returns
    -------
    str or None
        None when both are right; else what is wrong and what to look at.
    """
    w, x = random_map(0.95, 0.5)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    z_star, _ = solve(f, torch.zeros_like(x), solver="anderson", abstol=1e-13, reltol=0, strict=True)
    rho_ref = float(spectral_radius(f, z_star, iters=200)[0])
    rho_w = float(torch.linalg.eigvalsh(w).abs().max())
    if abs(float(rho) - rho_w) < 1e-3:
        return (
            f"rho = {float(rho):.3f} is ρ(W). The rate is set by the Jacobian ∂f/∂z = diag(1 − tanh²(Wz + x)) W "
            "at z*, which tanh's saturation shrinks: use deqkit.spectral_radius(f, z_star)."
        )
    if abs(float(rho) - rho_ref) > 0.01:
        return (
            f"rho = {float(rho):.4f}, but ρ(∂f/∂z) at z* is not that: estimate it with "
            "deqkit.spectral_radius(f, z_star)."
        )
    if abs(float(observed) - rho_ref) > 0.02:
        return (
            f"observed = {float(observed):.4f} is not the residual's shrink factor per step: over the last ten "
            "steps the residual shrinks by (r[-1] / r[-11]), so one step shrinks it by that to the power 1/10."
        )
    return None
