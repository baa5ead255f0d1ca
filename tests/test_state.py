"""States of several tensors (a tuple or list of tensors of different shapes, as in MDEQ): every solver, gradient
method, budget, statistic and check works on them, and the user never sees the flattened form."""

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import deqkit
from deqkit.solvers import SOLVERS

TIGHT = {"abstol": 1e-12, "reltol": 1e-12, "max_steps": 2000, "max_nfe": None}


class TwoScale(nn.Module):
    """A 4×4 map and a 2×2 map coupled by average pooling and upsampling; a contraction for small weights."""

    def __init__(self, c1=2, c2=3, scale=0.3, dtype=torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(scale * torch.randn(c1, c1, 3, 3, generator=gen, dtype=dtype) / 3)
        self.b = nn.Parameter(scale * torch.randn(c2, c2, 3, 3, generator=gen, dtype=dtype) / 3)
        self.down = nn.Parameter(scale * torch.randn(c2, c1, 1, 1, generator=gen, dtype=dtype))
        self.up = nn.Parameter(scale * torch.randn(c1, c2, 1, 1, generator=gen, dtype=dtype))

    def forward(self, z, x):
        hi, lo = z
        new_hi = torch.tanh(F.conv2d(hi, self.a, padding=1) + F.interpolate(F.conv2d(lo, self.up), scale_factor=2) + x)
        new_lo = torch.tanh(F.conv2d(lo, self.b, padding=1) + F.conv2d(F.avg_pool2d(hi, 2), self.down))
        return new_hi, new_lo


def _start(x):
    return (torch.zeros_like(x), x.new_zeros(x.shape[0], 3, 2, 2))


def _x(batch=2):
    return torch.randn(batch, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_solve_returns_the_structure_and_a_true_fixed_point(solver):
    block, x = TwoScale(), _x()
    z, stats = deqkit.solve(lambda z: block(z, x), list(_start(x)), solver=solver, abstol=1e-10, reltol=0, record=True)
    assert isinstance(z, list) and [t.shape for t in z] == [(2, 2, 4, 4), (2, 3, 2, 2)]
    with torch.no_grad():
        fz = block(z, x)
        z = [t.detach() for t in z]
    assert stats.all_converged and max(float((a - b).abs().max()) for a, b in zip(fz, z)) <= 1e-9
    assert all(isinstance(t, list) and t[1].shape == (2, 3, 2, 2) for t in stats.trajectory)


@pytest.mark.slow  # finite differences over every parameter, unrolled through every solver: 2-9 s each
@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("backward", ["implicit", "unrolled"])
def test_exact_gradients_of_a_two_tensor_state_match_finite_differences(solver, backward):
    block, x = TwoScale(), _x()
    gradient = deqkit.Implicit(max_steps=2000) if backward == "implicit" else deqkit.Unrolled()
    deq = deqkit.DEQ(block, solver=solver, backward=gradient, z0=_start, **TIGHT)
    names = [f"f.{n}" for n, _ in block.named_parameters()]

    def fn(x, *params):
        hi, lo = functional_call(deq, dict(zip(names, params)), (x,))
        return hi.sum((1, 2, 3)) + 2 * lo.pow(2).sum((1, 2, 3))

    inputs = (x.clone().requires_grad_(), *[p.detach().clone().requires_grad_() for p in block.parameters()])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backward", [deqkit.OneStep(), deqkit.Phantom(steps=3)])
def test_approximate_gradients_of_a_two_tensor_state_are_those_of_the_flat_state(backward):
    """One-step and phantom gradients of a tuple state equal those of the same map written on one flat tensor."""
    block, x = TwoScale(), _x()

    def flat_block(z, x):
        hi, lo = block((z[:, :32].reshape(-1, 2, 4, 4), z[:, 32:].reshape(-1, 3, 2, 2)), x)
        return torch.cat([hi.flatten(1), lo.flatten(1)], 1)

    grads = []
    for f, z0 in [(block, _start), (flat_block, lambda x: x.new_zeros(x.shape[0], 44))]:
        deq = deqkit.DEQ(f, solver="anderson", backward=backward, z0=z0, **TIGHT)
        out = deq(x)
        flat = out if isinstance(out, torch.Tensor) else torch.cat([t.flatten(1) for t in out], 1)
        grads.append(torch.autograd.grad(flat.pow(2).sum(), list(block.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_budget_statistics_penalty_and_no_grad_work_on_a_tuple_state():
    block, x = TwoScale(), _x(3)
    deq = deqkit.DEQ(
        block,
        solver="anderson",
        abstol=1e-10,
        reltol=0,
        max_nfe=5,
        z0=_start,
        backward=deqkit.Implicit(max_nfe=500, reltol=1e-8),
    )
    with pytest.warns(deqkit.ConvergenceWarning, match="evaluation budget ran out"):
        hi, lo = deq(x)
    assert deq.last_stats.forward.nfe == 5 and deq.last_stats.forward.converged.shape == (3,)
    penalty = deqkit.jacobian_penalty(deq)
    assert penalty.requires_grad and float(penalty.detach()) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (hi.sum() + lo.sum()).backward()
        deq.max_nfe = None
        with torch.no_grad():
            out = deq(x)
        assert isinstance(out, tuple) and out[1].shape == (3, 3, 2, 2) and not out[0].requires_grad
        cold = deq.last_stats.forward.nfe
        with torch.no_grad():
            deq(x, z0=tuple(t.detach() for t in out))  # warm start from the same structure
    assert deq.last_stats.forward.nfe < cold and deq.last_stats.forward.all_converged


def test_a_used_tuple_state_deq_deep_copies():
    deq = deqkit.DEQ(TwoScale(), solver="anderson", z0=_start)
    hi, lo = deq(_x())
    (hi.sum() + lo.sum()).backward()
    twin = copy.deepcopy(deq)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(twin(_x()), deq(_x())))


def test_spectral_radius_of_a_tuple_state_is_that_of_the_flat_map():
    block, x = TwoScale(), _x()
    z = tuple(torch.rand_like(t) for t in _start(x))

    def flat_block(zf, x):
        hi, lo = block((zf[:, :32].reshape(-1, 2, 4, 4), zf[:, 32:].reshape(-1, 3, 2, 2)), x)
        return torch.cat([hi.flatten(1), lo.flatten(1)], 1)

    rho = deqkit.spectral_radius(block, z, x)
    flat = deqkit.spectral_radius(flat_block, torch.cat([t.flatten(1) for t in z], 1), x)
    assert rho.shape == (2,) and torch.allclose(rho, flat) and bool((rho > 0).all())
