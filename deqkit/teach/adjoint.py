"""Notebook 05: the implicit adjoint, measured — gradient accuracy, cost against forward iterations, the backward
solver, and what happens as ρ(∂f/∂z) nears 1.

Every panel is a pure function of the widget values. Expensive measurements are cached per setting, so moving a
slider back is instant; the slider values the notebook offers are exactly the cached grids.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.ticker import NullFormatter
from torch import nn

from ..diagnostics import compare_gradients, spectral_radius
from ..errors import ConvergenceWarning, DivergenceError
from ..layer import DEQ
from . import fast_mode
from .widgets import Panel, figure

MODES = ("implicit", "unrolled", "one_step")
BACKWARD_SOLVERS = ("gmres", "anderson", "picard", "dynamic_ss", "broyden")
MODE_COLORS = {"implicit": "tab:blue", "unrolled": "tab:orange", "one_step": "tab:green"}
SOLVER_COLORS = {"gmres": "tab:purple", "anderson": "tab:blue", "picard": "tab:red", "dynamic_ss": "tab:green",
                 "broyden": "tab:brown"}
TOLERANCES = tuple(10.0 ** -k for k in range(2, 11))  # forward tolerances of the accuracy panel (fast: every other)
FAST_TOLERANCES = TOLERANCES[::2]
ITERATIONS = (10, 25, 50, 100, 150, 200)  # forward iterations of the cost panel (fast mode: FAST_ITERATIONS)
FAST_ITERATIONS = (10, 50, 100, 200)
GAPS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002)  # 1 − ‖W‖₂ of the ρ panel (fast mode: FAST_GAPS)
FAST_GAPS = (0.5, 0.1, 0.02, 0.005)


# --------------------------------------------------------------------------------------------------------------
# Peak tensor memory on any device the profiler sees (the CPU included)


def peak_memory(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn()``; return its result and the peak bytes of tensor memory allocated while it ran.

    Method: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free made through
    PyTorch's allocators together with the allocator's running total of live bytes. The peak is the largest
    running total during ``fn`` minus the total just before its first allocation, i.e. the most memory that
    ``fn`` held at once beyond what was live when it started. Frees of blocks allocated before the call are not
    reported by the profiler, so free such tensors (e.g. ``zero_grad(set_to_none=True)``) before calling.

    Parameters
    ----------
    fn : callable
        Called once, without arguments.

    Returns
    -------
    result : object
        What ``fn()`` returned.
    peak : int
        Peak bytes; 0 when ``fn`` allocated nothing.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            extra = node.extra_fields
            events.append((node.start_time_ns, extra.alloc_size, extra.total_allocated))
        stack.extend(node.children)
    if not events:
        return result, 0
    events.sort(key=lambda e: e[0])
    start = events[0][2] - events[0][1]
    return result, max(0, max(total for _, _, total in events) - start)


# --------------------------------------------------------------------------------------------------------------
# The model: z = tanh(W z + x + b)


class TanhBlock(nn.Module):
    """``f(z, x) = tanh(W z + x + b)`` with a random ``W`` of spectral norm ``‖W‖₂ = s``.

    ``W`` is orthogonal·s (``kind='orthogonal'``) or symmetric with eigenvalues evenly spread over [−s, s]
    (``kind='symmetric'``).

    Parameters
    ----------
    d : int
        Dimension of ``z`` and ``x``.
    norm : float
        ``s``.
    kind : {"orthogonal", "symmetric"}
    seed : int
        Seed of ``W`` and ``b``.
    bias_scale : float
        Standard deviation of the entries of ``b``.
    dtype : torch.dtype
        Of the parameters (they are drawn in float64 and converted).

    Raises
    ------
    ValueError
        If ``kind`` is not one of the two.
    """

    def __init__(self, d: int, norm: float, *, kind: str = "orthogonal", seed: int = 0, bias_scale: float = 0.1,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
        if kind == "orthogonal":
            w = norm * q
        elif kind == "symmetric":
            w = q @ torch.diag(torch.linspace(-norm, norm, d, dtype=torch.float64)) @ q.T
        else:
            raise ValueError(f"kind must be 'orthogonal' or 'symmetric', got {kind!r}")
        self.weight = nn.Parameter(w.to(dtype))
        self.bias = nn.Parameter((bias_scale * torch.randn(d, generator=gen, dtype=torch.float64)).to(dtype))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``tanh(W z + x + b)`` for ``z`` and ``x`` of shape ``(batch, d)``."""
        return torch.tanh(z @ self.weight.T + x + self.bias)


def tanh_deq(d: int = 32, norm: float = 0.9, *, batch: int = 8, kind: str = "orthogonal", x_scale: float = 1.0,
             bias_scale: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float32,
             **deq_options) -> tuple[DEQ, torch.Tensor]:
    """A DEQ over :class:`TanhBlock` and an input batch ``x`` (``x_scale``·N(0, 1)).

    Parameters
    ----------
    d, norm, kind, bias_scale, dtype
        As for :class:`TanhBlock`.
    batch : int
        Rows of ``x``.
    x_scale : float
        Standard deviation of the entries of ``x``.
    seed : int
        Seed of the block; ``x`` is drawn with ``seed + 1``.
    **deq_options
        Any :class:`~deqkit.DEQ` keyword.

    Returns
    -------
    model : DEQ
    x : torch.Tensor
        Shape ``(batch, d)``, in ``dtype``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, or a DEQ option is invalid.
    TypeError
        If a DEQ option is unknown.
    """
    block = TanhBlock(d, norm, kind=kind, seed=seed, bias_scale=bias_scale, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (x_scale * torch.randn(batch, d, generator=gen, dtype=torch.float64)).to(dtype)
    return DEQ(block, **deq_options), x


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
    model, x = tanh_deq(d, norm, batch=batch, dtype=torch.float64, solver="anderson", abstol=1e-13, reltol=0,
                        max_steps=500)
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
    """
    s = _sizes()
    ref = _reference(norm, s["d"], s["batch"], s["directions"])
    model, x = tanh_deq(s["d"], norm, batch=s["batch"], dtype=torch.float64, solver="anderson", abstol=tol,
                        reltol=tol, max_steps=500)
    report = compare_gradients(model, x, directions=s["directions"])
    nfe = model.last_stats.forward.nfe
    cos, rel = {}, {}
    for mode in MODES:
        g = report.gradients[mode]
        cos[mode] = float(torch.nn.functional.cosine_similarity(g, ref, dim=0))
        rel[mode] = float((g - ref).norm() / ref.norm())
    return Accuracy(tol, cos, rel, nfe)


def tolerances_grid() -> tuple[float, ...]:
    """Return the forward tolerances the accuracy panel measures: 1e-2 to 1e-10 (every other one in fast mode)."""
    return FAST_TOLERANCES if fast_mode() else TOLERANCES


def accuracy_panel(tol: float = 1e-4, norm: float = 0.9) -> Panel:
    """Relative error and cosine of implicit / unrolled / one-step gradients against the forward tolerance.

    Measures every tolerance of :func:`tolerances_grid` (cached) and highlights the one nearest ``tol``.

    Parameters
    ----------
    tol : float
        The tolerance to highlight, snapped to the nearest on the grid (in log scale).
    norm : float
        ``‖W‖₂`` of the model.

    Returns
    -------
    Panel
        The text tabulates each mode's cosine and relative error at the highlighted tolerance.
    """
    grid = tolerances_grid()
    tol = min(grid, key=lambda t: abs(math.log10(t) - math.log10(tol)))
    rows = [gradient_accuracy(t, norm) for t in grid]
    here = gradient_accuracy(tol, norm)
    fig, (ax, ax2) = figure(2)
    for mode in MODES:
        c = MODE_COLORS[mode]
        ax.loglog(grid, [max(r.relative_error[mode], 1e-16) for r in rows], "o-", color=c, label=mode, ms=3)
        ax2.loglog(grid, [max(1 - r.cosine[mode], 1e-16) for r in rows], "o-", color=c, label=mode, ms=3)
        ax.plot([tol], [max(here.relative_error[mode], 1e-16)], "o", color=c, ms=9, mfc="none", mew=2)
    ax.axvline(tol, color="k", lw=0.8, ls=":")
    ax2.axvline(tol, color="k", lw=0.8, ls=":")
    ax.set(xlabel="forward tolerance (abstol = reltol)", ylabel="‖g − g*‖ / ‖g*‖",
           title=f"gradient error, ‖W‖₂ = {norm:g}")
    ax2.set(xlabel="forward tolerance", ylabel="1 − cosine(g, g*)  (floored at 1e-16)", title="direction")
    ax.invert_xaxis()
    ax2.invert_xaxis()
    ax.legend(fontsize=7)
    cells = "".join(f"<tr><td>{m}</td><td>{here.cosine[m]:.6f}</td><td>{here.relative_error[m]:.2e}</td></tr>"
                    for m in MODES)
    text = (f"forward tolerance {tol:.0e} ({here.forward_nfe} Anderson evaluations): "
            f"<table><tr><th>mode</th><th>cosine</th><th>relative error</th></tr>{cells}</table>")
    return Panel(fig, text)


# --------------------------------------------------------------------------------------------------------------
# 2. Cost of a training step against the number of forward iterations


@dataclass(frozen=True)
class StepCost:
    """Cost of one training step (see :func:`measure_step`).

    Attributes
    ----------
    mode : str
        The backward mode.
    iterations : int
        The forward's ``max_steps``.
    seconds : float
        Median wall time of a step.
    peak_bytes : int
        Peak tensor memory of a step (see :func:`peak_memory`).
    steps : int
        Forward iterations actually taken.
    """

    mode: str
    iterations: int
    seconds: float
    peak_bytes: int
    steps: int  # forward iterations actually taken


def _cost_sizes() -> dict[str, int]:
    return {"d": 64, "batch": 16, "repeats": 2} if fast_mode() else {"d": 256, "batch": 32, "repeats": 5}


def training_step(model: DEQ, x: torch.Tensor, target: torch.Tensor) -> None:
    """One forward + backward pass of a mean-squared-error loss (gradients accumulate in the parameters).

    Parameters
    ----------
    model : DEQ
    x, target : torch.Tensor
        Input and target, both shaped like the model's output.
    """
    loss = (model(x) - target).pow(2).mean()
    loss.backward()


def make_cost_model(mode: str, iterations: int, d: int, batch: int, norm: float = 0.9,
                    solver: str = "picard") -> tuple[DEQ, torch.Tensor, torch.Tensor]:
    """A tanh DEQ whose forward takes exactly ``iterations`` steps (its tolerance is out of reach).

    The backward solve runs to a relative tolerance of 1e-4.

    Parameters
    ----------
    mode : {"implicit", "unrolled", "one_step"}
        The backward mode.
    iterations : int
        The forward's ``max_steps``.
    d, batch, norm
        As for :func:`tanh_deq` (orthogonal ``W``, float32).
    solver : str
        The forward method.

    Returns
    -------
    model : DEQ
    x : torch.Tensor
        Shape ``(batch, d)``.
    target : torch.Tensor
        Zeros shaped like ``x``.
    """
    model, x = tanh_deq(d, norm, batch=batch, solver=solver, backward=mode, abstol=1e-30, reltol=0,
                        max_steps=iterations, backward_abstol=0.0, backward_reltol=1e-4)
    target = torch.zeros_like(x)
    return model, x, target


def measure_step(mode: str, iterations: int, *, d: int, batch: int, repeats: int, norm: float = 0.9,
                 solver: str = "picard") -> StepCost:
    """Median wall time and peak tensor memory of one training step of :func:`make_cost_model`'s DEQ.

    The forward's tolerance is unreachable, so it runs exactly ``iterations`` steps; the non-convergence warning
    that follows is expected and silenced. One untimed warm-up step precedes the ``repeats`` timed ones; the
    memory is measured on a further step.

    Parameters
    ----------
    mode, iterations, d, batch, norm, solver
        As for :func:`make_cost_model`.
    repeats : int
        Timed steps (≥ 1).

    Returns
    -------
    StepCost
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    model, x, target = make_cost_model(mode, iterations, d, batch, norm, solver)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            training_step(model, x, target)
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        _, peak = peak_memory(lambda: training_step(model, x, target))
    return StepCost(mode, iterations, statistics.median(times[1:]), peak, model.last_stats.forward.steps)


@functools.lru_cache(maxsize=64)
def step_cost(mode: str, iterations: int) -> StepCost:
    """:func:`measure_step` at the cost panel's sizes (smaller in fast mode); cached per ``(mode, iterations)``."""
    return measure_step(mode, iterations, **_cost_sizes())


def iterations_grid() -> tuple[int, ...]:
    """Return the forward iteration counts the cost panel measures (fewer in fast mode)."""
    return FAST_ITERATIONS if fast_mode() else ITERATIONS


def cost_panel(iterations: int = 50, mode: str = "implicit") -> Panel:
    """Peak memory and wall time of a training step against the forward iterations, implicit vs unrolled.

    Parameters
    ----------
    iterations : int
        The point to highlight, snapped to the nearest of :func:`iterations_grid`.
    mode : {"implicit", "unrolled", "one_step"}
        The mode to highlight (``"one_step"`` is highlighted at its point only; its curve is not drawn).

    Returns
    -------
    Panel
        The text compares implicit and unrolled memory and time at ``iterations``.
    """
    grid = iterations_grid()
    iterations = min(grid, key=lambda n: abs(n - iterations))
    fig, (ax, ax2) = figure(2)
    for m in ("implicit", "unrolled"):
        rows = [step_cost(m, n) for n in grid]
        c = MODE_COLORS[m]
        lw = 2.5 if m == mode else 1.0
        ax.plot(grid, [r.peak_bytes / 2**20 for r in rows], "o-", color=c, lw=lw, ms=3, label=m)
        ax2.plot(grid, [r.seconds * 1e3 for r in rows], "o-", color=c, lw=lw, ms=3, label=m)
    here = step_cost(mode, iterations)
    c = MODE_COLORS[mode]
    ax.plot([iterations], [here.peak_bytes / 2**20], "o", color=c, ms=10, mfc="none", mew=2)
    ax2.plot([iterations], [here.seconds * 1e3], "o", color=c, ms=10, mfc="none", mew=2)
    s = _cost_sizes()
    ax.set(xlabel="forward iterations", ylabel="peak tensor memory (MiB)", ylim=(0, None),
           title=f"training step, d = {s['d']}, batch {s['batch']}")
    ax2.set(xlabel="forward iterations", ylabel="wall time (ms)", ylim=(0, None), title="time (median)")
    ax.legend(fontsize=7)
    imp, unr = step_cost("implicit", iterations), step_cost("unrolled", iterations)
    text = (f"{iterations} forward iterations ({here.steps} taken): implicit {imp.peak_bytes / 2**20:.2f} MiB, "
            f"{imp.seconds * 1e3:.1f} ms; unrolled {unr.peak_bytes / 2**20:.2f} MiB, {unr.seconds * 1e3:.1f} ms "
            f"(unrolled / implicit memory {unr.peak_bytes / max(imp.peak_bytes, 1):.1f}×). Highlighted: {mode}.")
    return Panel(fig, text)


# --------------------------------------------------------------------------------------------------------------
# 3. The backward solver: u = g + u ∂f/∂z


@dataclass(frozen=True)
class BackwardRun:
    """One implicit backward solve (see :func:`backward_run`).

    Attributes
    ----------
    solver : str
        The backward solver.
    nfe : int
        Vector–Jacobian products (−1 when the solve diverged).
    residual : float
        Largest final residual over the batch (inf when the solve diverged).
    converged : bool
        Every sample converged and no warning was recorded during the forward or the backward.
    seconds : float
        Wall time of ``backward()``.
    history, nfe_history : tuple
        The residual history and the products at each entry (empty when the solve diverged).
    error : str
        The :class:`~deqkit.DivergenceError`'s message when the solve diverged, else empty.
    """

    solver: str
    nfe: int
    residual: float
    converged: bool
    seconds: float
    history: tuple[float, ...]
    nfe_history: tuple[int, ...]
    error: str = ""  # a DivergenceError's message, when the solve blew up


def _backward_sizes() -> dict[str, int]:
    return {"d": 32, "batch": 4} if fast_mode() else {"d": 128, "batch": 16}


def near_one_deq(gap: float, **deq_options) -> tuple[DEQ, torch.Tensor]:
    """The symmetric tanh DEQ of panels 3 and 4, with ‖W‖₂ = 1 − gap.

    A tiny input (1e-4·N(0, 1)) and no bias keep z* near 0, where tanh′ ≈ 1, so ρ(∂f/∂z) at z* ≈ ‖W‖₂ (it
    would saturate below 1 for a larger input). Float64; the forward is Anderson to abstol 1e-12 or reltol
    1e-10, at most 500 steps.

    Parameters
    ----------
    gap : float
        ``1 − ‖W‖₂``.
    **deq_options
        Further :class:`~deqkit.DEQ` keywords (e.g. the backward solver's); not the forward settings above.

    Returns
    -------
    model : DEQ
    x : torch.Tensor
        The input batch, shape ``(batch, d)`` (smaller in fast mode).
    """
    s = _backward_sizes()
    return tanh_deq(s["d"], 1 - gap, batch=s["batch"], kind="symmetric", x_scale=1e-4, bias_scale=0.0,
                    dtype=torch.float64, solver="anderson", abstol=1e-12, reltol=1e-10, max_steps=500,
                    **deq_options)


def gaps_grid() -> tuple[float, ...]:
    """Return the values of 1 − ‖W‖₂ the ρ panel measures (fewer in fast mode)."""
    return FAST_GAPS if fast_mode() else GAPS


@functools.lru_cache(maxsize=256)
def backward_run(solver: str, gap: float, tol: float = 1e-6) -> BackwardRun:
    """The implicit backward solve of a symmetric tanh DEQ with ‖W‖₂ = 1 − gap, with the given backward solver.

    The forward is Anderson to 1e-12 (float64); the backward solve runs to ``tol`` within 300 steps.
    Cached per ``(solver, gap, tol)``.

    Parameters
    ----------
    solver : str
        A backward solver (see :data:`BACKWARD_SOLVERS`).
    gap : float
        ``1 − ‖W‖₂``.
    tol : float
        Absolute tolerance of the backward solve (no relative one).

    Returns
    -------
    BackwardRun
        A :class:`~deqkit.DivergenceError` is caught and recorded in ``error``.
    """
    model, x = near_one_deq(gap, backward_solver=solver, backward_abstol=tol, backward_reltol=0.0,
                            backward_max_steps=300)
    xg = x.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        out = model(xg)
        start = time.perf_counter()
        try:
            out.sum().backward()
        except DivergenceError as err:  # e.g. Broyden's secant updates blowing up as ρ → 1: part of the lesson
            return BackwardRun(solver, -1, math.inf, False, time.perf_counter() - start, (), (), str(err))
        seconds = time.perf_counter() - start
    for w in caught:  # only deqkit's non-convergence warnings belong to the readout; pass any other warning on
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    st = model.last_stats.backward
    converged = st.all_converged
    return BackwardRun(solver, st.nfe, float(st.residual.max()), converged, seconds, tuple(st.history),
                       tuple(st.nfe_history))


def backward_panel(solver: str = "gmres", gap: float = 0.1) -> Panel:
    """Residual of the backward solve against vector–Jacobian products, for each solver; the chosen one bold.

    Parameters
    ----------
    solver : str
        The solver to highlight, one of :data:`BACKWARD_SOLVERS`.
    gap : float
        ``1 − ‖W‖₂`` (see :func:`backward_run`).

    Returns
    -------
    Panel
        The text gives the chosen solver's products, final residual and time, or its divergence message.
    """
    fig, ax = figure(width=6)
    for name in BACKWARD_SOLVERS:
        r = backward_run(name, gap)
        bold = name == solver
        label = f"{name}: diverged" if r.error else f"{name}: {r.nfe}" + ("" if r.converged else " (not converged)")
        ax.semilogy(r.nfe_history, np.maximum(r.history, 1e-17), "-", color=SOLVER_COLORS[name],
                    lw=2.5 if bold else 0.8, alpha=1.0 if bold else 0.5, label=label)
    ax.axhline(1e-6, color="k", lw=0.8, ls=":")
    longest = max(max(backward_run(n, gap).nfe_history, default=0) for n in BACKWARD_SOLVERS)
    ax.set(xlabel="vector–Jacobian products", ylabel="max residual ‖u − g − u ∂f/∂z‖∞",
           title=f"backward solve, ‖W‖₂ = {1 - gap:g} (symmetric W)", xlim=(0, longest + 5))
    ax.legend(fontsize=7, title="solver: products", title_fontsize=7)
    r = backward_run(solver, gap)
    if r.error:
        text = f"<b>{solver}</b> blew up: {r.error}"
    else:
        verdict = "converged" if r.converged else "<b>did not converge</b> within 300 products"
        text = (f"<b>{solver}</b>: {r.nfe} vector–Jacobian products, final residual {r.residual:.2e}, {verdict}, "
                f"{r.seconds * 1e3:.1f} ms.")
    return Panel(fig, text)


# --------------------------------------------------------------------------------------------------------------
# 4. When ρ(∂f/∂z) nears 1


@dataclass(frozen=True)
class NearOne:
    """What :func:`near_one` measures at one gap.

    Attributes
    ----------
    gap : float
        ``1 − ‖W‖₂``.
    rho : float
        Largest ρ(∂f/∂z) at z* over the batch.
    backward_nfe, backward_converged : dict
        Per backward solver: products, and whether it converged (see :class:`BackwardRun`).
    one_step_cosine : float
        Cosine between the one-step and the implicit input gradient.
    """

    gap: float
    rho: float
    backward_nfe: dict[str, int]
    backward_converged: dict[str, bool]
    one_step_cosine: float


@functools.lru_cache(maxsize=64)
def near_one(gap: float) -> NearOne:
    """ρ(∂f/∂z) at z*, each backward solver's products, and the one-step gradient's cosine with the implicit one.

    Parameters
    ----------
    gap : float
        ``1 − ‖W‖₂`` of :func:`near_one_deq`.

    Returns
    -------
    NearOne
        Cached per ``gap``.
    """
    model, x = near_one_deq(gap)
    with torch.no_grad():
        z = model(x)
    rho = float(spectral_radius(model.f, z, x, iters=200).max())
    runs = {name: backward_run(name, gap) for name in BACKWARD_SOLVERS}
    grads = {}
    model.backward_max_steps = 1000  # GMRES(20) needs restarts as ρ → 1
    for mode in ("implicit", "one_step"):
        model.backward = mode
        xg = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xg).sum(), xg)
        grads[mode] = g.flatten()
    cos = float(torch.nn.functional.cosine_similarity(grads["implicit"], grads["one_step"], dim=0))
    return NearOne(gap, rho, {k: r.nfe for k, r in runs.items()}, {k: r.converged for k, r in runs.items()}, cos)


def rho_panel(gap: float = 0.1) -> Panel:
    """Backward products of each solver and the one-step gradient's direction as ρ(∂f/∂z) → 1.

    Parameters
    ----------
    gap : float
        ``1 − ‖W‖₂`` to highlight, snapped to the nearest of :func:`gaps_grid` (in log scale).

    Returns
    -------
    Panel
        The text gives ρ, the one-step cosine and each solver's products at the highlighted gap.
    """
    grid = gaps_grid()
    gap = min(grid, key=lambda g: abs(math.log10(g) - math.log10(gap)))
    rows = [near_one(g) for g in grid]
    fig, (ax, ax2) = figure(2)
    gaps = [1 - r.rho for r in rows]
    for name in BACKWARD_SOLVERS:
        nfe = [r.backward_nfe[name] if r.backward_converged[name] else np.nan for r in rows]
        ax.loglog(gaps, nfe, "o-", color=SOLVER_COLORS[name], ms=3, label=name)
    here = near_one(gap)
    ax.axvline(1 - here.rho, color="k", lw=0.8, ls=":")
    ref = np.array(gaps)
    ax.loglog(ref, 14 / ref, "k--", lw=0.6, label="∝ 1/(1 − ρ)")
    ax.set(xlabel="1 − ρ(∂f/∂z) at z*", ylabel="products to residual 1e-6 (converged runs)",
           title="backward cost as ρ → 1", ylim=(None, 400))
    ax.axhline(300, color="k", lw=0.6, ls=":")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    ax2.semilogx(gaps, [r.one_step_cosine for r in rows], "o-", color=MODE_COLORS["one_step"], ms=3)
    ax2.plot([1 - here.rho], [here.one_step_cosine], "o", color=MODE_COLORS["one_step"], ms=10, mfc="none", mew=2)
    ax2.set(xlabel="1 − ρ(∂f/∂z) at z*", ylabel="cosine(one-step, implicit)", title="the Jacobian-free gradient",
            ylim=(0, 1.05))
    ax2.invert_xaxis()
    for a in (ax, ax2):
        a.xaxis.set_minor_formatter(NullFormatter())
        a.yaxis.set_minor_formatter(NullFormatter())
    cells = "".join(f"<td>{here.backward_nfe[n] if here.backward_converged[n] else 'not converged'}</td>"
                    for n in BACKWARD_SOLVERS)
    heads = "".join(f"<th>{n}</th>" for n in BACKWARD_SOLVERS)
    text = (f"‖W‖₂ = {1 - gap:g}: ρ(∂f/∂z) = {here.rho:.4f}; one-step cosine {here.one_step_cosine:.3f}. "
            f"Backward products: <table><tr>{heads}</tr><tr>{cells}</tr></table>")
    return Panel(fig, text)


# --------------------------------------------------------------------------------------------------------------
# The exercise: the implicit gradient of a linear DEQ by hand


def linear_deq(d: int = 5, norm: float = 0.8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, x, w)`` for the exercise: z* = A z* + x, loss = w · z*, float64.

    Parameters
    ----------
    d : int
        Dimension.
    norm : float
        ``‖A‖₂``; below 1, ``I − A`` is invertible and plain iteration converges.
    seed : int

    Returns
    -------
    a : torch.Tensor
        Shape ``(d, d)``.
    x : torch.Tensor
        Shape ``(1, d)``.
    w : torch.Tensor
        Shape ``(d,)``.
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a = norm * a / torch.linalg.matrix_norm(a, 2)
    x = torch.randn(1, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    return a, x, w


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
