"""Forward solvers: agreement, termination rule, per-sample freezing, loud failure."""

import math

import pytest
import torch

import deqkit
from deqkit.solvers.dynamic_ss import ADAPTIVE

FORWARD = [
    ("picard", {}),
    ("picard", {"damping": 0.7}),
    ("anderson", {}),
    ("broyden", {}),
    ("dynamic_ss", {}),
    ("dynamic_ss", {"polish": None}),
    ("dynamic_ss", {"ode_method": "dopri5", "polish": None}),
    ("dynamic_ss", {"ode_method": "bosh3"}),
    ("dynamic_ss", {"ode_method": "rk4", "step_size": 0.5}),
]


@pytest.mark.parametrize("method,options", FORWARD, ids=lambda v: str(v))
def test_every_method_reaches_1e6_and_agrees(tanh_problem, method, options):
    block, x = tanh_problem(d=64, batch=32, norm=0.9)
    f = lambda z: block(z, x)  # noqa: E731
    z0 = torch.zeros_like(x)
    with torch.no_grad():
        ref, ref_stats = deqkit.solve(f, z0, solver="picard", abstol=1e-15, reltol=1e-13, max_steps=5000)
        z, stats = deqkit.solve(f, z0, solver=method, abstol=1e-14, reltol=1e-7, max_steps=5000, **options)
    assert ref_stats.all_converged and stats.all_converged
    rel = (f(z) - z).abs().amax(1) / f(z).abs().amax(1)
    assert rel.max() <= 1e-6
    assert torch.allclose(stats.relative_residual, rel, rtol=1e-6, atol=1e-18)
    assert (z - ref).abs().max() <= 1e-6
    assert stats.converged.dtype == torch.bool and stats.converged.shape == (32,)
    assert stats.nfe == stats.nfe_history[-1] and len(stats.history) == len(stats.nfe_history)


def test_termination_rule_is_steadystatediffeq_default():
    # f(z) = 0.5 z + c: residual r = c − 0.5 z; the rule is ‖r‖∞ ≤ abstol or ‖r‖∞ ≤ reltol ‖f(z)‖∞.
    c = torch.tensor([[1.0], [1000.0]], dtype=torch.float64)
    f = lambda z: 0.5 * z + c  # noqa: E731
    z, stats = deqkit.solve(f, torch.zeros_like(c), solver="picard", abstol=1e-3, reltol=1e-5, max_steps=200)
    r = (f(z) - z).abs().squeeze(1)
    # sample 0 (|f| ≈ 2) can only stop on abstol; sample 1 (|f| ≈ 2000) stops on reltol, before abstol holds
    assert r[0] <= 1e-3 and r[0] > 1e-3 / 2
    assert 1e-3 < r[1] <= 1e-5 * 2000


def test_converged_samples_stop_changing():
    # sample 0 converges fast (contraction 0.1), sample 1 slowly (0.95)
    a = torch.tensor([[0.1], [0.95]], dtype=torch.float64)
    f = lambda z: a * z + 1.0  # noqa: E731
    for method, opts in [("picard", {}), ("anderson", {}), ("dynamic_ss", {"polish": None}), ("dynamic_ss", {})]:
        z, stats = deqkit.solve(
            f, torch.zeros_like(a), solver=method, abstol=1e-9, reltol=0, record=True, max_steps=2000, **opts
        )
        traj = torch.stack(stats.trajectory)[:, 0, 0]
        res0 = (a[0] * traj + 1 - traj).abs()
        first = int((res0 <= 1e-9).nonzero()[0])
        assert first < len(traj) - 1, method  # sample 0 converged before the end
        assert torch.all(traj[first:] == traj[first]), method  # ...and never moved again
        assert stats.all_converged


def test_frozen_samples_do_not_limit_the_ode_step():
    # A stiff sample (fast mode, rate 50) that converges first must not keep the step size small for the rest.
    a = torch.tensor([[-49.0], [0.9]], dtype=torch.float64)
    f = lambda z: a * z + 1.0  # noqa: E731
    _, both = deqkit.solve(f, torch.zeros_like(a), solver="dynamic_ss", polish=None, abstol=1e-8, reltol=0)
    _, slow = deqkit.solve(
        lambda z: a[1:] * z + 1.0,
        torch.zeros(1, 1, dtype=torch.float64),
        solver="dynamic_ss",
        polish=None,
        abstol=1e-8,
        reltol=0,
    )
    assert both.all_converged
    # after the stiff sample stops, steps grow as if it were absent: total cost stays close to the slow one alone
    assert both.nfe <= 1.5 * slow.nfe


def test_dynamic_ss_methods_registry():
    assert {"tsit5", "dopri5", "bosh3", "dopri8"} <= set(ADAPTIVE)
    f = lambda z: 0.5 * torch.tanh(z) + 0.3  # noqa: E731
    for method in ["tsit5", "dopri5", "bosh3", "dopri8", "fehlberg2", "adaptive_heun"]:
        z, stats = deqkit.solve(
            f, torch.zeros(4, 3, dtype=torch.float64), ode_method=method, abstol=1e-9, reltol=0, max_steps=5000
        )
        assert stats.all_converged and stats.method.startswith(f"dynamic_ss({method}")
        assert (f(z) - z).abs().max() <= 1e-9
    for method in ["euler", "midpoint", "heun3", "rk4"]:
        z, stats = deqkit.solve(
            f,
            torch.zeros(4, 3, dtype=torch.float64),
            ode_method=method,
            step_size=0.5,
            abstol=1e-9,
            reltol=0,
            max_steps=5000,
        )
        assert stats.all_converged and (f(z) - z).abs().max() <= 1e-9


def test_broyden_lands_on_unstable_equilibrium_dynamic_ss_finds_stable():
    # z = 2 tanh(z): z = 0 is an unstable equilibrium of dz/dt = f(z) − z (f'(0) = 2 > 1); ±1.915 are stable.
    f = lambda z: 2 * torch.tanh(z)  # noqa: E731
    z0 = torch.tensor([[0.1], [-0.2], [0.3]], dtype=torch.float64)
    zb, sb = deqkit.solve(f, z0, solver="broyden", abstol=1e-10, reltol=0)
    assert sb.all_converged and zb.abs().max() < 1e-8  # Newton-type: the unstable root
    slope = 2 * (1 - torch.tanh(zb) ** 2)
    assert (slope > 1).all()  # confirms instability: d/dz (f − z) > 0
    for opts in ({}, {"polish": None}):
        zo, so = deqkit.solve(f, z0, solver="dynamic_ss", abstol=1e-10, reltol=0, **opts)
        assert so.all_converged
        stable = 1.9150080481  # root of z = 2 tanh z
        assert torch.allclose(zo.abs(), torch.full_like(zo, stable), atol=1e-8)
        assert torch.equal(torch.sign(zo), torch.sign(z0))  # each flows to the equilibrium on its side
        assert (2 * (1 - torch.tanh(zo) ** 2) < 1).all()


def test_dynamic_ss_converges_where_picard_diverges(tanh_problem):
    block, x = tanh_problem(d=64, batch=32, norm=1.5, psd=True, x_scale=0.1)
    f = lambda z: block(z, x)  # noqa: E731
    z0 = torch.zeros_like(x)
    with torch.no_grad():
        with pytest.warns(deqkit.ConvergenceWarning, match="did not converge"):
            _, sp = deqkit.solve(f, z0, solver="picard", abstol=1e-10, reltol=1e-8, max_steps=300)
        assert not sp.converged.all()
        for opts in ({}, {"polish": None}):
            z, so = deqkit.solve(f, z0, solver="dynamic_ss", abstol=1e-10, reltol=1e-8, **opts)
            assert so.all_converged and torch.isfinite(z).all()
            assert (deqkit.spectral_radius(block, z, x) > 1).all()  # non-contractive at the answer


def test_divergent_map_warns_within_max_steps_without_nan(tanh_problem):
    block, x = tanh_problem(d=64, batch=32, norm=3.0, x_scale=0.1)
    f = lambda z: block(z, x)  # noqa: E731
    with torch.no_grad():
        with pytest.warns(deqkit.ConvergenceWarning) as rec:
            z, stats = deqkit.solve(f, torch.zeros_like(x), solver="picard", max_steps=200)
        message = str(rec[0].message)
        assert "did not converge within max_steps=200" in message and "best residual" in message
        assert "Try" in message and "dynamic_ss" in message
        assert stats.steps == 200 and stats.nfe == 201
        assert torch.isfinite(z).all() and not stats.converged.all()
        # the returned iterate is each sample's best one
        assert torch.allclose((f(z) - z).abs().amax(1), stats.residual)
        with pytest.raises(deqkit.ConvergenceError, match="did not converge"):
            deqkit.solve(f, torch.zeros_like(x), solver="picard", max_steps=50, strict=True)


def test_overflow_raises_divergence_error_with_step():
    f = lambda z: 3.0 * z + 1.0  # noqa: E731  plain iteration overflows float32 after ~80 steps
    with pytest.raises(deqkit.DivergenceError, match=r"at step 8\d for 2 of 2 samples"):
        deqkit.solve(f, torch.ones(2, 3), solver="picard", max_steps=2000)
    with pytest.raises(deqkit.DivergenceError, match="ODE solver failed"):
        deqkit.solve(f, torch.ones(2, 3), solver="dynamic_ss", polish=None, max_steps=2000)


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden", "dynamic_ss"])
def test_nan_midway_raises_at_once(method):
    calls = []

    def f(z):
        calls.append(1)
        return torch.tanh(z) + 1.0 if len(calls) < 4 else torch.full_like(z, float("nan"))

    with pytest.raises(deqkit.DivergenceError, match=r"at step 3 |ODE solver failed"):
        deqkit.solve(f, torch.zeros(2, 3), solver=method, abstol=1e-12, reltol=0)
    assert len(calls) <= 40  # stopped at once, not after max_steps


def test_nan_start_raises_at_step_zero():
    z0 = torch.zeros(2, 3)
    z0[1, 0] = float("nan")
    with pytest.raises(deqkit.DivergenceError, match="at step 0 for 1 of 2 samples"):
        deqkit.solve(torch.tanh, z0, solver="picard")


def test_anderson_survives_singular_gram():
    # Identical samples and a linear map whose residual history is rank-deficient.
    f = lambda z: 0.5 * z + 1.0  # noqa: E731
    z, stats = deqkit.solve(
        f, torch.zeros(3, 4, dtype=torch.float64), solver="anderson", lam=0.0, abstol=1e-12, reltol=0
    )
    assert stats.all_converged and torch.allclose(z, torch.full_like(z, 2.0))


def test_bad_inputs_are_refused():
    z0 = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="unknown option.*'memory'.*'anderson'"):
        deqkit.solve(torch.tanh, z0, solver="anderson", memory=5)
    with pytest.raises(ValueError, match="unknown solver"):
        deqkit.solve(torch.tanh, z0, solver="newton")
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got 0"):
        deqkit.solve(torch.tanh, z0, max_steps=0)
    with pytest.raises(ValueError, match="abstol"):
        deqkit.solve(torch.tanh, z0, abstol=-1.0)
    with pytest.raises(ValueError, match=r"shape torch.Size\(\[2, 4\]\) but z has shape torch.Size\(\[2, 3\]\)"):
        deqkit.solve(lambda z: torch.zeros(2, 4), z0, solver="picard")
    with pytest.raises(ValueError, match="dtype torch.float64 but z has dtype torch.float32"):
        deqkit.solve(lambda z: z.double(), z0, solver="anderson")
    with pytest.raises(ValueError, match="device meta but z has device cpu"):
        deqkit.solve(lambda z: z.to("meta"), z0, solver="dynamic_ss")
    with pytest.raises(ValueError, match="floating-point"):
        deqkit.solve(lambda z: z, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="step_size"):
        deqkit.solve(torch.tanh, z0, ode_method="rk4")
    with pytest.raises(ValueError, match="unknown ode_method"):
        deqkit.solve(torch.tanh, z0, ode_method="tsit7")


def test_stats_report(tanh_problem):
    block, x = tanh_problem(d=8, batch=4, norm=0.5)
    with torch.no_grad():
        _, stats = deqkit.solve(lambda z: block(z, x), torch.zeros_like(x), solver="dynamic_ss", record=True)
    assert stats.history[0] >= stats.history[-1] and len(stats.trajectory) == len(stats.history)
    assert len(stats.times) == len(stats.history) and stats.times[0] == 0.0
    assert stats.wall_time > 0 and "converged" in str(stats)


def test_broyden_restarts_when_its_memory_is_full_instead_of_diverging():
    # The linear backward problem u = g + u W at ‖W‖₂ near 1 needs more than m = 20 secant updates; dropping the
    # oldest update (as deqkit once did) made the estimate inconsistent and the iteration blew up to NaN.
    from deqkit.problems import tanh_weight

    gen = torch.Generator().manual_seed(0)
    w = tanh_weight(128, 0.98, "symmetric", generator=gen)
    g = torch.randn(4, 128, generator=gen, dtype=torch.float64)
    z, stats = deqkit.solve(
        lambda u: g + u @ w, torch.zeros_like(g), solver="broyden", abstol=1e-8, reltol=0, max_steps=400
    )
    assert stats.all_converged and stats.steps > 2 * 20  # past at least two restarts
    assert torch.allclose(z, torch.linalg.solve(torch.eye(128, dtype=torch.float64) - w.T, g.T).T, atol=1e-6)


def test_labels_name_the_options_that_differ_from_the_defaults():
    assert deqkit.Anderson().label == "anderson" and deqkit.Picard(damping=0.5).label == "picard(damping=0.5)"
    assert deqkit.Broyden(m=300).label == "broyden(m=300)" and repr(deqkit.Broyden(m=300)) == "Broyden(m=300)"
    assert deqkit.GMRES().label == "gmres(20)" and deqkit.GMRES(restart=None).label == "gmres(full)"


def test_full_gmres_converges_where_restarted_gmres_may_not():
    from deqkit.problems import tanh_weight
    from deqkit.solvers import Tolerances, run

    gen = torch.Generator().manual_seed(1)
    w = tanh_weight(48, 1.2, "symmetric", generator=gen)  # ρ > 1: plain iteration diverges
    g = torch.randn(3, 48, generator=gen, dtype=torch.float64)
    sol = run(deqkit.GMRES(restart=None), lambda u: g + u @ w, torch.zeros_like(g), Tolerances(1e-10, 0, 200))
    assert sol.stats.all_converged and sol.stats.nfe <= 48 + 3


@pytest.mark.parametrize("restart", [5, 20, None])
@pytest.mark.parametrize("reltol", [1e-4, 1e-9])
def test_gmres_checks_lazily_with_the_answer_and_products_of_tracing(restart, reltol):
    # the default checks the ∞-norm rule only when the 2-norm residual of the Givens QR predicts success;
    # trace=True checks after every product: same answers, the same products give or take one, a full history
    from deqkit.problems import tanh_weight
    from deqkit.solvers import Tolerances, run

    gen = torch.Generator().manual_seed(2)
    w = tanh_weight(40, 0.9, "symmetric", generator=gen)
    g = torch.randn(6, 40, generator=gen, dtype=torch.float64) * torch.logspace(-3, 3, 6, dtype=torch.float64)[:, None]
    g[2] = 0.0  # a sample whose gradient is zero: its Krylov space is empty from the start
    exact = torch.linalg.solve(torch.eye(40, dtype=torch.float64) - w.T, g.T).T
    sols = {
        trace: run(
            deqkit.GMRES(restart=restart, trace=trace),
            lambda u: g + u @ w,
            torch.zeros_like(g),
            Tolerances(0, reltol, 400),
        )
        for trace in (False, True)
    }
    for sol in sols.values():
        assert sol.stats.all_converged
        err = (sol.z - exact).abs().amax(1)
        assert (err <= 50 * reltol * exact.abs().amax(1)).all() and err[2] == 0
    lazy, traced = sols[False].stats, sols[True].stats
    assert traced.nfe <= lazy.nfe <= traced.nfe + 2  # (on this problem: equal in all six cases)
    # tracing: one check per product (the true residual of each restart is not a step); lazily, far fewer
    assert len(traced.history) == traced.steps + 1 > len(lazy.history) + 5


def test_gmres_reports_a_product_that_blows_up_without_waiting_for_the_restart():
    from deqkit.solvers import Tolerances, run

    g = torch.ones(2, 8, dtype=torch.float64)
    a = 0.3 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def T(u):
        calls.append(1)
        return g + u @ a if len(calls) < 4 else u * float("nan")

    with pytest.raises(deqkit.DivergenceError, match="NaN or infinite"):
        run(deqkit.GMRES(restart=20), T, torch.zeros_like(g), Tolerances(1e-12, 0, 100))
    assert len(calls) == 4  # the NaN product is checked at once, not after 20 products


def test_gmres_trace_must_be_a_bool():
    with pytest.raises(TypeError, match="trace must be True or False"):
        deqkit.GMRES(trace="yes")
    assert deqkit.GMRES(trace=True).label == "gmres(20)"


def test_gmres_reorthogonalizes_a_product_that_nearly_lies_in_the_basis():
    # Arnoldi on Jᵀ usually keeps most of each product after one Gram–Schmidt pass; a product that nearly lies in
    # the span loses almost all of it, and only the second pass keeps the basis orthonormal (one pass: ~1e-2 here)
    from deqkit.solvers.krylov import _Cycle

    gen = torch.Generator().manual_seed(0)
    r = torch.randn(4, 64, generator=gen)
    cycle = _Cycle(torch.zeros_like(r), r, 6)
    for j in range(5):
        w = torch.randn(4, 64, generator=gen)
        if j == 3:  # almost a combination of the basis so far
            w = torch.bmm(torch.randn(4, 1, j + 1, generator=gen), cycle.basis[:, : j + 1]).squeeze(1) + 1e-6 * w
        cycle.extend(w)
    v = cycle.basis[:, :6]
    gram = torch.bmm(v, v.transpose(1, 2))
    assert (gram - torch.eye(6)).abs().max() < 1e-5


def test_gmres_reads_only_the_basis_rows_it_wrote(monkeypatch):
    # the basis is left uninitialised and handed from one restart cycle to the next: memory full of NaN there must
    # change nothing (restart 5 on a problem that needs several cycles)
    from deqkit.problems import tanh_weight
    from deqkit.solvers import Tolerances, run

    gen = torch.Generator().manual_seed(3)
    w = tanh_weight(32, 0.95, "symmetric", generator=gen)
    g = torch.randn(4, 32, generator=gen, dtype=torch.float64)
    clean = run(deqkit.GMRES(restart=5), lambda u: g + u @ w, torch.zeros_like(g), Tolerances(0, 1e-10, 400))
    new_empty = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda t, *a, **k: new_empty(t, *a, **k).fill_(float("nan")))
    dirty = run(deqkit.GMRES(restart=5), lambda u: g + u @ w, torch.zeros_like(g), Tolerances(0, 1e-10, 400))
    assert clean.stats.all_converged and clean.stats.nfe > 12  # more than two cycles
    assert torch.equal(clean.z, dirty.z) and clean.stats.nfe == dirty.stats.nfe


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(16, 5), (16, 3, 4, 4), (1, 7)])
def test_where_rows_gives_the_bits_of_torch_where(share, shape, monkeypatch):
    from deqkit.solvers.monitor import batch_view, where_rows

    monkeypatch.setattr("deqkit.solvers.monitor.COPY_ROWS_FROM", 1)  # the row copies, also on these small shapes
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    a[0, 0], b[-1, -1] = float("nan"), -0.0
    mask = torch.rand(shape[0], generator=gen) < share
    out = where_rows(mask, a, b)
    want = torch.where(batch_view(mask, a), a, b)
    assert torch.equal(out.view(torch.int32), want.view(torch.int32))  # NaN and the sign of zero included
    assert out.data_ptr() not in (a.data_ptr(), b.data_ptr())  # a new tensor, as torch.where gives
    # non-contiguous inputs and autograd
    at, bt = a.transpose(0, -1).contiguous().transpose(0, -1).requires_grad_(), b.clone().requires_grad_()
    where_rows(mask, at, bt).backward(torch.ones(shape))
    assert torch.equal(at.grad, batch_view(mask, a).expand_as(a).to(a.dtype))
    assert torch.equal(bt.grad, (~batch_view(mask, b)).expand_as(b).to(b.dtype))


def test_gmres_applies_an_affine_maps_linear_part_directly():
    # u ↦ g + uJ given as AffineMap: GMRES's products apply the linear part to its unit basis vectors, and the whole
    # map is evaluated only at the start and once per cycle; the answer is the probed one (T(u + v) − T(u)) up to
    # rounding, with the same number of evaluations
    from deqkit.problems import tanh_weight
    from deqkit.solvers import AffineMap, Tolerances, run

    gen = torch.Generator().manual_seed(4)
    w = tanh_weight(24, 0.9, "symmetric", generator=gen)
    g = torch.randn(3, 24, generator=gen, dtype=torch.float64) * 1e3
    norms = []

    def linear(u):
        norms.append(u.norm(dim=1))
        return u @ w

    affine = run(deqkit.GMRES(restart=6), AffineMap(g, linear), torch.zeros_like(g), Tolerances(0, 1e-10, 400))
    probed = run(deqkit.GMRES(restart=6), lambda u: g + u @ w, torch.zeros_like(g), Tolerances(0, 1e-10, 400))
    assert affine.stats.all_converged and affine.stats.nfe == probed.stats.nfe == len(norms)
    assert torch.allclose(affine.z, probed.z, rtol=1e-9, atol=0)
    unit = sum(bool(torch.allclose(n, torch.ones_like(n))) for n in norms)
    cycles = math.ceil((affine.stats.nfe - 1) / 7)  # each: up to 6 products, then the map at the answer
    assert unit == affine.stats.nfe - 1 - cycles and cycles >= 2

    def writes(u):
        u.mul_(2.0)  # in place: refused for the linear part as for any map
        return u @ w

    with pytest.raises(ValueError, match="changed its input in place"):
        run(deqkit.GMRES(), AffineMap(g, writes), torch.zeros_like(g), Tolerances(0, 1e-10, 400))


def test_the_implicit_backward_hands_gmres_contiguous_vectors():
    # GMRES's basis rows are strided views; a custom autograd Function may .view() the gradient it is handed
    class ViewGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):
            return z.clone()

        @staticmethod
        def backward(ctx, g):
            return g.view(-1).view(g.shape)

    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16, requires_grad=True)
    grads = []
    for solver in ("gmres", "anderson"):
        deq = deqkit.DEQ(lambda z, x: ViewGrad.apply(torch.tanh(lin(z) + x)), solver="anderson")
        deq.backward = deqkit.Implicit(solver)
        x.grad = None
        deq(x).square().sum().backward()
        grads.append(x.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    ("linear", "match"),
    [
        (lambda u: u.half(), "returned .* torch.float16 .* for an argument of .* torch.float32"),
        (lambda u: u[:1], r"returned \(1, 6\)"),
        (lambda u: u.numpy(), "returned ndarray"),
    ],
)
def test_an_affine_maps_linear_part_must_keep_its_arguments_shape_and_type(linear, match):
    from deqkit.solvers import AffineMap, Tolerances, run

    g = torch.randn(3, 6)
    for solver in (deqkit.GMRES(), deqkit.Anderson()):
        with pytest.raises(ValueError, match=f"AffineMap.linear {match}"):
            run(solver, AffineMap(g, linear), g.clone(), Tolerances(1e-6, 1e-6, 50))


def test_an_affine_map_takes_one_tensor_offset():
    from deqkit.solvers import AffineMap

    with pytest.raises(TypeError, match="offset must be one tensor shaped like the state"):
        AffineMap((torch.ones(2, 3), torch.ones(2, 4)), lambda u: u)
    with pytest.raises(TypeError, match="linear must be callable"):
        AffineMap(torch.ones(2, 3), "u @ w")


def test_anderson_mix_falls_back_per_sample_to_the_plain_step():
    """A sample whose small system is singular (an exactly zero pivot) or not finite gets γ = 0, the plain step;
    the others in the batch get their least-squares γ, untouched."""
    a = deqkit.Anderson(lam=0.0)
    gen = torch.Generator().manual_seed(0)
    dgs = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    dms = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    plain = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    gram = dgs @ dgs.transpose(1, 2)
    gram[1, 0, 0] = float("nan")  # not finite
    gram[2] = torch.tensor([[1e30, 1e30], [1e30, 1e30]], dtype=torch.float64)  # singular: the tiny shift is lost
    info = torch.linalg.lu_factor_ex(gram[2:] + torch.finfo(torch.float64).tiny * torch.eye(2)).info
    assert int(info[0]) > 0  # the case meant: LU meets an exactly zero pivot
    out = a._mix(plain, g, dgs, dms, gram)
    assert torch.equal(out[1:], plain[1:])
    gamma = torch.linalg.solve(gram[0], dgs[0] @ g[0])
    assert torch.allclose(out[0], plain[0] - gamma @ dms[0])


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden", "dynamic_ss"])
def test_a_reused_output_buffer_is_refused(solver):
    """f that writes each result into one persistent tensor would overwrite the past values of f the solvers keep
    (the best iterate's, Anderson's history): refused at the evaluation that does it, naming the fix."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=gen) * 0.1
    buf = torch.empty(3, 6)

    def f(z):
        return torch.tanh(z @ w.T + 1.0, out=buf)

    options = {"damping": 0.5} if solver == "picard" else {}  # plain Picard hands buf back to f as its input
    with pytest.raises(ValueError, match="wrote into the tensor it returned at its previous evaluation"):
        deqkit.solve(f, torch.zeros(3, 6), solver=solver, **options)


def test_a_map_returning_one_unchanged_tensor_is_fine():
    """Returning the same tensor at every call is harmless while nothing writes into it (a constant map)."""
    c = torch.full((2, 3), 0.5)
    z, stats = deqkit.solve(lambda z: c, torch.zeros(2, 3), solver="anderson")
    assert stats.all_converged and torch.equal(z, c)


def test_overwriting_a_past_output_is_refused():
    """f that returns new tensors but writes into the one it returned before is caught the same way."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=gen) * 0.1
    outs = []

    def f(z):
        if outs:
            outs[-1].zero_()
        outs.append(torch.tanh(z @ w.T + 1.0))
        return outs[-1]

    with pytest.raises(ValueError, match="evaluation 2 reuses an output buffer"):
        deqkit.solve(f, torch.zeros(3, 6), solver="picard", damping=0.5)


def test_the_last_best_iterate_merges_run_inside_the_memory_message(monkeypatch):
    """The merges a CPU solve leaves pending allocate when its answer is assembled: an allocator error there gets
    the same message naming the setting to lower as one inside the solver."""

    def fail(self):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 bytes")

    monkeypatch.setattr(deqkit.solvers.Monitor, "settle", fail)
    with pytest.raises(RuntimeError, match=r"ran out of memory with Anderson\(\).*lower m or the batch size"):
        deqkit.solve(torch.tanh, torch.zeros(2, 3), solver="anderson")


def test_a_huge_gmres_restart_costs_only_the_steps_a_solve_may_take():
    """A cycle never takes more products than the step limit, so the Krylov basis is sized by the smaller of the
    two: before, ``GMRES(restart=10**17)`` overflowed torch's size computation, and ``restart=None`` on a large state
    allocated a basis of as many vectors as the state has entries whatever the step limit. The basis's size sets
    the strides the batched products run on, so against an uncapped run the results agree to rounding; a restart at
    the limit and one far beyond it give the same bits."""
    from deqkit.problems import tanh_weight
    from deqkit.solvers import Tolerances, run

    gen = torch.Generator().manual_seed(1)
    w = tanh_weight(24, 0.97, "symmetric", generator=gen)
    x = torch.randn(5, 24, generator=gen, dtype=torch.float64)
    T = deqkit.solvers.AffineMap(x, lambda u: u @ w * 0.9)
    tol = Tolerances(0, 1e-12, 30)
    huge = run(deqkit.GMRES(restart=10**17), T, torch.zeros_like(x), tol)
    at_limit = run(deqkit.GMRES(restart=30), T, torch.zeros_like(x), tol)
    assert torch.equal(huge.z, at_limit.z) and huge.stats.nfe == at_limit.stats.nfe
    with pytest.raises(
        ValueError, match=r"GMRES\(restart=9223372036854775807\) with max_steps=9223372036854775807.*lower"
    ):
        run(deqkit.GMRES(restart=2**63 - 1), T, torch.zeros_like(x), Tolerances(0, 1e-12, 2**63 - 1))


def test_an_anderson_memory_beyond_what_torch_can_index_is_named():
    with pytest.raises(ValueError, match=r"Anderson\(m=4611686018427387904\).*more than torch can index.*lower m"):
        deqkit.solve(lambda z: torch.tanh(0.5 * z + 1), torch.zeros(4, 8), solver=deqkit.Anderson(m=2**62))


def test_gmres_rotates_by_a_true_rotation_where_the_pivot_is_subnormal():
    """Before, the Givens rotation divided by ``max(rho, tiny)``: with a subnormal pivot (float16, a product that
    leaves 3e-5 of its norm) it was no rotation (c² + s² ≈ 0.24) and the least-squares residual came out 0.49 where
    it is 1 (H = [0; 3e-5] cannot reduce ‖β e₁‖ = 1 at all)."""
    from deqkit.solvers.krylov import _Cycle

    r = torch.tensor([[1.0, 0.0]], dtype=torch.float16)
    cycle = _Cycle(torch.zeros_like(r), r, 2)
    cycle.extend(torch.tensor([[1.0, 3e-5]], dtype=torch.float16))  # Jᵀ v₀ for Jᵀ = [[1, 3e-5], [0, 1]]
    assert float(cycle.residual[0]) == 1.0
    omega = cycle.omega[0].float()
    assert torch.allclose(omega @ omega.T, torch.eye(3), atol=1e-3)


def test_restarted_gmres_does_not_freeze_at_its_best_iterate(monkeypatch):
    """Restarted from each sample's best iterate by the ∞-norm, a cycle that found no better one was repeated
    forever: on notebook 05's backward problem past ρ = 1 (‖W‖₂ = 1.058, d = 128) the residual froze at 1.6e-2
    whatever the budget (3,000 products here). Restarted from the last iterate, as GMRES(m) is, it converges in
    about 1,600; the answer is still each sample's best."""
    from deqkit.teach import implicit_measures

    # the notebook's full-mode problem (fast mode's d = 32 does not freeze), with a batch of 4
    monkeypatch.setattr(implicit_measures, "_backward_sizes", lambda: {"d": 128, "batch": 4})
    model, x = implicit_measures.near_one_deq(
        1.058, backward=deqkit.Implicit("gmres", abstol=1e-6, reltol=0.0, max_steps=3000)
    )
    model(x.clone().requires_grad_()).sum().backward()
    stats = model.last_stats.backward
    assert stats.all_converged and stats.nfe < 3000, stats
    assert float(stats.residual.max()) <= 1e-6
