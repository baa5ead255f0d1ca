"""Notebook 01's panels: verdicts at the true fixed point, honest drawings, per-method errors, the exercise."""

import math
import warnings

import numpy as np
import pytest
import torch

import deqkit
from deqkit.teach import fixed_point
from deqkit.teach.fixed_point import cobweb_panel, fixed_points_1d, iteration_panel, random_map, rate_exercise


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        return fn(*args)


@pytest.mark.parametrize("w,x,count", [(0.8, 0.5, 1), (-3.0, 1.0, 1), (2.5, 0.1, 3), (3.0, -1.0, 3), (1.0, 0.0, 1)])
def test_fixed_points_1d(w, x, count):
    points = fixed_points_1d(w, x)
    assert len(points) == count
    for z, slope in points:
        assert abs(math.tanh(w * z + x) - z) < 1e-9 and slope == pytest.approx(w * (1 - math.tanh(w * z + x) ** 2))


def test_cobweb_verdict_uses_the_true_fixed_point_when_the_iteration_fails():
    panel = _quiet(cobweb_panel, -1.5, 0.5, "picard", 1e-6)
    ((z_star, slope),) = fixed_points_1d(-1.5, 0.5)
    assert "not converged" in panel.text and "2-cycle" in panel.text
    assert f"z* = {z_star:+.6f}, f'(z*) = {slope:+.3f}" in panel.text and "repels plain iteration" in panel.text


def test_cobweb_damped_verdict_is_about_the_damped_map():
    panel = cobweb_panel(-1.5, 0.5, "picard(damping=0.5)", 1e-6)
    assert "converged" in panel.text and "1 − 0.5(1 − f') = -0.220" in panel.text


def _labels(panel):
    return [line.get_label() for line in panel.figure.axes[0].get_lines()]


def test_only_plain_and_damped_iteration_walk_a_staircase():
    assert "iterates (cobweb)" in _labels(cobweb_panel(0.8, 0.5, "picard", 1e-6))
    damped = _labels(cobweb_panel(0.8, 0.5, "picard(damping=0.5)", 1e-6))
    assert "iterates (cobweb)" in damped and "z + 0.5(f(z) − z)" in damped
    for method in ("anderson", "broyden"):
        labels = _labels(cobweb_panel(-1.5, 0.5, method, 1e-6))
        assert "iterates (cobweb)" not in labels and "(z_k, f(z_k)): jumps, not a staircase" in labels


def test_fixed_points_are_marked_attracting_or_repelling():
    panel = cobweb_panel(2.5, 0.1, "broyden", 1e-6)
    marks = [line for line in panel.figure.axes[0].get_lines() if line.get_markersize() == 7]
    assert sorted(m.get_markerfacecolor() for m in marks) == ["k", "k", "w"]


def test_iteration_panel_keeps_plotting_when_one_method_fails(monkeypatch):
    real = fixed_point._solve

    def broken(f, z0, label, tol, max_steps=fixed_point.MAX_STEPS):
        if label == "broyden":
            raise deqkit.DivergenceError("broyden: f(z) − z became NaN or infinite at step 7. Try damping")
        return real(f, z0, label, tol, max_steps)

    monkeypatch.setattr(fixed_point, "_solve", broken)
    panel = iteration_panel(0.9, 0.5, ("broyden", "picard", "anderson"), 1e-6)
    assert "<b>failed</b>: DivergenceError: broyden: f(z) − z became NaN or infinite at step 7</td>" in panel.text
    assert [line.get_label() for line in panel.figure.axes[0].get_lines()][:2] == ["picard", "anderson"]
    assert panel.text.count("<td>yes</td>") == 2


def test_iteration_panel_explains_input_scale_zero():
    panel = iteration_panel(2.0, 0.0, ("picard",), 1e-6)
    assert "<td>0</td>" in panel.text and "exact fixed point" in panel.text
    assert "Input scale 0" not in iteration_panel(0.9, 0.5).text


def test_rate_exercise_check():
    w, x = random_map(0.95, 0.5)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    z, stats = deqkit.solve(f, torch.zeros_like(x), solver="picard", abstol=1e-12, reltol=0, max_steps=2000)
    r = stats.history
    rho = deqkit.spectral_radius(f, z, iters=200).item()
    assert rate_exercise((r[-1] / r[-11]) ** 0.1, rho) is None
    assert "is ρ(W)" in rate_exercise((r[-1] / r[-11]) ** 0.1, 0.95)
    assert "per step" in rate_exercise(r[-1] / r[-11], rho)
    assert "spectral_radius" in rate_exercise((r[-1] / r[-11]) ** 0.1, 0.5)


def _recorded(fn, *args, **kwargs):
    """Call a callback that may legitimately warn (non-convergence is part of the lesson); return the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [w for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)]


@pytest.mark.parametrize("method", list(fixed_point.METHODS))
@pytest.mark.parametrize("w,x", [(-3.0, -1.0), (-3.0, 0.2), (0.0, 0.0), (0.8, 0.5), (3.0, 1.0), (2.5, 0.1)])
def test_cobweb_panel_over_range(method, w, x):
    panel, warned = _recorded(fixed_point.cobweb_panel, w, x, method, 1e-10)
    assert panel.figure.axes and "f'(z*) = " in panel.text
    for ax in panel.figure.axes:
        for line in ax.get_lines():
            assert np.isfinite(line.get_ydata()).all()
    if abs(w) < 1:  # contraction: must converge, silently
        assert not warned and panel.text.startswith("<b>converged")
    if warned:
        assert "not converged" in panel.text


def test_cobweb_shows_the_two_cycle_of_plain_iteration():
    panel, warned = _recorded(fixed_point.cobweb_panel, -3.0, 0.2, "picard", 1e-6)
    assert warned and "not converged" in panel.text and "repels" in panel.text
    panel, warned = _recorded(fixed_point.cobweb_panel, -3.0, 0.2, "anderson", 1e-6)
    assert not warned and panel.text.startswith("<b>converged")


@pytest.mark.parametrize("scale,x_scale", [(0.1, 0.0), (0.9, 0.5), (0.99, 2.0), (2.5, 0.05), (2.5, 2.0)])
def test_iteration_panel_over_range(scale, x_scale):
    methods = tuple(fixed_point.METHODS)
    panel, warned = _recorded(fixed_point.iteration_panel, scale, x_scale, methods, 1e-8)
    assert panel.text.count("<tr>") == 1 + len(methods)
    if scale < 1:  # a contraction: every method converges (damping only slows it down)
        assert not warned and "<b>no</b>" not in panel.text, panel.text
    if scale == 2.5 and x_scale < 0.1:  # ρ(∂f/∂z) > 1 near the origin: plain iteration cannot settle
        assert warned and "<b>no</b>" in panel.text


def test_random_map_has_the_requested_spectral_radius():
    w, x = fixed_point.random_map(1.7, 0.3)
    assert torch.allclose(w, w.T) and abs(torch.linalg.eigvalsh(w).abs().max().item() - 1.7) < 1e-9


def test_race_gives_rho_only_where_a_method_found_its_answer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        text = iteration_panel(2.5, 0.05, ("picard", "anderson")).text
    picard_row = text.split("<tr><td>picard</td>")[1].split("</tr>")[0]
    assert "<b>no</b>" in picard_row and "— (no answer)" in picard_row


def test_race_readout_allows_for_a_slow_contraction():
    """At ρ(W) = 1.5, input 0.5, ρ(∂f/∂z*) ≈ 0.96 < 1, yet 200 plain steps fall short: the readout must allow it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        text = iteration_panel(1.5, 0.5, ("picard", "anderson"), 1e-6).text
        w, x = random_map(1.5, 0.5)
        f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
        z_long, long = deqkit.solve(f, torch.zeros_like(x), solver="picard", abstol=1e-6, reltol=0, max_steps=2000)
    picard_row = text.split("<tr><td>picard</td>")[1].split("</tr>")[0]
    anderson_row = text.split("<tr><td>anderson</td>")[1].split("</tr>")[0]
    rho = float(anderson_row.split("<td>")[-1].split("</td>")[0])
    assert "<b>no</b>" in picard_row and 0.9 < rho < 1  # not within 200 steps, though ρ < 1
    assert long.all_converged and 200 < long.steps < 2000  # ... it gets there, slowly
    assert "200 steps may not be enough" in text
