"""The static picture widgets carry beside their live view (what the documentation site and viewers show)."""

import base64

import ipywidgets as widgets
import pytest

from deqkit.teach import y2x
from deqkit.teach.welcome import welcome_panel
from deqkit.teach.widgets import LiveFigure, StaticFallback

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_live_figure_bundle_holds_the_live_view_and_the_current_plot():
    slider = widgets.FloatSlider(value=0.8, min=0.1, max=3.0, description="‖W‖₂")
    app = LiveFigure(welcome_panel, {"scale": slider})
    bundle = app._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == app.model_id  # JupyterLab still renders the widget
    assert base64.b64decode(bundle["image/png"]) == bytes(app.image.value)
    assert bundle["image/png"] in bundle["text/html"] and "‖W‖₂ = 0.8:" in bundle["text/html"]
    assert app.readout.value in bundle["text/html"]
    slider.value = 3.0  # does not converge: LiveFigure shows the warning in its readout, and so does the picture
    moved = app._repr_mimebundle_()
    assert moved["image/png"] != bundle["image/png"] and "‖W‖₂ = 3:" in moved["text/html"]
    assert "ConvergenceWarning" in moved["text/html"]


def test_live_figure_escapes_labels_and_rounds_values():
    app = LiveFigure(
        lambda scale: welcome_panel(scale),
        {"scale": widgets.FloatSlider(value=0.123456, min=0.1, max=1.0, description="<b>s</b>")},
    )
    html = app._repr_mimebundle_()["text/html"]
    assert "&lt;b&gt;s&lt;/b&gt; = 0.1235" in html and "<b>s</b>" not in html


def test_a_selection_is_named_by_its_label_not_its_value():
    chooser = widgets.SelectionSlider(options=[("0.8", 0.8), ("wide", 3.0)], value=3.0, description="scale")
    html = LiveFigure(welcome_panel, {"scale": chooser})._repr_mimebundle_()["text/html"]
    assert "Static view at scale = wide:" in html and "scale = 3" not in html


def test_comparison_table_bundle_says_what_the_button_does():
    lr = widgets.FloatLogSlider(value=0.05, min=-3, max=-0.5)
    epochs = widgets.IntSlider(value=2, min=1, max=4)
    solver = widgets.Dropdown(options=list(y2x.SOLVERS), value="dynamic_ss")
    table = y2x.ComparisonTable(lr, epochs, solver)
    table.table.value = "<table><tr><td>row</td></tr></table>"
    bundle = table._repr_mimebundle_()
    assert WIDGET_VIEW in bundle
    assert "<td>row</td>" in bundle["text/html"] and "Run all backward modes" in bundle["text/html"]


def test_a_fallback_must_say_what_it_shows():
    class Bare(StaticFallback, widgets.VBox):
        pass

    with pytest.raises(NotImplementedError):
        Bare()._repr_mimebundle_()
