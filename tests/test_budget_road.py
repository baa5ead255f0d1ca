"""The budget travels as one object: the DEQ's Tolerances of the current mode go to the forward solve and, in the
Context, to the backward, which derives its own from them; every setting is checked where it is set."""

import pytest
import torch

import deqkit
import deqkit.adjoint
import deqkit.layer
from deqkit.problems import tanh_problem
from deqkit.solvers import Tolerances


def _spy(monkeypatch, module):
    seen = []
    real = module.run

    def run(solver, f, z0, tol, **kw):
        seen.append(tol)
        return real(solver, f, z0, tol, **kw)

    monkeypatch.setattr(module, "run", run)
    return seen


def test_the_forward_and_backward_solves_get_the_layers_object(monkeypatch):
    block, x = tanh_problem(8, 0.5, batch=4, dtype=torch.float64)
    deq = deqkit.DEQ(block, solver="anderson", max_nfe=20, eval_max_nfe=40, reltol=1e-7, abstol=1e-7)
    forward, backward = _spy(monkeypatch, deqkit.layer), _spy(monkeypatch, deqkit.adjoint)
    deq(x.requires_grad_()).sum().backward()
    assert forward == [deq.tolerances] and forward[0] is deq.tolerances and forward[0].max_nfe == 20
    assert backward == [deq.backward.tolerances(deq.tolerances)] and backward[0].max_nfe == 20  # inherited
    deq.eval()
    with torch.no_grad():
        deq(x)
    assert forward[-1] is deq.tolerances and forward[-1].max_nfe == 40 and forward[-1].budget_name == "eval_max_nfe"


def test_settings_are_checked_where_they_are_set_and_apply_to_their_mode():
    deq = deqkit.DEQ(tanh_problem(4, 0.5, batch=2)[0])
    with pytest.raises(ValueError, match="max_nfe must be an integer >= 2, got 1"):
        deq.max_nfe = 1
    with pytest.raises(ValueError, match="eval_max_nfe must be an integer >= 2, got 1"):
        deq.eval_max_nfe = 1
    with pytest.raises(ValueError, match="reltol must be"):
        deq.reltol = 2.0
    assert (deq.max_nfe, deq.reltol) == (deqkit.layer.TRAIN_NFE, 1e-5)  # a refused setting changed nothing
    deq.max_nfe, deq.eval_max_nfe, deq.abstol, deq.max_steps = 12, None, 1e-3, 50
    train, test = deq.tolerances, deq.eval().tolerances
    assert (train.max_nfe, test.max_nfe) == (12, None)
    assert train.abstol == test.abstol == 1e-3 and train.max_steps == test.max_steps == 50
    assert "max_steps=50, max_nfe=12, eval_max_nfe=None" in repr(deq)


def test_an_eval_budget_is_named_as_the_eval_setting():
    block, x = tanh_problem(4, 0.5, batch=2)
    deq = deqkit.DEQ(block, solver=deqkit.DynamicSS(polish=None), eval_max_nfe=3).eval()  # < one Tsit5 step
    with torch.no_grad(), pytest.raises(ValueError, match=r"eval_max_nfe=3 .*raise eval_max_nfe"):
        deq(x)
    deq.solver, deq.eval_max_nfe = "dynamic_ss", 2
    with (
        torch.no_grad(),
        pytest.warns(deqkit.ConvergenceWarning, match=r"/ eval_max_nfe=2 .*steps \(max_steps, eval_max_nfe\)"),
    ):
        deq(x)


def test_tolerances_are_frozen_and_replace_checks_again():
    tol = Tolerances(1e-5, 1e-5)
    with pytest.raises(AttributeError):
        tol.max_nfe = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_nfe must be an integer >= 2"):
        tol.replace(max_nfe=1)
    with pytest.raises(TypeError, match="tol must be a deqkit.solvers.Tolerances"):
        deqkit.solvers.run(deqkit.Picard(), torch.tanh, torch.zeros(2, 2), 1e-5)  # type: ignore[arg-type]
