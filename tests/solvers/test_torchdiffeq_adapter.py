"""The one seam to torchdiffeq: every private internal deqkit uses, the FSAL property, Tsit5's precedence."""

import pathlib
import re
from importlib.metadata import version

import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _RungeKuttaState

from deqkit.solvers import torchdiffeq_adapter as adapter

PACKAGE = pathlib.Path(adapter.__file__).resolve().parents[1]


def test_torchdiffeq_private_api_is_the_pinned_one():
    assert version("torchdiffeq") == "0.2.5", "deqkit pins torchdiffeq==0.2.5: re-check torchdiffeq_adapter.py"
    assert hasattr(RKAdaptiveStepsizeODESolver, "_before_integrate")
    assert hasattr(RKAdaptiveStepsizeODESolver, "_adaptive_step")
    assert _RungeKuttaState._fields == ("y1", "f1", "t0", "t1", "dt", "interp_coeff")
    assert hasattr(SOLVERS["rk4"], "_step_func")


def test_only_the_adapter_touches_torchdiffeq_internals():
    users = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(r"torchdiffeq\._impl", p.read_text())
    )
    assert users == ["solvers/torchdiffeq_adapter.py"], users


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bosh3", "dopri8"])
def test_fsal_methods_detected(method):
    assert adapter.is_fsal(adapter.ADAPTIVE[method])


def test_non_fsal_methods_detected():
    assert not adapter.is_fsal(SOLVERS["fehlberg2"]) and not adapter.is_fsal(SOLVERS["adaptive_heun"])


def test_deqkit_tsit5_wins_over_a_tsit5_that_torchdiffeq_ships():
    class NotFsalTsit5(SOLVERS["dopri5"]):  # what a later torchdiffeq's tsit5 looks like to deqkit: not FSAL
        tableau = SOLVERS["fehlberg2"].tableau

    adaptive, _ = adapter.registries(dict(SOLVERS, tsit5=NotFsalTsit5))
    assert adaptive["tsit5"] is adapter.Tsit5Solver
    assert adapter.is_fsal(adaptive["tsit5"]), "Tsit5 lost its FSAL property: every step would cost one more evaluation"


def _field():
    calls = []

    def field(t, y, perturb=None):
        calls.append(1)
        return -y

    for hook in ("callback_step", "callback_accept_step", "callback_reject_step"):
        setattr(field, hook, lambda *a: None)
    return field, calls


@pytest.mark.parametrize("method", ["tsit5", "fehlberg2"])
def test_adaptive_stepper_returns_the_derivative_at_the_new_state(method):
    field, calls = _field()
    y0 = torch.ones(2, 3, dtype=torch.float64)
    stepper = adapter.AdaptiveStepper(
        method, field, y0, rtol=1e-2, atol=1e-2, norm=lambda x: x.pow(2).mean().sqrt(), first_step=0.1
    )
    before = len(calls)
    accepted, t1, y1, f1 = stepper.step()
    assert accepted and t1 == pytest.approx(0.1) and torch.allclose(f1, -y1)
    assert torch.allclose(y1, y0 * torch.exp(torch.tensor(-0.1, dtype=torch.float64)), atol=1e-3)
    stages = len(adapter.ADAPTIVE[method].tableau.alpha) + (0 if adapter.is_fsal(adapter.ADAPTIVE[method]) else 1)
    assert len(calls) - before == stages  # FSAL: the derivative at y1 comes free; otherwise one more evaluation


def test_adaptive_stepper_names_a_failed_step():
    field, _ = _field()
    stepper = adapter.AdaptiveStepper(
        "tsit5",
        field,
        torch.tensor([[float("nan")]], dtype=torch.float64),
        rtol=1e-6,
        atol=1e-9,
        norm=lambda x: x.abs().max(),
        first_step=0.1,
    )
    with pytest.raises(adapter.StepFailure, match="non-finite"):
        stepper.step()


def test_fixed_stepper_takes_one_euler_step():
    field, _ = _field()
    stepper = adapter.FixedStepper("euler", field, torch.ones(1, 2), 0.25)
    dy, f0 = stepper.step(torch.zeros(()), torch.ones(1, 2))
    assert torch.allclose(f0, -torch.ones(1, 2)) and torch.allclose(dy, -0.25 * torch.ones(1, 2))
