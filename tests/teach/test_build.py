"""Notebook 03b's checks: the kit's own answers pass; each misconception gets the message that names it."""

import math
from pathlib import Path

import nbformat
import pytest
import torch
from torchdiffeq import odeint

from deqkit.teach import build
from deqkit.teach.build import D, KitDEQFunction, implicit_gradients
from deqkit.teach.exercises import solution_code

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03b_build_a_deq.ipynb"


def _zeros(x):
    return torch.zeros(x.shape[0], D, dtype=x.dtype)


def test_the_kits_answers_pass():
    assert build.check_fixed_point(build.kit_fixed_point) is None
    assert build.check_solve_adjoint(build.kit_solve_adjoint) is None
    assert build.check_deq_function(KitDEQFunction) is None
    assert build.check_fd_gradient(build.kit_fd_gradient) is None


def test_the_notebooks_solutions_pass():
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    solutions = [solution_code(c.source) for c in cells if "solution" in c.metadata.get("tags", [])]
    namespace = {"torch": torch, "odeint": odeint}
    for code in solutions:
        exec(code, namespace)  # in order: exercise 4's solution calls the solutions of exercises 1 and 3
    assert build.check_fixed_point(namespace["fixed_point"]) is None
    assert build.check_ode_fixed_point(namespace["ode_fixed_point"]) is None
    assert build.check_solve_adjoint(namespace["solve_adjoint"]) is None
    assert build.check_deq_function(namespace["DEQFunction"]) is None
    assert build.check_fd_gradient(namespace["fd_gradient"]) is None


def test_fixed_point_stopped_after_a_fixed_number_of_steps():
    def ten_steps(f, x, tol=1e-10, max_iter=1000):
        z = _zeros(x)
        for _ in range(10):
            z = f(z, x)
        return z

    assert "stopped too early" in build.check_fixed_point(ten_steps)


def test_fixed_point_ignoring_tol_or_max_iter_or_returning_silently():
    def fixed_steps(f, x, tol=1e-10, max_iter=1000):  # right at tol=1e-10, but never stops early
        z = _zeros(x)
        for _ in range(max_iter):
            z = f(z, x)
        return z

    def silent(f, x, tol=1e-10, max_iter=1000):  # stops on tol, but returns quietly when max_iter runs out
        z = _zeros(x)
        for _ in range(max_iter):
            z_next = f(z, x)
            if (z_next - z).abs().max() <= tol:
                return z_next
            z = z_next
        return z

    def endless(f, x, tol=1e-10, max_iter=1000):  # stops on tol only
        z = _zeros(x)
        while (f(z, x) - z).abs().max() > tol:
            z = f(z, x)
        return z

    assert "it ignores tol" in build.check_fixed_point(fixed_steps)
    message = build.check_fixed_point(silent)
    assert "without raising an error" in message and "silent non-answer" in message
    assert "it ignores max_iter" in build.check_fixed_point(endless)


def test_ode_route_ignoring_t_end():
    def to_100(f, x, t_end=30.0):
        t = torch.tensor([0.0, 100.0], dtype=x.dtype)
        return odeint(lambda t, z: f(z, x) - z, _zeros(x), t, rtol=1e-8, atol=1e-8)[-1]

    def right(f, x, t_end=30.0):
        t = torch.tensor([0.0, t_end], dtype=x.dtype)
        return odeint(lambda t, z: f(z, x) - z, _zeros(x), t, rtol=1e-8, atol=1e-8)[-1]

    assert "it ignores t_end" in build.check_ode_fixed_point(to_100)
    assert build.check_ode_fixed_point(right) is None


def test_the_ode_checks_reference_is_accurate():
    f, x = build.Block(), build.inputs()
    t = torch.tensor([0.0, 2.0], dtype=x.dtype)
    with torch.no_grad():
        tight = odeint(lambda t, z: f(z, x) - z, _zeros(x), t, rtol=1e-12, atol=1e-12)[-1]
        z_star = build.kit_fixed_point(f, x)
    reference = build._flow(f, x, 2.0)
    assert (reference - tight).abs().max() < 1e-12  # the docstring's claim
    assert (reference - z_star).abs().max() > 0.1  # and at t = 2 the flow is still far from z*


def test_ode_route_returning_the_whole_trajectory():
    def trajectory(f, x, t_end=30.0):
        return odeint(lambda t, z: f(z, x) - z, _zeros(x), torch.tensor([0.0, t_end], dtype=x.dtype))

    assert "state at every time in t" in build.check_ode_fixed_point(trajectory)


def test_adjoint_one_step_and_a_single_iteration():
    assert "one-step approximation" in build.check_solve_adjoint(lambda f, z, x, g, **kw: g)

    def once(f, z_star, x, g, **kw):
        return g + build.vjp_at(f, z_star, x)(g)

    assert "one step of u ← g + u J" in build.check_solve_adjoint(once)


def _explicit(jacobian):
    """A solve_adjoint that forms J = ∂f/∂z per sample with ``jacobian`` and solves (I − J)ᵀ u = g: right values."""

    def solve_adjoint(f, z_star, x, g, tol=1e-12, max_iter=1000):
        rows = []
        for zi, xi, gi in zip(z_star, x, g):
            J = jacobian(lambda z, xi=xi: f(z[None], xi[None])[0], zi)
            rows.append(torch.linalg.solve((torch.eye(len(zi), dtype=J.dtype) - J).T, gi))
        return torch.stack(rows)

    return solve_adjoint


def _unit_vector_rows(f, z_star, x, g, tol=1e-12, max_iter=1000):
    """J's rows from one VJP per unit vector, for the whole batch: right values."""
    z = z_star.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z, x)
    n, d = z.shape
    J = torch.zeros(n, d, d, dtype=z.dtype)
    for i in range(d):
        e = torch.zeros_like(fz)
        e[:, i] = 1
        J[:, i, :] = torch.autograd.grad(fz, z, e, retain_graph=True)[0]
    return torch.linalg.solve((torch.eye(d, dtype=z.dtype) - J).transpose(1, 2), g.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize(
    "solve_adjoint",
    [
        _explicit(torch.autograd.functional.jacobian),
        _explicit(lambda f, z: torch.autograd.functional.jacobian(f, z, vectorize=True)),
        _explicit(lambda f, z: torch.autograd.functional.jacobian(f, z, vectorize=True, strategy="forward-mode")),
        _explicit(lambda f, z: torch.func.jacrev(f)(z)),
        _explicit(lambda f, z: torch.func.jacfwd(f)(z)),
        _unit_vector_rows,
    ],
    ids=["jacobian", "vectorized", "forward-mode", "jacrev", "jacfwd", "unit-vector-vjps"],
)
# forward mode (jacfwd, strategy="forward-mode") loads torch's jvp decompositions, which call torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_adjoint_that_forms_the_jacobian(solve_adjoint):
    assert "you formed the Jacobian" in build.check_solve_adjoint(solve_adjoint)


def test_adjoint_from_a_finite_difference_jacobian():
    def finite_differences(f, z_star, x, g, tol=1e-12, max_iter=1000, h=1e-5):
        with torch.no_grad():
            n, d = z_star.shape
            J = torch.zeros(n, d, d, dtype=z_star.dtype)
            for i in range(d):
                e = torch.zeros_like(z_star)
                e[:, i] = h
                J[:, :, i] = (f(z_star + e, x) - f(z_star - e, x)) / (2 * h)
            eye = torch.eye(d, dtype=z_star.dtype)
            return torch.linalg.solve((eye - J).transpose(1, 2), g.unsqueeze(-1)).squeeze(-1)

    assert "a Jacobian by finite differences" in build.check_solve_adjoint(finite_differences)


def test_adjoint_with_vjps_passes_however_taken_and_one_that_ignores_tol_does_not():
    def iterate(vjp_of):  # u ← g + u J until ‖u_new − u‖∞ ≤ tol, the VJPs taken by vjp_of(f, z_star, x)
        def solve_adjoint(f, z_star, x, g, tol=1e-12, max_iter=1000):
            vjp, u = vjp_of(f, z_star, x), g
            for _ in range(max_iter):
                u_next = g + vjp(u)
                if (u_next - u).abs().max() <= tol:
                    return u_next
                u = u_next
            raise RuntimeError("no convergence")

        return solve_adjoint

    def func_vjp(f, z_star, x):
        vjp = torch.func.vjp(lambda z: f(z, x), z_star)[1]
        return lambda u: vjp(u)[0]

    def functional_vjp(f, z_star, x):  # f evaluated again for every product: slower, still VJPs
        return lambda u: torch.autograd.functional.vjp(lambda z: f(z, x), z_star, u)[1]

    def sixty_steps(f, z_star, x, g, tol=1e-12, max_iter=1000):
        vjp, u = build.vjp_at(f, z_star, x), g
        for _ in range(60):
            u = g + vjp(u)
        return u

    assert build.check_solve_adjoint(iterate(build.vjp_at)) is None
    assert build.check_solve_adjoint(iterate(func_vjp)) is None
    assert build.check_solve_adjoint(iterate(functional_vjp)) is None
    assert "it ignores tol" in build.check_solve_adjoint(sixty_steps)


def _function(backward):
    class Learner(torch.autograd.Function):
        @staticmethod
        def forward(ctx, f, x, *params):
            z_star = build.kit_fixed_point(f, x)
            ctx.f = f
            ctx.save_for_backward(z_star, x)
            return z_star

    Learner.backward = staticmethod(backward)
    return Learner


def test_deq_function_one_step_transpose_missing_no_parameter_gradients_and_recursion():
    def one_step(ctx, g):
        z_star, x = ctx.saved_tensors
        return (None, *implicit_gradients(ctx.f, z_star, x, g))

    def no_transpose(ctx, g):
        z_star, x = ctx.saved_tensors
        jac = build._jacobians(ctx.f, z_star, x)
        u = torch.linalg.solve(torch.eye(D, dtype=jac.dtype) - jac, g.unsqueeze(-1)).squeeze(-1)
        return (None, *implicit_gradients(ctx.f, z_star, x, u))

    def x_only(ctx, g):
        z_star, x = ctx.saved_tensors
        grads = implicit_gradients(ctx.f, z_star, x, build.kit_solve_adjoint(ctx.f, z_star, x, g))
        return (None, grads[0], *[None] * (len(grads) - 1))

    def undetached(ctx, g):
        z_star, x = ctx.saved_tensors
        with torch.enable_grad():
            fz = ctx.f(z_star, x)  # z_star is the Function's output: its graph leads back here
            return (None, *torch.autograd.grad(fz, (x, *ctx.f.parameters()), g, allow_unused=True))

    assert "one-step gradients" in build.check_deq_function(_function(one_step))
    assert "transpose is missing" in build.check_deq_function(_function(no_transpose))
    assert "no gradient reached W, U, b" in build.check_deq_function(_function(x_only))
    assert "z_star.detach()" in build.check_deq_function(_function(undetached))


def test_fd_gradient_moving_every_coordinate_at_once_and_changing_x():
    def all_at_once(loss, x, eps=1e-6):
        return torch.full_like(x, float(loss(x + eps) - loss(x - eps)) / (2 * eps))

    def in_place(loss, x, eps=1e-6):
        x += 1.0
        return build.kit_fd_gradient(loss, x - 1.0, eps)

    assert "moved all coordinates at once" in build.check_fd_gradient(all_at_once)
    assert "changed x" in build.check_fd_gradient(in_place)


def test_pictures():
    fig = build.stack_figure(build.Block(), build.inputs(1), depth=6)
    assert len(fig.axes) == 2 and len(fig.axes[1].get_lines()) == 2 * D  # a curve and its limit per coordinate
    panel = build.ift_panel(0.5, 0.8)
    z, dzdx, dzdt = build.ift_slopes(0.5, 0.8)
    assert abs(z - math.tanh(0.8 * z + 0.5)) < 1e-12
    assert f"dz*/dx = (1 − z*²) / (1 − ∂f/∂z) = {dzdx:.4f}" in panel.text
