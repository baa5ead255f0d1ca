"""On the CPU the monitor keeps its per-sample records as numpy arrays (``monitor.HOST_ARRAYS``); every result is
that of the same records kept as tensors (the way a GPU runs), bit for bit: answers, statistics, warnings, errors
and gradients, for every solver, in float32 and float64, where samples converge at different steps, where some do
not, drift away, or blow up."""

from __future__ import annotations

import warnings

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem
from deqkit.solvers import monitor as monitor_module

SOLVERS = ["picard", "anderson", "broyden", "dynamic_ss", deqkit.Picard(damping=0.7), deqkit.Anderson(sync_every=3)]
FIELDS = ("converged", "converged_step", "converged_nfe", "residual", "relative_residual", "history", "nfe_history")


def _problem(dtype: torch.dtype, radius: float = 0.9, batch: int = 12, d: int = 10):
    """Samples converging at different steps (inputs of very different sizes)."""
    block, x = tanh_problem(d, radius, batch=batch, dtype=dtype)
    x = x * torch.logspace(-3, 1, batch, dtype=dtype)[:, None]
    w, b = block.weight.detach(), block.bias.detach()
    return (lambda z: torch.tanh(z @ w.T + x + b)), torch.zeros_like(x)


def _solve(host: bool, monkeypatch, f, z0, **kwargs) -> dict:
    monkeypatch.setattr(monitor_module, "HOST_ARRAYS", host)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            z, stats = deqkit.solve(f, z0, **kwargs)
        except (deqkit.DivergenceError, deqkit.ConvergenceError) as err:
            return {"error": (type(err), str(err))}
    out = {name: getattr(stats, name) for name in FIELDS}
    out.update(z=z, nfe=stats.nfe, steps=stats.steps, warnings=[str(w.message) for w in caught])
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _compare(monkeypatch, f, z0, **kwargs) -> dict:
    as_tensors = _solve(False, monkeypatch, f, z0, **kwargs)
    as_arrays = _solve(True, monkeypatch, f, z0, **kwargs)
    assert _same(as_tensors, as_arrays), {k: (as_tensors[k], as_arrays.get(k)) for k in as_tensors}
    return as_arrays


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_converging_solves_are_the_same(solver, dtype, monkeypatch):
    f, z0 = _problem(dtype)
    out = _compare(monkeypatch, f, z0, solver=solver, reltol=1e-5 if dtype == torch.float32 else 1e-10)
    assert bool(out["converged"].all()) and out["converged_step"].unique().numel() > 1  # at different steps


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_a_budget_that_runs_out_is_the_same(solver, monkeypatch):
    f, z0 = _problem(torch.float64, radius=0.99)
    out = _compare(monkeypatch, f, z0, solver=solver, abstol=0, reltol=1e-13, max_nfe=12)
    assert out["warnings"] and not bool(out["converged"].all())


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_drifting_samples_are_the_same(solver, monkeypatch):
    """f(z) = z + 1 for half the batch (no fixed point): the drift rule holds them back, with its warning."""
    half = torch.tensor([0.0] * 4 + [1.0] * 4)[:, None]
    out = _compare(
        monkeypatch, lambda z: 0.5 * z * (1 - half) + (z + 1) * half, torch.ones(8, 3), solver=solver, max_steps=300
    )
    assert out["converged"].tolist() == [True] * 4 + [False] * 4 and "drift" in out["warnings"][0]


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_a_blow_up_is_the_same(solver, monkeypatch):
    out = _compare(monkeypatch, lambda z: 3.0 * z + 1e30, torch.ones(4, 3), solver=solver, max_steps=100)
    assert out["error"][0] is deqkit.DivergenceError


@pytest.mark.parametrize("reltol", [0.0, 1e-3])
@pytest.mark.parametrize("solver", ["picard", "anderson", "dynamic_ss"])
def test_an_abstol_beyond_float32_is_the_same(solver, reltol, monkeypatch):
    """An abstol beyond float32's range (float32 holds it as inf) accepts every iterate either way, and numpy says
    nothing of it. (With reltol > 0 torch refused to clamp to it: "value cannot be converted to type float without
    overflow".)"""
    f, z0 = _problem(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = _compare(monkeypatch, f, z0, solver=solver, abstol=1e300, reltol=reltol)
    assert bool(out["converged"].all()) and out["nfe"] <= 2  # (the first evaluation; dynamic_ss checks a second)


def test_a_gmres_backward_with_an_abstol_beyond_float32_runs():
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    deq = deqkit.DEQ(lambda z, x: 0.5 * block(z) + x, backward=deqkit.Implicit(abstol=1e300, reltol=1e-3))
    deq(torch.randn(3, 4)).sum().backward()
    assert deq.last_stats is not None and deq.last_stats.backward is not None
    assert bool(deq.last_stats.backward.converged.all())


@pytest.mark.parametrize("backward", ["gmres", "anderson"])
def test_the_implicit_backward_is_the_same(backward, monkeypatch):
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh()).double()
    with torch.no_grad():
        block[0].weight.mul_(0.9 / torch.linalg.matrix_norm(block[0].weight, 2))
    x = torch.randn(5, 6, dtype=torch.float64)
    grads = []
    for host in (False, True):
        monkeypatch.setattr(monitor_module, "HOST_ARRAYS", host)
        deq = deqkit.DEQ(lambda z, x: block(z) + x, backward=deqkit.Implicit(solver=backward))
        block.zero_grad()
        deq(x).pow(2).sum().backward()
        stats = deq.last_stats
        assert stats is not None and stats.backward is not None
        grads.append(
            (block[0].weight.grad.clone(), stats.forward.residual, stats.backward.residual, stats.backward.history)
        )
    assert _same(grads[0], grads[1])


def test_records_are_numpy_only_where_that_is_the_same_arithmetic():
    cpu32 = torch.zeros(2, 3)
    assert monitor_module.host_arrays(cpu32) and monitor_module.host_arrays(cpu32.double())
    assert not monitor_module.host_arrays(cpu32.bfloat16()) and not monitor_module.host_arrays(cpu32.half())
    assert not monitor_module.host_arrays(torch.zeros(2, 3, device="meta"))
