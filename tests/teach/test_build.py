"""Notebook 03b's checks: the kit's own answers pass; each misconception gets the message that names it."""

import math

import torch
from torchdiffeq import odeint

from deqkit.teach import build
from deqkit.teach.build import D, KitDEQFunction, implicit_gradients


def _zeros(x):
    return torch.zeros(x.shape[0], D, dtype=x.dtype)


def test_the_kits_answers_pass():
    assert build.check_fixed_point(build.kit_fixed_point) is None
    assert build.check_solve_adjoint(build.kit_solve_adjoint) is None
    assert build.check_deq_function(KitDEQFunction) is None
    assert build.check_fd_gradient(build.kit_fd_gradient) is None


def test_fixed_point_stopped_after_a_fixed_number_of_steps():
    def ten_steps(f, x, tol=1e-10, max_iter=1000):
        z = _zeros(x)
        for _ in range(10):
            z = f(z, x)
        return z

    assert "stopped too early" in build.check_fixed_point(ten_steps)


def test_ode_route_returning_the_whole_trajectory():
    def trajectory(f, x, t_end=30.0):
        return odeint(lambda t, z: f(z, x) - z, _zeros(x), torch.tensor([0.0, t_end], dtype=x.dtype))

    assert "state at every time in t" in build.check_ode_fixed_point(trajectory)


def test_adjoint_one_step_and_a_single_iteration():
    assert "one-step approximation" in build.check_solve_adjoint(lambda f, z, x, g, **kw: g)

    def once(f, z_star, x, g, **kw):
        return g + build.vjp_at(f, z_star, x)(g)

    assert "one step of u ← g + u J" in build.check_solve_adjoint(once)


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
