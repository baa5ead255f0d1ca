"""docs/architecture.md's worked example runs: a new solver in one file plus one registry line."""

import pathlib
import re
import sys
import types

import pytest
import torch

import deqkit
from deqkit import solvers

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


@pytest.fixture
def momentum_module(monkeypatch):
    """The doc's solver file as a module, registered by the doc's registry line; the registries restored after."""
    saved = {name: dict(getattr(solvers, name)) for name in ("SOLVERS", "BACKWARD_SOLVERS")}
    module = types.ModuleType("momentum_example")
    exec(compile(BLOCKS[0], f"{DOC.name}[block 0]", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "momentum_example", module)
    exec(compile(BLOCKS[1], f"{DOC.name}[block 1]", "exec"), {"Momentum": module.Momentum})
    yield module
    for name, contents in saved.items():  # in place: every holder of the registry sees it restored
        getattr(solvers, name).clear()
        getattr(solvers, name).update(contents)


def test_the_doc_has_the_solver_file_and_the_registry_line():
    assert len(BLOCKS) == 2 and "class Momentum(IterativeSolver)" in BLOCKS[0] and "register(Momentum)" in BLOCKS[1]


def test_the_new_solver_works_everywhere_a_name_does(momentum_module):
    Momentum = momentum_module.Momentum
    w = 0.8 * torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    ref, _ = deqkit.solve(f, torch.zeros_like(x), solver="anderson", abstol=1e-12, reltol=0)
    z, stats = deqkit.solve(f, torch.zeros_like(x), solver="momentum", abstol=1e-12, reltol=0)
    assert stats.all_converged and stats.method == "momentum" and torch.allclose(z, ref, atol=1e-10)
    deq = deqkit.DEQ(
        lambda z, x: torch.tanh(z @ w.T + x),
        solver=Momentum(beta=0.5),
        max_nfe=None,
        backward=deqkit.Implicit(solver="momentum"),
    )
    xg = x.clone().requires_grad_()
    deq(xg).sum().backward()
    assert deq.last_stats.forward.all_converged and deq.last_stats.backward.method == "momentum"
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        Momentum(beta=1.0)


def test_register_refuses_what_is_not_a_solver_or_a_taken_name(momentum_module):
    with pytest.raises(ValueError, match="registered already"):
        solvers.register(momentum_module.Momentum)
    with pytest.raises(TypeError, match="subclass of deqkit.Solver"):
        solvers.register(int)
