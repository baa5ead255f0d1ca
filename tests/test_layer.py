"""The DEQ layer: implicit gradients against gradcheck, unrolled backprop and finite differences."""

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

import deqkit
from deqkit.solvers import BACKWARD_SOLVERS

TIGHT = {"abstol": 1e-13, "reltol": 1e-13, "max_steps": 3000, "max_nfe": None}
IMPLICIT = deqkit.Implicit(max_steps=3000)


@pytest.mark.parametrize("solver", ["anderson", "dynamic_ss", "broyden", "picard"])
def test_implicit_gradient_passes_gradcheck(tanh_problem, solver):
    block, x = tanh_problem(d=5, batch=3, norm=0.8)
    deq = deqkit.DEQ(block, solver=solver, backward=IMPLICIT, **TIGHT)
    names = [n for n, _ in block.named_parameters()]

    def fn(x, *params):
        return functional_call(deq, dict(zip([f"f.{n}" for n in names], params)), (x,))

    inputs = (x.clone().requires_grad_(), *[p.detach().clone().requires_grad_() for p in block.parameters()])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backward_solver", sorted(BACKWARD_SOLVERS))
def test_implicit_matches_unrolled_for_every_backward_solver(tanh_problem, backward_solver):
    block, x = tanh_problem(d=16, batch=4, norm=0.9)
    weights = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = {}
    for backward in [deqkit.Implicit(backward_solver, max_steps=3000), deqkit.Unrolled()]:
        deq = deqkit.DEQ(block, solver="picard", backward=backward, **TIGHT)
        xg = x.clone().requires_grad_()
        loss = (deq(xg) * weights).sum()
        grads[backward.name] = torch.autograd.grad(loss, [xg, *block.parameters()])
        if backward.name == "implicit":
            back = deq.last_stats.backward
            assert back is not None and back.all_converged and back.nfe > 0
    for gi, gu in zip(grads["implicit"], grads["unrolled"]):
        assert torch.allclose(gi, gu, atol=1e-6, rtol=0), (gi - gu).abs().max()


@pytest.mark.parametrize("solver", ["anderson", "dynamic_ss"])
def test_unrolled_through_each_solver_matches_implicit(tanh_problem, solver):
    block, x = tanh_problem(d=8, batch=3, norm=0.7)
    out = {}
    for backward in [IMPLICIT, deqkit.Unrolled()]:
        deq = deqkit.DEQ(block, solver=solver, backward=backward, **TIGHT)
        out[backward.name] = torch.autograd.grad(deq(x).pow(2).sum(), list(block.parameters()))
    for gi, gu in zip(out["implicit"], out["unrolled"]):
        assert torch.allclose(gi, gu, atol=1e-6, rtol=0)


def test_compare_gradients_against_finite_differences(tanh_problem):
    block, x = tanh_problem(d=6, batch=2, norm=0.9)
    report = deqkit.compare_gradients(deqkit.DEQ(block, solver="anderson", backward=IMPLICIT, **TIGHT), x)
    assert report.reference.numel() == x.numel() + sum(p.numel() for p in block.parameters())
    for mode in ["implicit", "unrolled"]:
        assert report.cosine(mode) > 1 - 1e-9 and report.relative_error(mode) < 1e-6
    assert report.relative_error("one_step") > 1e-3  # the Jacobian-free gradient is only an approximation
    assert "implicit" in str(report)
    directional = deqkit.compare_gradients(
        deqkit.DEQ(block, solver="anderson", backward=IMPLICIT, **TIGHT), x, directions=5
    )
    assert directional.reference.shape == (5,) and directional.relative_error("implicit") < 1e-6
    with pytest.raises(ValueError, match="float64"):
        deqkit.compare_gradients(deqkit.DEQ(block.float()), x.float())


def test_gradients_reach_x_and_every_parameter_also_closure_captured():
    outer = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()

        def forward(self, z, x):
            return torch.tanh(0.5 * self.lin(z) + outer * x)  # `outer` is not a registered parameter

    block = Block()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    grads = {}
    for backward in [IMPLICIT, deqkit.Unrolled()]:
        deq = deqkit.DEQ(block, solver="anderson", backward=backward, **TIGHT)
        grads[backward.name] = torch.autograd.grad(deq(x).sum(), [x, outer, *block.parameters()])
    for gi, gu in zip(grads["implicit"], grads["unrolled"]):
        assert gi.abs().sum() > 0 and torch.allclose(gi, gu, atol=1e-8)


def test_no_grad_and_eval_keep_no_graph(tanh_problem):
    block, x = tanh_problem(d=8, batch=3, norm=0.5)
    deq = deqkit.DEQ(block).eval()
    with torch.no_grad():
        out = deq(x)
    assert out.grad_fn is None and not out.requires_grad
    assert deq.last_stats.forward.all_converged and deq.last_stats.backward is None
    with torch.inference_mode():
        assert torch.allclose(deq(x), out)
    with_grad = deq(x)
    assert with_grad.grad_fn is not None
    assert torch.allclose(with_grad, out, atol=1e-12)


def test_double_backward_through_implicit_is_refused(tanh_problem):
    block, x = tanh_problem(d=4, batch=2, norm=0.5)
    x = x.requires_grad_()
    deq = deqkit.DEQ(block, solver="anderson")
    (g,) = torch.autograd.grad(deq(x).sum(), x)  # first order works
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(deq(x).sum(), x, create_graph=True)
    # unrolled supports it
    deq_u = deqkit.DEQ(block, solver="anderson", backward="unrolled")
    (gu,) = torch.autograd.grad(deq_u(x).sum(), x, create_graph=True)
    assert gu.requires_grad


def test_z0_options(tanh_problem):
    block, x = tanh_problem(d=8, batch=3, norm=0.5)
    results = []
    for z0 in ["zeros", "f0", lambda x: torch.ones_like(x), torch.full_like(x, -0.5)]:
        deq = deqkit.DEQ(block, solver="anderson", z0=z0, abstol=1e-12, reltol=0)
        with torch.no_grad():
            results.append(deq(x))
    for r in results[1:]:
        assert torch.allclose(r, results[0], atol=1e-10)
    deq = deqkit.DEQ(block, solver="anderson", abstol=1e-12, reltol=0)
    with torch.no_grad():
        deq(x)
        cold = deq.last_stats.forward.nfe
        deq(x, z0=results[0])  # warm start at the answer
    assert deq.last_stats.forward.nfe < cold


def test_last_stats_forward_and_backward(tanh_problem):
    block, x = tanh_problem(d=8, batch=5, norm=0.5)
    deq = deqkit.DEQ(block)
    out = deq(x)
    fwd = deq.last_stats.forward
    assert fwd.method.startswith("dynamic_ss(tsit5") and fwd.converged.shape == (5,) and fwd.nfe > 0
    assert deq.last_stats.backward is None
    out.sum().backward()
    back = deq.last_stats.backward
    assert back.method == "gmres(20)" and back.all_converged and back.residual.shape == (5,)


def test_layer_bad_inputs(tanh_problem):
    block, x = tanh_problem(d=4, batch=2, norm=0.5)
    with pytest.raises(TypeError, match="unknown option.*'mm'"):
        deqkit.DEQ(block, solver="anderson", mm=3)
    with pytest.raises(TypeError, match="unknown option.*'restrt'.*'gmres'"):
        deqkit.Implicit(restrt=3)
    with pytest.raises(TypeError, match="'backward_restart', 'backward_solver'.*DEQ's own settings are: .*backward"):
        deqkit.DEQ(block, backward_solver="gmres", backward_restart=3)
    with pytest.raises(ValueError, match="unknown backward"):
        deqkit.DEQ(block, backward="adjoint")
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        deqkit.Implicit(solver="lu")
    with pytest.raises(TypeError, match="set them on the object"):
        deqkit.DEQ(block, solver=deqkit.Anderson(), m=3)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        deqkit.DEQ(block, max_steps=0)  # checked at construction, not at the first call
    bad = x.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="input x contains NaN or Inf"):
        deqkit.DEQ(block)(bad)
    with pytest.raises(ValueError, match="z0 must be 'zeros', 'f0', a callable or a tensor, got 'zero'"):
        deqkit.DEQ(block)(x, z0="zero")  # the per-call override is checked like the constructor's
    with pytest.raises(ValueError, match="z0 has shape .1, 4. but x has batch size 2"):
        deqkit.DEQ(block, z0=lambda x: torch.zeros(1, 4, dtype=x.dtype))(x)
    with pytest.raises(ValueError, match=r"f\(z\) has shape torch.Size\(\[2, 4\]\) but z has shape"):
        deqkit.DEQ(lambda z, x: torch.tanh(z + x), z0=torch.zeros(2, 1, dtype=x.dtype))(x)  # f broadcasts
    with pytest.raises(ValueError, match="dtype torch.float32 but z has dtype torch.float64"):
        deqkit.DEQ(lambda z, x: torch.tanh(z.float() + x), z0=lambda x: x.double())(x.float())


def test_backward_failure_is_loud(tanh_problem):
    block, x = tanh_problem(d=8, batch=2, norm=0.95)
    deq = deqkit.DEQ(block, solver="anderson", backward=deqkit.Implicit("picard", max_steps=2))
    with pytest.warns(deqkit.ConvergenceWarning, match="picard: 2 of 2 samples did not converge"):
        deq(x).sum().backward()
    deq.strict = True
    with pytest.raises(deqkit.ConvergenceError):
        deq(x).sum().backward()


def test_backward_gmres_where_picard_backward_diverges(tanh_problem):
    # At the stable equilibrium of a non-contractive map, u = g + uJ diverges under plain iteration.
    block, x = tanh_problem(d=16, batch=4, norm=1.5, psd=True, x_scale=0.1)
    deq = deqkit.DEQ(block, abstol=1e-12, reltol=1e-12, backward=deqkit.Implicit(max_steps=500))
    x = x.requires_grad_()
    (g,) = torch.autograd.grad(deq(x).sum(), x)
    assert deq.last_stats.backward.all_converged and torch.isfinite(g).all()
    deq_p = deqkit.DEQ(block, abstol=1e-12, reltol=1e-12, backward=deqkit.Implicit("picard", max_steps=300))
    with pytest.warns(deqkit.ConvergenceWarning):
        torch.autograd.grad(deq_p(x).sum(), x)


def test_gmres_never_reports_a_false_success_on_a_coupled_map():
    # T couples samples through the batch mean (as BatchNorm in training mode does): GMRES's per-sample Krylov
    # residual is then wrong, and only the true residual may decide.
    from deqkit.solvers import GMRES, Tolerances, run

    gen = torch.Generator().manual_seed(0)
    a = 0.3 * torch.randn(6, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    T = lambda u: g + u @ a.T + 0.4 * u.mean(0, keepdim=True)  # noqa: E731
    sol = run(GMRES(restart=3), T, torch.zeros_like(g), Tolerances(1e-10, 0, 1000))
    true = (T(sol.z) - sol.z).abs().amax(1)
    assert torch.allclose(true, sol.stats.residual)
    assert (true[sol.stats.converged] <= 1e-10).all()
    # restarts from the true residual still get there, erratically (the per-sample recurrence is wrong here): 775
    # steps on this seed; 295 when every cycle restarted from the best iterate, which could freeze a per-sample solve
    assert sol.stats.all_converged


def test_backward_tolerance_is_relative_so_a_mean_loss_is_not_one_step(tanh_problem):
    # With a batch-mean loss the incoming gradient is ~1/batch: an absolute backward tolerance equal to a loose
    # forward one (1e-2) would accept u = g at once, i.e. the one-step gradient, without a word.
    block, x = tanh_problem(d=16, batch=64, norm=0.9)
    grads = {}
    for backward in ["implicit", "unrolled", "one_step"]:
        deq = deqkit.DEQ(block, solver="anderson", backward=backward, abstol=1e-2, reltol=1e-2)
        grads[backward] = torch.autograd.grad(deq(x).mean(), block.weight)[0]
        if backward == "implicit":
            assert deq.backward.tolerances(deq.tolerances).abstol == 0
            assert deq.last_stats.backward.nfe > 2
    err = lambda g: ((g - grads["unrolled"]).norm() / grads["unrolled"].norm()).item()  # noqa: E731
    assert err(grads["implicit"]) < 0.05 < err(grads["one_step"])


def test_switching_solver_or_gradient_after_construction_takes_effect_and_is_checked(tanh_problem):
    block, x = tanh_problem(d=8, batch=3, norm=0.5)
    deq = deqkit.DEQ(block, solver="anderson", backward=deqkit.Implicit("picard"))
    deq.solver, deq.backward = "broyden", deqkit.Implicit(deqkit.GMRES(restart=5))
    deq(x).sum().backward()
    assert deq.last_stats.forward.method.startswith("broyden")
    assert deq.last_stats.backward.method == "gmres(5)"
    deq.backward = "one_step"
    deq(x).sum().backward()
    assert deq.last_stats.backward is None  # no linear solve: the one-step gradient
    with pytest.raises(ValueError, match="unknown backward 'implict'"):
        deq.backward = "implict"
    with pytest.raises(ValueError, match="unknown solver 'andersen'"):
        deq.solver = "andersen"
    with pytest.raises(ValueError, match="GMRES cannot be used here"):
        deq.solver = deqkit.GMRES()  # a backward-only solver
    assert isinstance(deq.backward, deqkit.OneStep) and isinstance(deq.solver, deqkit.Broyden)  # nothing changed
    deq.solver = deqkit.Anderson(m=3)
    assert repr(deq.solver) == "Anderson(m=3)" and "solver=Anderson(m=3), backward=OneStep()" in repr(deq)


def test_objects_and_names_are_the_same_solver(tanh_problem):
    block, x = tanh_problem(d=8, batch=3, norm=0.8)
    by_name = deqkit.DEQ(block, solver="anderson", m=3, backward="implicit")
    by_object = deqkit.DEQ(block, solver=deqkit.Anderson(m=3), backward=deqkit.Implicit(solver="gmres"))
    outs = [torch.autograd.grad(d(x).sum(), block.weight)[0] for d in (by_name, by_object)]
    assert torch.equal(outs[0], outs[1])
    assert by_name.last_stats.forward.nfe == by_object.last_stats.forward.nfe


def test_nan_gradient_into_the_backward_is_named(tanh_problem):
    block, x = tanh_problem(d=8, batch=2, norm=0.5)
    out = deqkit.DEQ(block, solver="anderson")(x)
    grad = torch.ones_like(out)
    grad[1, 3] = float("nan")  # e.g. a loss that produced NaN
    with pytest.raises(
        deqkit.DivergenceError,
        match=r"arriving at the DEQ's output contains NaN or Inf \(1 entries, "
        r"1 of 2 samples\)",
    ):
        out.backward(grad)


@pytest.mark.parametrize("backward_solver", ["picard", "anderson", "broyden", "gmres", "dynamic_ss"])
def test_backward_divergence_is_loud(backward_solver):
    # f(z) = z/2 + x + sqrt(z − z.detach()): its value is z/2 + x, but its vector-Jacobian product is infinite,
    # so the backward solve's first product is non-finite and must stop there, naming the step.
    def f(z, x):
        return 0.5 * z + x + torch.sqrt(z - z.detach())

    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    deq = deqkit.DEQ(f, solver="anderson", backward=deqkit.Implicit(backward_solver))
    out = deq(x)
    assert torch.allclose(out, 2 * x)
    with pytest.raises(deqkit.DivergenceError, match=r"became NaN or infinite at step \d+"):
        out.sum().backward()


def test_convergence_warnings_point_at_the_users_line():
    import inspect

    lin = torch.nn.Linear(3, 3)
    deq = deqkit.DEQ(
        lambda z, x: 0.99 * z + 0.01 * lin(z) + x, solver="anderson", max_nfe=3, backward=deqkit.Implicit(max_nfe=2)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", deqkit.ConvergenceWarning)
        forward_line = inspect.currentframe().f_lineno + 1
        out = deq(torch.ones(2, 3))
        backward_line = inspect.currentframe().f_lineno + 1
        out.sum().backward()
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, forward_line), (__file__, backward_line)]


def test_settings_are_checked_at_construction():
    with pytest.raises(ValueError, match="z0 must be 'zeros', 'f0', a callable or a tensor, got 3"):
        deqkit.DEQ(lambda z, x: z, z0=3)
    with pytest.raises(ValueError, match="^eval_max_nfe must be"):
        deqkit.DEQ(lambda z, x: z, eval_max_nfe=0)


def test_a_gradient_option_given_to_the_deq_says_where_it_belongs():
    with pytest.raises(TypeError, match=r"'steps': an option of the gradient, pass backward=deqkit.Phantom\(steps="):
        deqkit.DEQ(lambda z, x: z, backward="phantom", steps=3)


def test_a_deq_takes_attributes_of_its_own_and_checked_settings():
    """Only near misses of the settings' names are refused (tests/test_bad_input.py): other attributes, the
    settings themselves and nn.Module's own machinery are set as before."""
    deq = deqkit.DEQ(torch.nn.Linear(3, 3))
    deq.note, deq.solver, deq.reltol, deq.z0, deq.strict = "mine", "picard", 1e-6, "f0", True
    deq.f = torch.nn.Linear(3, 3)  # a new block is registered as the submodule f
    assert deq.note == "mine" and deq.solver == deqkit.Picard() and deq.reltol == 1e-6 and deq.z0 == "f0"
    assert "f.weight" in deq.state_dict() and deq.f is dict(deq.named_children())["f"]
    deq.register_buffer("scale_buffer", torch.ones(1))
    deq.train(False)
    assert not deq.training
