"""Hostile review of the budget's road, GMRES on Jᵀ, growth_rates' first stage and the per-sample mixing check:
each test names a defect found and fixed (it failed before its fix)."""

import warnings

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem
from deqkit.solvers import Tolerances


@pytest.mark.parametrize("name", ["abstol", "reltol"])
def test_a_tolerance_beyond_float_range_gets_the_tolerance_message_not_overflow(name):
    # was: OverflowError "int too large to convert to float" from the message's own float(value)
    with pytest.raises(ValueError, match=rf"{name} must be in .*every start would be reported converged"):
        Tolerances(**{"abstol": 1e-5, "reltol": 1e-5, name: 10**400})
    deq = deqkit.DEQ(tanh_problem(4, 0.5, batch=2)[0])
    with pytest.raises(ValueError, match=rf"{name} must be in"):
        setattr(deq, name, 10**400)


def test_the_backward_inherits_and_names_eval_max_nfe_in_eval_mode():
    # was: "max_nfe=3 (inherited from the DEQ's forward budget, max_nfe in training or eval_max_nfe in eval()
    # mode ...)" in eval() mode, where the user's max_nfe is another number
    block, x = tanh_problem(8, 0.99, batch=4, dtype=torch.float64)
    deq = deqkit.DEQ(block, solver="anderson", eval_max_nfe=3, backward=deqkit.Implicit(solver="gmres")).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deq(x.requires_grad_()).sum().backward()
    backward = [str(w.message) for w in caught if str(w.message).startswith("gmres")]
    assert backward and "eval_max_nfe=3 (inherited from the DEQ's forward budget;" in backward[0], backward
    deq = deqkit.DEQ(block, solver="anderson", max_nfe=3, backward=deqkit.Implicit(solver="gmres"))  # warns afresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deq(x).sum().backward()
    backward = [str(w.message) for w in caught if str(w.message).startswith("gmres")]
    assert backward and "/ max_nfe=3 (inherited from the DEQ's forward budget;" in backward[0], backward


def _affine(batch, n, scale, dtype, gain=0.9, seed=0):
    """``T(u) = g + Jᵀu`` per sample with ``‖g‖ ~ scale``, and its exact fixed point (a direct solve in float64)."""
    gen = torch.Generator().manual_seed(seed)
    J = gain * torch.randn(batch, n, n, generator=gen, dtype=torch.float64) / n**0.5
    g = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - J.transpose(1, 2), g) * scale
    Jd, gd = J.to(dtype), (g * scale).to(dtype)
    return (lambda u: gd + torch.einsum("bij,bi->bj", Jd, u)), gd, exact


@pytest.mark.parametrize("scale", [2.0**16, 1e6, 1e-30])
def test_gmres_products_keep_their_precision_at_any_scale_of_the_problem(scale):
    # was: Jᵀv = T(u + v) − T(u) with a unit v, whose difference rounding erases where T(u) is large (2^16, the
    # loss scale of torch.amp's GradScaler, in float32: 0 of 4 samples converged in 200 products); and at 1e-30
    # the 2-norm of the residual underflowed to 0 (a DivergenceError blaming f for a NaN)
    T, g, exact = _affine(4, 64, scale, torch.float32)
    sol = deqkit.solvers.run(deqkit.GMRES(), T, g.clone(), Tolerances(0.0, 1e-5))
    assert sol.stats.all_converged and sol.stats.steps <= 120, sol.stats
    error = (sol.z.double() - exact).abs().amax(1) / exact.abs().amax(1)
    assert float(error.max()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gmres_runs_in_half_precision(dtype):
    # was: NotImplementedError "triangular_solve_cpu" not implemented for 'Half' from the small least-squares solve
    T, g, exact = _affine(3, 8, 1.0, dtype, gain=0.5)
    sol = deqkit.solvers.run(deqkit.GMRES(), T, g.clone(), Tolerances(0.0, 2e-2))
    assert sol.stats.all_converged and sol.z.dtype == dtype, sol.stats
    error = (sol.z.double() - exact).abs().amax(1) / exact.abs().amax(1)
    assert float(error.max()) < 0.1


def test_the_precision_hint_looks_at_the_samples_that_failed_only():
    # was: "The residual is at the precision of float64 ... Loosen abstol/reltol" for a sample whose residual is
    # 2, because another sample of the batch had converged to rounding level
    rotate = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)

    def f(z):  # sample 0 contracts onto 0 (exactly, in a few steps), sample 1 rotates about 0 forever
        return torch.stack([0.0 * z[0], z[1] @ rotate.T])

    z0 = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    with pytest.warns(deqkit.ConvergenceWarning) as caught:
        deqkit.solve(f, z0, solver="picard", max_steps=20)
    message = str(caught[0].message)
    assert "1 of 2 samples did not converge" in message and "at the precision of" not in message, message


def test_growth_rates_refuses_a_nan_threshold():
    # was: every rate NaN, returned quietly (a caller's `rate > above` then reads every sample as stable)
    from deqkit.solvers.anderson import growth_rates

    dz = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="above must be a number"):
        growth_rates(dz, dz, above=float("nan"))


def test_a_setting_given_a_module_or_parameter_goes_to_its_check_not_to_nn_module():
    # was: deq.max_nfe = nn.Linear(1, 1) was registered as a child module named max_nfe (no error; every later
    # deq.max_nfe = 50 then raised "cannot assign 'int' as child module"), and deq.abstol = nn.Parameter(...)
    # raised KeyError "attribute 'abstol' already exists"
    deq = deqkit.DEQ(tanh_problem(4, 0.5, batch=2)[0])
    with pytest.raises(TypeError, match="max_nfe must be an integer >= 2, got Linear"):
        deq.max_nfe = torch.nn.Linear(1, 1)
    with pytest.raises(TypeError, match="abstol must be a real number, got Parameter"):
        deq.abstol = torch.nn.Parameter(torch.tensor(1e-3))
    assert "max_nfe" not in dict(deq.named_children())
    deq.max_nfe = 50
    deq.solver = "anderson"  # the other checked settings still go through their setters
    assert (deq.max_nfe, deq.solver.name) == (50, "anderson")


@pytest.mark.parametrize(
    ("change", "error", "fragment"),
    [
        ({"solver": "anderson"}, TypeError, r"run\(\) takes a configured solver .*as_solver\('anderson'\)"),
        ({"solver": deqkit.Anderson}, TypeError, r"run\(\) takes a configured solver"),
        ({"units": 0.0}, ValueError, r"units must be in \(0, inf\)"),
        ({"units": -1.0}, ValueError, r"units must be in \(0, inf\)"),
        ({"units": float("nan")}, ValueError, r"units must be in \(0, inf\)"),
        ({"units": "a"}, TypeError, "units must be a real number"),
        ({"warn": 3}, TypeError, r"warn must be a callable warn\(message, stats\) or None"),
        ({"record": "yes"}, TypeError, "record must be True or False"),
    ],
)
def test_run_refuses_arguments_that_would_fail_late_or_report_nonsense(change, error, fragment):
    # was: AttributeError 'str' object has no attribute 'default_max_steps'; units=0 or -1 or NaN reported
    # residuals of 0, -0.039 or NaN; warn=3 failed after the whole solve ("'int' object is not callable")
    arguments = {"solver": deqkit.Anderson(), "units": 1.0, "warn": None, "record": False} | change
    solver = arguments.pop("solver")
    with pytest.raises(error, match=fragment):
        deqkit.solvers.run(solver, lambda z: 0.5 * z + 1, torch.zeros(2, 3), Tolerances(1e-5, 1e-5), **arguments)


@pytest.mark.parametrize("change", [{"budget_note": None}, {"budget_note": 5}, {"budget_name": 3}, {"budget_name": ""}])
def test_tolerances_refuse_message_labels_that_are_not_text(change):
    # was: accepted, and the messages read "max_nfe=30 (5)" or "/ =30"; Tolerances(1e-5, 1e-5, None, 30, 5) is a
    # plausible slip for a positional argument
    with pytest.raises(TypeError, match=next(iter(change))):
        Tolerances(1e-5, 1e-5, None, 30, **change)


def test_gmres_out_of_memory_names_restart_not_andersons_m(monkeypatch):
    # was: "the solver's stored history (e.g. Anderson's or Broyden's m) ...; lower m or the batch size" for
    # GMRES(restart=None), whose Krylov basis holds as many vectors as the state has entries
    import deqkit.solvers.krylov as krylov

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 360001200000 bytes")

    monkeypatch.setattr(krylov._Cycle, "__init__", no_memory)
    with pytest.raises(RuntimeError, match=r"ran out of memory with GMRES\(restart=None\).*lower restart") as info:
        deqkit.solvers.run(deqkit.GMRES(restart=None), lambda u: 0.5 * u + 1, torch.zeros(1, 8), Tolerances(0, 1e-6))
    assert "Anderson" not in str(info.value)


@pytest.mark.parametrize("solver", ["gmres", "anderson"])
def test_a_jacobian_that_is_not_finite_at_the_equilibrium_is_named_by_the_backward(solver):
    # was: "f returned NaN at a finite iterate: f is undefined at that point (e.g. log or sqrt of a negative
    # number ...)" from the backward solve, where f is defined at z* and its derivative is not (sqrt at 0)
    def f(z, x):
        return 0.5 * torch.sqrt(z.abs()) * x[:, :1] + x[:, 1:2] * x  # sample 1: z* = 0, where sqrt' is infinite

    x = torch.rand(3, 4, dtype=torch.float64) + 0.5
    x[1, 1] = 0
    deq = deqkit.DEQ(f, solver="anderson", backward=deqkit.Implicit(solver=solver))
    out = deq(x.requires_grad_())
    with pytest.raises(deqkit.DivergenceError, match=r"backward: .*at step 0 for 1 of 3 samples: .*not differentiable"):
        out.sum().backward()


def test_the_mixing_message_mentions_nan_only_where_the_gap_is_nan():
    # was: "differs from f on the whole batch (by up to 0.173; NaN: NaN on one side only)" for every gap
    x = torch.randn(8, 4, dtype=torch.float64)
    x[:, 0] = torch.linspace(0.05, 0.95, 8)  # each sample's own contraction: they converge one after another
    deq = deqkit.DEQ(lambda z, x: x[:, :1] * torch.tanh(z) + x - x.mean(0), solver="anderson")
    with pytest.raises(ValueError, match="f mixes samples") as info:
        deq(x)
    assert "by up to 0." in str(info.value) and "NaN" not in str(info.value), str(info.value)


@pytest.mark.parametrize("forward", [{"abstol": 1e-5}, None, 1e-5])
def test_implicit_tolerances_names_what_it_takes(forward):
    # was: AttributeError "'dict' object has no attribute 'abstol'"
    with pytest.raises(TypeError, match=r"takes the forward solve's deqkit.solvers.Tolerances \(e.g. deq.tolerances\)"):
        deqkit.Implicit().tolerances(forward)
