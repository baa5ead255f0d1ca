"""Notebook 02: the fixed point as the steady state of dz/dt = f(z) − z, in two dimensions.

``f(z) = tanh(a·M z)`` with one of two matrices M: ``"pitchfork"`` (symmetric coupling: one stable equilibrium
for a < 2/3, then a saddle at the origin between two stable ones; past a = 2 the origin is a source, with two
saddles on the anti-diagonal) and ``"spiral"`` (a rotation: a stable spiral, then — past a Hopf bifurcation — a
limit cycle and no stable equilibrium at all).

Near an equilibrium z* with Jacobian J = ∂f/∂z, an error e evolves linearly, and each eigenvalue λ of J decides:
plain iteration (e ← J e) converges where |λ| < 1; the ODE (de/dt = (J − I) e) where Re λ < 1; Euler's method with
step h (e ← (I + h(J − I)) e) where |1 + h(λ − 1)| < 1; an explicit Runge–Kutta method where
|R(h(λ − 1))| ≤ 1, with R its stability function (:func:`stability_function`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from matplotlib.patches import Circle, Rectangle
from matplotlib.ticker import NullLocator

from .. import problems
from ..errors import ConvergenceWarning
from ..solvers import StepSizeController, solve
from ..solvers.torchdiffeq_adapter import ADAPTIVE, is_fsal
from . import fast_mode
from .widgets import Panel, attempt, figure, progress

# the notebook's two planar maps f(z) = tanh(a·M z), shared with tests and benchmarks; the flow is f(z) − z
SYSTEMS, system_matrix, vector_field = problems.SYSTEMS, problems.system_matrix, problems.system_map
# the dropdown's ODE methods: the registry's first-same-as-last ones (one derivative per step comes free), Tsit5 first
ODE_METHODS = tuple(sorted((k for k, cls in ADAPTIVE.items() if is_fsal(cls)), key=lambda k: (k != "tsit5", k)))
NEAR_ORIGIN = (0.05, 0.02)  # a start next to the origin, which is an equilibrium of both systems


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
    are answers outside ``[−3, 3]²``. Answers within :data:`SAME_EQUILIBRIUM` of each other are one equilibrium
    (:func:`distinct`): next to a non-hyperbolic equilibrium (an eigenvalue of ``J`` exactly 1, as at the
    pitchfork's origin at ``a = 2/3`` and ``a = 2``) the residual grows only like the cube of the distance, and
    Broyden stops up to 7e-4 away from it, at points that are not equilibria.

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
    a : float
        See :func:`system_matrix`.

    Returns
    -------
    list of (numpy.ndarray, bool)
        Each equilibrium, shape ``(2,)``, and whether it is stable for ``dz/dt = f(z) − z``; sorted by the first
        coordinate, then the second.
    """
    f = vector_field(system, a)
    g = torch.linspace(-2, 2, 9, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # starts that fail are simply not equilibria
        z, stats = solve(f, grid, solver="broyden", abstol=1e-10, reltol=0, max_steps=60)
    z = z[stats.converged & (z.abs().amax(1) <= 3)]
    points = distinct(z.numpy(), (f(z) - z).abs().amax(1).numpy())
    return [(p, bool((jacobian_eigenvalues(system, a, p).real < 1).all())) for p in points]


SAME_EQUILIBRIUM = 1e-2  # ∞-norm distance below which two of Broyden's answers are one equilibrium


def distinct(points: np.ndarray, residuals: np.ndarray, tol: float = SAME_EQUILIBRIUM) -> list[np.ndarray]:
    """One point per cluster of ``points`` closer than ``tol`` (∞-norm): the one with the smallest residual.

    Parameters
    ----------
    points : numpy.ndarray
        Shape ``(n, d)``.
    residuals : numpy.ndarray
        Shape ``(n,)``, e.g. ``‖f(z) − z‖∞`` at each point.
    tol : float
        A point is dropped when it lies within ``tol`` of a kept point with a smaller residual.

    Returns
    -------
    list of numpy.ndarray
        The kept points, sorted by their first coordinate, then the next (each rounded to 1e-9 for the order).
    """
    kept: list[np.ndarray] = []
    for i in np.argsort(residuals, kind="stable"):
        if all(np.abs(points[i] - k).max() >= tol for k in kept):
            kept.append(points[i])
    return sorted(kept, key=lambda p: [round(float(v), 9) for v in p])


def jacobian_eigenvalues(system: str, a: float, z: torch.Tensor | np.ndarray) -> np.ndarray:
    """Eigenvalues λ of ``J = ∂f/∂z`` at ``z`` (by autograd); the ODE's are ``λ − 1``.

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
    a : float
        See :func:`system_matrix`.
    z : tensor or array
        A point, shape ``(2,)``.

    Returns
    -------
    numpy.ndarray
        Complex, shape ``(2,)``.
    """
    f = vector_field(system, a)
    z = torch.as_tensor(z, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], z)
    return torch.linalg.eigvals(jac).numpy()


def stability_function(ode_method: str, z: np.ndarray | complex) -> np.ndarray:
    """``R(z) = 1 + Σₖ zᵏ bᵀ Aᵏ⁻¹ 1`` of an explicit Runge–Kutta method (tableau ``A``, weights ``b``): one step
    on ``de/dt = μ e`` is ``e ← R(hμ) e``.

    Parameters
    ----------
    ode_method : str
        An adaptive method of :class:`~deqkit.solvers.DynamicSS` (``"tsit5"``, ``"dopri5"``, ``"bosh3"``, ...).
    z : complex or array of complex
        Values of ``h μ``.

    Returns
    -------
    numpy.ndarray
        ``R(z)``, shaped like ``z``.

    Raises
    ------
    ValueError
        If ``ode_method`` is not an adaptive method.
    """
    if ode_method not in ADAPTIVE:
        raise ValueError(f"unknown ode_method {ode_method!r}; choose one of {sorted(ADAPTIVE)}")
    tableau = ADAPTIVE[ode_method].tableau
    stages = len(tableau.beta) + 1
    a_mat = np.zeros((stages, stages))
    for i, row in enumerate(tableau.beta):
        a_mat[i + 1, : len(row)] = row.numpy()
    b = tableau.c_sol.numpy()
    # A is strictly lower triangular (explicit): R is a polynomial of degree ``stages``
    coeffs, power = [1.0], np.ones(stages)
    for _ in range(stages):
        coeffs.append(float(b @ power))
        power = a_mat @ power
    return np.polynomial.polynomial.polyval(np.asarray(z, dtype=complex), coeffs)


def stability_limit(ode_method: str, mu: complex, h_max: float = 50.0) -> float:
    """The largest step ``h`` with ``|R(h μ)| ≤ 1`` on all of ``(0, h]``: where an explicit method's steps stop
    growing near an equilibrium whose ODE eigenvalue is ``μ = λ − 1`` (``Re μ < 0``).

    Parameters
    ----------
    ode_method : str
        See :func:`stability_function`.
    mu : complex
        An eigenvalue of ``J − I``.
    h_max : float
        Search range; returned when the whole range is stable.

    Returns
    -------
    float
        Resolution ``h_max / 20000``; 0 when ``Re μ ≥ 0`` makes every step unstable.
    """
    hs = np.linspace(h_max / 20000, h_max, 20000)
    unstable = np.nonzero(np.abs(stability_function(ode_method, hs * mu)) > 1 + 1e-12)[0]
    if not len(unstable):
        return h_max
    return float(hs[unstable[0] - 1]) if unstable[0] > 0 else 0.0


def euler_step_limit(lam: np.ndarray) -> float:
    """Largest Euler step ``h`` with ``|1 + h(λ − 1)| < 1`` for every eigenvalue λ: ``min 2(1 − Re λ) / |1 − λ|²``.

    Returns 0 when some ``Re λ ≥ 1`` (no step converges).
    """
    lam = np.asarray(lam, dtype=complex)
    if (lam.real >= 1).any():
        return 0.0
    return float(np.min(2 * (1 - lam.real) / np.abs(1 - lam) ** 2))


def _portrait(ax, f) -> None:
    """The direction of the flow f(z) − z as grey arrows of equal length (darker where it is faster)."""
    grid = np.linspace(-2.0, 2.0, 17)
    gx, gy = np.meshgrid(grid, grid)
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1))
    vel = (f(pts) - pts).numpy()
    speed = np.hypot(vel[:, 0], vel[:, 1])
    unit = vel / np.maximum(speed, 1e-12)[:, None]
    ax.quiver(
        gx.ravel(),
        gy.ravel(),
        unit[:, 0],
        unit[:, 1],
        np.log10(speed + 1e-3),
        cmap="Greys",
        clim=(-3, 1),
        angles="xy",
        scale_units="xy",
        scale=6,
        width=0.004,
        alpha=0.7,
    )


def _trajectories(ax, ax_res, f, traj: np.ndarray, times: np.ndarray, done: np.ndarray, abstol: float) -> None:
    """Each start's path (dots = accepted steps) and its residual over time, ● where the rule fired."""
    for i in range(traj.shape[1]):
        color = f"C{i % 10}"
        ax.plot(traj[:, i, 0], traj[:, i, 1], ".-", color=color, lw=1.0, ms=3)
        path = torch.as_tensor(traj[:, i])
        res = (f(path) - path).abs().amax(1).numpy()
        end = int(done[i]) if done[i] >= 0 else len(res) - 1
        ax_res.semilogy(times[: end + 1], np.maximum(res[: end + 1], 1e-17), "-", color=color, lw=1.0)
        if done[i] >= 0:
            ax_res.plot(times[end], max(res[end], 1e-17), "o", color=color, ms=4)
    ax_res.axhline(abstol, color="gray", ls="--", lw=0.8, label="abstol")


def _freeze_index(traj: np.ndarray, converged: np.ndarray) -> np.ndarray:
    """Per sample, the first recorded step from which it no longer moves (−1 if it never converged)."""
    moves = np.abs(np.diff(traj, axis=0)).max(-1) > 0  # (steps, batch)
    last_move = np.array(
        [np.nonzero(moves[:, i])[0].max() + 1 if moves[:, i].any() else 0 for i in range(traj.shape[1])]
    )
    return np.where(converged, last_move, -1)


def _limit(ax_dt, system: str, a: float, ode_method: str, points: list, z_end: np.ndarray):
    """At the stable equilibrium nearest ``z_end``: draw the stability limit h*; return (h*, the eigenvalues μ of
    J − I there)."""
    stable = [p for p, s in points if s]
    if not stable:
        return None, None
    p = min(stable, key=lambda q: np.abs(q - z_end).max())
    mu = jacobian_eigenvalues(system, a, p) - 1
    h_star = min(stability_limit(ode_method, m) for m in mu)
    ax_dt.axhline(h_star, color="tab:red", ls="--", lw=0.8, label=f"stability limit h* = {h_star:.3g}")
    ax_dt.legend(fontsize=7, loc="lower right")
    return h_star, mu


def _readout(stats, abstol, reltol, max_steps, end, zb, sb, h_star, mu, ode_method) -> str:
    """The text under the phase portrait."""
    batch = stats.converged.numel()
    ode = (
        f"the ODE settles at ({end[0]:+.3f}, {end[1]:+.3f})"
        if bool(stats.converged[0])
        else f"the ODE is still moving after {stats.steps} steps, at ({end[0]:+.3f}, {end[1]:+.3f})"
    )
    newton = (
        "Broyden (Newton-type) fails: " + zb
        if isinstance(zb, str)
        else f"Broyden (Newton-type) lands on ({zb[0]:+.3f}, {zb[1]:+.3f})" + ("" if sb else ", not converged")
    )
    text = (
        f"● stable equilibrium, ○ unstable. {stats.num_converged}/{batch} trajectories reached "
        f"‖dz/dt‖∞ ≤ {abstol:g} or ≤ {reltol:g}·‖f(z)‖∞ within {max_steps} steps. "
        f"From ★ = {NEAR_ORIGIN}: {ode}; {newton}."
    )
    if stats.all_converged:
        return text
    if h_star is None:
        return text + (
            " <b>No stable equilibrium:</b> every equilibrium is ○, so the flow has nowhere to settle; "
            "the trajectories circle a limit cycle instead, and deqkit warns."
        )
    dts, times = np.diff(stats.times), stats.times
    if len(dts) >= 10 and np.all(np.abs(dts[-10:] / h_star - 1) < 0.02):
        return text + (
            f" <b>The steps sit at the stability limit h* = {h_star:.3g}</b>: there |R(hμ)| = 1, the "
            "numerical solution stops decaying, and a residual above abstol stays there (a tighter ODE "
            "tolerance, StepSizeController(atol=...), lowers that floor)."
        )
    re_mu = float(mu.real.max())
    needed = math.log(max(stats.history[0], abstol) / abstol) / max(-re_mu, 1e-12)
    h_last = float(dts[-10:].mean())
    steps = f"the last ten steps average h = {h_last:.3g}, {h_last / h_star:.0%} of the stability limit {h_star:.3g}"
    rate = (
        f"at the stable equilibrium the slowest eigenvalue of J − I has Re μ = {re_mu:+.3f}, so the residual "
        f"shrinks like e^({re_mu:+.3f}·t): reaching abstol takes t ≈ ln(r₀ / abstol) / |Re μ| ≈ {needed:.0f}; "
        f"{max_steps} steps got to t = {times[-1]:.0f}"
    )
    if times[-1] >= needed:  # time enough for the decay: what holds the residual up is the steps' |R(hμ)|
        growth = float(np.abs(stability_function(ode_method, h_last * mu)).max())
        return text + (
            f" <b>The residual stalls near the stability limit:</b> {rate}, time enough; but {steps}, "
            f"where |R(hμ)| = {growth:.3f}: the numerical solution "
            f"{'barely decays' if growth < 1 else 'does not decay'}, and a residual above abstol stays "
            "there (a tighter ODE tolerance, StepSizeController(atol=...), lowers that floor)."
        )
    return text + f" <b>Step budget spent before the residual could decay:</b> {rate} ({steps})."


def phase_panel(
    system: str = "pitchfork", a: float = 1.2, ode_method: str = "tsit5", abstol: float = 1e-5, reltol: float = 1e-5
) -> Panel:
    """Phase portrait with ODE trajectories to steady state, their step sizes and residuals, and where Broyden lands.

    All of :func:`starts` are integrated as one batch by ``dynamic_ss`` without polishing (``dz/dt = f(z) − z``,
    at most 200 steps, 80 in fast mode): the batch shares its step size, which grows as the trajectories settle
    until it meets the stability limit of the method at the equilibrium (dashed, :func:`stability_limit`). The
    equilibria of :func:`equilibria` are marked ● (stable) or ○ (unstable, drawn on top of everything).

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
        When some trajectories did not reach steady state.
    """
    f = vector_field(system, a)
    max_steps = 80 if fast_mode() else 200
    fig, (ax, ax_dt, ax_res) = figure(3, width=3.6, height=3.4, layout="fixed")
    _portrait(ax, f)
    z, stats = solve(
        f,
        starts(),
        solver="dynamic_ss",
        ode_method=ode_method,
        polish=None,
        abstol=abstol,
        reltol=reltol,
        max_steps=max_steps,
        record=True,
    )
    traj, times = torch.stack(stats.trajectory).numpy(), np.array(stats.times)
    _trajectories(ax, ax_res, f, traj, times, _freeze_index(traj, stats.converged.numpy()), abstol)
    ax_dt.semilogy(times[1:], np.diff(times), ".-", color="k", ms=3, lw=0.8, label="accepted steps")
    points = equilibria(system, a)
    h_star, mu = _limit(ax_dt, system, a, ode_method, points, traj[-1, 0])
    broyden, err = attempt(
        solve,
        f,
        torch.tensor([NEAR_ORIGIN], dtype=torch.float64),
        solver="broyden",
        abstol=1e-10,
        reltol=0,
        max_steps=60,
        strict=True,
    )
    zb, sb = (broyden[0][0].numpy(), True) if err is None else (f"{type(err).__name__}", False)
    if err is None:
        ax.plot(*zb, "x", color="tab:red", ms=10, mew=2, zorder=6, label="Broyden from ★")
    ax.plot(*NEAR_ORIGIN, "*", color="tab:red", ms=9, zorder=6)
    for p, stable in points:  # unstable ones as rings on top, so that ✕ and ★ never hide them
        ax.plot(
            *p, "o", ms=8 if stable else 13, mfc="k" if stable else "none", mec="k", mew=1.5, zorder=5 if stable else 7
        )
    ax.set(xlim=(-2.2, 2.2), ylim=(-2.2, 2.2), aspect="equal", title=f"{system}, a = {a:.2f}: dz/dt = f(z) − z")
    ax.legend(fontsize=7, loc="lower right")
    ax_dt.set(xlabel="t", ylabel="step size h", title=f"{ode_method}: the batch's accepted steps")
    ax_res.set(xlabel="t", ylabel="‖f(z) − z‖∞", title="residual (● = termination rule fires)")
    ax_res.legend(fontsize=7, loc="lower left")
    for log_axis in (ax_dt.yaxis, ax_res.yaxis):  # no minor ticks: laying them out is a large part of a redraw
        log_axis.set_minor_locator(NullLocator())
    return Panel(fig, _readout(stats, abstol, reltol, max_steps, traj[-1, 0], zb, sb, h_star, mu, ode_method))


def _regions(ax, h: float, lim: float) -> None:
    """The three convergence regions in the plane of the eigenvalues λ of J."""
    ax.add_patch(Rectangle((-lim, -lim), lim + 1, 2 * lim, color="tab:green", alpha=0.12, lw=0))
    ax.axvline(1, color="tab:green", lw=1.2, label="ODE: Re λ < 1")
    ax.add_patch(Circle((1 - 1 / h, 0), 1 / h, color="tab:orange", alpha=0.25, lw=0))
    ax.add_patch(
        Circle(
            (1 - 1 / h, 0),
            1 / h,
            fill=False,
            color="tab:orange",
            lw=1.5,
            ls="--",
            label=f"Euler, h = {h:g}: |1 + h(λ − 1)| < 1",
        )
    )
    ax.add_patch(Circle((0, 0), 1, fill=False, color="tab:blue", lw=1.5, label="Picard: |λ| < 1"))


def stability_panel(system: str = "pitchfork", a: float = 1.2, h: float = 1.0) -> Panel:
    """The eigenvalues of J = ∂f/∂z at every equilibrium, against the regions where each method converges.

    Picard converges near an equilibrium when every eigenvalue λ of J has ``|λ| < 1`` (blue disc); the ODE
    flows into it when every ``Re λ < 1`` (green half-plane); Euler's method with step ``h`` converges when
    every ``|1 + h(λ − 1)| < 1`` (orange disc, centre ``1 − 1/h``, radius ``1/h``; ``h = 1`` is Picard's disc).

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
    a : float
        See :func:`system_matrix`.
    h : float
        Euler's step size (> 0).

    Returns
    -------
    Panel
        The text tabulates, per equilibrium, its eigenvalues, the verdict of each method and Euler's largest
        converging step (:func:`euler_step_limit`).

    Raises
    ------
    ValueError
        If ``system`` is unknown or ``h ≤ 0``.
    """
    if not h > 0:
        raise ValueError(f"the Euler step h must be > 0, got {h}")
    points = [(p, jacobian_eigenvalues(system, a, p)) for p, _ in equilibria(system, a)]
    lim = max(2.2, 1.15 * max(np.abs(lam).max() for _, lam in points))
    fig, ax = figure(1, width=4.6, height=4.0, layout="fixed")
    _regions(ax, h, lim)
    rows = []
    for i, (p, lam) in enumerate(points):
        ode_ok = bool((lam.real < 1).all())
        ax.plot(
            lam.real,
            lam.imag,
            "o",
            ms=8,
            color=f"C{i}",
            mfc=f"C{i}" if ode_ok else "none",
            mew=2,
            zorder=5,
            label=f"J at ({p[0]:+.2f}, {p[1]:+.2f})",
        )
        yes = lambda ok: "yes" if ok else "<b>no</b>"  # noqa: E731
        rows.append(
            f"<tr><td>({p[0]:+.3f}, {p[1]:+.3f})</td><td>{', '.join(f'{v:.3f}' for v in lam)}</td>"
            f"<td>{yes(bool((np.abs(lam) < 1).all()))}</td><td>{yes(ode_ok)}</td>"
            f"<td>{yes(bool((np.abs(1 + h * (lam - 1)) < 1).all()))}</td>"
            f"<td>{euler_step_limit(lam):.3f}</td></tr>"
        )
    ax.set(
        xlim=(-lim, lim),
        ylim=(-lim, lim),
        aspect="equal",
        xlabel="Re λ",
        ylabel="Im λ",
        title=f"{system}, a = {a:.2f}: eigenvalues of ∂f/∂z",
    )
    ax.legend(fontsize=6, loc="lower left")
    text = (
        "<table><tr><th>equilibrium</th><th>eigenvalues λ of J</th><th>Picard</th><th>ODE</th>"
        f"<th>Euler, h = {h:g}</th><th>Euler converges for h &lt;</th></tr>" + "".join(rows) + "</table>"
        "Filled: a stable equilibrium of the ODE; hollow: an unstable one."
    )
    return Panel(fig, text)


def slowing_down(a_values, ode_tol: float = 1e-8, abstol: float = 1e-5, max_steps: int = 4000):
    """Steps the pure ODE needs on the stable spiral, from all of :func:`starts`, as ``a`` nears the Hopf point.

    The origin's ODE eigenvalues ``μ = a e^{±1.2i} − 1`` have real part ``a cos 1.2 − 1``: trajectories decay
    like ``e^{Re μ · t}``, so the time and steps needed grow like ``1 / |Re μ|`` (critical slowing down).

    Parameters
    ----------
    a_values : iterable of float
        Gains below ``1 / cos 1.2 ≈ 2.76``.
    ode_tol : float
        The ODE's local tolerances ``atol = rtol`` (:class:`~deqkit.StepSizeController`): tight, so that the
        residual does not stall at the ODE tolerance.
    abstol : float
        Termination: ``‖dz/dt‖∞ ≤ abstol`` (reltol as abstol).
    max_steps : int

    Returns
    -------
    list of (float, float, int, bool)
        ``(a, Re μ, steps, all converged)`` per ``a``. Loops longer than 2 s show a progress bar.
    """
    rows = []
    for a in progress(list(a_values), desc="spiral, a"):
        _, stats = solve(
            vector_field("spiral", a),
            starts(),
            solver="dynamic_ss",
            polish=None,
            abstol=abstol,
            reltol=abstol,
            controller=StepSizeController(rtol=ode_tol, atol=ode_tol),
            max_steps=max_steps,
        )
        rows.append((a, a * math.cos(1.2) - 1, stats.steps, stats.all_converged))
    return rows


def critical_gain_exercise(a_critical: float) -> str | None:
    """Check notebook 02's exercise: the gain at which the pitchfork's origin stops being stable for the ODE.

    The criterion is the ODE's: every eigenvalue of ``aM − I`` (the Jacobian of ``f(z) − z`` at the origin)
    has a negative real part just below ``a_critical``, and one has a positive real part just above.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    a_critical = float(a_critical)
    if not 0 < a_critical < math.inf:
        return f"a_critical = {a_critical} must be a positive, finite gain"

    def growth(a: float) -> float:  # the largest Re of the eigenvalues of aM − I
        m = system_matrix("pitchfork", a)
        return float(torch.linalg.eigvals(m - torch.eye(2, dtype=m.dtype)).real.max())

    below, above = growth(0.99 * a_critical), growth(1.01 * a_critical)
    if below >= 0:
        return (
            f"at a = {0.99 * a_critical:.3f} an eigenvalue of aM − I already has real part {below:+.3f} ≥ 0: "
            "the origin lost stability earlier. Which eigenvalue of M reaches a·λ = 1 first?"
        )
    if above <= 0:
        return (
            f"at a = {1.01 * a_critical:.3f} every eigenvalue of aM − I still has a negative real part (largest "
            f"{above:+.3f}): the origin is still stable. Solve a·λ_max(M) = 1."
        )
    return None
