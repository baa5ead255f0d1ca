"""Tsit5: order of accuracy, FSAL cost, dense output."""

import math

import torch
import torchdiffeq
from torchdiffeq._impl.rk_common import _runge_kutta_step

import deqkit
from deqkit.solvers.torchdiffeq_adapter import TSIT5_TABLEAU, Tsit5Solver, is_fsal


class Field:
    """y' = y cos t (non-autonomous, so the c nodes matter); y(t) = exp(sin t)."""

    def __init__(self):
        self.nfe = 0

    def __call__(self, t, y, perturb=None):
        self.nfe += 1
        return y * torch.cos(t)

    def callback_step(self, *a): ...
    def callback_accept_step(self, *a): ...
    def callback_reject_step(self, *a): ...


def _fixed_step_error(n: int, weights: str) -> float:
    f, y, t, h = Field(), torch.ones(1, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64), 1.0 / n
    dt = torch.tensor(h, dtype=torch.float64)
    for _ in range(n):
        y1, _, err, _ = _runge_kutta_step(f, y, f(t, y), t, dt, t + dt, TSIT5_TABLEAU)
        y = y1 if weights == "main" else y1 - err  # y1 − err is the embedded 4th-order solution
        t = t + dt
    return abs(float(y) - math.exp(math.sin(1.0)))


def test_observed_order_is_five_and_embedded_four():
    errs = [_fixed_step_error(n, "main") for n in (8, 16, 32, 64)]
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    # 5.32, 5.20, 5.15: approaching 5 from above as h → 0 (finer steps reach round-off)
    assert all(4.85 < p < 5.35 for p in orders) and orders[-1] < orders[0], orders
    emb = [_fixed_step_error(n, "embedded") for n in (8, 16, 32, 64)]
    emb_orders = [math.log2(a / b) for a, b in zip(emb, emb[1:])]
    assert all(3.7 < p < 4.3 for p in emb_orders), emb_orders


def test_tableau_is_consistent():
    tab = TSIT5_TABLEAU
    for alpha, row in zip(tab.alpha, tab.beta):  # row sums equal the nodes
        assert abs(float(row.sum()) - float(alpha)) < 1e-12
    assert abs(float(tab.c_sol.sum()) - 1) < 1e-12 and abs(float(tab.c_error.sum())) < 1e-15
    assert is_fsal(Tsit5Solver) and abs(float(Tsit5Solver.mid.sum()) - 0.5) < 1e-12


def test_fsal_six_evaluations_per_step():
    f = lambda z: 0.5 * torch.tanh(z) + 0.3  # noqa: E731
    z, stats = deqkit.solve(
        f,
        torch.zeros(3, 2, dtype=torch.float64),
        solver="dynamic_ss",
        polish=None,
        controller=deqkit.StepSizeController(first_step=0.1),
        abstol=1e-10,
        reltol=0,
    )
    assert stats.all_converged and stats.steps > 5
    assert stats.nfe == 1 + 6 * stats.steps  # one evaluation at z0, then 6 per attempted step


def test_dense_output_through_torchdiffeq_integrate():
    solver = Tsit5Solver(
        func=Field(), y0=torch.ones(1, dtype=torch.float64), rtol=1e-10, atol=1e-12, norm=lambda x: x.abs().max()
    )
    t = torch.linspace(0, 3, 31, dtype=torch.float64)
    y = solver.integrate(t)
    assert torch.allclose(y.squeeze(1), torch.exp(torch.sin(t)), atol=1e-8)


def test_adaptive_steps_agree_with_dopri5_and_exact_solution():
    f = Field()
    solver = Tsit5Solver(
        func=f, y0=torch.ones(1, dtype=torch.float64), rtol=1e-8, atol=1e-10, norm=lambda x: x.abs().max()
    )
    y = solver.integrate(torch.tensor([0.0, 10.0], dtype=torch.float64))[-1]
    ref = torchdiffeq.odeint(
        lambda t, y: y * torch.cos(t),
        torch.ones(1, dtype=torch.float64),
        torch.tensor([0.0, 10.0], dtype=torch.float64),
        method="dopri5",
        rtol=1e-8,
        atol=1e-10,
    )
    assert abs(float(y) - math.exp(math.sin(10.0))) < 1e-6
    assert abs(float(y) - float(ref[-1])) < 1e-6
