"""Notebook 00's panel: the slider's map is the notebook's, and the readout says why plain iteration fails."""

import math

import numpy as np
import pytest
import torch

import deqkit
from deqkit.teach.welcome import (
    broyden_exercise,
    jacobian_eigenvalues,
    predicted_iterations,
    tiny_deq,
    tiny_problem,
    welcome_panel,
)
from deqkit.teach.widgets import Panel


def test_tiny_problem_draws_w_then_x_from_one_generator():
    w, x = tiny_problem(0.8)
    gen = torch.Generator().manual_seed(0)
    w_ref = torch.randn(10, 10, generator=gen, dtype=torch.float64)
    x_ref = 0.3 * torch.randn(1, 10, generator=gen, dtype=torch.float64)
    assert torch.equal(w, w_ref * (0.8 / torch.linalg.matrix_norm(w_ref, 2))) and torch.equal(x, x_ref)
    assert abs(torch.linalg.matrix_norm(w, 2).item() - 0.8) < 1e-12


def test_jacobian_eigenvalues_match_autograd():
    w, x = tiny_problem(1.3)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    z, stats = deqkit.solve(f, torch.zeros_like(x), solver="anderson", abstol=1e-12, reltol=0)
    jac = torch.autograd.functional.jacobian(lambda v: f(v[None])[0], z[0])
    got = np.sort_complex(jacobian_eigenvalues(w, z[0]).numpy())
    assert np.allclose(got, np.sort_complex(torch.linalg.eigvals(jac).numpy()), atol=1e-9)


def test_predicted_iterations():
    assert predicted_iterations(0.1, 1.0, 1e-10) == pytest.approx(10)
    assert predicted_iterations(1.2, 1.0) == math.inf and predicted_iterations(0.5, 1e-12) == 0


@pytest.mark.parametrize("scale,reason", [(1.8, "but slowly"), (2.0, "outside the unit circle")])
def test_welcome_panel_says_why_it_fails(scale, reason):
    with pytest.warns(deqkit.ConvergenceWarning):
        panel = welcome_panel(scale)
    assert "<b>Why:</b>" in panel.text and reason in panel.text
    middle = panel.figure.axes[1]
    red = [line for line in middle.get_lines() if line.get_label() == "|λ| ≥ 1"][0]
    assert (len(red.get_xdata()) > 0) == (reason == "outside the unit circle")


def test_welcome_panel_prediction_matches_iterations():
    panel = welcome_panel(0.8)
    _, _, stats = tiny_deq(0.8)
    predicted = float(panel.text.split("≈ ")[1].split(" ")[0])
    assert abs(predicted - stats.steps) <= 3


def test_broyden_exercise_check():
    w, x = tiny_problem(0.8)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    z, stats = deqkit.solve(f, torch.zeros_like(x), solver="broyden", abstol=1e-10, reltol=0)
    assert broyden_exercise(z, stats.nfe) is None
    assert "one layer of the stack" in broyden_exercise(f(torch.zeros_like(x)), 1)
    z_default, default = deqkit.solve(f, torch.zeros_like(x), solver="broyden")  # the default tolerances
    assert "default abstol=1e-5" in broyden_exercise(z_default, default.nfe)
    assert "read the .nfe" in broyden_exercise(z, stats.steps)
    assert "shaped like x" in broyden_exercise(z[0], stats.nfe)


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
