"""The implicit backward solve's budget: by default the forward's (the layer's max_nfe in training, eval_max_nfe in
eval() mode), its own when ``Implicit(max_nfe=...)`` sets one, none when the layer has none."""

import warnings

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem
from deqkit.solvers import Tolerances


def backward_products(deq, x):
    """Vector–Jacobian products of one backward solve, and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", deqkit.ConvergenceWarning)
        deq(x).pow(2).sum().backward()
    return deq.last_stats.backward, [str(w.message) for w in caught if w.category is deqkit.ConvergenceWarning]


@pytest.fixture
def hard():
    """‖W‖₂ = 0.99: the backward solve to 1e-12 needs far more than 12 products."""
    block, x = tanh_problem(32, 0.99, batch=4, kind="orthogonal", seed=0, dtype=torch.float64)
    return block, x


def test_the_backward_gets_the_forward_training_budget(hard):
    block, x = hard
    deq = deqkit.DEQ(block, solver="anderson", abstol=1e-12, reltol=0, max_nfe=12, eval_max_nfe=200)
    stats, warned = backward_products(deq, x)
    assert stats.nfe <= 12 and not stats.all_converged
    assert any(m.startswith("gmres") and "max_nfe=12" in m for m in warned)  # the backward's own warning
    deq.eval()  # in eval() mode the forward may spend 200: so may the backward
    stats, _ = backward_products(deq, x)
    assert 12 < stats.nfe <= 200


def test_an_explicit_backward_budget_wins_and_none_means_no_budget(hard):
    block, x = hard
    own = deqkit.DEQ(block, solver="anderson", abstol=1e-12, reltol=0, max_nfe=12, backward=deqkit.Implicit(max_nfe=7))
    assert backward_products(own, x)[0].nfe <= 7
    free = deqkit.DEQ(block, solver="anderson", abstol=1e-12, reltol=0, max_nfe=None)
    stats, warned = backward_products(free, x)
    assert stats.nfe > 12 and stats.all_converged and not warned
    forward = Tolerances(1e-5, 1e-5, max_nfe=40)
    assert deqkit.Implicit().tolerances(forward).max_nfe == 40
    assert deqkit.Implicit(max_nfe=9).tolerances(forward).max_nfe == 9
    assert deqkit.Implicit().tolerances(forward.replace(max_nfe=None)).max_nfe is None
