"""The evaluation budget: no solve ever evaluates f more than max_nfe times, and running out is never hidden."""

import warnings

import pytest
import torch

import deqkit
from deqkit.solvers import GMRES, Tolerances, run


class Counted:
    """f(z) = tanh(0.5 z + x) for every sample but the first, where f(z) = z + 1 (no fixed point at all)."""

    def __init__(self):
        self.calls = 0
        self.x = torch.linspace(-1, 1, 4 * 6, dtype=torch.float64).view(4, 6)

    def __call__(self, z):
        self.calls += 1
        out = torch.tanh(0.5 * z + self.x)
        return torch.cat([z[:1] + 1.0, out[1:]])


SOLVERS = [
    deqkit.Picard(),
    deqkit.Anderson(),
    deqkit.Broyden(),
    deqkit.DynamicSS(),
    deqkit.DynamicSS(polish=None),
    deqkit.DynamicSS(ode_method="dopri5"),
    deqkit.DynamicSS(ode_method="fehlberg2", polish=None),
    deqkit.DynamicSS(ode_method="rk4", step_size=0.5),
    deqkit.DynamicSS(ode_method="euler", step_size=0.5),
]


@pytest.mark.parametrize("budget", [2, 3, 7, 20, 61, 200])
@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
def test_no_solve_exceeds_its_budget_and_the_hard_sample_is_reported(solver, budget):
    f = Counted()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", deqkit.ConvergenceWarning)
        try:
            z, stats = deqkit.solve(
                f,
                torch.zeros(4, 6, dtype=torch.float64),
                solver=solver,
                max_nfe=budget,
                max_steps=10_000,
                abstol=1e-8,
                reltol=0,
            )
        except ValueError as err:  # a budget below the first step is refused before f runs past it
            fixed = getattr(solver, "step_size", None) is not None
            assert "raise max_nfe" in str(err) and budget <= 7
            # an adaptive method evaluates f at z0 (and once more to choose its first step, when not given one)
            assert f.calls == 0 if fixed else 1 <= f.calls <= 2
            return
        except deqkit.DivergenceError as err:  # the ODE may give up on the runaway sample first: within budget
            assert "drift away" in str(err) and f.calls <= budget
            return
    assert f.calls <= budget and stats.nfe == f.calls
    assert not stats.converged[0]  # the hard sample is counted as not converged, and warned about
    assert any("max_nfe=" in str(w.message) for w in caught)
    if budget >= 200 and getattr(solver, "polish", "") is not None:  # the pure ODE needs more than 200 here
        assert stats.converged[1:].all()  # the easy ones did not pay for the hard one's failure


@pytest.mark.parametrize(
    "solver",
    [
        deqkit.DynamicSS(polish_stall=1),
        deqkit.DynamicSS(polish_stall=3),
        deqkit.DynamicSS(ode_method="bosh3", polish_stall=1),
    ],
    ids=repr,
)
def test_dynamic_ss_does_not_return_to_the_ode_with_the_budget_spent(solver):
    # polishing that stops (stalls) with the budget exactly spent must not evaluate f once more
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = 0.5 * w / torch.linalg.matrix_norm(w, 2)
    for budget in range(2, 30):
        calls = []

        def f(z, calls=calls):
            calls.append(1)
            return torch.tanh(z @ w.T + 1)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
            try:
                _, stats = deqkit.solve(
                    f, torch.zeros(3, 4, dtype=torch.float64), solver=solver, abstol=1e-14, reltol=1e-14, max_nfe=budget
                )
            except ValueError as err:  # less than the first evaluation and one ODE step
                assert "raise max_nfe" in str(err) and len(calls) <= 2 and budget <= 7, budget
                continue
        assert len(calls) <= budget and stats.nfe == len(calls), budget


@pytest.mark.parametrize("budget", [2, 5, 23, 60])
def test_gmres_keeps_its_budget(budget):
    a = 0.3 * torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []

    def T(u):
        calls.append(1)
        return g + u @ a.T

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", deqkit.ConvergenceWarning)
        sol = run(GMRES(restart=4), T, torch.zeros_like(g), Tolerances(1e-14, 0, 1000, budget))
    assert len(calls) <= budget and sol.stats.nfe == len(calls)
    # a budget too small to converge is said, never hidden
    assert sol.stats.all_converged or any("max_nfe=" in str(w.message) for w in caught)


def test_the_budget_is_checked():
    with pytest.raises(ValueError, match="max_nfe must be an integer >= 2"):
        deqkit.solve(torch.tanh, torch.zeros(2, 2), max_nfe=1)


@pytest.mark.parametrize("first_step", [None, 0.1])
@pytest.mark.parametrize("method, cost", [("tsit5", 6), ("bosh3", 3), ("dopri5", 6)])
def test_the_pure_ode_refuses_a_budget_below_its_first_step(method, cost, first_step):
    # it used to return f(z0) with the generic "did not converge" warning, as if it had tried
    cost += first_step is None  # choosing the first step from the data costs one evaluation
    solver = deqkit.DynamicSS(
        ode_method=method, polish=None, controller=deqkit.StepSizeController(first_step=first_step)
    )
    f = Counted()
    z0 = torch.zeros(4, 6, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=rf"max_nfe={cost} cannot pay for one step of {method}: 1 evaluation at "
        rf"the start and {cost} for the first step; raise max_nfe",
    ):
        deqkit.solve(f, z0, solver=solver, max_nfe=cost)
    assert f.calls == 1
    with pytest.warns(deqkit.ConvergenceWarning, match="max_nfe="):  # one step more is a (short) solve
        _, stats = deqkit.solve(Counted(), z0, solver=solver, max_nfe=cost + 1)
    assert stats.nfe == cost + 1


def test_polishing_first_needs_only_one_step_of_budget():
    # the default starts with its polisher: the least budget is z0 and one iteration, like Anderson's
    with pytest.warns(deqkit.ConvergenceWarning, match="max_nfe=2"):
        _, stats = deqkit.solve(Counted(), torch.zeros(4, 6, dtype=torch.float64), max_nfe=2)
    assert stats.nfe == 2
