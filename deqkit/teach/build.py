"""Notebook 03b: build a DEQ yourself — the forward solve, the implicit backward, and the checks of its exercises.

The learner writes, in order: a fixed-point loop, the ODE route with ``torchdiffeq.odeint``, the adjoint solve
``u = g + u ∂f/∂z`` with vector–Jacobian products, the layer as a ``torch.autograd.Function``, and a
finite-difference gradient. Each ``check_*`` function below returns None for a right answer and, for a wrong one,
a message naming the misconception (for :func:`deqkit.teach.exercises.check`). The ``kit_*`` functions are the
kit's own versions, built on small calls into deqkit; the notebook uses them until the learner's answer passes, so
that Run All goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..solvers import solve
from ..solvers.torchdiffeq_adapter import FixedStepper

D, D_IN = 4, 1  # sizes of the notebook's block: z has 4 coordinates, x has 1 (the y = 2x problem)


class Block(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` in float64, with ‖W‖₂ set to ``norm`` at construction.

    Parameters
    ----------
    d, d_in : int
        Sizes of ``z`` and ``x``.
    norm : float
        Spectral norm of ``W``; below 1, ``f`` is a contraction in ``z`` (tanh has slope ≤ 1).
    seed : int
        Seed of the initialisation.
    """

    def __init__(self, d: int = D, d_in: int = D_IN, norm: float = 0.6, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(d, d, generator=gen, dtype=torch.float64)
        self.W = nn.Parameter(w * norm / torch.linalg.matrix_norm(w, 2))
        self.U = nn.Parameter(torch.randn(d, d_in, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(0.1 * torch.randn(d, generator=gen, dtype=torch.float64))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def inputs(n: int = 5, seed: int = 1) -> torch.Tensor:
    """A batch of ``n`` inputs in [−1, 1], shape ``(n, 1)``, float64 (what the checks feed the learner's code)."""
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(n, D_IN, generator=gen, dtype=torch.float64) - 1


def kit_fixed_point(f: Callable, x: torch.Tensor, tol: float = 1e-10, max_iter: int = 1000) -> torch.Tensor:
    """Plain iteration ``z ← f(z, x)`` from zeros until ``‖f(z, x) − z‖∞ ≤ tol``: one call of :func:`deqkit.solve`."""
    with torch.no_grad():
        z, _ = solve(
            lambda z: f(z, x),
            torch.zeros(x.shape[0], D, dtype=x.dtype),
            solver="picard",
            abstol=tol,
            reltol=0,
            max_steps=max_iter,
            strict=True,
        )
    return z


def vjp_at(f: Callable, z_star: torch.Tensor, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u ↦ u ∂f/∂z`` at ``(z*, x)``: f evaluated once, one backward pass of that graph per product."""
    z = z_star.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z, x.detach())
    return lambda u: torch.autograd.grad(fz, z, u, retain_graph=True)[0]


def kit_solve_adjoint(
    f: Callable, z_star: torch.Tensor, x: torch.Tensor, g: torch.Tensor, tol: float = 1e-12, max_iter: int = 1000
) -> torch.Tensor:
    """``u = g + u ∂f/∂z`` at ``z*``, by Anderson on the map ``u ↦ g + vjp(u)``: one call of :func:`deqkit.solve`."""
    vjp = vjp_at(f, z_star, x)
    u, _ = solve(
        lambda u: g + vjp(u), g.clone(), solver="anderson", abstol=tol, reltol=0, max_steps=max_iter, strict=True
    )
    return u


def implicit_gradients(f: nn.Module, z_star: torch.Tensor, x: torch.Tensor, u: torch.Tensor) -> tuple:
    """``u ∂f/∂x`` and ``u ∂f/∂θ`` for every parameter θ of ``f``: one VJP of ``f(z*, x)``."""
    xd = x.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z_star.detach(), xd)
    return torch.autograd.grad(fz, (xd, *f.parameters()), u, allow_unused=True)


class KitDEQFunction(torch.autograd.Function):
    """The kit's DEQ as an autograd Function: ``KitDEQFunction.apply(f, x, *f.parameters())`` returns ``z*``."""

    @staticmethod
    def forward(ctx: Any, f: nn.Module, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        z_star = kit_fixed_point(f, x)
        ctx.f = f
        ctx.save_for_backward(z_star, x)
        return z_star

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> tuple:
        z_star, x = ctx.saved_tensors
        u = kit_solve_adjoint(ctx.f, z_star, x, grad_z)
        return (None, *implicit_gradients(ctx.f, z_star, x, u))


def kit_fd_gradient(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences ``(L(x + εeᵢ) − L(x − εeᵢ)) / 2ε``, one coordinate ``i`` at a time."""
    grad = torch.zeros_like(x)
    flat, out = x.detach().clone().reshape(-1), grad.reshape(-1)
    for i in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[i] = eps
        out[i] = (float(loss((flat + step).reshape(x.shape))) - float(loss((flat - step).reshape(x.shape)))) / (2 * eps)
    return grad


def _jacobians(f: Callable, z_star: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``∂f/∂z`` per sample, explicit: shape ``(batch, d, d)`` (for the checks' reference answers only)."""

    def one(zi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.jacobian(lambda v: f(v[None], xi[None])[0], zi)

    return torch.stack([one(zi, xi) for zi, xi in zip(z_star.detach(), x.detach())])


def _close(a: Any, b: torch.Tensor, tol: float) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and bool((a.detach() - b).abs().max() <= tol)


def _shape_problem(name: str, value: Any, like: torch.Tensor) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"{name} should return a torch.Tensor, got {type(value).__name__}."
    if value.shape != like.shape:
        return f"{name} returned shape {tuple(value.shape)}; expected {tuple(like.shape)}, one row per sample."
    return None


class _CallCounter:
    """Wraps a block ``f(z, x)``; counts its calls (how many steps the learner's loop took)."""

    def __init__(self, inner: Callable):
        self.inner, self.calls = inner, 0

    def __call__(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(z, x)


def check_fixed_point(fixed_point: Callable) -> str | None:
    """Exercise 1: ``fixed_point(f, x, tol, max_iter)`` must return ``z`` with ``‖f(z, x) − z‖∞ ≤ tol``.

    Called three times on the contraction :class:`Block` (‖W‖₂ = 0.6): with ``tol=1e-10`` (the answer must be
    within tol), with ``tol=1e-3`` (it must stop after fewer calls of ``f``: a loop that ignores ``tol`` runs as
    long either way) and with ``max_iter=5``, too few for ``tol=1e-10``: then it must raise an error.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    f, x = Block(), inputs()
    counted = _CallCounter(f)
    with torch.no_grad():
        z = fixed_point(counted, x, tol=1e-10, max_iter=1000)
        if problem := _shape_problem("fixed_point", z, f(torch.zeros(len(x), D, dtype=x.dtype), x)):
            return problem
        if _close(z, f(torch.zeros_like(z), x), 1e-12):
            return (
                "that is f(0, x): one layer of the stack, not its fixed point. Apply f again and again, "
                "z ← f(z, x), until ‖f(z, x) − z‖∞ ≤ tol."
            )
        residual = float((f(z, x) - z).abs().max())
    if residual > 1e-9:
        return (
            f"‖f(z, x) − z‖∞ = {residual:.1e} > tol = 1e-10: the loop stopped too early. Stop on the residual "
            "‖f(z, x) − z‖∞ ≤ tol (all samples), not after a fixed number of steps."
        )
    tight, counted.calls = counted.calls, 0
    with torch.no_grad():
        z = fixed_point(counted, x, tol=1e-3, max_iter=1000)
        if problem := _shape_problem("fixed_point", z, f(torch.zeros(len(x), D, dtype=x.dtype), x)):
            return problem
        residual = float((f(z, x) - z).abs().max())
    if residual > 1e-3:
        return (
            f"with tol=1e-3 the answer has ‖f(z, x) − z‖∞ = {residual:.1e} > tol: stop only once "
            "‖f(z, x) − z‖∞ ≤ tol (all samples)."
        )
    if counted.calls >= tight:
        return (
            f"with tol=1e-3 your fixed_point called f {counted.calls} times, as many as with tol=1e-10 "
            f"({tight}): it ignores tol. Stop as soon as ‖f(z, x) − z‖∞ ≤ tol, not after a fixed number of steps."
        )
    counted.calls = 0
    try:
        with torch.no_grad():
            z = fixed_point(counted, x, tol=1e-10, max_iter=5)
    except Exception:  # any error will do: the loop said that it did not get there
        return None
    if counted.calls > 2 * 5 + 2:  # an iteration may call f twice (the step, then the residual)
        return (
            f"with max_iter=5 your fixed_point called f {counted.calls} times and raised no error: it ignores "
            "max_iter. Run at most max_iter iterations, and raise an error (e.g. RuntimeError) if "
            "‖f(z, x) − z‖∞ ≤ tol has not been reached by then."
        )
    returned = "returned"
    if isinstance(z, torch.Tensor) and z.shape == (len(x), D):
        with torch.no_grad():
            returned += f" z with ‖f(z, x) − z‖∞ = {float((f(z, x) - z).abs().max()):.1e}"
    return (
        f"with max_iter=5, too few to reach tol=1e-10 on this block (with max_iter=1000 your loop called f {tight} "
        f"times to reach it), your fixed_point {returned} without raising an error. When max_iter iterations do "
        "not reach tol, raise one (e.g. RuntimeError): a silent non-answer is the worst kind."
    )


def _flow(f: Callable, x: torch.Tensor, t_end: float, steps: int = 1000) -> torch.Tensor:
    """``z(t_end)`` of ``dz/dt = f(z, x) − z`` from ``z(0) = 0``: torchdiffeq's ``rk4`` with ``steps`` equal steps.

    The check's reference for a finite ``t_end``: with ``t_end = 2`` and 1000 steps on :class:`Block` it agrees with
    torchdiffeq's dopri5 at ``rtol = atol = 1e-12`` to 1e-12 (``tests/teach/test_build.py``), far under the 1e-6
    that the check allows.
    """

    def field(t: torch.Tensor, z: torch.Tensor, perturb: object = None) -> torch.Tensor:
        return f(z, x) - z

    with torch.no_grad():
        z = torch.zeros(x.shape[0], D, dtype=x.dtype)
        ode = FixedStepper("rk4", field, z, t_end / steps)
        t = torch.zeros((), dtype=torch.float64)
        for _ in range(steps):
            dz, _ = ode.step(t, z)
            z, t = z + dz, t + ode.dt
    return z


def check_ode_fixed_point(ode_fixed_point: Callable) -> str | None:
    """Exercise 2: ``ode_fixed_point(f, x, t_end)``: ``dz/dt = f(z, x) − z`` integrated from 0, ``z(t_end)`` returned.

    Called with ``t_end=30`` (the answer must be within 1e-6 of z*) and with ``t_end=2``, where the flow is still
    0.13 away from z*: the answer must be within 1e-6 of ``z(2)`` from a fine Runge–Kutta 4 integration, which an
    answer that ignores ``t_end`` is not.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    f, x = Block(), inputs()
    z_star = kit_fixed_point(f, x)
    with torch.no_grad():
        z = ode_fixed_point(f, x, t_end=30.0)
    if isinstance(z, torch.Tensor) and z.dim() == 3 and z.shape[1:] == z_star.shape:
        return (
            f"the result has shape {tuple(z.shape)}: odeint returns the state at every time in t. "
            "The equilibrium is the state at the last time, z[-1]."
        )
    if problem := _shape_problem("ode_fixed_point", z, z_star):
        return problem
    if float(z.abs().max()) > 1:
        return (
            f"|z| reaches {float(z.abs().max()):.1f}, but z* = tanh(…) lies in (−1, 1): the flow never stopped. "
            "The right-hand side must be f(z, x) − z, which is zero exactly at a fixed point; dz/dt = f(z, x) "
            "has no equilibrium here."
        )
    error = float((z - z_star).abs().max())
    if error > 1e-6:
        return (
            f"z(t_end) is {error:.1e} away from z*: start from z = 0, integrate dz/dt = f(z, x) − z over "
            "t ∈ [0, t_end] and return the state at t_end (odeint's default dopri5 with rtol=atol=1e-8 suffices)."
        )
    z_2 = _flow(f, x, 2.0)
    with torch.no_grad():
        z = ode_fixed_point(f, x, t_end=2.0)
    if problem := _shape_problem("ode_fixed_point", z, z_star):
        return problem
    error = float((z.detach() - z_2).abs().max())
    if error <= 1e-6:
        return None
    if _close(z, z_star, 1e-6):
        return (
            f"with t_end=2 your ode_fixed_point returned z*, but the flow from z(0) = 0 is still "
            f"{float((z_2 - z_star).abs().max()):.1e} away from z* at t = 2: it ignores t_end. Integrate over "
            "t = torch.tensor([0.0, t_end]) and return the state at t_end."
        )
    return (
        f"with t_end=2 your z(t_end) is {error:.1e} away from the flow's z(2): start from z = 0, integrate "
        "dz/dt = f(z, x) − z over t ∈ [0, t_end] and return the state at t_end."
    )


def _under_vmap(t: torch.Tensor) -> bool:
    """Whether ``t`` is one of several tensors processed at once by ``vmap``: reading its value is then refused."""
    try:
        bool((t != t).any())
    except Exception:  # a BatchedTensor: "Batching rule not implemented for aten::item"
        return True
    return False


def _unit_rows(u: torch.Tensor) -> bool:
    """Whether each row of the cotangent ``u`` is 0 or a unit vector eᵢ, and one is not 0: rows of J asked for."""
    rows = u.detach().reshape(-1, u.shape[-1]) if u.dim() else u.detach().reshape(1, 1)
    nonzero = rows != 0
    return bool(nonzero.any() and (nonzero.sum(-1) <= 1).all() and (rows[nonzero] == 1).all())


class _Tap(torch.autograd.Function):
    """Identity on ``f``'s output that tells a :class:`_Products` of every product taken through it."""

    generate_vmap_rule = True  # so that vmap (jacrev, vectorized jacobian) runs it, and it sees a batched u

    @staticmethod
    def forward(out: torch.Tensor, products: _Products) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.products = inputs[1]

    @staticmethod
    def backward(ctx: Any, u: torch.Tensor) -> tuple:
        ctx.products.vjps += 1
        ctx.products.whole |= _under_vmap(u) or _unit_rows(u)
        return u, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, _: None) -> torch.Tensor:
        ctx.products.whole = True  # forward mode: J v, a column of J; the adjoint needs u J
        return tangent


class _Products(nn.Module):
    """Wraps a block; counts the vector–Jacobian products taken through its output, and notes the Jacobian formed.

    ``vjps`` counts the backward passes through ``f``'s output; ``whole`` is set when one of them asks for a row of
    ``J`` (a cotangent of unit vectors: ``torch.autograd.functional.jacobian``, or a loop over ``eᵢ``), when several
    cotangents go through at once (``vmap``: ``jacobian(..., vectorize=True)``, ``is_grads_batched``,
    ``torch.func.jacrev``) or when a product goes forward (``J v``: ``torch.func.jvp``, ``torch.func.jacfwd``). The
    iteration ``u ← g + uJ`` from a dense ``g`` does none of these. ``calls`` counts the evaluations of ``f``: a
    Jacobian by finite differences takes one per coordinate of ``z`` and no product at all.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.vjps, self.whole, self.calls = inner, 0, False, 0

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return _Tap.apply(self.inner(z, x), self)


def check_solve_adjoint(solve_adjoint: Callable) -> str | None:
    """Exercise 3: ``solve_adjoint(f, z_star, x, g)`` must return ``u`` with ``u = g + u ∂f/∂z`` (row vectors).

    Besides the value (to 1e-8), the check watches the products taken through ``f`` (see :class:`_Products`): an
    answer that forms the Jacobian ``J`` whole, or that takes as many products with ``tol=1e-4`` as with the
    default ``tol=1e-12`` (it ignores ``tol``), is named as such.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    f, x = Block(), inputs()
    z_star = kit_fixed_point(f, x, tol=1e-13)
    g = torch.randn(z_star.shape, generator=torch.Generator().manual_seed(2), dtype=z_star.dtype)
    jac = _jacobians(f, z_star, x)
    eye = torch.eye(D, dtype=jac.dtype)
    right = torch.linalg.solve((eye - jac).transpose(1, 2), g.unsqueeze(-1)).squeeze(-1)
    watched = _Products(f)
    u = solve_adjoint(watched, z_star, x, g)
    if problem := _shape_problem("solve_adjoint", u, g):
        return problem
    if _close(u, right, 1e-8):
        return _products_problem(solve_adjoint, watched, z_star, x, g)
    if _close(u, torch.linalg.solve(eye - jac, g.unsqueeze(-1)).squeeze(-1), 1e-8):
        return (
            "you solved (I − J) u = g: the transpose is missing. The backward needs the row vector u with "
            "u = g + u J, i.e. (I − J)ᵀ uᵀ = gᵀ; a vector–Jacobian product, torch.autograd.grad(fz, z, u), "
            "gives u J (J's transpose acting on u), which is exactly what the iteration needs."
        )
    if _close(u, g, 1e-8):
        return "u = g is the one-step approximation (I − J)⁻¹ ≈ I: iterate u ← g + u J until it stops changing."
    if _close(u, g + (g.unsqueeze(1) @ jac).squeeze(1), 1e-8):
        return "that is one step of u ← g + u J from u = g: iterate until ‖u_new − u‖∞ ≤ tol."
    return (
        f"‖u − u_true‖∞ = {float((u.detach() - right).abs().max()):.1e}: u must satisfy u = g + u J with "
        "J = ∂f/∂z at z*; evaluate fz = f(z, x) once at z = z*.requires_grad_() and iterate "
        "u ← g + torch.autograd.grad(fz, z, u, retain_graph=True)[0]."
    )


def _products_problem(
    solve_adjoint: Callable, watched: _Products, z_star: torch.Tensor, x: torch.Tensor, g: torch.Tensor
) -> str | None:
    """For a right ``u``: what is wrong with the way it was computed (the Jacobian formed, ``tol`` ignored), or None."""
    if watched.whole:
        return (
            "u is right, but you formed the Jacobian J = ∂f/∂z: autograd was asked for it one unit vector at a "
            "time, or for all of it at once (vmap, jacrev, jacfwd, forward mode). That costs one product per "
            "coordinate of z and a d × d matrix per sample, which is what the implicit backward avoids for a layer "
            "with thousands of coordinates. Iterate u ← g + u J with one vector–Jacobian product per step: "
            "evaluate fz = f(z, x) once at z = z*.requires_grad_(), then u J = "
            "torch.autograd.grad(fz, z, u, retain_graph=True)[0]."
        )
    if watched.calls >= D and watched.calls > watched.vjps + 1:  # f evaluated per coordinate, products not taken
        return (
            f"u is right, but you evaluated f {watched.calls} times and took {watched.vjps} vector–Jacobian products "
            "through it: a Jacobian by finite differences (one evaluation per coordinate of z) is approximate and "
            "costs a d × d matrix per sample. Evaluate fz = f(z, x) once at z = z*.requires_grad_(), and iterate "
            "u ← g + u J with u J = torch.autograd.grad(fz, z, u, retain_graph=True)[0]."
        )
    tight, watched.vjps = watched.vjps, 0
    u = solve_adjoint(watched, z_star, x, g, tol=1e-4)
    if problem := _shape_problem("solve_adjoint", u, g):
        return problem
    if tight and watched.vjps >= tight:
        return (
            f"with tol=1e-4 your solve_adjoint took {watched.vjps} vector–Jacobian products, as many as with "
            f"tol=1e-12 ({tight}): it ignores tol. Stop as soon as ‖u_new − u‖∞ ≤ tol, not after a fixed "
            "number of steps."
        )
    return None


class _SavedOutputInGraph(Exception):
    """f was called on the learner's Function's own output inside its backward: the graph would recurse forever."""


class _Counted(nn.Module):
    """Wraps a block; counts its calls made with autograd recording at points other than ``z*`` (iterates)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.graph_calls = inner, 0
        self.z_star: torch.Tensor | None = None

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if isinstance(z.grad_fn, torch.autograd.function.BackwardCFunction):  # a Function's output: see the check
            raise _SavedOutputInGraph
        if torch.is_grad_enabled() and self.z_star is not None:
            # distance of each row of z to the nearest row of z*: an iterate of a solve is far from every one
            gap = (z.detach().unsqueeze(1) - self.z_star.unsqueeze(0)).abs().amax(-1).amin(-1)
            self.graph_calls += bool((gap > 1e-6).any())
        return self.inner(z, x)


def deq_gradients(function: Any, f: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> tuple:
    """``z*`` and the gradients of ``L = Σ weights · z*`` for ``x`` and every parameter, through ``function``."""
    xg = x.detach().requires_grad_()
    z = function.apply(f, xg, *f.parameters())
    grads = torch.autograd.grad((weights * z).sum(), (xg, *f.parameters()), allow_unused=True)
    return z.detach(), grads


def _grads_close(grads: tuple, reference: tuple, tol: float) -> bool:
    return all(g is not None and _close(g, r, tol) for g, r in zip(grads, reference))


def check_deq_function(DEQFunction: Any) -> str | None:  # noqa: N803 (the learner's class)
    """Exercise 4: ``DEQFunction.apply(f, x, *f.parameters())`` must return z* with implicit gradients.

    Compared with :class:`KitDEQFunction` (to 1e-7) on ``L = Σ c · z*``; a backward that evaluates ``f`` with
    autograd recording anywhere but at ``z*`` is backpropagating through iterations and is named as such.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    f, x = _Counted(Block()), inputs()
    weights = torch.randn(len(x), D, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    z_ref, reference = deq_gradients(KitDEQFunction, f.inner, x, weights)
    f.z_star = z_ref
    try:
        z, grads = deq_gradients(DEQFunction, f, x, weights)
    except (RecursionError, _SavedOutputInGraph):
        return (
            "the backward calls itself without end: z_star, saved in forward, is this Function's own output, "
            "and a graph through it leads back into backward. Use z_star.detach() in backward."
        )
    if not _close(z, z_ref, 1e-8):
        return "the forward does not return z*: call your fixed_point(f, x) under torch.no_grad() and return it."
    names = ["x"] + [name for name, _ in f.inner.named_parameters()]
    missing = [n for n, g in zip(names, grads) if g is None]
    if missing:
        return (
            f"no gradient reached {', '.join(missing)}: backward must return None for f, then dL/dx, then one "
            "gradient per parameter, in the order they were passed to apply."
        )
    if f.graph_calls:
        return (
            f"your backward evaluated f {f.graph_calls} times with autograd recording away from z*: it "
            "backpropagates through the solver's iterations (memory and time grow with them). The implicit "
            "backward evaluates f(z*, x) at z* only and solves u = g + u J with vector–Jacobian products."
        )
    if _grads_close(grads, reference, 1e-7):
        return None
    z_star = z_ref
    g = weights
    if _grads_close(grads, implicit_gradients(f.inner, z_star, x, g), 1e-7):
        return (
            "these are the one-step gradients, u = g: the backward must first solve u = g + u J (your "
            "solve_adjoint), then take the VJP of f(z*, x) with u."
        )
    jac = _jacobians(f.inner, z_star, x)
    u_plain = torch.linalg.solve(torch.eye(D, dtype=jac.dtype) - jac, g.unsqueeze(-1)).squeeze(-1)
    if _grads_close(grads, implicit_gradients(f.inner, z_star, x, u_plain), 1e-7):
        return "the transpose is missing: u solves (I − J) u = g instead of u = g + u J."
    worst = max(float((a - b).abs().max()) for a, b in zip(grads, reference))
    return (
        f"the gradients differ from the implicit ones by up to {worst:.1e}: backward should return "
        "(None, u ∂f/∂x, u ∂f/∂θ…) with u = solve_adjoint(f, z*, x, grad_z), from one VJP of f(z*, x)."
    )


def check_fd_gradient(fd_gradient: Callable) -> str | None:
    """Exercise 5: ``fd_gradient(loss, x, eps)`` must return central differences, one coordinate at a time.

    Tested on ``L(x) = Σ x sin x`` at a 3 × 2 tensor, against the exact gradient ``sin x + x cos x`` (to 1e-7).

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    x = torch.tensor([[0.3, -1.2], [2.0, 0.7], [-0.4, 1.5]], dtype=torch.float64)
    kept = x.clone()
    exact = torch.sin(x) + x * torch.cos(x)
    grad = fd_gradient(lambda v: (v * torch.sin(v)).sum(), x, eps=1e-6)
    if not torch.equal(x, kept):
        return "fd_gradient changed x: perturb a copy (or put each coordinate back after use)."
    if problem := _shape_problem("fd_gradient", grad, x):
        return problem
    grad = grad.detach().to(torch.float64)
    if _close(grad, exact, 1e-7):
        return None
    if _close(grad, 2 * exact, 1e-6):
        return "twice the gradient: a central difference (L(x + εe) − L(x − εe)) spans 2ε, so divide by 2ε."
    if torch.allclose(grad, grad.flatten()[0].expand_as(grad)):
        return (
            "every entry is the same: you moved all coordinates at once (a directional derivative). "
            "Perturb one coordinate at a time, x + ε eᵢ, to get ∂L/∂xᵢ."
        )
    return (
        f"‖fd − exact‖∞ = {float((grad - exact).abs().max()):.1e}: for each coordinate i, "
        "(L(x + ε eᵢ) − L(x − ε eᵢ)) / (2ε)."
    )


def stack_figure(f: nn.Module, x: torch.Tensor, depth: int = 12) -> Any:
    """The weight-tied stack ``z_{k+1} = f(z_k, x)`` drawn as layers, and its iterates settling at ``z*``.

    Parameters
    ----------
    f : nn.Module
        The block (every layer of the stack is this one block: the same weights θ).
    x : torch.Tensor
        One input, shape ``(1, d_in)``.
    depth : int
        Layers drawn in the lower panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from .widgets import figure

    with torch.no_grad():
        zs = [torch.zeros(1, D, dtype=x.dtype)]
        for _ in range(depth):
            zs.append(f(zs[-1], x))
        z_star = kit_fixed_point(f, x)
    fig, (top, bottom) = figure(1, 2, width=8.4, height=1.9, gridspec_kw={"height_ratios": [1, 1.6]})
    top.set(
        xlim=(-0.5, 7.5),
        ylim=(0, 1),
        xticks=[],
        yticks=[],
        title="a weight-tied stack: every layer is the same f(·, x; θ)",
    )
    top.axis("off")
    labels = ["z₀ = 0", "z₁", "z₂", "z₃", "…", "z_L → z*"]
    for i, label in enumerate(labels):
        px = 1.45 * i
        top.text(px, 0.5, label, ha="center", va="center", fontsize=9)
        if i < len(labels) - 1 and label != "…":
            top.add_patch(FancyBboxPatch((px + 0.3, 0.25), 0.55, 0.5, boxstyle="round,pad=0.02", fc="#cfe3f7"))
            top.text(px + 0.575, 0.5, "f(·, x; θ)" if i == 0 else "f θ", ha="center", va="center", fontsize=7)
            top.add_patch(FancyArrowPatch((px + 0.85, 0.5), (px + 1.15, 0.5), arrowstyle="->", mutation_scale=8))
    traj = torch.cat(zs).numpy()
    for j in range(D):
        (line,) = bottom.plot(range(depth + 1), traj[:, j], marker=".", label=f"coordinate {j + 1}")
        bottom.axhline(float(z_star[0, j]), color=line.get_color(), ls=":", lw=1)
    bottom.set(
        xlabel="layer k (one more application of the same f)",
        ylabel="z_k",
        title="deeper and deeper: the layers stop changing z; the limit (dotted) is the DEQ's output z*",
    )
    bottom.legend(fontsize=7, ncol=D, loc="lower right")
    return fig


def equilibrium(x: Any, theta: float) -> Any:
    """``z*`` of the scalar ``z = tanh(θ z + x)`` (|θ| < 1: exactly one), by bisection on [−1, 1], elementwise.

    Raises ``ValueError`` for a non-finite ``x`` or ``|θ| ≥ 1``, where the bisection would return a wrong or an
    arbitrary one of several equilibria.
    """
    import numpy as np

    x = np.asarray(x, dtype=float)
    if not np.isfinite(x).all():
        raise ValueError(
            f"x must be finite, got {x if x.ndim == 0 else 'an array with NaN or Inf'}: z* of "
            "z = tanh(θz + x) is defined for finite x"
        )
    if not -1 < theta < 1:
        raise ValueError(
            f"theta={theta!r}: z = tanh(θz + x) has exactly one equilibrium only for |θ| < 1 (the "
            "slider's range is [0, 0.95]); at |θ| ≥ 1 it can have three, and the slope dz*/dx = "
            "s / (1 − θs) can be infinite. Choose |θ| < 1."
        )
    lo, hi = -np.ones_like(x), np.ones_like(x)
    for _ in range(60):  # z − tanh(θz + x) increases in z: the sign tells which half holds the root
        mid = (lo + hi) / 2
        up = mid - np.tanh(theta * mid + x) > 0
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    return (lo + hi) / 2


def ift_slopes(x: float, theta: float) -> tuple[float, float, float]:
    """``z*`` and, by the implicit function theorem, ``dz*/dx`` and ``dz*/dθ`` for ``z = tanh(θ z + x)``.

    With ``s = 1 − z*²`` (tanh's slope at z*): ``∂f/∂z = θ s``, ``∂f/∂x = s``, ``∂f/∂θ = z* s``, and
    ``dz* = (1 − ∂f/∂z)⁻¹ (∂f/∂x dx + ∂f/∂θ dθ)``.
    """
    z = float(equilibrium(x, theta))
    s = 1 - z * z
    return z, s / (1 - theta * s), z * s / (1 - theta * s)


def ift_panel(x: float = 0.5, theta: float = 0.8, step: float = 0.4) -> Any:
    """Widget panel: the equilibrium of ``z = tanh(θ z + x)`` moving with ``x`` and ``θ``, and the IFT's slopes.

    Left: ``f(z)`` at ``x`` and at ``x + step`` against the diagonal; the equilibria are the crossings. Right:
    ``z*`` against ``x`` for this θ, with the tangent whose slope the implicit function theorem gives.
    """
    import numpy as np

    from .widgets import Panel, figure

    z, dzdx, dzdt = ift_slopes(x, theta)
    z2 = float(equilibrium(x + step, theta))
    fig, (left, right) = figure(2, 1, width=3.8, height=3.0, layout="fixed")
    grid = np.linspace(-1.2, 1.2, 121)
    left.plot(grid, grid, "k", lw=0.8, label="z (diagonal)")
    left.plot(grid, np.tanh(theta * grid + x), label=f"f(z) at x = {x:.2f}")
    left.plot(grid, np.tanh(theta * grid + x + step), "--", label=f"f(z) at x + {step}")
    left.plot([z, z2], [z, z2], "o", color="crimson", ms=5, label="equilibria z*")
    left.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), xlabel="z", title="z* is where f crosses the diagonal")
    left.legend(fontsize=7, loc="upper left")
    xs = np.linspace(-2.5, 2.5, 201)
    right.plot(xs, equilibrium(xs, theta), label=f"z*(x) at θ = {theta:.2f}")
    right.plot(xs, z + dzdx * (xs - x), ":", color="crimson", label=f"IFT tangent, slope {dzdx:.3f}")
    right.plot([x], [z], "o", color="crimson", ms=5)
    right.set(xlim=(-2.5, 2.5), ylim=(-1.1, 1.1), xlabel="x", title="the equilibrium as a function of x")
    right.legend(fontsize=7, loc="upper left")
    h = 1e-5
    fd = (float(equilibrium(x + h, theta)) - float(equilibrium(x - h, theta))) / (2 * h)
    text = (
        f"z* = {z:.4f}; ∂f/∂z = θ(1 − z*²) = {theta * (1 - z * z):.3f}. Implicit function theorem: "
        f"dz*/dx = (1 − z*²) / (1 − ∂f/∂z) = {dzdx:.4f} (finite difference of the solved z*: {fd:.4f}); "
        f"dz*/dθ = z*(1 − z*²) / (1 − ∂f/∂z) = {dzdt:.4f}. Moving x by {step} moves z* by {z2 - z:+.4f}."
    )
    return Panel(fig, text)
