"""``sync_every``: the host reads the monitor every k steps, the per-sample results stay those of k = 1.

The host synchronisations of a solve are counted with a hook on every tensor method that copies a value to the host
(``item``, ``tolist``, ``__bool__``, ``__int__``, ``__float__``, ``nonzero``): what a GPU would wait on, on the path a
GPU takes.
"""

import math

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem

SOLVERS = {"picard": deqkit.Picard, "anderson": deqkit.Anderson, "broyden": deqkit.Broyden}
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero")


def _problem(batch=16, d=24):
    """Samples converging at different steps: inputs of very different sizes."""
    block, x = tanh_problem(d, 0.9, batch=batch, dtype=torch.float64)
    x = x * torch.logspace(-3, 1, batch, dtype=torch.float64)[:, None]
    w, b = block.weight.detach(), block.bias.detach()
    return (lambda z: torch.tanh(z @ w.T + x + b)), torch.zeros_like(x)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("k", [2, 3, 8])
def test_each_sample_gets_the_result_of_reading_every_step(name, k):
    f, z0 = _problem()
    z1, s1 = deqkit.solve(f, z0, solver=SOLVERS[name](), abstol=0, reltol=1e-9, max_steps=300)
    zk, sk = deqkit.solve(f, z0, solver=SOLVERS[name](sync_every=k), abstol=0, reltol=1e-9, max_steps=300)
    assert s1.all_converged and sk.all_converged
    assert torch.equal(z1, zk)
    assert torch.equal(s1.converged_step, sk.converged_step) and torch.equal(s1.converged_nfe, sk.converged_nfe)
    assert torch.equal(s1.residual, sk.residual)
    # the solve ends at the first read after its last sample converged
    assert s1.steps <= sk.steps < s1.steps + k and len(sk.history) == sk.steps + 1
    assert sk.history[: s1.steps + 1] == s1.history


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("k", [2, 4, 7])
@pytest.mark.parametrize("max_nfe", [2, 5, 9, 16])
def test_the_read_interval_never_exceeds_the_budget(name, k, max_nfe):
    f, z0 = _problem()
    with pytest.warns(deqkit.ConvergenceWarning, match="evaluation budget ran out"):
        z, stats = deqkit.solve(
            f, z0, solver=SOLVERS[name](sync_every=k), abstol=0, reltol=1e-14, max_nfe=max_nfe, max_steps=10_000
        )
    assert stats.nfe == max_nfe and stats.steps == max_nfe - 1 and stats.nfe_history[-1] == max_nfe


@pytest.mark.parametrize("k", [3, 5])
def test_max_steps_is_honoured_and_read(k):
    f, z0 = _problem()
    with pytest.warns(deqkit.ConvergenceWarning):
        _, stats = deqkit.solve(f, z0, solver=deqkit.Anderson(sync_every=k), abstol=0, reltol=1e-15, max_steps=11)
    assert stats.steps == 11 and len(stats.history) == 12


class _HostReads:
    """Counts calls of the tensor methods that copy a value to the host."""

    def __init__(self, monkeypatch):
        self.count = 0
        # the path a GPU takes: batches merged with torch.where (the CPU copies rows, finding them with nonzero),
        # the per-sample records as tensors (the CPU keeps them as numpy arrays, whose reads no hook here sees)
        monkeypatch.setattr("deqkit.solvers.monitor.COPY_ROWS_ON_CPU", False)
        monkeypatch.setattr("deqkit.solvers.monitor.HOST_ARRAYS", False)
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self.count += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("name", SOLVERS)
def test_a_solve_of_n_steps_synchronises_about_n_over_k_times(name, monkeypatch):
    f, z0 = _problem()
    k, max_steps = 8, 64
    reads = _HostReads(monkeypatch)
    with pytest.warns(deqkit.ConvergenceWarning):  # a tolerance no sample meets: all 64 steps run
        _, stats = deqkit.solve(f, z0, solver=SOLVERS[name](sync_every=k), abstol=0, reltol=1e-30, max_steps=max_steps)
    assert stats.steps == max_steps
    solve_reads = reads.count
    monkeypatch.undo()
    reads = _HostReads(monkeypatch)
    with pytest.warns(deqkit.ConvergenceWarning):
        deqkit.solve(f, z0, solver=SOLVERS[name](), abstol=0, reltol=1e-30, max_steps=max_steps)
    every_step = reads.count
    # two reads per read-out (counts, history), plus a constant (start, first check, the final warning's numbers)
    print(f"{name}: {solve_reads} host reads with sync_every={k}, {every_step} reading every step")
    assert solve_reads <= 2 * math.ceil(max_steps / k) + 12, solve_reads
    assert every_step >= 2 * max_steps > 3 * solve_reads, (every_step, solve_reads)


def test_a_nan_is_reported_at_the_step_it_appeared():
    x = torch.ones(4, 3, dtype=torch.float64)

    def f(z):
        out = 0.5 * z + x
        return torch.where(z > 1.7, torch.nan, out)  # NaN once the iterate passes 1.7 (step 3 from z = 0)

    with pytest.raises(deqkit.DivergenceError, match=r"at step 3 for 4 of 4 samples \(read at step 8"):
        deqkit.solve(f, torch.zeros_like(x), solver=deqkit.Picard(sync_every=8), abstol=0, reltol=1e-12)


def test_sync_every_is_checked_and_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="sync_every must be an integer >= 1"):
        deqkit.Anderson(sync_every=0)
    with pytest.raises(TypeError, match="sync_every"):
        deqkit.Picard(sync_every=2.5)
    with pytest.raises(ValueError, match="DynamicSS reads every polishing step"):
        deqkit.DynamicSS(polish=deqkit.Anderson(sync_every=4))
    assert deqkit.Anderson(sync_every=4).label == "anderson(sync_every=4)"
