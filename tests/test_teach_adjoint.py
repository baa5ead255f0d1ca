"""Notebook 05's callbacks: every control over its range, extremes included; values finite where they should be,
and the measurements show what the notebook claims (checked, not assumed)."""

import math

import ipywidgets as widgets
import numpy as np
import pytest
import torch

from deqkit.teach import adjoint
from deqkit.teach.widgets import LiveFigure, Panel, sweep


def _finite_lines(panel: Panel) -> None:
    assert isinstance(panel, Panel) and panel.figure.axes
    for ax in panel.figure.axes:
        for line in ax.get_lines():
            y = np.asarray(line.get_ydata(), dtype=float)
            assert y.size and np.isfinite(y).any()


# --- peak memory ---------------------------------------------------------------------------------------------------

def test_peak_memory_sees_one_allocation_and_reuse():
    n = 1_000_000
    _, one = adjoint.peak_memory(lambda: torch.ones(n).sum())
    assert 4 * n <= one < 4 * n + 64 * 1024

    def two_at_once():
        a, b = torch.ones(n), torch.ones(n)
        return (a + b).sum()  # a, b and a + b live together: three blocks

    def one_after_another():
        for _ in range(3):
            torch.ones(n).sum()  # each freed before the next: one block at a time

    _, three = adjoint.peak_memory(two_at_once)
    _, sequential = adjoint.peak_memory(one_after_another)
    assert 12 * n <= three < 12 * n + 64 * 1024
    assert 4 * n <= sequential < 4 * n + 64 * 1024


def test_peak_memory_returns_the_result():
    result, peak = adjoint.peak_memory(lambda: 42)
    assert result == 42 and peak == 0


# --- 1: accuracy -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", [0.5, 0.9])
def test_accuracy_panel_over_tolerances(norm):
    grid = adjoint.tolerances_grid()
    for tol in (grid[0], grid[-1]):  # extremes
        panel = adjoint.accuracy_panel(tol, norm)
        _finite_lines(panel)
        assert f"{tol:.0e}" in panel.text
    tight, loose = adjoint.gradient_accuracy(grid[-1], norm), adjoint.gradient_accuracy(grid[0], norm)
    for acc in (tight, loose):
        assert all(math.isfinite(v) for v in [*acc.cosine.values(), *acc.relative_error.values()])
    # implicit: the error follows the tolerance; one-step: a bias the tolerance cannot remove
    assert tight.relative_error["implicit"] < 1e-6 < loose.relative_error["implicit"]
    assert tight.relative_error["unrolled"] < 1e-6
    assert tight.relative_error["one_step"] > 1e-2
    assert abs(tight.relative_error["one_step"] - loose.relative_error["one_step"]) < 0.1
    assert tight.forward_nfe > loose.forward_nfe


def test_one_step_bias_grows_with_the_norm():
    tol = adjoint.tolerances_grid()[-1]
    assert (adjoint.gradient_accuracy(tol, 0.9).relative_error["one_step"]
            > adjoint.gradient_accuracy(tol, 0.5).relative_error["one_step"])


def test_accuracy_panel_snaps_to_the_grid():
    grid = adjoint.tolerances_grid()
    assert f"{grid[1]:.0e}" in adjoint.accuracy_panel(grid[1] * 1.3, 0.9).text


# --- 2: cost against iterations --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["implicit", "unrolled"])
@pytest.mark.parametrize("iterations", [10, 200])
def test_cost_panel_extremes(iterations, mode):
    panel = adjoint.cost_panel(iterations, mode)
    _finite_lines(panel)
    assert f"{iterations} forward iterations ({iterations} taken)" in panel.text


def test_implicit_memory_is_flat_and_unrolled_grows():
    grid = adjoint.iterations_grid()
    implicit = [adjoint.step_cost("implicit", n) for n in grid]
    unrolled = [adjoint.step_cost("unrolled", n) for n in grid]
    assert [c.steps for c in implicit] == list(grid) == [c.steps for c in unrolled]
    imp = [c.peak_bytes for c in implicit]
    unr = [c.peak_bytes for c in unrolled]
    assert min(imp) > 0 and (max(imp) - min(imp)) <= 0.05 * min(imp)
    assert all(b > a for a, b in zip(unr, unr[1:])) and unr[-1] > 3 * unr[0]
    assert all(c.seconds > 0 for c in implicit + unrolled)


# --- 3: backward solvers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", adjoint.BACKWARD_SOLVERS)
def test_backward_panel_every_solver_at_the_extremes(solver):
    grid = adjoint.gaps_grid()
    for gap in (grid[0], grid[-1]):
        panel = adjoint.backward_panel(solver, gap)
        assert panel.figure.axes and solver in panel.text
        run = adjoint.backward_run(solver, gap)
        if run.error:
            assert "blew up" in panel.text and not run.converged
        else:
            assert run.nfe > 0 and len(run.history) == len(run.nfe_history) > 1
            assert np.isfinite(run.history).all()
            assert (run.residual <= 1e-6) == run.converged


def test_gmres_converges_everywhere_and_picard_not_near_one():
    grid = adjoint.gaps_grid()
    for gap in grid:
        assert adjoint.backward_run("gmres", gap).converged
    easy, hard = adjoint.backward_run("picard", grid[0]), adjoint.backward_run("picard", grid[-1])
    assert easy.converged and not hard.converged
    assert "did not converge" in adjoint.backward_panel("picard", grid[-1]).text


# --- 4: rho near one -------------------------------------------------------------------------------------------------

def test_rho_panel_over_range():
    grid = adjoint.gaps_grid()
    for gap in (grid[0], grid[-1]):
        _finite_lines(adjoint.rho_panel(gap))
    rows = [adjoint.near_one(g) for g in grid]
    for gap, r in zip(grid, rows):
        assert abs(r.rho - (1 - gap)) < 0.01 * (1 - gap)  # tiny input: ρ(∂f/∂z) at z* ≈ ‖W‖₂
        assert 0 < r.one_step_cosine <= 1
    cosines = [r.one_step_cosine for r in rows]
    assert all(b < a for a, b in zip(cosines, cosines[1:]))  # the one-step direction degrades as ρ → 1
    gmres = [r.backward_nfe["gmres"] for r in rows]
    assert all(b >= a for a, b in zip(gmres, gmres[1:])) and gmres[-1] > gmres[0]


# --- widgets and the exercise ----------------------------------------------------------------------------------------

def test_live_figures_sweep():
    grid = adjoint.gaps_grid()
    solver = widgets.Dropdown(options=list(adjoint.BACKWARD_SOLVERS), value="gmres")
    gap = widgets.SelectionSlider(options=[(f"{1 - g:g}", g) for g in grid], value=grid[1])
    app = LiveFigure(adjoint.backward_panel, {"solver": solver, "gap": gap})
    seen = sweep(app)
    assert seen["solver"] == len(adjoint.BACKWARD_SOLVERS) and seen["gap"] == len(grid)
    assert app.last_error is None
    tol = widgets.FloatLogSlider(value=1e-4, min=-10, max=-2, step=2)
    acc = LiveFigure(adjoint.accuracy_panel, {"tol": tol}, primary="tol")
    assert sweep(acc)["tol"] >= 2 and "deqkit-browser-slider" in tol._dom_classes


def test_exercise_closed_form_matches_deqkit():
    a, x, w = adjoint.linear_deq()
    by_hand = torch.linalg.solve((torch.eye(a.shape[0], dtype=a.dtype) - a).T, w).unsqueeze(0)
    assert torch.allclose(adjoint.deqkit_linear_gradient(a, x, w), by_hand, atol=1e-8)
    assert not torch.allclose(w.unsqueeze(0), by_hand, atol=1e-3)  # the one-step answer would be wrong


def test_tanh_block_norms():
    for kind in ("orthogonal", "symmetric"):
        block = adjoint.TanhBlock(12, 0.7, kind=kind, dtype=torch.float64)
        assert abs(float(torch.linalg.matrix_norm(block.weight.detach(), 2)) - 0.7) < 1e-9
    with pytest.raises(ValueError, match="kind"):
        adjoint.TanhBlock(4, 0.5, kind="random")
