"""Notebook 00: a ten-line DEQ, z = tanh(W z + x), solved and plotted — and why plain iteration fails."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..settings import check_int
from ..solvers import solve
from ..stats import SolverStats
from .limits import within
from .widgets import Panel, attempt, figure

TOL = 1e-10  # the notebook's tolerance on ‖f(z) − z‖∞
MAX_STEPS = 200  # plain iteration's budget in the widget


def tiny_problem(scale: float = 0.8, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's map ``f(z) = tanh(W z + x)``: a random ``W`` with ‖W‖₂ = ``scale`` and an input ``x``.

    Draws, from one generator seeded with ``seed``, first ``W`` (``d × d``, N(0, 1) entries, rescaled) and then
    ``x`` (``0.3 · N(0, 1)`` per entry), in float64 — exactly what notebook 00's first cells do by hand.

    Parameters
    ----------
    scale : float
        Spectral norm of ``W``.
    d : int
        Dimension of ``z``.
    seed : int
        Seed of the generator.

    Returns
    -------
    w : torch.Tensor
        Shape ``(d, d)``.
    x : torch.Tensor
        Shape ``(1, d)``.
    """
    check_int("d", d, 1)
    within("scale", scale, 0.0, 1e3, "‖W‖₂ is a non-negative number (a NaN would fill W with NaN)")
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=gen, dtype=torch.float64)
    w *= scale / torch.linalg.matrix_norm(w, 2)
    x = 0.3 * torch.randn(1, d, generator=gen, dtype=torch.float64)
    return w, x


def tiny_deq(scale: float = 0.8, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, SolverStats]:
    """Solve the map of :func:`tiny_problem` by plain iteration from ``z = 0``.

    The solve stops at ``‖f(z) − z‖∞ ≤ 1e-10`` or after 200 iterations (with a
    :class:`~deqkit.ConvergenceWarning`).

    Parameters
    ----------
    scale, d, seed
        See :func:`tiny_problem`; below ``scale = 1``, ``f`` is a contraction and the iteration converges.

    Returns
    -------
    x : torch.Tensor
        Shape ``(d,)``.
    z_star : torch.Tensor
        Shape ``(d,)``: the fixed point (the lowest-residual iterate if the solve did not converge).
    stats : SolverStats
    """
    w, x = tiny_problem(scale, d, seed)
    z, stats = solve(
        lambda z: torch.tanh(z @ w.T + x),
        torch.zeros_like(x),
        solver="picard",
        abstol=TOL,
        reltol=0,
        max_steps=MAX_STEPS,
    )
    return x[0], z[0], stats


def jacobian_eigenvalues(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``∂f/∂z = diag(1 − z²) W`` at a fixed point ``z = tanh(W z + x)``.

    Parameters
    ----------
    w : torch.Tensor
        Shape ``(d, d)``.
    z : torch.Tensor
        A fixed point, shape ``(d,)`` (there ``1 − tanh²(W z + x) = 1 − z²``).

    Returns
    -------
    torch.Tensor
        Complex, shape ``(d,)``; their largest modulus is the spectral radius ρ.
    """
    return torch.linalg.eigvals((1 - z**2)[:, None] * w)


def predicted_iterations(rho: float, r0: float, tol: float = TOL) -> float:
    """Iterations plain iteration needs if the residual shrinks by ``rho`` per step: ``ln(tol / r0) / ln ρ``.

    Returns ``inf`` for ``rho ≥ 1`` (it does not shrink), 0 when ``r0 ≤ tol``, and 1 for ``rho = 0`` (one step
    lands on z*). A negative or NaN ``rho``, a negative or non-finite ``r0`` and a ``tol`` that is not a finite
    number > 0 are a ``ValueError``: ρ, a residual and a tolerance are such numbers (else "math domain error").
    """
    if not rho >= 0:
        raise ValueError(
            f"rho = {rho!r} is not a spectral radius (a number >= 0): pass ρ(∂f/∂z*), e.g. from "
            "deqkit.spectral_radius(f, z_star)"
        )
    if not 0 <= r0 < math.inf:
        raise ValueError(f"r0 = {r0!r} is not a residual (a finite number >= 0): pass the first ‖f(z) − z‖∞")
    if not 0 < tol < math.inf:
        raise ValueError(
            f"tol = {tol!r} is not a tolerance (a finite number > 0): ln(tol / r0) needs it, e.g. tol={TOL:g}"
        )
    if r0 <= tol:
        return 0.0
    if rho == 0:
        return 1.0
    return math.log(tol / r0) / math.log(rho) if rho < 1 else math.inf


def _why(stats: SolverStats, rho: float, predicted: float, reference: SolverStats | None) -> str:
    """The readout: the outcome, then what ρ(∂f/∂z*) predicts and why."""
    if reference is None:
        return "no reference fixed point: Anderson did not converge either, so ρ(∂f/∂z*) is unknown"
    found = f"(Anderson found z* in {reference.steps} iterations)"
    if stats.all_converged:
        return (
            f"{stats.steps} iterations to reach ‖f(z) − z‖∞ ≤ {TOL:g}. Near z* the error shrinks by "
            f"ρ(∂f/∂z*) = {rho:.3f} per iteration: ln({TOL:g} / r₀) / ln ρ ≈ {predicted:.0f} predicted."
        )
    head = (
        f"not converged: after {stats.steps} iterations ‖f(z) − z‖∞ = {float(stats.residual.max()):.2e} "
        f"(above {TOL:g}); deqkit warned (ConvergenceWarning). <b>Why:</b> "
    )
    if rho < 1:
        return head + (
            f"ρ(∂f/∂z*) = {rho:.3f} < 1, so z* attracts the iteration, but slowly: about "
            f"{predicted:.0f} iterations would be needed, more than the {MAX_STEPS} allowed {found}."
        )
    return head + (
        f"ρ(∂f/∂z*) = {rho:.3f} ≥ 1: an eigenvalue of ∂f/∂z* lies outside the unit circle (middle plot), "
        f"so z* repels plain iteration — an error along its eigenvector grows by about ρ per step "
        f"instead of shrinking {found}."
    )


def welcome_panel(scale: float = 0.8) -> Panel:
    """Plain iteration on :func:`tiny_problem`: its residual, the eigenvalues of ∂f/∂z at z*, and z* itself.

    The true fixed point ``z*`` comes from Anderson acceleration (tolerance 1e-12); the spectral radius ρ of
    ``∂f/∂z`` there says why plain iteration converges (ρ < 1, at about ρ per step: the dotted guide
    ``r₀ ρᵏ``) or fails (ρ ≥ 1, or ρ so close to 1 that 200 iterations are not enough).

    Parameters
    ----------
    scale : float
        Spectral norm of ``W`` in :func:`tiny_problem`.

    Returns
    -------
    Panel
        The text gives the iterations taken and predicted, or why the solve did not converge (the solver's
        :class:`~deqkit.ConvergenceWarning` is not caught).
    """
    scale = within(
        "scale",
        scale,
        0.1,
        3.0,
        "the slider's range; at 0 the map is constant and ρ = 0 has no convergence rate to show",
    )
    w, x = tiny_problem(scale)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    _, _, stats = tiny_deq(scale)
    solved, _ = attempt(
        solve, f, torch.zeros_like(x), solver="anderson", abstol=1e-12, reltol=0, max_steps=500, strict=True
    )
    fig, (ax1, ax2, ax3) = figure(3, width=3.5, height=3.2, layout="fixed")
    ax1.semilogy(stats.history, marker=".", ms=3, label="plain iteration")
    ax1.axhline(TOL, color="gray", ls="--", lw=0.8)
    ax1.set(xlabel="iteration", ylabel="‖f(z) − z‖∞", title=f"z ← tanh(Wz + x), ‖W‖₂ = {scale:.2f}")
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
    ax2.plot(circle.real, circle.imag, "k-", lw=0.8)
    ax2.set(aspect="equal", xlabel="Re λ", ylabel="Im λ")
    rho, predicted = math.nan, math.inf
    if solved is not None:
        z_star = solved[0][0]
        eig = jacobian_eigenvalues(w, z_star).numpy()
        rho = float(np.abs(eig).max())
        predicted = predicted_iterations(rho, stats.history[0])
        outside = np.abs(eig) >= 1
        ax2.plot(eig.real[~outside], eig.imag[~outside], "o", color="tab:blue", ms=5, label="|λ| < 1")
        ax2.plot(eig.real[outside], eig.imag[outside], "o", color="tab:red", ms=5, label="|λ| ≥ 1")
        if rho < 1:
            k = np.arange(len(stats.history))
            ax1.semilogy(k, stats.history[0] * rho**k, ":", color="k", lw=1, label="r₀ ρᵏ")
        ax3.bar(range(len(z_star)), z_star.numpy(), label="z*")
    ax1.set_ylim(min(stats.history + [TOL]) / 10, 10)
    ax1.legend(fontsize=7, loc="upper right")
    ax2.set_title(f"eigenvalues of ∂f/∂z at z*: ρ = {rho:.3f}", fontsize=9)
    ax2.legend(fontsize=7, loc="lower left")
    ax3.plot(range(len(x[0])), torch.tanh(x[0]).numpy(), "k.", label="tanh(x) (one layer)")
    ax3.set(xlabel="coordinate", title="the equilibrium z*")
    ax3.legend(fontsize=7)
    return Panel(fig, _why(stats, rho, predicted, None if solved is None else solved[1]))


def broyden_exercise(z_broyden: torch.Tensor, nfe_broyden: int) -> str | None:
    """Check notebook 00's exercise: Broyden's method on the map of :func:`tiny_problem` at ‖W‖₂ = 0.8.

    Parameters
    ----------
    z_broyden : torch.Tensor
        The learner's equilibrium, shape ``(1, 10)``.
    nfe_broyden : int
        The learner's count of evaluations of ``f``.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at (for :func:`deqkit.teach.exercises.check`).
    """
    w, x = tiny_problem(0.8)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    if not isinstance(z_broyden, torch.Tensor) or z_broyden.shape != x.shape:
        got = getattr(z_broyden, "shape", z_broyden)
        return f"z_broyden should be a tensor shaped like x, {tuple(x.shape)}; got {got!r}"
    residual = float((f(z_broyden) - z_broyden).abs().max())
    if residual > 1e-9 and torch.allclose(z_broyden.detach(), f(torch.zeros_like(x)), atol=1e-12):
        return (
            f"z_broyden is f(0): ‖f(z) − z‖∞ = {residual:.2e}. One application of f is one layer of the stack, "
            "not its fixed point: call deqkit.solve(f, torch.zeros_like(x), solver='broyden', ...)."
        )
    if residual > 1e-9:
        return (
            f"z_broyden is not an equilibrium to the asked tolerance: ‖f(z) − z‖∞ = {residual:.2e} > 1e-10. "
            "deqkit.solve stops at its default abstol=1e-5 unless told otherwise: pass abstol=1e-10, reltol=0."
        )
    _, stats = solve(f, torch.zeros_like(x), solver="broyden", abstol=TOL, reltol=0)
    if nfe_broyden != stats.nfe:
        return (
            f"nfe_broyden = {nfe_broyden!r}, but Broyden from zeros with abstol=1e-10, reltol=0 evaluates f "
            f"{stats.nfe} times: read the .nfe of the stats that deqkit.solve returns."
        )
    return None
