"""Notebook 05's measurements: the implicit adjoint's gradient accuracy against the forward tolerance, the cost of a
training step against the forward iterations, the backward solvers on ``u = g + u ∂f/∂z``, and what happens as
ρ(∂f/∂z) nears 1; and the exercise's check. Its panels, which draw these: :mod:`deqkit.teach.implicit`.

Expensive measurements are cached per setting, so moving a slider back is instant; the slider values the notebook
offers are exactly the cached grids (:func:`tolerances_grid`, :func:`iterations_grid`, :func:`norms_grid`).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adjoint import GRADIENTS, Implicit
from ..diagnostics import compare_gradients, spectral_radius
from ..errors import ConvergenceWarning, DivergenceError
from ..layer import DEQ
from ..measure import StepCost, measure_step
from ..problems import linear_problem, tanh_problem
from ..solvers import BACKWARD_SOLVERS as REGISTRY
from ..solvers import GMRES, Broyden, Solver, solve
from . import fast_mode
from .limits import choice, within
from .menus import solver_menu

__all__ = [
    "BACKWARD_SOLVERS",
    "MODES",
    "Accuracy",
    "BackwardRun",
    "BroydenRun",
    "NearOne",
    "backward_run",
    "broyden_backward",
    "check_accuracy_settings",
    "check_gradient",
    "check_norm",
    "cost_sizes",
    "deqkit_linear_gradient",
    "gradient_accuracy",
    "growth_exponent",
    "iterations_grid",
    "linear_deq",
    "midway_norm",
    "near_one",
    "near_one_deq",
    "norms_grid",
    "replay",
    "step_cost",
    "tanh_deq",
    "tolerances_grid",
]

#: The gradient methods compared here (notebook 06 teaches the phantom gradient).
MODES = tuple(name for name in GRADIENTS if name != "phantom")
#: Backward solvers of panels 3 and 4: every registered one with its defaults (GMRES(20) restarts every 20
#: products), and full GMRES (``gmres(full)``: as many Krylov vectors as the dimension). Both GMRES check every
#: product (``trace=True``), so that their residual curves have a point per product like the others'.
BACKWARD_SOLVERS: dict[str, Solver] = solver_menu(
    *REGISTRY, ("gmres(full)", GMRES(restart=None, trace=True)), registry=REGISTRY, options={"gmres": {"trace": True}}
)
_SOLVER_LABELS = BACKWARD_SOLVERS | solver_menu(Broyden(m=300))
TOLERANCES = tuple(10.0**-k for k in range(2, 11))  # forward tolerances of the accuracy panel (fast: every other)
FAST_TOLERANCES = TOLERANCES[::2]
ITERATIONS = (10, 25, 50, 100, 150, 200)  # forward iterations of the cost panel (fast mode: FAST_ITERATIONS)
FAST_ITERATIONS = (10, 50, 100, 200)
NORMS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998)  # ‖W‖₂ of panels 3 and 4 below 1 (fast mode: FAST_NORMS)
FAST_NORMS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.995)
PAST_ONE = (1.05, 1.2)  # ‖W‖₂ past 1, moved to keep 1 midway between two eigenvalues (see midway_norm)


# --------------------------------------------------------------------------------------------------------------
# The model: z = tanh(W z + x + b)


def tanh_deq(
    d: int = 32,
    norm: float = 0.9,
    *,
    batch: int = 8,
    kind: str = "orthogonal",
    x_scale: float = 1.0,
    bias_scale: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **deq_options: Any,
) -> tuple[DEQ, torch.Tensor]:
    """A DEQ over :class:`deqkit.problems.TanhBlock` and its input batch (:func:`deqkit.problems.tanh_problem`).

    These panels measure, so the DEQ has no evaluation budget unless ``deq_options`` gives one.

    Returns
    -------
    model : DEQ
    x : torch.Tensor
        Shape ``(batch, d)``, in ``dtype``.
    """
    block, x = tanh_problem(
        d, norm, batch=batch, kind=kind, x_scale=x_scale, bias_scale=bias_scale, seed=seed, dtype=dtype
    )
    return DEQ(block, **({"max_nfe": None} | deq_options)), x


# --------------------------------------------------------------------------------------------------------------
# 1. Gradient accuracy against finite differences, as the forward tolerance changes


@dataclass(frozen=True)
class Accuracy:
    """Each backward mode's gradient against the exact one, at one forward tolerance (see :func:`gradient_accuracy`).

    Attributes
    ----------
    tol : float
        The forward tolerance (abstol = reltol).
    cosine, relative_error : dict of str to float
        Per backward mode, against the reference directional derivatives.
    forward_nfe : int
        Evaluations of the last forward solve at ``tol``.
    """

    tol: float
    cosine: dict[str, float]
    relative_error: dict[str, float]
    forward_nfe: int


def _sizes() -> dict[str, int]:
    return {"d": 8, "batch": 2, "directions": 4} if fast_mode() else {"d": 16, "batch": 4, "directions": 8}


@functools.lru_cache(maxsize=8)
def _reference(norm: float, d: int, batch: int, directions: int) -> torch.Tensor:
    """Directional derivatives of the exact fixed point (forward solved to 1e-13), by central differences."""
    model, x = tanh_deq(
        d, norm, batch=batch, dtype=torch.float64, solver="anderson", abstol=1e-13, reltol=0, max_steps=500
    )
    return compare_gradients(model, x, modes=(), directions=directions).reference


@functools.lru_cache(maxsize=128)
def gradient_accuracy(tol: float, norm: float = 0.9) -> Accuracy:
    """Each backward mode's gradient with the forward solved to ``tol`` (abs. and rel.), against the exact one.

    The reference is the finite-difference derivative of the *exact* fixed point; the compared gradients come
    from a forward solve stopped at ``tol``, with the backward solve at the same tolerance (deqkit's default).
    Both use the same random loss and the same random directions (same seed). Cached per ``(tol, norm)``.

    Parameters
    ----------
    tol : float
        The forward tolerance, absolute and relative (Anderson, at most 500 steps, float64).
    norm : float
        ``‖W‖₂`` of the orthogonal :class:`TanhBlock`.

    Returns
    -------
    Accuracy

    Raises
    ------
    ValueError
        If ``tol`` is outside ``[1e-13, 0.1]`` or ``norm`` outside ``[0.05, 0.95]``.
    """
    check_accuracy_settings(tol, norm)
    s = _sizes()
    ref = _reference(norm, s["d"], s["batch"], s["directions"])
    model, x = tanh_deq(
        s["d"], norm, batch=s["batch"], dtype=torch.float64, solver="anderson", abstol=tol, reltol=tol, max_steps=500
    )
    report = compare_gradients(model, x, directions=s["directions"])
    assert model.last_stats is not None, "compare_gradients ran the layer"
    nfe = model.last_stats.forward.nfe
    cos, rel = {}, {}
    for mode in MODES:
        g = report.gradients[mode]
        cos[mode] = float(torch.nn.functional.cosine_similarity(g, ref, dim=0))
        rel[mode] = float((g - ref).norm() / ref.norm())
    return Accuracy(tol, cos, rel, nfe)


def check_accuracy_settings(tol: float, norm: float) -> None:
    """Refuse settings :func:`gradient_accuracy` cannot measure: ``tol`` outside ``[1e-13, 0.1]``, ``norm`` outside
    ``[0.05, 0.95]`` (a ``ValueError`` naming the range and why; see :func:`deqkit.teach.limits.within`)."""
    within(
        "tol",
        tol,
        1e-13,
        0.1,
        "the exact reference is solved to 1e-13, and a looser forward tolerance says nothing about a gradient",
    )
    within(
        "norm",
        norm,
        0.05,
        0.95,
        "the reference and every tolerance are measured by solves that need a "
        "contraction (at ‖W‖₂ ≥ 1 each may run its 500 steps without converging: minutes, then a meaningless "
        "comparison)",
    )


def tolerances_grid() -> tuple[float, ...]:
    """Return the forward tolerances the accuracy panel measures: 1e-2 to 1e-10 (every other one in fast mode)."""
    return FAST_TOLERANCES if fast_mode() else TOLERANCES


# --------------------------------------------------------------------------------------------------------------
# 2. Cost of a training step against the number of forward iterations


def cost_sizes() -> dict[str, int]:
    """The cost panel's model and measurement sizes, ``d``, ``batch`` and ``repeats`` (smaller in fast mode)."""
    return {"d": 64, "batch": 16, "repeats": 3} if fast_mode() else {"d": 256, "batch": 32, "repeats": 5}


@functools.lru_cache(maxsize=64)
def step_cost(mode: str, iterations: int) -> StepCost:
    """:func:`measure_step` at the cost panel's sizes (smaller in fast mode); cached per ``(mode, iterations)``."""
    s = cost_sizes()
    return measure_step(mode, iterations, d=s["d"], batch=s["batch"], repeats=s["repeats"])


def iterations_grid() -> tuple[int, ...]:
    """Return the forward iteration counts the cost panel measures (fewer in fast mode)."""
    return FAST_ITERATIONS if fast_mode() else ITERATIONS


# --------------------------------------------------------------------------------------------------------------
# 3. The backward solver: u = g + u ∂f/∂z


Warning = tuple[type, str]  # (category, message) of a warning recorded with a cached measurement


def _recorded(fn: Callable[[], Any]) -> tuple[Any, tuple[Warning, ...]]:
    """Run ``fn()``; return its result and the warnings it raised (all of them, recorded instead of shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, tuple((w.category, str(w.message)) for w in caught)


def replay(recorded: tuple[Warning, ...]) -> None:
    """Warn again with recorded warnings: a cached measurement shows its warnings every time it is drawn."""
    for category, message in recorded:
        warnings.warn(message, category, stacklevel=3)


@dataclass(frozen=True)
class BackwardRun:
    """One implicit backward solve (see :func:`backward_run`).

    Attributes
    ----------
    solver : str
        The backward solver's label (see :data:`BACKWARD_SOLVERS`).
    nfe : int
        Vector–Jacobian products (−1 when the solve blew up).
    residual : float
        Largest final residual over the batch (inf when the solve blew up).
    converged : bool
        Every sample met the tolerance.
    seconds : float
        Wall time of ``backward()``.
    history, nfe_history : tuple
        The residual history and the products at each entry (empty when the solve blew up).
    error : str
        The :class:`~deqkit.DivergenceError`'s message when the solve blew up, else empty.
    warnings : tuple
        ``(category, message)`` of every warning other than the solve's own non-convergence (which ``converged``
        reports), shown again whenever this run is drawn.
    """

    solver: str
    nfe: int
    residual: float
    converged: bool
    seconds: float
    history: tuple[float, ...]
    nfe_history: tuple[int, ...]
    error: str = ""  # a DivergenceError's message, when the solve blew up
    warnings: tuple[Warning, ...] = ()


def _backward_sizes() -> dict[str, int]:
    return {"d": 32, "batch": 4} if fast_mode() else {"d": 128, "batch": 16}


def near_one_deq(norm: float, **deq_options) -> tuple[DEQ, torch.Tensor]:
    """The symmetric tanh DEQ of panels 3 and 4, with ‖W‖₂ = ``norm``, and the input ``x = 0``.

    With ``x = 0`` and no bias, ``z* = 0`` exactly (``tanh(0) = 0``) and the forward, started there, is done at
    once; ``∂f/∂z`` at ``z*`` is ``W`` itself, so ρ(∂f/∂z) = ‖W‖₂ exactly — also past 1, where ``z* = 0`` is still
    the fixed point, only an unstable one. ``W`` has its eigenvalues evenly spread over [−norm, norm]. Float64.

    Parameters
    ----------
    norm : float
        ``‖W‖₂``; above 1, use :func:`norms_grid`'s values, which keep 1 midway between two eigenvalues
        (``I − J`` then stays well invertible).
    **deq_options
        Further :class:`~deqkit.DEQ` keywords (e.g. the backward solver's).

    Returns
    -------
    model : DEQ
    x : torch.Tensor
        Zeros of shape ``(batch, d)`` (smaller in fast mode).
    """
    s = _backward_sizes()
    return tanh_deq(
        s["d"],
        norm,
        batch=s["batch"],
        kind="symmetric",
        x_scale=0.0,
        bias_scale=0.0,
        dtype=torch.float64,
        solver="anderson",
        abstol=1e-12,
        reltol=1e-10,
        max_steps=500,
        **deq_options,
    )


def midway_norm(target: float, d: int) -> float:
    """The ‖W‖₂ nearest ``target`` for which 1 lies midway between two eigenvalues of :func:`near_one_deq`'s ``W``.

    The eigenvalues are ``norm · (−1 + 2k/(d − 1))``, ``k = 0 … d − 1``; 1 is midway between the ``k``-th and
    the next when ``norm = (d − 1)/(2k + 2 − d)``.

    Parameters
    ----------
    target : float
        Above 1.
    d : int
        Dimension.

    Returns
    -------
    float
    """
    k = min(d - 2, max(d // 2, round(((d - 1) / target + d - 2) / 2)))
    return (d - 1) / (2 * k + 2 - d)


def norms_grid() -> tuple[float, ...]:
    """Return the values of ‖W‖₂ panels 3 and 4 measure: from 0.5 to 0.998, then two past 1 (fewer in fast mode)."""
    d = _backward_sizes()["d"]
    below = FAST_NORMS if fast_mode() else NORMS
    return below + tuple(midway_norm(t, d) for t in PAST_ONE)


def check_norm(norm: float) -> float:
    """Return ``norm`` as a float if it is a ‖W‖₂ panels 3 and 4 can measure: from 0.05 to 1.5 (the grid's range:
    0.5 to past 1); else a ``ValueError`` naming the range and why."""
    return within(
        "norm",
        norm,
        0.05,
        1.5,
        "the near-one DEQ's W is built for this range (its largest grid value is "
        "past 1 by a small margin); far past 1 every backward solver diverges and nothing is compared",
    )


def _backward(label: str, **settings: Any) -> Implicit:
    """The implicit backward pass with the solver ``label`` names (see :data:`BACKWARD_SOLVERS`)."""
    if label not in _SOLVER_LABELS:
        raise ValueError(f"unknown backward solver {label!r}; choose one of {list(_SOLVER_LABELS)}")
    return Implicit(_SOLVER_LABELS[label], **settings)


@functools.lru_cache(maxsize=256)
def backward_run(solver: str, norm: float, tol: float = 1e-6) -> BackwardRun:
    """The implicit backward solve of :func:`near_one_deq`'s DEQ with ‖W‖₂ = ``norm``, by the given solver.

    The backward solve runs to ``tol`` within 300 steps of its solver (its ``max_steps``; the products are
    counted apart, since a step of the adjoint ODE costs several). Cached per ``(solver, norm, tol)``.

    Parameters
    ----------
    solver : str
        A label of :data:`BACKWARD_SOLVERS` (or ``"broyden(m=300)"``).
    norm : float
        ``‖W‖₂`` = ρ(∂f/∂z) at z*.
    tol : float
        Absolute tolerance of the backward solve (no relative one).

    Returns
    -------
    BackwardRun
        A :class:`~deqkit.DivergenceError` is caught and recorded in ``error``.

    Raises
    ------
    ValueError
        If ``solver`` is not a known label.
    """
    check_norm(norm)
    model, x = near_one_deq(norm, backward=_backward(solver, abstol=tol, reltol=0.0, max_steps=300))
    xg = x.clone().requires_grad_()

    def run() -> tuple[float, str]:
        out = model(xg)
        start = time.perf_counter()
        try:
            out.sum().backward()
        except DivergenceError as err:  # a solver blowing up is part of the lesson: recorded, shown
            return time.perf_counter() - start, str(err)
        return time.perf_counter() - start, ""

    (seconds, error), caught = _recorded(run)
    # the solve's own non-convergence is what ``converged`` reports; any other warning stays with this run
    others = tuple(w for w in caught if not issubclass(w[0], ConvergenceWarning))
    if error:
        return BackwardRun(solver, -1, math.inf, False, seconds, (), (), error, others)
    st = None if model.last_stats is None else model.last_stats.backward
    assert st is not None, "the layer's implicit backward ran and reported its statistics"
    return BackwardRun(
        solver,
        st.nfe,
        float(st.residual.max()),
        st.all_converged,
        seconds,
        tuple(st.history),
        tuple(st.nfe_history),
        "",
        others,
    )


@dataclass(frozen=True)
class BroydenRun:
    """Broyden on the backward problem of :func:`near_one_deq` (see :func:`broyden_backward`).

    Attributes
    ----------
    memory : int
        Secant updates kept.
    residuals : tuple of float
        ``‖T(u) − u‖∞`` at every evaluation, up to the last (finite or not).
    converged : bool
    error : str
        The :class:`~deqkit.DivergenceError`'s message when the solve blew up, else empty.
    """

    memory: int
    residuals: tuple[float, ...]
    converged: bool
    error: str


@functools.lru_cache(maxsize=32)
def broyden_backward(norm: float, memory: int = 20, tol: float = 1e-6) -> BroydenRun:
    """Solve the backward problem ``u = g + u ∂f/∂z`` of :func:`near_one_deq`'s DEQ with Broyden, watching every step.

    The map is the DEQ's own vector–Jacobian product at ``z* = 0`` (``g`` = ones, the gradient of ``sum(z*)``);
    every evaluation's residual is recorded, so a run that blows up still shows how it got there.

    Parameters
    ----------
    norm : float
        ``‖W‖₂``.
    memory : int
        Broyden's ``m``: the secant updates it stores before restarting (deqkit's default is 20).
    tol : float
        Absolute tolerance; at most 300 steps.

    Returns
    -------
    BroydenRun
    """
    model, x = near_one_deq(norm)
    model.requires_grad_(False)  # only products with ∂f/∂z are needed, no parameter gradients
    vjp = torch.func.vjp(lambda z: model.f(z, x), torch.zeros_like(x))[1]  # (f(z, x), its vjp function)
    g = torch.ones_like(x)
    residuals: list[float] = []

    def backward_map(u: torch.Tensor) -> torch.Tensor:
        tu = g + vjp(u)[0]
        residuals.append(float((tu - u).abs().max()))
        return tu

    try:
        _, stats = solve(backward_map, g, solver=Broyden(m=memory), abstol=tol, reltol=0.0, max_steps=300)
    except DivergenceError as err:
        return BroydenRun(memory, tuple(residuals), False, str(err))
    return BroydenRun(memory, tuple(residuals), stats.all_converged, "")


# --------------------------------------------------------------------------------------------------------------
# 4. When ρ(∂f/∂z) nears 1


@dataclass(frozen=True)
class NearOne:
    """What :func:`near_one` measures at one ‖W‖₂.

    Attributes
    ----------
    norm : float
        ``‖W‖₂``.
    rho : float
        Largest ρ(∂f/∂z) at z* over the batch (power iteration).
    backward_nfe, backward_converged : dict
        Per backward solver: products, and whether it converged (see :class:`BackwardRun`); −1 when it blew up.
    one_step_cosine : float
        Cosine between the one-step and the implicit input gradient (the latter by full GMRES).
    warnings : tuple
        ``(category, message)`` of the warnings raised while measuring, shown again whenever this is drawn.
    """

    norm: float
    rho: float
    backward_nfe: dict[str, int]
    backward_converged: dict[str, bool]
    one_step_cosine: float
    warnings: tuple[Warning, ...] = ()


def _input_gradients(norm: float) -> dict[str, torch.Tensor]:
    """Implicit (full GMRES: it converges whenever I − J is invertible) and one-step gradient of sum(z*) by x."""
    d = _backward_sizes()["d"]
    implicit = _backward("gmres(full)", abstol=1e-10, reltol=0.0, max_steps=3 * d)
    model, x = near_one_deq(norm, backward=implicit)
    grads = {}
    for mode in ("implicit", "one_step"):
        model.backward = implicit if mode == "implicit" else mode
        xg = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xg).sum(), xg)
        grads[mode] = g.flatten()
    return grads


@functools.lru_cache(maxsize=64)
def near_one(norm: float) -> NearOne:
    """ρ(∂f/∂z) at z*, each backward solver's products, and the one-step gradient's cosine with the implicit one.

    Parameters
    ----------
    norm : float
        ``‖W‖₂`` of :func:`near_one_deq`.

    Returns
    -------
    NearOne
        Cached per ``norm``.
    """
    model, x = near_one_deq(norm)
    with torch.no_grad():
        z = model(x)
    rho = float(spectral_radius(model.f, z, x, iters=300).max())
    runs = {name: backward_run(name, norm) for name in BACKWARD_SOLVERS}
    grads, caught = _recorded(lambda: _input_gradients(norm))
    cos = float(torch.nn.functional.cosine_similarity(grads["implicit"], grads["one_step"], dim=0))
    caught += tuple(w for r in runs.values() for w in r.warnings)
    return NearOne(
        norm, rho, {k: r.nfe for k, r in runs.items()}, {k: r.converged for k, r in runs.items()}, cos, caught
    )


def growth_exponent(solver: str, norms: tuple[float, ...]) -> float:
    """The slope of log(products) against log(1/(1 − ρ)) over ``norms`` (all below 1), by least squares.

    Products ∝ (1/(1 − ρ))^slope: 1 for plain iteration, 1/2 for the square-root rule.

    Parameters
    ----------
    solver : str
        A label of :data:`BACKWARD_SOLVERS`.
    norms : tuple of float
        At least two values of ‖W‖₂ below 1 at which ``solver`` converged.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If fewer than two norms are given, one is not below 1, or the solver did not converge at one.
    """
    choice("solver", solver, BACKWARD_SOLVERS)
    if len(norms) < 2 or max(norms) >= 1:
        raise ValueError(f"need at least two norms below 1, got {norms}")
    rows = [near_one(n) for n in norms]
    failed = [r.norm for r in rows if not r.backward_converged[solver]]
    if failed:
        raise ValueError(f"{solver} did not converge at ‖W‖₂ = {failed}: no product count to fit")
    x = np.log([1 / (1 - r.rho) for r in rows])
    y = np.log([r.backward_nfe[solver] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


# --------------------------------------------------------------------------------------------------------------
# The exercise: the implicit gradient of a linear DEQ by hand


#: ``(A, x, w)`` of the exercise's linear DEQ ``z* = A z* + x`` with the loss ``w · z*`` (float64).
linear_deq = linear_problem


def deqkit_linear_gradient(a: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d(w · z*)/dx from deqkit's implicit backward for z* = A z* + x.

    The forward is Anderson to abstol 1e-12.

    Parameters
    ----------
    a, x, w : torch.Tensor
        As returned by :func:`linear_deq`.

    Returns
    -------
    torch.Tensor
        Shaped like ``x``.
    """
    model = DEQ(lambda z, xx: z @ a.T + xx, solver="anderson", abstol=1e-12, reltol=0, backward="implicit")
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad((model(xg) * w).sum(), xg)
    return g


def check_gradient(grad_by_hand: Any) -> str | None:
    """The check of notebook 05's exercise: is ``grad_by_hand`` dL/dx for :func:`linear_deq`'s problem?

    It is compared with deqkit's implicit backward (:func:`deqkit_linear_gradient`), to 1e-8.

    Parameters
    ----------
    grad_by_hand : torch.Tensor
        Shape ``(1, d)``, like ``x``.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    a, x, w = linear_deq()
    if not isinstance(grad_by_hand, torch.Tensor):
        return f"grad_by_hand must be a torch.Tensor, got {type(grad_by_hand).__name__}."
    if grad_by_hand.shape != x.shape:
        return f"grad_by_hand has shape {tuple(grad_by_hand.shape)}; dL/dx has the shape of x, {tuple(x.shape)}."
    g = grad_by_hand.to(torch.float64)
    if torch.allclose(g, deqkit_linear_gradient(a, x, w), atol=1e-8):
        return None
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    if torch.allclose(g, w.unsqueeze(0), atol=1e-8):
        return "that is the one-step gradient (u = g): it leaves out the factor (I − A)⁻¹."
    if torch.allclose(g, torch.linalg.solve(eye - a, w).unsqueeze(0), atol=1e-8):
        return "you solved (I − A) u = w; u is a row vector with u = w + u A, i.e. (I − A)ᵀ uᵀ = wᵀ."
    return "not dL/dx yet: it is u with u = w + u A (J = A, ∂f/∂x = I)."
