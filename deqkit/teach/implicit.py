"""Notebook 05: the implicit adjoint, measured — its panels, pure functions ``(widget values) -> Panel``: gradient
accuracy, cost against forward iterations, the backward solvers, and what happens as ρ(∂f/∂z) nears 1.

What they draw is measured (and cached) in :mod:`deqkit.teach.implicit_measures`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from .implicit_measures import (
    BACKWARD_SOLVERS,
    MODES,
    NearOne,
    backward_run,
    broyden_backward,
    check_accuracy_settings,
    check_norm,
    cost_sizes,
    gradient_accuracy,
    iterations_grid,
    near_one,
    norms_grid,
    replay,
    step_cost,
    tolerances_grid,
)
from .limits import choice
from .widgets import Panel, figure, progress, subplots

__all__ = [
    "MODE_COLORS",
    "SOLVER_COLORS",
    "accuracy_panel",
    "backward_panel",
    "broyden_memory_panel",
    "cost_panel",
    "rho_panel",
]

MODE_COLORS = {"implicit": "tab:blue", "unrolled": "tab:orange", "one_step": "tab:green"}
SOLVER_COLORS = {
    "gmres": "tab:purple",
    "gmres(full)": "tab:pink",
    "anderson": "tab:blue",
    "picard": "tab:red",
    "dynamic_ss": "tab:green",
    "broyden": "tab:brown",
    "broyden(m=300)": "tab:olive",
}


def _quick_figure(
    ncols: int = 1,
    *,
    width: float = 4.2,
    height: float = 3.2,
    left: float,
    right: float,
    bottom: float,
    top: float,
    wspace: float = 0.3,
) -> tuple[Figure, Any]:
    """:func:`~deqkit.teach.widgets.figure` with fixed margins instead of the constrained layout.

    The widgets of notebook 05 redraw on every move, and the constrained layout measures every tick label twice on
    each redraw; fixed margins skip that. They are chosen per panel (fractions of the figure).
    """
    fig = Figure(figsize=(width * ncols, height))
    axes = subplots(fig, 1, ncols)
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top, wspace=wspace)
    return fig, axes


def accuracy_panel(tol: float = 1e-4, norm: float = 0.9) -> Panel:
    """Relative error and cosine of implicit / unrolled / one-step gradients against the forward tolerance.

    Measures every tolerance of :func:`tolerances_grid` (cached) and highlights the one nearest ``tol``.

    Parameters
    ----------
    tol : float
        The tolerance to highlight, snapped to the nearest on the grid (in log scale).
    norm : float
        ``‖W‖₂`` of the model.

    Returns
    -------
    Panel
        The text tabulates each mode's cosine and relative error at the highlighted tolerance.

    Raises
    ------
    ValueError
        If ``tol`` is outside ``[1e-13, 0.1]`` or ``norm`` outside ``[0.05, 0.95]`` (the slider offers 0.5, 0.9).
    """
    check_accuracy_settings(tol, norm)
    grid = tolerances_grid()
    tol = min(grid, key=lambda t: abs(math.log10(t) - math.log10(tol)))
    # the first call measures the whole grid, later ones read the cache
    rows = [gradient_accuracy(t, norm) for t in progress(grid, desc="tolerances")]
    here = gradient_accuracy(tol, norm)
    fig, (ax, ax2) = _quick_figure(2, left=0.09, right=0.99, bottom=0.15, top=0.91, wspace=0.32)
    for mode in MODES:
        c = MODE_COLORS[mode]
        ax.loglog(grid, [max(r.relative_error[mode], 1e-16) for r in rows], "o-", color=c, label=mode, ms=3)
        ax2.loglog(grid, [max(1 - r.cosine[mode], 1e-16) for r in rows], "o-", color=c, label=mode, ms=3)
        ax.plot([tol], [max(here.relative_error[mode], 1e-16)], "o", color=c, ms=9, mfc="none", mew=2)
    ax.axvline(tol, color="k", lw=0.8, ls=":")
    ax2.axvline(tol, color="k", lw=0.8, ls=":")
    ax.set(
        xlabel="forward tolerance (abstol = reltol)", ylabel="‖g − g*‖ / ‖g*‖", title=f"gradient error, ‖W‖₂ = {norm:g}"
    )
    ax2.set(xlabel="forward tolerance", ylabel="1 − cosine(g, g*)  (floored at 1e-16)", title="direction")
    ax.invert_xaxis()
    ax2.invert_xaxis()
    ax.legend(fontsize=7)
    cells = "".join(
        f"<tr><td>{m}</td><td>{here.cosine[m]:.6f}</td><td>{here.relative_error[m]:.2e}</td></tr>" for m in MODES
    )
    text = (
        f"forward tolerance {tol:.0e} ({here.forward_nfe} Anderson evaluations): "
        f"<table><tr><th>mode</th><th>cosine</th><th>relative error</th></tr>{cells}</table>"
    )
    return Panel(fig, text)


def cost_panel(iterations: int = 50, mode: str = "implicit") -> Panel:
    """Peak memory and wall time of a training step against the forward iterations, implicit vs unrolled.

    Parameters
    ----------
    iterations : int
        The point to highlight, snapped to the nearest of :func:`iterations_grid`.
    mode : {"implicit", "unrolled", "one_step"}
        The mode to highlight (``"one_step"`` is highlighted at its point only; its curve is not drawn).

    Returns
    -------
    Panel
        The text compares implicit and unrolled memory and time at ``iterations``.
    """
    choice("mode", mode, MODE_COLORS)
    grid = iterations_grid()
    iterations = min(grid, key=lambda n: abs(n - iterations))
    fig, (ax, ax2) = _quick_figure(2, left=0.08, right=0.99, bottom=0.15, top=0.91, wspace=0.22)
    for m in ("implicit", "unrolled"):
        rows = [step_cost(m, n) for n in grid]
        c = MODE_COLORS[m]
        lw = 2.5 if m == mode else 1.0
        ax.plot(grid, [r.peak_bytes / 2**20 for r in rows], "o-", color=c, lw=lw, ms=3, label=m)
        ms = np.array([[r.seconds, r.seconds - min(r.times), max(r.times) - r.seconds] for r in rows]) * 1e3
        ax2.errorbar(grid, ms[:, 0], yerr=ms[:, 1:].T, fmt="o-", color=c, lw=lw, ms=3, capsize=2, label=m)
    here = step_cost(mode, iterations)
    c = MODE_COLORS[mode]
    ax.plot([iterations], [here.peak_bytes / 2**20], "o", color=c, ms=10, mfc="none", mew=2)
    ax2.plot([iterations], [here.seconds * 1e3], "o", color=c, ms=10, mfc="none", mew=2)
    s = cost_sizes()
    ax.set(
        xlabel="forward iterations",
        ylabel="peak tensor memory (MiB)",
        ylim=(0, None),
        title=f"training step, d = {s['d']}, batch {s['batch']}",
    )
    ax2.set(
        xlabel="forward iterations",
        ylabel="wall time (ms)",
        ylim=(0, None),
        title=f"time: median of {len(here.times)} steps (bars: min–max)",
    )
    ax.legend(fontsize=7)
    imp, unr = step_cost("implicit", iterations), step_cost("unrolled", iterations)
    text = (
        f"{iterations} forward iterations ({here.steps} taken), memory and median step time: implicit "
        f"{imp.peak_bytes / 2**20:.2f} MiB, "
        f"{imp.seconds * 1e3:.1f} ms; unrolled {unr.peak_bytes / 2**20:.2f} MiB, {unr.seconds * 1e3:.1f} ms "
        f"(unrolled / implicit memory {unr.peak_bytes / max(imp.peak_bytes, 1):.1f}×). Highlighted: {mode}."
    )
    return Panel(fig, text)


def backward_panel(solver: str = "gmres", norm: float = 0.9) -> Panel:
    """Residual of the backward solve against vector–Jacobian products, for each solver; the chosen one bold.

    Parameters
    ----------
    solver : str
        The solver to highlight, one of :data:`BACKWARD_SOLVERS`.
    norm : float
        ``‖W‖₂`` (see :func:`backward_run`).

    Returns
    -------
    Panel
        The text gives the chosen solver's products, final residual and time, or its divergence message.
    """
    choice("solver", solver, BACKWARD_SOLVERS)
    check_norm(norm)
    fig, ax = _quick_figure(width=6.4, left=0.13, right=0.98, bottom=0.15, top=0.91)
    runs = {name: backward_run(name, norm) for name in BACKWARD_SOLVERS}
    for name, r in runs.items():
        bold = name == solver
        label = f"{name}: blew up" if r.error else f"{name}: {r.nfe}" + ("" if r.converged else " (not converged)")
        ax.semilogy(
            r.nfe_history,
            np.maximum(r.history, 1e-17),
            "-",
            color=SOLVER_COLORS[name],
            lw=2.5 if bold else 0.8,
            alpha=1.0 if bold else 0.6,
            label=label,
        )
        replay(r.warnings)
    ax.axhline(1e-6, color="k", lw=0.8, ls=":")
    # the axes cover every converged run; runs that diverge or go on without converging are cut
    longest = max([300] + [r.nfe for r in runs.values() if r.converged])
    ax.set(
        xlabel="vector–Jacobian products",
        ylabel="max ‖u − g − uJ‖∞ (cut at 10⁴)",
        title=f"backward solve, ‖W‖₂ = ρ(∂f/∂z) = {norm:.4g} (symmetric W)",
        xlim=(0, longest + 10),
        ylim=(1e-12, 1e4),
    )
    ax.legend(fontsize=7, title="solver: products", title_fontsize=7)
    r = runs[solver]
    if r.error:
        text = f"<b>{solver}</b> blew up: {r.error}"
    else:
        verdict = "converged" if r.converged else "<b>did not converge</b> within its 300 solver steps"
        text = (
            f"<b>{solver}</b>: {r.nfe} vector–Jacobian products, final residual {r.residual:.2e}, {verdict}, "
            f"{r.seconds * 1e3:.1f} ms."
        )
    return Panel(fig, text)


def broyden_memory_panel(norm: float = 0.95, memories: tuple[int, ...] = (20, 300)) -> Panel:
    """Broyden's backward residual per evaluation with deqkit's default memory (20 updates) and with more.

    Parameters
    ----------
    norm : float
        ``‖W‖₂`` (see :func:`near_one_deq`).
    memories : tuple of int
        Values of ``m`` to compare.

    Returns
    -------
    Panel
        The text gives each run's outcome.
    """
    check_norm(norm)
    if not memories:
        raise ValueError("memories must hold at least one Broyden memory m to compare, e.g. (20, 300)")
    fig, ax = figure(width=5.6)
    lines = []
    for m in memories:
        r = broyden_backward(norm, m)
        outcome = (
            f"blew up after {len(r.residuals)} evaluations"
            if r.error
            else f"{'converged' if r.converged else 'did not converge'} after {len(r.residuals)} evaluations"
        )
        lines.append(f"<b>m = {m}</b>: {outcome}")
        finite = np.array(r.residuals)
        ax.semilogy(np.arange(1, len(finite) + 1), np.where(np.isfinite(finite), finite, np.nan), label=f"m = {m}")
    ax.axvline(min(memories), color="k", lw=0.8, ls="--", label=f"{min(memories)} updates: memory full")
    ax.axhline(1e-6, color="k", lw=0.8, ls=":")
    ax.set(
        xlabel="evaluations (vector–Jacobian products)",
        ylabel="‖u − g − u ∂f/∂z‖∞",
        ylim=(1e-8, 1e6),
        xlim=(0, 120),
        title=f"Broyden on the backward problem, ‖W‖₂ = {norm:.4g} (cut at 10⁶)",
    )
    ax.legend(fontsize=7)
    return Panel(fig, "<br>".join(lines))


def _scaling_axes(ax: Any, rows: list[NearOne], here: NearOne) -> None:
    below = [r for r in rows if r.rho < 1]
    inv = np.array([1 / (1 - r.rho) for r in below])
    for name in BACKWARD_SOLVERS:
        nfe = [r.backward_nfe[name] if r.backward_converged[name] else np.nan for r in below]
        ax.loglog(inv, nfe, "o-", color=SOLVER_COLORS[name], ms=3, label=name)
    first = below[0]
    ax.loglog(inv, first.backward_nfe["picard"] * inv / inv[0], "k--", lw=0.6, label="∝ 1/(1 − ρ)")
    ax.loglog(inv, first.backward_nfe["gmres"] * np.sqrt(inv / inv[0]), "k:", lw=0.8, label="∝ 1/√(1 − ρ)")
    if here.rho < 1:
        ax.axvline(1 / (1 - here.rho), color="k", lw=0.8, ls=":")
    ax.set(
        xlabel="1/(1 − ρ(∂f/∂z))", ylabel="products to residual 1e-6 (converged runs)", title="backward cost as ρ → 1"
    )
    ax.legend(fontsize=6, loc="upper left")


def _outcome_axes(ax: Any, here: NearOne) -> None:
    names = list(BACKWARD_SOLVERS)
    for k, name in enumerate(names):
        nfe, ok = here.backward_nfe[name], here.backward_converged[name]
        ax.barh(
            k,
            min(nfe if nfe > 0 else 300, 400),
            color=SOLVER_COLORS[name] if ok else "white",
            edgecolor=SOLVER_COLORS[name],
            hatch=None if ok else "///",
        )
        note = f"{nfe}" if ok else ("blew up" if nfe < 0 else f"not converged ({nfe})")
        ax.text(min(nfe if nfe > 0 else 300, 400) + 8, k, note, va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set(
        xlabel="vector–Jacobian products (bars cut at 400)",
        xlim=(0, 650),
        title=f"‖W‖₂ = {here.norm:.4g}: ρ = {here.rho:.4f}" + ("  (past 1)" if here.rho > 1 else ""),
    )


def rho_panel(norm: float = 0.9) -> Panel:
    """Backward products of each solver and the one-step gradient's direction as ρ(∂f/∂z) → 1, and past it.

    Left: products against 1/(1 − ρ) below ρ = 1; middle: the one-step gradient's cosine with the implicit one;
    right: every solver's outcome at the chosen ‖W‖₂ (also past 1).

    Parameters
    ----------
    norm : float
        ``‖W‖₂`` to highlight, snapped to the nearest of :func:`norms_grid`.

    Returns
    -------
    Panel
        The text gives ρ, the one-step cosine and each solver's products at the highlighted ‖W‖₂.
    """
    grid = norms_grid()
    norm = min(grid, key=lambda n: abs(n - check_norm(norm)))
    rows = [near_one(n) for n in grid]
    here = near_one(norm)
    replay(here.warnings)
    fig, (ax, ax2, ax3) = _quick_figure(
        3, width=4.1, height=3.5, left=0.055, right=0.99, bottom=0.14, top=0.92, wspace=0.42
    )
    _scaling_axes(ax, rows, here)
    below = [r for r in rows if r.rho < 1]
    ax2.semilogx(
        [1 / (1 - r.rho) for r in below], [r.one_step_cosine for r in below], "o-", color=MODE_COLORS["one_step"], ms=3
    )
    if here.rho < 1:
        ax2.plot(
            [1 / (1 - here.rho)], [here.one_step_cosine], "o", color=MODE_COLORS["one_step"], ms=10, mfc="none", mew=2
        )
    ax2.set(
        xlabel="1/(1 − ρ(∂f/∂z))",
        ylabel="cosine(one-step, implicit)",
        title="the Jacobian-free gradient",
        ylim=(min(0.0, here.one_step_cosine), 1.05),
    )
    _outcome_axes(ax3, here)
    for a in (ax, ax2):
        a.xaxis.set_minor_formatter(NullFormatter())
        a.yaxis.set_minor_formatter(NullFormatter())
    cells = "".join(
        f"<td>{here.backward_nfe[n] if here.backward_converged[n] else 'not converged'}</td>" for n in BACKWARD_SOLVERS
    )
    heads = "".join(f"<th>{n}</th>" for n in BACKWARD_SOLVERS)
    text = (
        f"‖W‖₂ = {norm:.4g}: ρ(∂f/∂z) = {here.rho:.4f}; one-step cosine {here.one_step_cosine:.3f}. "
        f"Backward products: <table><tr>{heads}</tr><tr>{cells}</tr></table>"
    )
    return Panel(fig, text)
