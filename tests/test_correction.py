"""Intermediate states along the forward solve (TorchDEQ's n_states): ``deq(x, states=k)`` returns k outputs, the
last the usual ``f(z*, x)``, the others iterates of the solve attached by one-step/phantom gradients, for a
fixed-point correction loss."""

import warnings

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem
from deqkit.solvers import SOLVERS

GRADIENTS = [deqkit.Implicit(), deqkit.Unrolled(), deqkit.OneStep(), deqkit.Phantom(steps=3)]


def _correction_loss(states, target):
    """TorchDEQ's fixed-point correction: later states weigh more (weights 0.8^(k−1−i))."""
    k = len(states)
    return sum(0.8 ** (k - 1 - i) * (z - target).pow(2).mean() for i, z in enumerate(states))


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("backward", GRADIENTS, ids=lambda g: g.name)
def test_a_correction_loss_over_3_states_runs_with_every_solver_and_gradient(solver, backward):
    block, x = tanh_problem(6, 0.8, batch=4, seed=1)
    deq = deqkit.DEQ(block, solver=solver, backward=backward, abstol=1e-6, reltol=1e-6, max_nfe=None)
    xg = x.clone().requires_grad_()
    states = deq(xg, states=3)
    assert isinstance(states, list) and len(states) == 3 and all(s.shape == x.shape for s in states)
    with torch.no_grad():
        assert torch.allclose(states[-1], deq(x), atol=1e-6)  # the last state is the usual output
    _correction_loss(states, torch.zeros_like(x)).backward()
    grads = [xg.grad, *[p.grad for p in block.parameters()]]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_each_intermediate_state_is_one_step_from_an_iterate_of_the_solve_with_its_gradient():
    block, x = tanh_problem(6, 0.8, batch=4, seed=1, dtype=torch.float64)
    deq = deqkit.DEQ(block, solver="picard", abstol=1e-8, reltol=0, max_nfe=None)
    first, second, last = deq(x, states=3)
    _, stats = deqkit.solve(
        lambda z: block(z, x), torch.zeros_like(x), solver="picard", abstol=1e-8, reltol=0, record=True
    )
    n = len(stats.trajectory) - 1
    assert deq.last_stats.forward.trajectory == []  # recorded to sample the states, not kept
    for state, step in [(first, -(-n // 3)), (second, -(-2 * n // 3))]:
        z = stats.trajectory[step].detach()
        assert torch.allclose(state, block(z, x), atol=1e-12)
        (g_state,) = torch.autograd.grad(state.sum(), block.weight, retain_graph=True)
        (g_step,) = torch.autograd.grad(block(z, x).sum(), block.weight)
        assert torch.allclose(g_state, g_step, atol=1e-12)  # one-step gradient: through f at that iterate only


def test_phantom_correction_and_no_grad():
    block, x = tanh_problem(6, 0.8, batch=4, seed=1)
    deq = deqkit.DEQ(block, solver="anderson", correction=deqkit.Phantom(steps=2, damping=0.5))
    assert repr(deq.correction) == "Phantom(steps=2, damping=0.5)"
    with torch.no_grad():
        states = deq(x, states=4)
    assert len(states) == 4 and not any(s.requires_grad for s in states)
    assert deqkit.DEQ(block, correction="one_step").correction.steps == 1


def test_a_correction_loss_trains_the_intermediate_states_towards_the_target():
    """Fixed-point correction (Bai et al., 2022): supervising 3 states trains f so that even the earlier iterates
    of the solve approach the target."""
    torch.manual_seed(0)
    block, x = tanh_problem(8, 0.6, batch=16, seed=2, dtype=torch.float32)
    teacher, _ = tanh_problem(8, 0.6, batch=16, seed=3, dtype=torch.float32)
    with torch.no_grad():  # a target the block can reach: another block's fixed point
        target, _ = deqkit.solve(lambda z: teacher(z, x), torch.zeros_like(x), solver="anderson", abstol=1e-6)
    deq = deqkit.DEQ(block, solver="anderson", abstol=1e-4, reltol=1e-4, max_nfe=None)
    optimizer = torch.optim.Adam(block.parameters(), lr=2e-2)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every solve converges
        for _ in range(60):
            optimizer.zero_grad()
            states = deq(x, states=3)
            loss = _correction_loss(states, target)
            loss.backward()
            optimizer.step()
            losses.append((float(loss.detach()), float((states[0].detach() - target).pow(2).mean())))
    assert losses[-1][0] < 0.1 * losses[0][0], losses[::10]
    assert losses[-1][1] < 0.1 * losses[0][1], losses[::10]  # the first state learned too


def test_a_tuple_state_gives_its_states_in_its_structure():
    from tests.test_state import TwoScale, _start, _x

    deq = deqkit.DEQ(TwoScale(), solver="anderson", z0=_start, max_nfe=None)
    states = deq(_x(), states=3)
    assert len(states) == 3 and all(isinstance(s, tuple) and s[1].shape == (2, 3, 2, 2) for s in states)
    sum(hi.sum() + lo.sum() for hi, lo in states).backward()
    assert all(p.grad is not None for p in deq.parameters())


@pytest.mark.parametrize(
    "call, exception, message",
    [
        (
            lambda: deqkit.DEQ(lambda z, x: 0.5 * z + x)(torch.ones(2, 3), states=0),
            ValueError,
            "states must be an integer >= 1",
        ),
        (
            lambda: deqkit.DEQ(lambda z, x: 0.5 * z + x, correction="implicit"),
            ValueError,
            "correction must be 'one_step', 'phantom'",
        ),
    ],
)
def test_bad_states_and_correction(call, exception, message):
    with pytest.raises(exception, match=message):
        call()
