"""Hostile review of the budget's road, GMRES on Jᵀ, growth_rates' first stage and the per-sample mixing check:
each test names a defect found and fixed (it failed before its fix)."""

import warnings

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem
from deqkit.solvers import Tolerances


@pytest.mark.parametrize("name", ["abstol", "reltol"])
def test_a_tolerance_beyond_float_range_gets_the_tolerance_message_not_overflow(name):
    # was: OverflowError "int too large to convert to float" from the message's own float(value)
    with pytest.raises(ValueError, match=rf"{name} must be in .*every start would be reported converged"):
        Tolerances(**{"abstol": 1e-5, "reltol": 1e-5, name: 10**400})
    deq = deqkit.DEQ(tanh_problem(4, 0.5, batch=2)[0])
    with pytest.raises(ValueError, match=rf"{name} must be in"):
        setattr(deq, name, 10**400)


def test_the_backward_inherits_and_names_eval_max_nfe_in_eval_mode():
    # was: "max_nfe=3 (inherited from the DEQ's forward budget, max_nfe in training or eval_max_nfe in eval()
    # mode ...)" in eval() mode, where the user's max_nfe is another number
    block, x = tanh_problem(8, 0.99, batch=4, dtype=torch.float64)
    deq = deqkit.DEQ(block, solver="anderson", eval_max_nfe=3, backward=deqkit.Implicit(solver="gmres")).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deq(x.requires_grad_()).sum().backward()
    backward = [str(w.message) for w in caught if str(w.message).startswith("gmres")]
    assert backward and "eval_max_nfe=3 (inherited from the DEQ's forward budget;" in backward[0], backward
    deq = deqkit.DEQ(block, solver="anderson", max_nfe=3, backward=deqkit.Implicit(solver="gmres"))  # warns afresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deq(x).sum().backward()
    backward = [str(w.message) for w in caught if str(w.message).startswith("gmres")]
    assert backward and "/ max_nfe=3 (inherited from the DEQ's forward budget;" in backward[0], backward
