"""Widget callbacks: every control over its range, extremes included; the plot really changes."""

import ipywidgets as widgets
import numpy as np
import pytest

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
    else:
        panel = welcome_panel(scale)
        _, z, history = tiny_deq(scale)
        assert history[-1] <= 1e-10 and np.isfinite(z.numpy()).all()
    assert isinstance(panel, Panel) and panel.figure.axes


def test_live_figure_redraws_and_shows_warnings():
    slider = widgets.FloatSlider(value=0.5, min=0.1, max=3.0)
    app = LiveFigure(welcome_panel, {"scale": slider}, primary="scale")
    first = bytes(app.image.value)
    assert first.startswith(b"\x89PNG") and "deqkit-browser-slider" in slider._dom_classes
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
