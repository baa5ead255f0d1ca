"""Honest widgets: an error replaces the plot, one failing method does not hide the others, busy and progress."""

import contextlib
import gc
import io
import weakref

import ipywidgets as widgets
import numpy as np
import pytest
from matplotlib.image import imread

import deqkit
from deqkit.teach import widgets as teach_widgets
from deqkit.teach.welcome import welcome_panel
from deqkit.teach.widgets import (
    LiveFigure,
    Panel,
    attempt,
    error_figure,
    figure,
    progress,
    render_png,
)
from tests.teach.harness import control_values, sweep


def _line_panel(slope: float) -> Panel:
    fig, ax = figure()
    ax.plot([0, 1], [0, slope])
    ax.set_ylim(-2, 2)
    return Panel(fig, f"slope {slope}")


def _failing_panel(slope: float) -> Panel:
    if slope > 0.5:
        raise deqkit.DivergenceError(f"f(z) − z became NaN at step 3 (slope {slope})")
    return _line_panel(slope)


def _pixels(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png), format="png")


def test_an_error_replaces_the_plot_by_a_no_plot_image():
    slider = widgets.FloatSlider(value=0.2, min=0.0, max=1.0)
    app = LiveFigure(_failing_panel, {"slope": slider})
    good = bytes(app.image.value)
    slider.value = 0.9
    failed = bytes(app.image.value)
    assert failed != good and failed.startswith(b"\x89PNG")
    assert failed == render_png(error_figure(app.last_error), app.dpi)  # the "no plot" image, not a stale one
    assert isinstance(app.last_error, deqkit.DivergenceError)
    assert "DivergenceError" in app.readout.value and "NaN at step 3" in app.readout.value
    assert "slope 0.2" not in app.readout.value  # no readout of the previous settings either
    slider.value = 0.2  # recovers
    assert bytes(app.image.value) == good and app.last_error is None and "slope 0.2" in app.readout.value


def test_error_figure_says_no_plot_and_why():
    fig = error_figure(ValueError("w must be finite, got nan"))
    texts = [t.get_text() for t in fig.texts]
    assert texts[0] == "no plot:" and "ValueError: w must be finite, got nan" in texts[1]
    img = _pixels(render_png(fig))
    assert (img[..., :3] < 0.9).any()  # something is drawn


def test_a_bug_in_a_callback_shows_as_no_plot_and_sweep_reraises_it():
    def buggy(n: int) -> Panel:
        if n == 3:
            raise TypeError("unsupported operand")
        return _line_panel(n / 3)

    app = LiveFigure(buggy, {"n": widgets.IntSlider(value=0, min=0, max=3)})
    app.controls["n"].value = 3
    assert isinstance(app.last_error, TypeError) and app.image.value == render_png(error_figure(app.last_error))
    assert "TypeError: unsupported operand" in app.readout.value
    app.controls["n"].value = 0
    with pytest.raises(TypeError, match="unsupported operand"):
        sweep(app)


def test_sweep_accepts_solve_errors_as_results():
    app = LiveFigure(_failing_panel, {"slope": widgets.FloatSlider(value=0.2, min=0.0, max=1.0)})
    assert sweep(app)["slope"] >= 3  # three plots and the "no plot" image


def test_attempt_catches_solve_errors_only():
    assert attempt(lambda v: 2 * v, 3) == (6, None)
    result, err = attempt(_failing_panel, 0.9)
    assert result is None and isinstance(err, deqkit.DivergenceError)

    def strict_solve():
        raise deqkit.ConvergenceError("not converged")

    assert isinstance(attempt(strict_solve)[1], deqkit.ConvergenceError)
    with pytest.raises(KeyError):  # a bug is not a result
        attempt(lambda: {}["missing"])


def test_busy_indicator_shows_while_the_callback_runs():
    seen = []

    def panel(slope: float) -> Panel:
        seen.append((app.busy if seen else None, app.status.value if seen else None))
        return _line_panel(slope)

    app = None
    seen.append(None)  # the constructor's render runs before ``app`` exists
    app = LiveFigure(panel, {"slope": widgets.FloatSlider(value=0.2, min=0.0, max=1.0)})
    assert not app.busy and app.status.value == ""
    app.controls["slope"].value = 0.4
    busy, status = seen[-1]
    assert busy and "computing" in status
    assert not app.busy and app.status.value == "" and "deqkit-busy" not in app.status._dom_classes


def test_busy_indicator_is_cleared_after_an_error():
    app = LiveFigure(_failing_panel, {"slope": widgets.FloatSlider(value=0.9, min=0.0, max=1.0)})
    assert app.last_error is not None and not app.busy and app.status.value == ""


def test_progress_bar_only_for_long_loops(monkeypatch, capsys):
    monkeypatch.setattr(teach_widgets, "PROGRESS_DELAY_S", 0.0)
    assert list(progress(range(3), desc="epochs")) == [0, 1, 2]
    assert "epochs" in capsys.readouterr().err  # outside a notebook tqdm draws on stderr
    monkeypatch.setattr(teach_widgets, "PROGRESS_DELAY_S", 60.0)
    assert list(progress(range(3), desc="quick")) == [0, 1, 2]
    assert "quick" not in capsys.readouterr().err


def test_progress_in_a_callback_goes_to_the_progress_area_and_is_cleared(monkeypatch, capsys):
    monkeypatch.setattr(teach_widgets, "PROGRESS_DELAY_S", 0.0)

    def panel(n: int) -> Panel:
        total = sum(progress(range(n), desc="training"))
        return _line_panel(total / 10)

    app = LiveFigure(panel, {"n": widgets.IntSlider(value=3, min=1, max=5)})
    assert "training" in capsys.readouterr().err and app.progress_area.outputs == ()
    assert app.last_error is None


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
    app = LiveFigure(
        lambda a, b: welcome_panel(a),
        {"a": widgets.FloatSlider(value=0.5, min=0.1, max=0.9), "b": widgets.IntSlider(value=1, min=0, max=3)},
    )
    with pytest.raises(AssertionError, match="'b'"):
        sweep(app)


def test_control_values():
    assert control_values(widgets.Dropdown(options=[("A", 1), ("B", 2)])) == [1, 2]
    assert control_values(widgets.IntSlider(min=0, max=4)) == [0, 1, 2, 3, 4]
    vals = control_values(widgets.FloatLogSlider(min=-6, max=-2, base=10), points=3)
    assert np.allclose(vals, [1e-6, 1e-4, 1e-2])


def test_control_values_needs_both_ends():
    with pytest.raises(ValueError, match="points must be >= 2"):
        control_values(widgets.FloatSlider(min=0, max=1), points=1)


def test_a_redraw_frees_its_figure_at_once_and_leaves_the_collector_as_it_was(monkeypatch):
    # A figure lives in reference cycles: left to the automatic collector it reached the oldest generation and was
    # freed by a full collection, a 0.3-0.5 s pause every ninth or so redraw in the browser (docs/results.md,
    # "Notebook controls in a real browser").
    figures = []

    def panel(slope):
        p = _line_panel(slope)
        figures.append(weakref.ref(p.figure))
        return p

    app = LiveFigure(panel, {"slope": widgets.FloatSlider(value=0.2, min=0.0, max=1.0)})
    full = []

    def count(phase, info):
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.collect()
    gc.callbacks.append(count)
    try:
        for i in range(30):
            app.controls["slope"].value = 0.2 + 0.02 * (i + 1)
            assert figures[-1]() is None, i  # freed by the young collection after the redraw
    finally:
        gc.callbacks.remove(count)
    assert not full and gc.isenabled() and app.renders == 31
    gc.disable()  # a user who turned collection off keeps it off
    try:
        app.controls["slope"].value = 0.9
        assert not gc.isenabled()
    finally:
        gc.enable()
    # the mechanism itself: without it the figures outlive their redraw
    monkeypatch.setattr(teach_widgets, "young_garbage", contextlib.nullcontext)
    app.controls["slope"].value = 0.3
    assert figures[-1]() is not None


def test_log_axes_are_labelled_in_plain_text_and_the_title_stays_put():
    from matplotlib.ticker import LogFormatterSciNotation

    from deqkit.teach.widgets import PlainLogFormatter

    plain = PlainLogFormatter(LogFormatterSciNotation())
    assert [plain(x) for x in (1e-4, 1.0, 100.0, 2e-3)] == ["10⁻⁴", "10⁰", "10²", "2×10⁻³"]
    fig, ax = figure()
    ax.semilogy([0, 1, 2], [1e-6, 1e-3, 1.0])
    ax.xaxis.tick_top()  # labels above the axes: a title left to matplotlib would be lifted over them
    ax.set(title="residual")
    render_png(fig)
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all("$" not in s and "\\" not in s for s in labels), labels  # no mathtext to parse
    assert "10⁻⁶" in labels and ax.title.get_position()[1] == 1.0
    assert isinstance(ax.yaxis.get_major_formatter(), PlainLogFormatter)
    render_png(fig)  # a second render does not wrap the wrapper
    assert isinstance(ax.yaxis.get_major_formatter().inner, LogFormatterSciNotation)
