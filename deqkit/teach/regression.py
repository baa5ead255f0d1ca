"""Notebook 03: the blog's y = 2x DEQ, trained with each backward mode and forward solver."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np
import torch

from ..models.regression import X_TRAIN, Y_TRAIN, fit_regression, seed_regression_model
from .widgets import Panel, StaticFallback, figure

BACKWARD_MODES = ("implicit", "unrolled", "one_step")
# label -> (method, options); "pure ODE" is the blog's DynamicSS(Tsit5()) without deqkit's Anderson polish
SOLVERS: dict[str, tuple[str, dict]] = {
    "dynamic_ss": ("dynamic_ss", {}),
    "dynamic_ss, pure ODE": ("dynamic_ss", {"polish": None}),
    "anderson": ("anderson", {}),
    "broyden": ("broyden", {}),
    "picard": ("picard", {}),
}


@dataclass
class RunResult:
    """One training run: settings, cost and outcome.

    Attributes
    ----------
    backward, solver : str
        The backward mode and the :data:`SOLVERS` label.
    lr : float
    epochs : int
    seconds : float
        Wall time of the training loop.
    forward_nfe, backward_nfe : float
        Evaluations per training step, averaged over all epochs.
    prediction : float
        The trained DEQ's output at x = −5 (the target is −10).
    final_loss : float
        Mean loss of the last epoch.
    losses : tuple of float
        Mean loss per epoch.
    a, b : float
        The trained ``net(v) = a v + b`` (the target is ``a = 2/3, b = 0``).
    model : torch.nn.Module
        The trained DEQ.
    """

    backward: str
    solver: str
    lr: float
    epochs: int
    seconds: float
    forward_nfe: float
    backward_nfe: float
    prediction: float  # at x = −5
    final_loss: float
    losses: tuple[float, ...]
    a: float
    b: float
    model: torch.nn.Module = field(repr=False, compare=False, default=None)


@functools.lru_cache(maxsize=64)
def train(lr: float = 0.05, epochs: int = 100, backward: str = "implicit", solver: str = "dynamic_ss",
          seed: int = 0) -> RunResult:
    """Train the blog's model with these settings (cached: the same settings are trained once).

    Parameters
    ----------
    lr : float
        Adam's learning rate.
    epochs : int
        Passes over the ten samples.
    backward : {"implicit", "unrolled", "one_step"}
    solver : str
        A label of :data:`SOLVERS`.
    seed : int
        Seed of the weights and of the shuffling.

    Returns
    -------
    RunResult
        Shared by every call with the same arguments: do not modify it or its model.

    Raises
    ------
    KeyError
        If ``solver`` is not a label of :data:`SOLVERS`.
    ValueError
        If ``backward`` is not a backward mode.
    """
    method, options = SOLVERS[solver]
    model = seed_regression_model(seed, backward=backward, solver=method, **options)
    run = fit_regression(model, epochs=epochs, lr=lr, seed=seed)
    a, b = model.f.affine()
    return RunResult(backward, solver, lr, epochs, run.seconds, float(np.mean(run.forward_nfe)),
                     float(np.mean(run.backward_nfe)), run.prediction, run.losses[-1], tuple(run.losses), a, b, model)


def training_panel(lr: float = 0.05, epochs: int = 100, backward: str = "implicit",
                   solver: str = "dynamic_ss") -> Panel:
    """Loss per epoch and the learned function against y = 2x, with the closed-form fixed point.

    Parameters
    ----------
    lr, epochs, backward, solver
        The training settings, as for :func:`train` (seed 0; cached).

    Returns
    -------
    Panel
        The text gives the learned ``a`` and ``b``, the prediction at −5, the training time and the
        evaluations per step.
    """
    r = train(lr, epochs, backward, solver)
    fig, (ax, ax2) = figure(2)
    ax.semilogy(np.arange(1, len(r.losses) + 1), r.losses)
    ax.set(xlabel="epoch", ylabel="mean loss Σ(y − ŷ)²", title=f"{backward} gradient, {solver} forward")
    xs = np.linspace(-10, 12, 100)
    ax2.plot(xs, 2 * xs, "k--", lw=0.8, label="y = 2x")
    ax2.plot(xs, (r.a * xs + r.b) / (1 - r.a), label="z* = (a x + b)/(1 − a)")
    ax2.plot(X_TRAIN.numpy(), Y_TRAIN.numpy(), "k.", label="training data")
    ax2.plot([-5], [r.prediction], "o", color="tab:red", label=f"DEQ(−5) = {r.prediction:.3f}")
    ax2.set(xlabel="x", title="what the DEQ learned")
    ax2.legend(fontsize=7)
    text = (f"a = {r.a:.4f}, b = {r.b:.4f} (the target is a = 2/3, b = 0); prediction at −5: {r.prediction:.4f}; "
            f"{r.seconds:.2f} s, {r.forward_nfe:.1f} forward evaluations and {r.backward_nfe:.1f} backward "
            "products per step.")
    return Panel(fig, text)


def prediction_panel(x: float = -5.0, lr: float = 0.05, epochs: int = 100, backward: str = "implicit",
                     solver: str = "dynamic_ss") -> Panel:
    """The trained DEQ's prediction at one ``x`` (solved, not the closed form) against 2x.

    Parameters
    ----------
    x : float
        Where to predict; the training data cover 1 to 10.
    lr, epochs, backward, solver
        The training settings, as for :func:`train` (seed 0; cached).

    Returns
    -------
    Panel
        The text gives the prediction's error ``DEQ(x) − 2x``.
    """
    r = train(lr, epochs, backward, solver)
    with torch.no_grad():
        pred = r.model(torch.tensor([[x]])).item()
    fig, ax = figure()
    xs = np.linspace(-10, 12, 100)
    ax.plot(xs, 2 * xs, "k--", lw=0.8, label="2x")
    ax.plot(xs, (r.a * xs + r.b) / (1 - r.a), label="DEQ")
    ax.plot([x], [pred], "o", color="tab:red")
    ax.axvspan(1, 10, color="tab:green", alpha=0.1, label="training range")
    ax.set(xlabel="x", ylim=(-25, 25), title=f"x = {x:+.1f}: DEQ {pred:+.3f}, 2x = {2 * x:+.1f}")
    ax.legend(fontsize=7, loc="upper left")
    return Panel(fig, f"error {pred - 2 * x:+.4f}")


def results_table(results: list[RunResult]) -> str:
    """Return an HTML table of runs: settings, time, NFE per step, prediction at −5 and final loss, one row each.

    Parameters
    ----------
    results : list of RunResult

    Returns
    -------
    str
    """
    head = ("<tr><th>backward</th><th>forward solver</th><th>lr</th><th>epochs</th><th>seconds</th>"
            "<th>forward NFE/step</th><th>backward NFE/step</th><th>prediction at −5</th><th>final loss</th></tr>")
    rows = "".join(
        f"<tr><td>{html.escape(r.backward)}</td><td>{html.escape(r.solver)}</td><td>{r.lr:g}</td>"
        f"<td>{r.epochs}</td><td>{r.seconds:.2f}</td><td>{r.forward_nfe:.1f}</td><td>{r.backward_nfe:.1f}</td>"
        f"<td>{r.prediction:.4f}</td><td>{r.final_loss:.2e}</td></tr>" for r in results)
    return f"<table>{head}{rows}</table>"


def compare_backward_modes(lr: float = 0.05, epochs: int = 100, solver: str = "dynamic_ss",
                           modes: tuple[str, ...] = BACKWARD_MODES, repeats: int = 1) -> list[RunResult]:
    """Train once per backward mode with otherwise identical settings (fresh runs, not cached).

    With ``repeats > 1`` the modes are trained in turns, ``repeats`` times each, and each keeps its fastest
    time: other work on the machine then slows every mode alike instead of the unlucky one.

    Parameters
    ----------
    lr, epochs, solver
        As for :func:`train` (seed 0).
    modes : tuple of str
        Backward modes to train.
    repeats : int
        Runs per mode; each mode's fastest run is kept.

    Returns
    -------
    list of RunResult
        One per mode, in the order of ``modes``.
    """
    best: dict[str, RunResult] = {}
    for _ in range(repeats):
        for mode in modes:
            r = train.__wrapped__(lr, epochs, mode, solver)
            if mode not in best or r.seconds < best[mode].seconds:
                best[mode] = r
    return [best[m] for m in modes]


class ComparisonTable(StaticFallback, widgets.VBox):
    """A button that trains every backward mode with the given controls' settings and adds rows to a table.

    Parameters
    ----------
    lr, epochs, solver : ipywidgets.ValueWidget
        The controls whose current values each click trains with (see :func:`compare_backward_modes`).
    """

    def __init__(self, lr: widgets.ValueWidget, epochs: widgets.ValueWidget, solver: widgets.ValueWidget):
        self.lr, self.epochs, self.solver = lr, epochs, solver
        self.button = widgets.Button(description="Run all backward modes", icon="play")
        self.table = widgets.HTML()
        self.results: list[RunResult] = []
        self.button.on_click(self.run)
        super().__init__([self.button, self.table])

    def run(self, _: object = None) -> None:
        """Train every backward mode with the controls' values and append the rows (the button's click handler).

        The button is disabled while training runs; any error propagates after it is re-enabled.
        """
        self.button.disabled = True
        self.button.description = "running..."
        try:
            self.results += compare_backward_modes(self.lr.value, self.epochs.value, self.solver.value)
            self.table.value = results_table(self.results)
        finally:
            self.button.disabled = False
            self.button.description = "Run all backward modes"

    def static_bundle(self) -> dict[str, str]:
        """The table so far and what the button does, as ``text/html`` (for pages that cannot run widgets)."""
        note = (f"<p><em>Static view: in a running notebook the button \u201c{html.escape(self.button.description)}"
                "\u201d trains every backward mode and adds a row per mode to the table.</em></p>")
        return {"text/html": f'<div class="deqkit-static">{self.table.value}{note}</div>'}
