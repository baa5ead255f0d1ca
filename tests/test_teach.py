"""Widget callbacks: every control over its range, extremes included; the plot really changes."""

import ipywidgets as widgets
import numpy as np
import pytest
import torch

import deqkit
from deqkit.teach import fast_mode
from deqkit.teach.welcome import tiny_deq, welcome_panel
from deqkit.teach.widgets import LiveFigure, Panel, control_values, figure, sweep


def test_fast_mode(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DEQKIT_FAST", "0")
    assert not fast_mode()
    monkeypatch.setenv("CI", "true")
    assert fast_mode()


@pytest.mark.parametrize("scale", [0.1, 0.5, 0.99, 3.0])
def test_welcome_panel_over_range(scale):
    if scale > 2:
        with pytest.warns(deqkit.ConvergenceWarning):
            panel = welcome_panel(scale)
        assert panel.text.startswith("not converged") and "1e-10" in panel.text and "ρ(∂f/∂z*) = " in panel.text
    else:
        panel = welcome_panel(scale)
        _, z, stats = tiny_deq(scale)
        assert stats.all_converged and stats.history[-1] <= 1e-10 and np.isfinite(z.numpy()).all()
        assert panel.text.startswith(f"{stats.steps} iterations to reach ‖f(z) − z‖∞ ≤ 1e-10.")
    assert isinstance(panel, Panel) and panel.figure.axes


def test_live_figure_redraws_and_shows_warnings():
    slider = widgets.FloatSlider(value=0.5, min=0.1, max=3.0)
    app = LiveFigure(welcome_panel, {"scale": slider}, primary="scale")
    first = bytes(app.image.value)
    assert first.startswith(b"\x89PNG") and "deqkit-browser-slider" in slider._dom_classes
    assert "deqkit-browser-plot" in app.image._dom_classes
    other = LiveFigure(welcome_panel, {"scale": widgets.FloatSlider(value=0.5, min=0.1, max=1.0)})
    assert "deqkit-browser-plot" not in other.image._dom_classes
    slider.value = 3.0
    assert bytes(app.image.value) != first and "ConvergenceWarning" in app.readout.value
    slider.value = 0.5
    assert "warning" not in app.readout.value and bytes(app.image.value) == first
    assert sweep(app)["scale"] >= 4


def test_live_figure_shows_divergence_error_instead_of_crashing():
    def panel(blow_up: bool) -> Panel:
        if blow_up:
            raise deqkit.DivergenceError("f(z) − z became NaN at step 3")
        fig, ax = figure()
        ax.plot([0, 1])
        return Panel(fig, "ok")

    app = LiveFigure(panel, {"blow_up": widgets.Checkbox(value=False)})
    app.controls["blow_up"].value = True
    assert isinstance(app.last_error, deqkit.DivergenceError) and "NaN at step 3" in app.readout.value


def test_sweep_detects_a_dead_control():
    app = LiveFigure(lambda a, b: welcome_panel(a), {"a": widgets.FloatSlider(value=0.5, min=0.1, max=0.9),
                                                     "b": widgets.IntSlider(value=1, min=0, max=3)})
    with pytest.raises(AssertionError, match="'b'"):
        sweep(app)


def test_control_values():
    assert control_values(widgets.Dropdown(options=[("A", 1), ("B", 2)])) == [1, 2]
    assert control_values(widgets.IntSlider(min=0, max=4)) == [0, 1, 2, 3, 4]
    vals = control_values(widgets.FloatLogSlider(min=-6, max=-2, base=10), points=3)
    assert np.allclose(vals, [1e-6, 1e-4, 1e-2])


# --- notebook 01: fixed-point iteration -------------------------------------------------------------------------
from deqkit.teach import fixed_point, ode  # noqa: E402


def _quiet(fn, *args, **kwargs):
    """Call a callback that may legitimately warn (non-convergence is part of the lesson); return the warnings."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, [w for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)]


@pytest.mark.parametrize("method", list(fixed_point.METHODS))
@pytest.mark.parametrize("w,x", [(-3.0, -1.0), (-3.0, 0.2), (0.0, 0.0), (0.8, 0.5), (3.0, 1.0), (2.5, 0.1)])
def test_cobweb_panel_over_range(method, w, x):
    panel, warned = _quiet(fixed_point.cobweb_panel, w, x, method, 1e-10)
    assert panel.figure.axes and "f'(z*) = " in panel.text
    for ax in panel.figure.axes:
        for line in ax.get_lines():
            assert np.isfinite(line.get_ydata()).all()
    if abs(w) < 1:  # contraction: must converge, silently
        assert not warned and panel.text.startswith("<b>converged")
    if warned:
        assert "not converged" in panel.text


def test_cobweb_shows_the_two_cycle_of_plain_iteration():
    panel, warned = _quiet(fixed_point.cobweb_panel, -3.0, 0.2, "picard", 1e-6)
    assert warned and "not converged" in panel.text and "repels" in panel.text
    panel, warned = _quiet(fixed_point.cobweb_panel, -3.0, 0.2, "anderson", 1e-6)
    assert not warned and panel.text.startswith("<b>converged")


@pytest.mark.parametrize("scale,x_scale", [(0.1, 0.0), (0.9, 0.5), (0.99, 2.0), (2.5, 0.05), (2.5, 2.0)])
def test_iteration_panel_over_range(scale, x_scale):
    methods = tuple(fixed_point.METHODS)
    panel, warned = _quiet(fixed_point.iteration_panel, scale, x_scale, methods, 1e-8)
    assert panel.text.count("<tr>") == 1 + len(methods)
    if scale < 1:  # a contraction: every method converges (damping only slows it down)
        assert not warned and "<b>no</b>" not in panel.text, panel.text
    if scale == 2.5 and x_scale < 0.1:  # ρ(∂f/∂z) > 1 near the origin: plain iteration cannot settle
        assert warned and "<b>no</b>" in panel.text


def test_random_map_has_the_requested_spectral_radius():
    w, x = fixed_point.random_map(1.7, 0.3)
    assert torch.allclose(w, w.T) and abs(torch.linalg.eigvalsh(w).abs().max().item() - 1.7) < 1e-9


# --- notebook 02: the ODE view ------------------------------------------------------------------------------------

@pytest.mark.parametrize("system", ode.SYSTEMS)
@pytest.mark.parametrize("a", [0.2, 1.2, 3.0])
def test_phase_panel_over_range(system, a):
    panel, warned = _quiet(ode.phase_panel, system, a, "tsit5", 1e-6, 1e-6)
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
    panel, warned = _quiet(ode.phase_panel, "pitchfork", 1.2, method, abstol, reltol)
    assert "trajectories reached" in panel.text
    # only a 3rd-order method at tight tolerances may run out of steps
    assert not warned or (method == "bosh3" and max(abstol, reltol) == 1e-6)


def test_bistable_pitchfork_broyden_saddle_vs_ode_stable():
    panel = ode.phase_panel("pitchfork", 1.2, "tsit5", 1e-6, 1e-6)
    assert "settles at (+0.933, +0.933)" in panel.text and "lands on (+0.000, " in panel.text


def test_ode_unknown_system():
    with pytest.raises(ValueError, match="unknown system"):
        ode.system_matrix("saddle", 1.0)


def test_control_values_needs_both_ends():
    with pytest.raises(ValueError, match="points must be >= 2"):
        control_values(widgets.FloatSlider(min=0, max=1), points=1)
