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
