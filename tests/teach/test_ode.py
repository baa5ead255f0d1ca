"""Notebook 02's panels and maths: stability regions, the stability limit, honest markers and readouts."""

import math
import re
import warnings

import numpy as np
import pytest
import torch

import deqkit
from deqkit.teach import ode


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        return fn(*args)


@pytest.mark.parametrize("method,order", [("tsit5", 5), ("dopri5", 5), ("bosh3", 3)])
def test_stability_function_matches_exp_to_the_method_order(method, order):
    z = np.array([0.01, -0.01, 0.01j])
    err = np.abs(ode.stability_function(method, z) - np.exp(z))
    assert np.all(err < 1e-2 ** (order + 1))


def test_stability_function_is_one_step_of_the_solver():
    """R(hμ) is the factor one fixed step of the real solver applies to de/dt = μ e."""
    from torchdiffeq._impl.rk_common import _runge_kutta_step

    from deqkit.solvers.torchdiffeq_adapter import ADAPTIVE

    mu, h = -0.8, 1.7
    y0 = torch.ones(1, dtype=torch.float64)
    func = lambda t, y, perturb=None: mu * y  # noqa: E731
    t0 = torch.zeros((), dtype=torch.float64)
    y1, *_ = _runge_kutta_step(
        func, y0, func(t0, y0), t0, torch.tensor(h, dtype=torch.float64), t0 + h, ADAPTIVE["tsit5"].tableau
    )
    assert float(y1) == pytest.approx(ode.stability_function("tsit5", h * mu).real, rel=1e-12)


def test_stability_limit():
    assert ode.stability_limit("tsit5", -1.0) == pytest.approx(3.5, abs=0.05)  # Tsit5's real stability interval
    assert ode.stability_limit("bosh3", -1.0) == pytest.approx(2.51, abs=0.01)
    assert ode.stability_limit("tsit5", 0.1 + 1j) == 0.0
    h = ode.stability_limit("tsit5", -0.094 + 2.33j)
    assert abs(ode.stability_function("tsit5", h * (-0.094 + 2.33j))) <= 1 + 1e-9
    assert abs(ode.stability_function("tsit5", (h + 0.01) * (-0.094 + 2.33j))) > 1
    with pytest.raises(ValueError, match="unknown ode_method"):
        ode.stability_function("rk45", 1.0)


def test_euler_step_limit_is_the_boundary_of_euler_s_disc():
    lam = np.array([0.5 + 1.2j, 0.5 - 1.2j, -0.3])
    h = ode.euler_step_limit(lam)
    assert np.abs(1 + 0.999 * h * (lam - 1)).max() < 1 <= np.abs(1 + 1.001 * h * (lam - 1)).max()
    assert ode.euler_step_limit(np.array([1.2, 0.3])) == 0.0


def test_stability_panel_verdicts_and_regions():
    panel = ode.stability_panel("pitchfork", 1.2, 1.0)
    rows = panel.text.split("<tr>")[2:]
    assert len(rows) == 3  # three equilibria
    saddle = [r for r in rows if "(-0.000, +0.000)" in r or "(+0.000, +0.000)" in r or "(-0.000, -0.000)" in r]
    assert len(saddle) == 1 and saddle[0].count("<b>no</b>") == 3
    assert all(r.count("yes") == 3 for r in rows if r is not saddle[0])
    spiral = ode.stability_panel("spiral", 1.5, 1.0).text  # |λ| = 1.5 > 1 but Re λ = 0.54 < 1
    assert "<td><b>no</b></td><td>yes</td><td><b>no</b></td>" in spiral
    assert "<td><b>no</b></td><td>yes</td><td>yes</td>" in ode.stability_panel("spiral", 1.5, 0.2).text
    with pytest.raises(ValueError, match="h must be > 0"):
        ode.stability_panel("spiral", 1.5, 0.0)


def test_unstable_equilibria_are_drawn_on_top_of_the_broyden_marks():
    panel = ode.phase_panel("pitchfork", 1.2, "tsit5", 1e-5, 1e-5)
    lines = panel.figure.axes[0].get_lines()
    rings = [ln for ln in lines if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"]
    cross = [ln for ln in lines if ln.get_marker() == "x"]
    assert len(rings) == 1 and len(cross) == 1
    assert rings[0].get_zorder() > cross[0].get_zorder() and rings[0].get_markersize() > cross[0].get_markersize()


def test_phase_panel_draws_the_stability_limit_and_names_why_it_stalls(monkeypatch):
    monkeypatch.setenv("DEQKIT_FAST", "0")  # 200 steps: enough for the steps to reach the limit at a = 2
    monkeypatch.delenv("CI", raising=False)
    panel = _quiet(ode.phase_panel, "spiral", 2.0, "tsit5", 1e-5, 1e-5)
    assert "The steps sit at the stability limit" in panel.text
    labels = [ln.get_label() for ln in panel.figure.axes[1].get_lines()]
    assert any(lab.startswith("stability limit h* = 1.5") for lab in labels)
    assert (
        "Step budget spent before the residual could decay"
        in _quiet(ode.phase_panel, "spiral", 2.5, "tsit5", 1e-5, 1e-5).text
    )
    assert "No stable equilibrium" in _quiet(ode.phase_panel, "spiral", 3.0, "tsit5", 1e-5, 1e-5).text
    assert "Step budget spent" not in ode.phase_panel("pitchfork", 1.2, "tsit5", 1e-5, 1e-5).text


def test_phase_panel_names_the_floor_when_the_time_reached_was_enough(monkeypatch):
    """dopri5 on the spiral at a = 2: the steps near h* but not within 2 % of it, and the time reached is more than
    the decay needs: the readout must not blame the step budget (it said 'the decay being slow', t ≈ 44 needed,
    t = 193 reached)."""
    monkeypatch.setenv("DEQKIT_FAST", "0")
    monkeypatch.delenv("CI", raising=False)
    text = _quiet(ode.phase_panel, "spiral", 2.0, "dopri5", 1e-5, 1e-5).text
    needed, reached = map(float, re.search(r"≈ (\d+); \d+ steps got to t = (\d+)", text).groups())
    assert reached >= needed and "The residual stalls near the stability limit" in text, text
    assert "Step budget spent" not in text
    share = float(re.search(r"(\d+)% of the stability limit", text).group(1))
    assert 85 <= share <= 110  # the steps are near h*


def test_slowing_down_grows_like_one_over_re_mu():
    rows = ode.slowing_down([2.0, 2.5])
    assert all(ok for *_, ok in rows)
    (a1, re1, n1, _), (a2, re2, n2, _) = rows
    assert re1 == pytest.approx(2.0 * math.cos(1.2) - 1) and n2 > n1
    assert n1 * -re1 == pytest.approx(n2 * -re2, rel=0.3)


def test_critical_gain_exercise():
    assert ode.critical_gain_exercise(2 / 3) is None
    assert "lost stability earlier" in ode.critical_gain_exercise(2.0)
    assert "still stable" in ode.critical_gain_exercise(0.5)
    assert "positive" in ode.critical_gain_exercise(-1.0)


def _recorded(fn, *args, **kwargs):
    """Call a callback that may legitimately warn (non-convergence is part of the lesson); return the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [w for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)]


@pytest.mark.parametrize("system", ode.SYSTEMS)
@pytest.mark.parametrize("a", [0.2, 1.2, 3.0])
def test_phase_panel_over_range(system, a):
    panel, warned = _recorded(ode.phase_panel, system, a, "tsit5", 1e-6, 1e-6)
    assert len(panel.figure.axes) >= 3 and "Broyden" in panel.text
    eq = ode.equilibria(system, a)
    assert eq and all(np.isfinite(p).all() for p, _ in eq)
    stable_origin = [s for p, s in eq if np.abs(p).max() < 1e-6]
    if system == "spiral" and a == 3.0:  # past the Hopf bifurcation: no steady state at all
        assert warned and "still moving" in panel.text and stable_origin == [False]
    else:
        assert not warned and "settles" in panel.text


@pytest.mark.parametrize("method", ode.ODE_METHODS)
@pytest.mark.parametrize("abstol,reltol", [(1e-6, 1e-6), (1e-2, 1e-6), (1e-6, 1e-2), (1e-2, 1e-2)])
def test_phase_panel_methods_and_tolerances(method, abstol, reltol):
    panel, warned = _recorded(ode.phase_panel, "pitchfork", 1.2, method, abstol, reltol)
    assert "trajectories reached" in panel.text
    # only a 3rd-order method at tight tolerances may run out of steps
    assert not warned or (method == "bosh3" and max(abstol, reltol) == 1e-6)


def test_bistable_pitchfork_broyden_saddle_vs_ode_stable():
    panel = ode.phase_panel("pitchfork", 1.2, "tsit5", 1e-6, 1e-6)
    assert "settles at (+0.933, +0.933)" in panel.text and "lands on (+0.000, " in panel.text


def test_distinct_keeps_the_smallest_residual_of_each_cluster():
    points = np.array([[1e-3, -1e-3], [0.0, 0.0], [-6e-4, 6e-4], [0.5, -0.5], [0.505, -0.5], [-0.5, 0.5]])
    residuals = np.array([3e-11, 0.0, 7e-11, 2e-12, 1e-12, 5e-11])
    kept = ode.distinct(points, residuals, tol=1e-2)
    assert [p.tolist() for p in kept] == [[-0.5, 0.5], [0.0, 0.0], [0.505, -0.5]]  # sorted; the best of each cluster
    assert len(ode.distinct(points, residuals, tol=1e-4)) == 6  # nothing closer than 1e-4
    assert ode.distinct(np.zeros((0, 2)), np.zeros(0)) == []


@pytest.mark.parametrize("a", [2 / 3, 2.0])
def test_equilibria_merges_broyden_s_near_copies_of_a_non_hyperbolic_origin(a):
    """At a = 2/3 and a = 2 the pitchfork's origin has an eigenvalue of J exactly 1: Broyden stops at points up to
    7e-4 from it (residual ~ distance³ ≤ 1e-10), which are not equilibria; they once showed as extra ○ and rows."""
    eq = ode.equilibria("pitchfork", a)
    assert len(eq) == (1 if a < 1 else 3)
    origin = [(p, s) for p, s in eq if np.abs(p).max() < 0.1]
    assert len(origin) == 1 and np.abs(origin[0][0]).max() < 1e-12 and not origin[0][1]
    assert np.allclose(sorted(ode.jacobian_eigenvalues("pitchfork", a, origin[0][0]).real), [0.5 * a, 1.5 * a])
    assert all(s and np.abs(p).min() > 0.9 for p, s in eq if p is not origin[0][0])  # a = 2: ±(0.995, 0.995)


@pytest.mark.parametrize(
    "a,stable",
    [(0.6, [True]), (1.2, [True, False, True]), (2.0, [True, False, True]), (2.5, [True, False, False, False, True])],
)
def test_pitchfork_equilibria_sorted_with_their_stability(a, stable):
    eq = ode.equilibria("pitchfork", a)
    assert [s for _, s in eq] == stable
    assert [p[0] for p, _ in eq] == sorted(p[0] for p, _ in eq)
    if a == 2.5:  # past a = 2: the origin is a source, two saddles on the anti-diagonal
        (_, _), (q, _), (o, _), (r, _), (_, _) = eq
        assert np.allclose(q, [-0.7104, 0.7104], atol=1e-4) and np.allclose(r, -q) and np.abs(o).max() < 1e-12
        assert (ode.jacobian_eigenvalues("pitchfork", a, o).real > 1).all()
        for p in (q, r):
            lam = np.sort(ode.jacobian_eigenvalues("pitchfork", a, p).real)
            assert lam[0] < 1 < lam[1]


def test_ode_unknown_system():
    with pytest.raises(ValueError, match="unknown system"):
        ode.system_matrix("saddle", 1.0)
