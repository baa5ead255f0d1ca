"""Notebook 03's callbacks and helpers: every mode and solver, the blow-up shown (not a stale plot), repeated
timings with their spread, and the exercise's check (right answers pass, wrong ones say why)."""

import dataclasses
import gzip
import warnings

import ipywidgets as widgets
import numpy as np
import pytest

import deqkit
from deqkit.teach import y2x


@pytest.mark.parametrize("backward", y2x.BACKWARD_MODES)
@pytest.mark.parametrize("solver", y2x.SOLVERS)
def test_training_panel_every_mode_and_solver(backward, solver):
    panel = y2x.training_panel(0.05, 10, backward, solver)
    r = y2x.training_run(0.05, 10, backward, solver)
    assert not r.error and np.isfinite(r.losses).all() and np.isfinite(r.prediction) and r.forward_nfe > 0
    assert (r.backward_nfe > 0) == (backward == "implicit")
    assert "prediction at −5" in panel.text and len(panel.figure.axes) == 3
    # the backward's cost in words: never "0.0 products" for unrolled, which goes back through every forward step
    expected = {"implicit": "vector–Jacobian products", "unrolled": "backprop through all", "one_step": "no solve"}[
        backward
    ]
    assert expected in panel.text and expected in y2x.results_table([r])
    # a before each of the 100 steps, then after the last one
    assert len(r.a_history) == 10 * 10 + 1 and r.a_history[-1] == r.a


def test_a_blow_up_is_plotted_not_raised():
    lr = 10**-0.5  # the widget's top learning rate
    panel = y2x.training_panel(lr, 10, "implicit", "dynamic_ss")
    r = y2x.training_run(lr, 10, "implicit", "dynamic_ss")
    # an Adam step throws a = W2·W1 past 1: dz/dt = (a − 1)z + ... has no stable equilibrium left
    assert "blowing up" in r.error and r.a_history[0] < 1 < r.a_history[-1]
    assert r.losses == () and np.isnan(r.prediction)
    assert "The training blew up" in panel.text and "blowing up" in panel.text
    a_axes = panel.figure.axes[1]
    assert any(np.allclose(line.get_ydata(), 1.0) for line in a_axes.get_lines())  # the a = 1 line is drawn
    with pytest.raises(deqkit.DivergenceError, match="no prediction"):
        y2x.prediction_panel(-5.0, lr, 10, "implicit", "dynamic_ss")


def test_training_panel_learning_rate_extremes():
    panel = y2x.training_panel(1e-3, 10, "implicit", "dynamic_ss")
    assert np.isfinite(y2x.training_run(1e-3, 10, "implicit", "dynamic_ss").losses).all() and panel.figure.axes


@pytest.mark.parametrize("x", [-10.0, -5.0, 12.0])
def test_prediction_panel_matches_closed_form(x):
    panel = y2x.prediction_panel(x, 0.05, 20, "implicit", "dynamic_ss")
    r = y2x.training_run(0.05, 20, "implicit", "dynamic_ss")
    closed = (r.a * x + r.b) / (1 - r.a)
    assert f"{closed:+.3f}"[:-1] in panel.figure.axes[0].get_title()


def test_compare_backward_modes_keeps_every_repeat():
    results = y2x.compare_backward_modes(0.05, 1, "anderson", repeats=3)
    assert [r.backward for r in results] == list(y2x.BACKWARD_MODES)
    for r in results:
        assert len(r.times) == 3 and r.seconds == sorted(r.times)[1] and min(r.times) > 0
    html = y2x.results_table(results)
    assert "3 runs" in html and html.count("<tr>") == 1 + 3
    with pytest.raises(ValueError, match="repeats"):
        y2x.compare_backward_modes(0.05, 1, "anderson", repeats=0)


def test_first_epoch_below():
    r = y2x.training_run(0.05, 10, "implicit", "anderson")
    k = r.first_epoch_below(r.losses[-1] * 1.0001)
    assert k is not None and r.losses[k - 1] < r.losses[-1] * 1.0001
    assert all(v >= r.losses[-1] * 1.0001 for v in r.losses[: k - 1])
    assert r.first_epoch_below(0.0) is None


def test_comparison_table_button_adds_rows():
    lr = widgets.FloatLogSlider(value=0.05, min=-3, max=-0.5)
    epochs = widgets.IntSlider(value=10, min=10, max=20)
    solver = widgets.Dropdown(options=list(y2x.SOLVERS), value="anderson")
    table = y2x.ComparisonTable(lr, epochs, solver, repeats=1)
    table.button.click()
    assert [r.backward for r in table.results] == list(y2x.BACKWARD_MODES)
    assert table.table.value.count("<tr>") == 1 + 3 and not table.button.disabled


@pytest.mark.parametrize(
    ("w2", "b2", "message"),
    [
        ((1 / 3, 1 / 3), 0.0, None),
        ((0.5, 1 / 6), 0.0, None),
        ((1.0, 1.0), 0.0, "no stable equilibrium"),
        ((1 / 3, 1 / 3), 1.0, "b = W₂b₁ + b₂ = 1"),
        ((0.2, 0.2), 0.0, "a = W₂W₁ = 0.4"),
        ("two", 0.0, "two numbers"),
    ],
)
def test_exercise_check(w2, b2, message):
    problem = y2x.check_weights(w2, b2)
    if message is None:
        assert problem is None
    else:
        assert message in problem


def test_a_cached_run_shows_its_warnings_every_time(monkeypatch):
    r = y2x.training_run(0.05, 10, "implicit", "dynamic_ss")
    noisy = dataclasses.replace(r, warnings=((deqkit.ConvergenceWarning, "a solve missed its tolerance"),))
    monkeypatch.setattr(y2x, "training_run", lambda *args, **kwargs: noisy)
    for _ in range(2):  # the first draw and a cached one alike
        with pytest.warns(deqkit.ConvergenceWarning, match="missed its tolerance"):
            y2x.training_panel(0.05, 10)


def test_training_records_the_warnings_it_raised(monkeypatch):
    original = y2x.fit_regression

    def fit_and_warn(*args, **kwargs):
        warnings.warn("probe", deqkit.ConvergenceWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(y2x, "fit_regression", fit_and_warn)
    r = y2x._fit(0.05, 1, "implicit", "anderson", 0)
    assert r.warnings == ((deqkit.ConvergenceWarning, "probe"),)


def test_a_saved_comparison_reads_back_as_it_was(tmp_path):
    runs = y2x.compare_backward_modes(lr=0.05, epochs=1, solver="dynamic_ss", repeats=1)
    y2x.save_comparison(runs, tmp_path / "modes.json")
    back = y2x.load_comparison(tmp_path / "modes.json")
    assert y2x.results_table(back) == y2x.results_table(runs)
    assert [(r.losses, r.a_history, r.times) for r in back] == [(r.losses, r.a_history, r.times) for r in runs]
    with pytest.raises(FileNotFoundError, match="python -m deqkit.teach.y2x"):
        y2x.load_comparison(tmp_path / "missing.json")


def test_the_shipped_comparison_has_the_notebooks_settings():
    import json

    saved = json.loads(y2x.COMPARISON.read_text())
    assert saved["settings"] == y2x.COMPARISON_SETTINGS
    runs = y2x.load_comparison()
    assert sorted(r.backward for r in runs) == sorted(y2x.BACKWARD_MODES)
    assert all(r.epochs == 100 and len(r.times) == 3 and r.solver == "dynamic_ss(tsit5)" for r in runs)


# --- the training widget's saved grid -------------------------------------------------------------------------------


def _same_run(a, b):
    """Two RunResults of the same training (times aside): losses, every a, prediction, costs, error, warnings."""
    assert (a.error, a.epochs, len(a.losses)) == (b.error, b.epochs, len(b.losses))
    assert np.array_equal(a.a_history, b.a_history, equal_nan=True)  # a NaN where the weights became NaN
    assert np.allclose(
        [*a.losses, a.prediction, a.forward_nfe, a.backward_nfe],
        [*b.losses, b.prediction, b.forward_nfe, b.backward_nfe],
        rtol=1e-8,
        atol=0,
        equal_nan=True,
    )
    assert [m for _, m in a.warnings] == [m for _, m in b.warnings]


@pytest.mark.parametrize(
    "lr, backward, solver",
    [
        (0.05, "implicit", "dynamic_ss"),  # trains to the end
        (10**-0.5, "implicit", "dynamic_ss"),  # blows up in its first epoch
        (0.3, "implicit", "anderson"),  # goes on through a > 1
        (0.3, "unrolled", "picard"),  # blows up later
    ],
)
def test_the_first_epochs_of_a_longer_run_are_the_shorter_run(lr, backward, solver):
    trace = y2x._trace(lr, backward, solver, 0, epochs=6)
    for epochs in (1, 3, 6):
        _same_run(y2x._result(trace, epochs), y2x._fit(lr, epochs, backward, solver, 0))


def test_a_saved_grid_reads_back_as_it_was(tmp_path):
    traces = [y2x._trace(lr, "implicit", "anderson", 0, epochs=3) for lr in (0.05, 10**-0.5)]
    y2x.save_grid(traces, tmp_path / "grid.json.gz")
    back = list(y2x._grid(tmp_path / "grid.json.gz").values())
    means = ("losses", "forward_nfe", "backward_nfe", "seconds", "error_seconds")  # float64: kept to 9 digits
    for got, saved in zip(back, traces, strict=True):
        for f in dataclasses.fields(saved):  # everything else exactly: a and the weights are float32 values
            if f.name not in means:
                assert getattr(got, f.name) == getattr(saved, f.name), f.name
        values = lambda t: [*t.losses, *t.forward_nfe, *t.backward_nfe, *t.seconds, t.error_seconds]  # noqa: E731
        assert np.allclose(values(got), values(saved), rtol=1e-8, atol=0, equal_nan=True)
    with pytest.warns(UserWarning, match="python -m deqkit.teach.y2x --grid"):
        assert y2x._grid(tmp_path / "missing.json.gz") == {}


@pytest.mark.parametrize(
    "content",
    [b"not gzip", gzip.compress(b'{"runs": ['), gzip.compress(b"{}"), gzip.compress(b'{"runs": [{"lr": 1}]}'), b""],
    ids=["not gzip", "truncated", "no runs", "row without fields", "empty"],
)
def test_a_corrupted_saved_grid_names_the_file_and_the_fix(tmp_path, content):
    """Before: a raw BadGzipFile, JSONDecodeError or KeyError('runs') from inside the reader."""
    path = tmp_path / "grid.json.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"(?s)grid.json.gz is not a readable saved grid.*deqkit.teach.y2x --grid"):
        y2x._grid(path)


def test_the_shipped_grid_is_every_setting_the_widget_offers_and_matches_fresh_training():
    import gzip
    import json

    with gzip.open(y2x.GRID, "rt") as src:
        saved = json.load(src)
    assert saved["settings"]["epochs"] == y2x.GRID_EPOCHS and saved["settings"]["seed"] == 0
    grid = y2x._grid()
    assert len(grid) == len(y2x.GRID_LRS) * len(y2x.BACKWARD_MODES) * len(y2x.SOLVERS)
    # the slider's values and its starting value, the blog's 0.05
    assert {10**e for e in y2x.GRID_EXPONENTS} | {0.05} == set(y2x.GRID_LRS)
    for lr in y2x.GRID_LRS:
        for backward in y2x.BACKWARD_MODES:
            for solver in y2x.SOLVERS:
                assert y2x._in_grid(lr, backward, solver, 0) is not None, (lr, backward, solver)
    # the slider's values as a browser computes them may differ from 10 ** e in the last digit: still the grid's
    for e, backward, solver in [
        (-1.25, "implicit", "dynamic_ss"),
        (-0.5, "unrolled", "anderson"),
        (-2.0, "one_step", "dynamic_ss(tsit5)"),
    ]:
        lr = 10**e * (1 + 2e-16)
        trace = y2x._in_grid(lr, backward, solver, 0)
        assert trace is not None and trace.covers(y2x.GRID_EPOCHS)
        # the saved runs are this code's: their first epochs equal a fresh training's
        _same_run(y2x._result(trace, 2), y2x._fit(trace.lr, 2, backward, solver, 0))


def test_the_widget_reads_the_grid_instead_of_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained a setting the grid holds")

    monkeypatch.setattr(y2x, "_trace", no_training)
    monkeypatch.setattr(y2x, "_RUNS", {})
    r = y2x.training_run(10**-1.25, 60, "unrolled", "broyden")
    assert r.epochs == 60 and len(r.losses) == 60 and len(r.a_history) == 601
    panel = y2x.training_panel(10**-1.25, 60, "unrolled", "broyden")
    assert "prediction at −5" in panel.text


def test_a_setting_outside_the_grid_trains_once_and_answers_shorter_runs(monkeypatch):
    calls = []
    original = y2x._trace

    def counted(*args, **kwargs):
        calls.append(kwargs["epochs"])
        return original(*args, **kwargs)

    monkeypatch.setattr(y2x, "_trace", counted)
    monkeypatch.setattr(y2x, "_RUNS", {})
    monkeypatch.setattr(y2x, "_TRACES", {})
    y2x.training_run(0.07, 4, "implicit", "anderson")
    y2x.training_run(0.07, 2, "implicit", "anderson")
    y2x.training_run(0.07, 5, "implicit", "anderson")
    assert calls == [4, 5]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
        ({"epochs": 10**9}, ValueError, r"epochs=1000000000 .*is more than this teaching function trains \(10000"),
        ({"epochs": 2000, "repeats": 6, "modes": ("implicit",)}, ValueError, r"epochs=2000 over 6 runs .*is more than"),
        ({"solver": "x"}, ValueError, "unknown solver 'x': choose one of"),
        ({"modes": ("implicit", "phantom")}, ValueError, "unknown backward mode 'phantom'"),
        ({"repeats": 0}, ValueError, "repeats must be an integer >= 1"),
        ({"lr": 0.0}, ValueError, "lr"),
    ],
)
def test_compare_backward_modes_refuses_bad_settings_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        y2x.compare_backward_modes(**({"epochs": 1, "repeats": 1} | kwargs))
