"""Notebook 06: why a DEQ gets harder to solve as it trains, and what the Jacobian penalty, normalization and the
gradient method do about it.

The *runs* (:mod:`deqkit.teach.stable_runs`, where the experiment lives): ten epochs of the LayerNorm MLP-DEQ
trained with the DEQ's defaults, without and with the Jacobian penalty (a sweep of γ), with spectral normalization,
without LayerNorm, and with the phantom and one-step gradients, each measured on a probe batch after every epoch.
Here, the *panels*: pure functions ``(runs or model, widget values) -> Panel`` the notebook wires to widgets.
"""

from __future__ import annotations

import html
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..adjoint import Implicit, Phantom
from ..errors import ConvergenceWarning
from ..models import MNISTDEQ
from ..solvers import solve
from .stable_runs import (
    BASELINE,
    DATA,
    GAMMA_RUNS,
    GRADIENT_RUNS,
    RUN_NAMES,
    RUNS,
    cosine,
    load_runs,
    parameter_gradient,
    runs_by_name,
    series,
    summary,
)
from .widgets import Panel, figure

# the runs' names and readers, for the notebook: from deqkit.teach.stable_runs, where the experiment lives
__all__ = [
    "BASELINE",
    "DATA",
    "GAMMA_RUNS",
    "GRADIENT_RUNS",
    "RUNS",
    "RUN_NAMES",
    "check_picard_steps",
    "cosine",
    "curves_panel",
    "gradient_panel",
    "implicit_products",
    "load_runs",
    "phantom_gradients",
    "phantom_panel",
    "summary",
    "tradeoff_panel",
]


def _fmt_gamma(run: dict[str, Any]) -> str:
    return f"γ = {run['jac_reg']:g}"


def curves_panel(runs: dict[str, Any], name: str, *, others: Sequence[str] = GAMMA_RUNS) -> Panel:
    """How a run's solve cost, ρ(∂f/∂z) at z* and accuracy evolve over training, against the unregularized run.

    Four axes over the epochs: forward evaluations per training step (capped by the training budget), the
    evaluations Anderson needs on the probe batch without a budget, ρ at z* (mean over the probe), and test
    accuracy. The run ``name`` is drawn bold, the baseline black, the other runs of ``others`` faint.

    Raises
    ------
    KeyError
        If ``name`` is not a run of ``runs``.
    """
    by = runs_by_name(runs)
    if name not in by:
        raise KeyError(f"no run named {name!r}; the runs are {list(by)}")
    fig, axes = figure(2, 2, width=3.9, height=2.7)
    panels = (
        ("fwd_nfe_mean", "forward evaluations / step", True),
        ("probe_nfe", "Anderson evaluations to 1e-4", False),
        ("rho_mean", "ρ(∂f/∂z) at z* (mean)", False),
        ("test_acc", "test accuracy (%)", True),
    )
    for ax, (key, label, trained) in zip(axes.flat, panels):
        for other in others:
            if other not in (name, BASELINE) and other in by:
                ax.plot(*series(by[other], key, trained_only=trained), color="0.8", lw=1)
        ax.plot(*series(by[BASELINE], key, trained_only=trained), "k.-", lw=1.5, label=BASELINE)
        if name != BASELINE:
            ax.plot(*series(by[name], key, trained_only=trained), "o-", color="tab:red", lw=2, label=name)
        ax.set(xlabel="epoch", title=label)
    axes[0, 0].legend(fontsize=7)
    s = summary(runs)[name]
    text = (
        f"<b>{html.escape(name)}</b>, last epoch: {s['fwd_nfe']:.1f} forward evaluations per step "
        f"(<b>{s['nfe_ratio']:.2f}×</b> the unregularized run's), Anderson needs {s['probe_nfe']} without a "
        f"budget, ρ = {s['rho']:.3f}, test accuracy {s['test_acc']:.2f}% "
        f"(accuracy drop from the unregularized run, as on the trade-off plot: "
        f"<b>{s['acc_drop']:+.2f} points</b>)."
    )
    return Panel(fig, text)


def tradeoff_panel(
    runs: dict[str, Any], names: Sequence[str] | None = None, *, nfe_ratio: float = 0.7, acc_drop: float = 0.3
) -> Panel:
    """Last epoch's forward evaluations per step (ratio to the unregularized run) against its accuracy drop.

    The shaded box is the target: at most ``nfe_ratio`` of the evaluations for at most ``acc_drop`` points of
    test accuracy. The text names the runs inside it. ``names``: the runs to draw (default: all but the baseline).
    """
    s = summary(runs)
    names = [n for n in s if n != BASELINE] if names is None else list(names)
    if not names:
        raise ValueError("tradeoff_panel needs at least one run to draw; pass names=None for all of them")
    fig, ax = figure(1, width=5.2, height=3.6)
    ax.add_patch(_box(nfe_ratio, acc_drop))
    for n in names:
        ax.plot(s[n]["nfe_ratio"], s[n]["acc_drop"], "o")
        ax.annotate(
            n.replace("LayerNorm, ", "").replace("LayerNorm + ", ""),
            (s[n]["nfe_ratio"], s[n]["acc_drop"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(1, color="k", lw=0.6)
    xs, ys = [s[n]["nfe_ratio"] for n in names], [s[n]["acc_drop"] for n in names]
    pad = 0.1 * (max(*ys, acc_drop) - min(*ys, 0.0)) + 0.05  # the box is unbounded below: frame the points
    ax.set(
        xlabel="forward evaluations per step / unregularized",
        ylabel="test accuracy drop (points)",
        title="last epoch: cost against accuracy",
        xlim=(0, max(*xs, 1.0) + 0.15),
        ylim=(min(*ys, 0.0) - pad, max(*ys, acc_drop) + pad),
    )
    inside = [n for n in names if s[n]["nfe_ratio"] <= nfe_ratio and s[n]["acc_drop"] <= acc_drop]
    text = (
        f"Inside the box (≤ {nfe_ratio:g}× the evaluations, ≤ {acc_drop:g} points lost): "
        + (", ".join(html.escape(n) for n in inside) if inside else "<b>none</b>")
        + "."
    )
    return Panel(fig, text)


def _box(width: float, height: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((0, -100), width, 100 + height, color="tab:green", alpha=0.12, label="target")


def gradient_panel(runs: dict[str, Any], method: str) -> Panel:
    """The gradient methods side by side: median training time per epoch, the gradient's cosine similarity with the
    implicit one on the probe batch, and test accuracy over the epochs; ``method`` (a run name of
    :data:`GRADIENT_RUNS`) drawn bold."""
    by = runs_by_name(runs)
    if method not in GRADIENT_RUNS or method not in by:
        raise KeyError(f"no gradient run named {method!r}; choose from {[n for n in GRADIENT_RUNS if n in by]}")
    fig, (ax1, ax2, ax3) = figure(3, width=3.6, height=3.0)
    names = [n for n in GRADIENT_RUNS if n in by]
    short = [n.replace("LayerNorm, ", "").replace("γ = 0", "implicit") for n in names]
    # the median, as notebook 06 prints it: one slow epoch on a shared machine does not move it
    secs = [float(np.median([r["seconds"] for r in by[n]["epochs"] if r["epoch"] > 0])) for n in names]
    ax1.bar(short, secs, color=["tab:red" if n == method else "0.7" for n in names])
    ax1.set(ylabel="median seconds per epoch (training steps)", title="cost")
    ax1.tick_params(axis="x", labelsize=7)
    for n, label in zip(names, short):
        style = {"lw": 2.2, "color": "tab:red"} if n == method else {"lw": 1, "color": "0.6"}
        ax2.plot(*series(by[n], "grad_cos"), "o-", label=label, **style)
        ax3.plot(*series(by[n], "test_acc", trained_only=True), "o-", label=label, **style)
    ax2.set(xlabel="epoch", title="cosine with the implicit gradient")
    ax3.set(xlabel="epoch", title="test accuracy (%)")
    ax3.legend(fontsize=7)
    last = by[method]["epochs"][-1]
    text = (
        f"<b>{html.escape(method)}</b>: median {secs[names.index(method)]:.1f} s per epoch, gradient cosine "
        f"{last['grad_cos']:.4f} with the implicit one after the last epoch, test accuracy "
        f"{last['test_acc']:.2f}%."
    )
    return Panel(fig, text)


def phantom_gradients(
    model: MNISTDEQ, images: torch.Tensor, labels: torch.Tensor, steps: Sequence[int], damping: float
) -> tuple[list[float], list[float], torch.Tensor]:
    """Cosine similarity with the implicit gradient, and backward time, of ``Phantom(k, damping)`` for each ``k``.

    The forward solve is the model's own (in training mode); the reference is the implicit gradient solved to
    1e-6. Returns ``(cosines, seconds, implicit_gradient)``; the model's gradient method is restored.
    """
    deq, own = model.deq, model.deq.backward
    model.train()
    cosines, seconds = [], []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            deq.backward = Implicit("gmres", abstol=0.0, reltol=1e-6, max_nfe=1000)
            exact = parameter_gradient(model, images, labels)
            for k in steps:
                deq.backward = Phantom(steps=k, damping=damping)
                start = time.perf_counter()
                grad = parameter_gradient(model, images, labels)
                seconds.append(time.perf_counter() - start)
                cosines.append(cosine(grad, exact))
    finally:
        deq.backward = own
    return cosines, seconds, exact


def implicit_products(model: MNISTDEQ, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Vector–Jacobian products the model's own implicit backward (its training setting) takes on this batch."""
    deq, own = model.deq, model.deq.backward
    model.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            deq.backward = own if isinstance(own, Implicit) else Implicit()
            parameter_gradient(model, images, labels)
            stats = None if deq.last_stats is None else deq.last_stats.backward
            assert stats is not None, "the implicit backward ran and reported its statistics"
            return int(stats.nfe)
    finally:
        deq.backward = own


def phantom_panel(
    model: MNISTDEQ,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 5,
    damping: float = 0.5,
    max_steps: int = 20,
) -> Panel:
    """How close ``Phantom(steps, damping)`` comes to the implicit gradient on this model and batch, and at what cost.

    Left: cosine similarity against the number of unrolled steps ``k`` (1 … ``max_steps``) for this damping; the
    chosen ``k`` marked (``k = 1, damping = 1`` is the one-step gradient). Right: the backward's vector–Jacobian
    products through ``f``: ``k`` for phantom, against what the implicit backward's GMRES solve takes (counted, not
    timed: the count is the cost on any machine).

    Raises
    ------
    ValueError
        If ``steps`` is not within 1 … ``max_steps``.
    """
    if not 1 <= steps <= max_steps:
        raise ValueError(f"steps must be within 1 … max_steps = {max_steps}, got {steps}")
    ks = list(range(1, max_steps + 1))
    cosines, _, _ = phantom_gradients(model, images, labels, ks, damping)
    products = implicit_products(model, images, labels)
    fig, (ax1, ax2) = figure(2, width=4.0, height=3.0)
    ax1.plot(ks, cosines, "o-", color="tab:blue", ms=3)
    ax1.plot([steps], [cosines[steps - 1]], "o", color="tab:red", ms=9)
    ax1.set(
        xlabel="phantom steps k",
        ylabel="cosine with the implicit gradient",
        title=f"damping τ = {damping:g}",
        ylim=(min(0.0, min(cosines)), 1.02),
    )
    ax2.plot(ks, ks, "o-", color="tab:blue", ms=3, label="phantom: k")
    ax2.plot([steps], [steps], "o", color="tab:red", ms=9)
    ax2.axhline(products, color="k", lw=1.2, ls="--", label=f"implicit (GMRES): {products}")
    ax2.set(xlabel="phantom steps k", ylabel="vector–Jacobian products", title="backward cost", ylim=(0, None))
    ax2.legend(fontsize=7)
    text = (
        f"Phantom(steps={steps}, damping={damping:g}): cosine <b>{cosines[steps - 1]:.4f}</b> with the implicit "
        f"gradient, for {steps} evaluation(s) of f and {steps} vector–Jacobian product(s) in the backward; the "
        f"implicit backward took {products} products."
    )
    return Panel(fig, text)


def check_picard_steps(picard_steps: Callable[[float, float], int]) -> str | None:
    """The exercise's check: ``picard_steps(rho, shrink)`` must be the number of plain iterations that shrink the
    residual of a map with contraction factor ``rho`` by ``shrink``, as deqkit's Picard solver counts them."""
    if not callable(picard_steps):
        return (
            f"picard_steps is {picard_steps!r}, not a function: define it as def picard_steps(rho, shrink): ... "
            "returning the number of steps, and run its cell first."
        )
    for rho in (0.5, 0.8, 0.9, 0.97):
        for shrink in (1e-2, 1e-4):

            def f(z: torch.Tensor, rho: float = rho) -> torch.Tensor:
                return rho * z + 1.0  # from z = 0 the residual after k steps is rho**k

            _, stats = solve(
                f,
                torch.zeros(1, 1, dtype=torch.float64),
                solver="picard",
                abstol=shrink,
                reltol=0.0,
                max_steps=10_000,
                max_nfe=None,
            )
            answer = picard_steps(rho, shrink)
            if answer != stats.steps:
                return (
                    f"for ρ = {rho}, shrink = {shrink:g} Picard takes {stats.steps} steps, you said {answer!r}. "
                    "After k steps the residual is ρ^k times the first one: solve ρ^k ≤ shrink for the smallest "
                    "integer k."
                )
    return None
