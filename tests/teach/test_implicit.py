"""Notebook 05's callbacks: every control over its range, extremes included; values finite where they should be,
and the measurements show what the notebook claims (checked, not assumed)."""

import math

import ipywidgets as widgets
import numpy as np
import pytest
import torch

import deqkit
from deqkit.teach import implicit
from deqkit.teach import implicit_measures as measures
from deqkit.teach.widgets import LiveFigure, Panel
from tests.teach.harness import sweep


def _finite_lines(panel: Panel) -> None:
    assert isinstance(panel, Panel) and panel.figure.axes
    for ax in panel.figure.axes:
        for line in ax.get_lines():
            y = np.asarray(line.get_ydata(), dtype=float)
            assert y.size and np.isfinite(y).any()


# --- 1: accuracy -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [0.5, 0.9])
def test_accuracy_panel_over_tolerances(norm):
    grid = measures.tolerances_grid()
    for tol in (grid[0], grid[-1]):  # extremes
        panel = implicit.accuracy_panel(tol, norm)
        _finite_lines(panel)
        assert f"{tol:.0e}" in panel.text
    tight, loose = measures.gradient_accuracy(grid[-1], norm), measures.gradient_accuracy(grid[0], norm)
    for acc in (tight, loose):
        assert all(math.isfinite(v) for v in [*acc.cosine.values(), *acc.relative_error.values()])
    # implicit: the error follows the tolerance; one-step: a bias the tolerance cannot remove
    assert tight.relative_error["implicit"] < 1e-6 < loose.relative_error["implicit"]
    assert tight.relative_error["unrolled"] < 1e-6
    assert tight.relative_error["one_step"] > 1e-2
    assert abs(tight.relative_error["one_step"] - loose.relative_error["one_step"]) < 0.1
    assert tight.forward_nfe > loose.forward_nfe


def test_one_step_bias_grows_with_the_norm():
    tol = measures.tolerances_grid()[-1]
    assert (
        measures.gradient_accuracy(tol, 0.9).relative_error["one_step"]
        > measures.gradient_accuracy(tol, 0.5).relative_error["one_step"]
    )


def test_accuracy_panel_snaps_to_the_grid():
    grid = measures.tolerances_grid()
    assert f"{grid[1]:.0e}" in implicit.accuracy_panel(grid[1] * 1.3, 0.9).text


# --- 2: cost against iterations --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["implicit", "unrolled"])
@pytest.mark.parametrize("iterations", [10, 200])
def test_cost_panel_extremes(iterations, mode):
    panel = implicit.cost_panel(iterations, mode)
    _finite_lines(panel)
    assert f"{iterations} forward iterations ({iterations} taken)" in panel.text


def test_implicit_memory_is_flat_and_unrolled_grows():
    grid = measures.iterations_grid()
    implicit = [measures.step_cost("implicit", n) for n in grid]
    unrolled = [measures.step_cost("unrolled", n) for n in grid]
    assert [c.steps for c in implicit] == list(grid) == [c.steps for c in unrolled]
    imp = [c.peak_bytes for c in implicit]
    unr = [c.peak_bytes for c in unrolled]
    assert min(imp) > 0 and (max(imp) - min(imp)) <= 0.05 * min(imp)
    assert all(b > a for a, b in zip(unr, unr[1:])) and unr[-1] > 3 * unr[0]
    assert all(c.seconds > 0 for c in implicit + unrolled)


# --- 3: backward solvers ---------------------------------------------------------------------------------------------


def test_norms_grid_goes_past_one_with_one_midway_between_eigenvalues():
    grid = measures.norms_grid()
    d = measures.near_one_deq(0.5)[1].shape[1]
    assert grid == tuple(sorted(grid)) and grid[0] == 0.5 and sum(s > 1 for s in grid) == 2
    for s in grid:
        if s > 1:
            eig = s * torch.linspace(-1, 1, d, dtype=torch.float64)
            gaps = (eig - 1).abs().sort().values
            assert abs(gaps[0] - gaps[1]) < 1e-12  # 1 is midway between its two nearest eigenvalues
    assert measures.midway_norm(1.05, 32) == pytest.approx(31 / 30)


def test_near_one_model_has_rho_equal_to_the_norm():
    for s in (0.5, measures.norms_grid()[-1]):
        model, x = measures.near_one_deq(s)
        with torch.no_grad():
            z = model(x)
        assert torch.count_nonzero(z) == 0 and model.last_stats.forward.all_converged  # z* = 0 exactly
        assert abs(float(deqkit.spectral_radius(model.f, z, x, iters=300).max()) - s) < 1e-3


@pytest.mark.parametrize("solver", list(measures.BACKWARD_SOLVERS))
def test_backward_panel_every_solver_at_the_extremes(solver):
    grid = measures.norms_grid()
    for s in (grid[0], grid[-1]):
        panel = implicit.backward_panel(solver, s)
        assert panel.figure.axes and solver in panel.text
        run = measures.backward_run(solver, s)
        if run.error:
            assert "blew up" in panel.text and not run.converged
        else:
            assert run.nfe > 0 and len(run.history) == len(run.nfe_history) > 1
            assert np.isfinite(run.history).all() or not run.converged
            assert (run.residual <= 1e-6) == run.converged


def test_full_gmres_converges_everywhere_and_picard_not_near_or_past_one():
    grid = measures.norms_grid()
    d = measures.near_one_deq(0.5)[1].shape[1]
    for s in grid:
        full = measures.backward_run("gmres(full)", s)
        assert full.converged and full.nfe <= d + 3
    easy, hard = measures.backward_run("picard", grid[0]), measures.backward_run("picard", grid[-1])
    assert easy.converged and not hard.converged
    assert "did not converge" in implicit.backward_panel("picard", grid[-1]).text
    with pytest.raises(ValueError, match="unknown backward solver"):
        measures.backward_run("newton", 0.5)


def test_broyden_restarts_when_its_memory_is_full_and_converges_like_full_memory():
    # deqkit's Broyden once dropped its oldest secant update once m were stored and blew up here; it now restarts
    default, roomy = measures.broyden_backward(0.95, 20), measures.broyden_backward(0.95, 300)
    assert not default.error and default.converged and len(default.residuals) > 20  # past a restart
    assert roomy.converged and not roomy.error and roomy.residuals[-1] <= 1e-6
    panel = implicit.broyden_memory_panel(0.95)
    assert "m = 20</b>: converged" in panel.text and "m = 300</b>: converged" in panel.text


def test_warnings_of_a_cached_run_are_shown_each_time_it_is_drawn(monkeypatch):
    run = measures.BackwardRun("gmres", 3, 0.0, True, 0.0, (1.0, 0.0), (1, 2), "", ((UserWarning, "from this run"),))
    monkeypatch.setattr(implicit, "backward_run", lambda name, norm: run)
    for _ in range(2):
        with pytest.warns(UserWarning, match="from this run"):
            implicit.backward_panel("gmres", 0.5)


# --- 4: rho near one -------------------------------------------------------------------------------------------------


def test_rho_panel_over_range():
    grid = measures.norms_grid()
    for s in (grid[0], grid[-1]):
        panel = implicit.rho_panel(s)
        assert len(panel.figure.axes) == 3 and f"ρ(∂f/∂z) = {s:.4f}" in panel.text
    rows = [measures.near_one(s) for s in grid]
    for s, r in zip(grid, rows):
        assert abs(r.rho - s) < 1e-3  # x = 0: z* = 0 and ∂f/∂z = W
        assert -1 <= r.one_step_cosine <= 1
    cosines = [r.one_step_cosine for r in rows if r.rho < 1]
    assert all(b < a for a, b in zip(cosines, cosines[1:]))  # the one-step direction degrades as ρ → 1
    assert not any(r.warnings for r in rows)
    past = [r for r in rows if r.rho > 1]
    assert past and all(not r.backward_converged["picard"] and r.backward_converged["gmres(full)"] for r in past)


def test_growth_exponents():
    below = tuple(s for s in measures.norms_grid() if s < 1)
    common = tuple(s for s in below if measures.near_one(s).backward_converged["picard"])
    p = {name: measures.growth_exponent(name, common) for name in ("picard", "anderson", "gmres")}
    assert 0.85 < p["picard"] < 1.3 and p["gmres"] < p["anderson"] < p["picard"]
    with pytest.raises(ValueError, match="did not converge"):
        measures.growth_exponent("picard", below)
    with pytest.raises(ValueError, match="at least two norms below 1"):
        measures.growth_exponent("gmres", (0.5,))


# --- widgets, the profiler's chatter and the exercise ----------------------------------------------------------------


def test_live_figures_sweep():
    grid = measures.norms_grid()
    solver = widgets.Dropdown(options=list(measures.BACKWARD_SOLVERS), value="gmres")
    norm = widgets.SelectionSlider(options=[(f"{s:.4g}", s) for s in grid], value=grid[1])
    app = LiveFigure(implicit.backward_panel, {"solver": solver, "norm": norm})
    seen = sweep(app)
    assert seen["solver"] == len(measures.BACKWARD_SOLVERS) and seen["norm"] == len(grid)
    assert app.last_error is None
    tol = widgets.FloatLogSlider(value=1e-4, min=-10, max=-2, step=2)
    acc = LiveFigure(implicit.accuracy_panel, {"tol": tol}, primary="tol")
    assert sweep(acc)["tol"] >= 2 and "deqkit-browser-slider" in tol._dom_classes


def test_cost_keeps_every_timed_step():
    c = measures.step_cost("implicit", measures.iterations_grid()[0])
    assert len(c.times) >= 3 and min(c.times) <= c.seconds <= max(c.times)


def test_exercise_check():
    a, x, w = measures.linear_deq()
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    by_hand = torch.linalg.solve((eye - a).T, w).unsqueeze(0)
    assert torch.allclose(measures.deqkit_linear_gradient(a, x, w), by_hand, atol=1e-8)
    assert measures.check_gradient(by_hand) is None
    assert "one-step" in measures.check_gradient(w.unsqueeze(0))
    assert "(I − A)ᵀ" in measures.check_gradient(torch.linalg.solve(eye - a, w).unsqueeze(0))
    assert "shape" in measures.check_gradient(w)
    assert "torch.Tensor" in measures.check_gradient([1, 2])
    assert "not dL/dx yet" in measures.check_gradient(2 * by_hand)
