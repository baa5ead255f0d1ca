"""Notebook 03's callbacks and helpers: every mode and solver, the blow-up shown (not a stale plot), repeated
timings with their spread, and the exercise's check (right answers pass, wrong ones say why)."""

import dataclasses
import warnings

import ipywidgets as widgets
import numpy as np
import pytest

import deqkit
from deqkit.teach import regression


@pytest.mark.parametrize("backward", regression.BACKWARD_MODES)
@pytest.mark.parametrize("solver", regression.SOLVERS)
def test_training_panel_every_mode_and_solver(backward, solver):
    panel = regression.training_panel(0.05, 10, backward, solver)
    r = regression.train(0.05, 10, backward, solver)
    assert not r.error and np.isfinite(r.losses).all() and np.isfinite(r.prediction) and r.forward_nfe > 0
    assert (r.backward_nfe > 0) == (backward == "implicit")
    assert "prediction at −5" in panel.text and len(panel.figure.axes) == 3
    # the backward's cost in words: never "0.0 products" for unrolled, which goes back through every forward step
    expected = {"implicit": "vector–Jacobian products", "unrolled": "backprop through all",
                "one_step": "no solve"}[backward]
    assert expected in panel.text and expected in regression.results_table([r])
    # a before each of the 100 steps, then after the last one
    assert len(r.a_history) == 10 * 10 + 1 and r.a_history[-1] == r.a


def test_a_blow_up_is_plotted_not_raised():
    lr = 10 ** -0.5  # the widget's top learning rate
    panel = regression.training_panel(lr, 10, "implicit", "dynamic_ss")
    r = regression.train(lr, 10, "implicit", "dynamic_ss")
    # an Adam step throws a = W2·W1 past 1: dz/dt = (a − 1)z + ... has no stable equilibrium left
    assert "blowing up" in r.error and r.a_history[0] < 1 < r.a_history[-1]
    assert r.losses == () and np.isnan(r.prediction)
    assert "The training blew up" in panel.text and "blowing up" in panel.text
    a_axes = panel.figure.axes[1]
    assert any(np.allclose(line.get_ydata(), 1.0) for line in a_axes.get_lines())  # the a = 1 line is drawn
    with pytest.raises(deqkit.DivergenceError, match="no prediction"):
        regression.prediction_panel(-5.0, lr, 10, "implicit", "dynamic_ss")


def test_training_panel_learning_rate_extremes():
    panel = regression.training_panel(1e-3, 10, "implicit", "dynamic_ss")
    assert np.isfinite(regression.train(1e-3, 10, "implicit", "dynamic_ss").losses).all() and panel.figure.axes


@pytest.mark.parametrize("x", [-10.0, -5.0, 12.0])
def test_prediction_panel_matches_closed_form(x):
    panel = regression.prediction_panel(x, 0.05, 20, "implicit", "dynamic_ss")
    r = regression.train(0.05, 20, "implicit", "dynamic_ss")
    closed = (r.a * x + r.b) / (1 - r.a)
    assert f"{closed:+.3f}"[:-1] in panel.figure.axes[0].get_title()


def test_compare_backward_modes_keeps_every_repeat():
    results = regression.compare_backward_modes(0.05, 1, "anderson", repeats=3)
    assert [r.backward for r in results] == list(regression.BACKWARD_MODES)
    for r in results:
        assert len(r.times) == 3 and r.seconds == sorted(r.times)[1] and min(r.times) > 0
    html = regression.results_table(results)
    assert "3 runs" in html and html.count("<tr>") == 1 + 3
    with pytest.raises(ValueError, match="repeats"):
        regression.compare_backward_modes(0.05, 1, "anderson", repeats=0)


def test_first_epoch_below():
    r = regression.train(0.05, 10, "implicit", "anderson")
    k = r.first_epoch_below(r.losses[-1] * 1.0001)
    assert k is not None and r.losses[k - 1] < r.losses[-1] * 1.0001
    assert all(v >= r.losses[-1] * 1.0001 for v in r.losses[: k - 1])
    assert r.first_epoch_below(0.0) is None


def test_comparison_table_button_adds_rows():
    lr = widgets.FloatLogSlider(value=0.05, min=-3, max=-0.5)
    epochs = widgets.IntSlider(value=10, min=10, max=20)
    solver = widgets.Dropdown(options=list(regression.SOLVERS), value="anderson")
    table = regression.ComparisonTable(lr, epochs, solver, repeats=1)
    table.button.click()
    assert [r.backward for r in table.results] == list(regression.BACKWARD_MODES)
    assert table.table.value.count("<tr>") == 1 + 3 and not table.button.disabled


@pytest.mark.parametrize(("w2", "b2", "message"), [
    ((1 / 3, 1 / 3), 0.0, None),
    ((0.5, 1 / 6), 0.0, None),
    ((1.0, 1.0), 0.0, "no stable equilibrium"),
    ((1 / 3, 1 / 3), 1.0, "b = W₂b₁ + b₂ = 1"),
    ((0.2, 0.2), 0.0, "a = W₂W₁ = 0.4"),
    ("two", 0.0, "two numbers"),
])
def test_exercise_check(w2, b2, message):
    problem = regression.check_weights(w2, b2)
    if message is None:
        assert problem is None
    else:
        assert message in problem


def test_a_cached_run_shows_its_warnings_every_time(monkeypatch):
    r = regression.train(0.05, 10, "implicit", "dynamic_ss")
    noisy = dataclasses.replace(r, warnings=((deqkit.ConvergenceWarning, "a solve missed its tolerance"),))
    monkeypatch.setattr(regression, "train", lambda *args, **kwargs: noisy)
    for _ in range(2):  # the first draw and a cached one alike
        with pytest.warns(deqkit.ConvergenceWarning, match="missed its tolerance"):
            regression.training_panel(0.05, 10)


def test_training_records_the_warnings_it_raised(monkeypatch):
    original = regression.fit_regression

    def fit_and_warn(*args, **kwargs):
        warnings.warn("probe", deqkit.ConvergenceWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(regression, "fit_regression", fit_and_warn)
    r = regression._fit(0.05, 1, "implicit", "anderson", 0)
    assert r.warnings == ((deqkit.ConvergenceWarning, "probe"),)


def test_a_saved_comparison_reads_back_as_it_was(tmp_path):
    runs = regression.compare_backward_modes(lr=0.05, epochs=1, solver="dynamic_ss", repeats=1)
    regression.save_comparison(runs, tmp_path / "modes.json")
    back = regression.load_comparison(tmp_path / "modes.json")
    assert regression.results_table(back) == regression.results_table(runs)
    assert [(r.losses, r.a_history, r.times) for r in back] == [(r.losses, r.a_history, r.times) for r in runs]
    with pytest.raises(FileNotFoundError, match="python -m deqkit.teach.regression"):
        regression.load_comparison(tmp_path / "missing.json")


def test_the_shipped_comparison_has_the_notebooks_settings():
    import json

    saved = json.loads(regression.COMPARISON.read_text())
    assert saved["settings"] == regression.COMPARISON_SETTINGS
    runs = regression.load_comparison()
    assert sorted(r.backward for r in runs) == sorted(regression.BACKWARD_MODES)
    assert all(r.epochs == 100 and len(r.times) == 3 and r.solver == "dynamic_ss(tsit5)" for r in runs)


# --- the training widget's saved grid -------------------------------------------------------------------------------


def _same_run(a, b):
    """Two RunResults of the same training (times aside): losses, every a, prediction, costs, error, warnings."""
    assert (a.error, a.epochs, len(a.losses)) == (b.error, b.epochs, len(b.losses))
    assert np.array_equal(a.a_history, b.a_history, equal_nan=True)  # a NaN where the weights became NaN
    assert np.allclose([*a.losses, a.prediction, a.forward_nfe, a.backward_nfe],
                       [*b.losses, b.prediction, b.forward_nfe, b.backward_nfe], rtol=1e-8, atol=0, equal_nan=True)
    assert [m for _, m in a.warnings] == [m for _, m in b.warnings]


@pytest.mark.parametrize("lr, backward, solver", [
    (0.05, "implicit", "dynamic_ss"),     # trains to the end
    (10 ** -0.5, "implicit", "dynamic_ss"),  # blows up in its first epoch
    (0.3, "implicit", "anderson"),        # goes on through a > 1
    (0.3, "unrolled", "picard"),          # blows up later
])
def test_the_first_epochs_of_a_longer_run_are_the_shorter_run(lr, backward, solver):
    trace = regression._trace(lr, backward, solver, 0, epochs=6)
    for epochs in (1, 3, 6):
        _same_run(regression._result(trace, epochs), regression._fit(lr, epochs, backward, solver, 0))


def test_a_saved_grid_reads_back_as_it_was(tmp_path):
    traces = [regression._trace(lr, "implicit", "anderson", 0, epochs=3) for lr in (0.05, 10 ** -0.5)]
    regression.save_grid(traces, tmp_path / "grid.json.gz")
    back = list(regression._grid(tmp_path / "grid.json.gz").values())
    means = ("losses", "forward_nfe", "backward_nfe", "seconds", "error_seconds")  # float64: kept to 9 digits
    for got, saved in zip(back, traces, strict=True):
        for f in dataclasses.fields(saved):  # everything else exactly: a and the weights are float32 values
            if f.name not in means:
                assert getattr(got, f.name) == getattr(saved, f.name), f.name
        values = lambda t: [*t.losses, *t.forward_nfe, *t.backward_nfe, *t.seconds, t.error_seconds]  # noqa: E731
        assert np.allclose(values(got), values(saved), rtol=1e-8, atol=0, equal_nan=True)
    with pytest.warns(UserWarning, match="python -m deqkit.teach.regression --grid"):
        assert regression._grid(tmp_path / "missing.json.gz") == {}


def test_the_shipped_grid_is_every_setting_the_widget_offers_and_matches_fresh_training():
    import gzip
    import json

    with gzip.open(regression.GRID, "rt") as src:
        saved = json.load(src)
    assert saved["settings"]["epochs"] == regression.GRID_EPOCHS and saved["settings"]["seed"] == 0
    grid = regression._grid()
    assert len(grid) == len(regression.GRID_LRS) * len(regression.BACKWARD_MODES) * len(regression.SOLVERS)
    # the slider's values and its starting value, the blog's 0.05
    assert {10 ** e for e in regression.GRID_EXPONENTS} | {0.05} == set(regression.GRID_LRS)
    for lr in regression.GRID_LRS:
        for backward in regression.BACKWARD_MODES:
            for solver in regression.SOLVERS:
                assert regression._in_grid(lr, backward, solver, 0) is not None, (lr, backward, solver)
    # the slider's values as a browser computes them may differ from 10 ** e in the last digit: still the grid's
    for e, backward, solver in [(-1.25, "implicit", "dynamic_ss"), (-0.5, "unrolled", "anderson"),
                                (-2.0, "one_step", "dynamic_ss(tsit5)")]:
        lr = 10 ** e * (1 + 2e-16)
        trace = regression._in_grid(lr, backward, solver, 0)
        assert trace is not None and trace.covers(regression.GRID_EPOCHS)
        # the saved runs are this code's: their first epochs equal a fresh training's
        _same_run(regression._result(trace, 2), regression._fit(trace.lr, 2, backward, solver, 0))


def test_the_widget_reads_the_grid_instead_of_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained a setting the grid holds")

    monkeypatch.setattr(regression, "_trace", no_training)
    monkeypatch.setattr(regression, "_RUNS", {})
    r = regression.train(10 ** -1.25, 60, "unrolled", "broyden")
    assert r.epochs == 60 and len(r.losses) == 60 and len(r.a_history) == 601
    panel = regression.training_panel(10 ** -1.25, 60, "unrolled", "broyden")
    assert "prediction at −5" in panel.text


def test_a_setting_outside_the_grid_trains_once_and_answers_shorter_runs(monkeypatch):
    calls = []
    original = regression._trace

    def counted(*args, **kwargs):
        calls.append(kwargs["epochs"])
        return original(*args, **kwargs)

    monkeypatch.setattr(regression, "_trace", counted)
    monkeypatch.setattr(regression, "_RUNS", {})
    monkeypatch.setattr(regression, "_TRACES", {})
    regression.train(0.07, 4, "implicit", "anderson")
    regression.train(0.07, 2, "implicit", "anderson")
    regression.train(0.07, 5, "implicit", "anderson")
    assert calls == [4, 5]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
    ({"solver": "x"}, ValueError, "unknown solver 'x': choose one of"),
    ({"modes": ("implicit", "phantom")}, ValueError, "unknown backward mode 'phantom'"),
    ({"repeats": 0}, ValueError, "repeats must be an integer >= 1"),
    ({"lr": 0.0}, ValueError, "lr"),
])
def test_compare_backward_modes_refuses_bad_settings_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        regression.compare_backward_modes(**({"epochs": 1, "repeats": 1} | kwargs))
