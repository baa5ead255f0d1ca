"""Notebook 03: the blog's y = 2x DEQ, trained with each backward mode and forward solver."""

from __future__ import annotations

import functools
import gzip
import html
import json
import pathlib
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypedDict, cast

import ipywidgets as widgets
import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

from ..adjoint import GRADIENTS
from ..errors import ConvergenceWarning, DivergenceError
from ..layer import DEQ
from ..models.regression import X_TRAIN, Y_TRAIN, SeedBlock, fit_regression, seed_regression_model
from ..settings import check_int
from ..solvers import SOLVERS as REGISTRY
from ..solvers import DynamicSS, Solver
from .limits import choice, within
from .menus import solver_menu
from .widgets import Panel, StaticFallback, figure

#: The gradient methods compared (notebook 06 teaches the phantom gradient).
BACKWARD_MODES = tuple(name for name in GRADIENTS if name != "phantom")
#: Forward solvers: every registered one with its defaults, and the blog's pure ODE ``DynamicSS(Tsit5())``
#: without deqkit's Anderson polish (``dynamic_ss(tsit5)``).
SOLVERS: dict[str, Solver] = solver_menu(*REGISTRY, DynamicSS(polish=None))


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
        Wall time of the training loop (the median of ``times``).
    forward_nfe, backward_nfe : float
        Evaluations per training step, averaged over all epochs (NaN when the run diverged).
    prediction : float
        The trained DEQ's output at x = −5 (the target is −10); NaN when the run diverged.
    final_loss : float
        Mean loss of the last epoch (NaN when the run diverged).
    losses : tuple of float
        Mean loss per epoch (empty when the run diverged).
    a, b : float
        The trained ``net(v) = a v + b`` (the target is ``a = 2/3, b = 0``); after the last step taken.
    a_history : tuple of float
        ``a`` before every training step (ten per epoch), then after the last one.
    error : str
        The :class:`~deqkit.DivergenceError`'s message when a solve blew up during training, else empty.
    times : tuple of float
        Wall time of every repeat of this run (see :func:`compare_backward_modes`); one entry for a single run.
    warnings : tuple
        ``(category, message)`` of every warning the training raised (e.g. a solve that missed its tolerance), kept
        with the run and shown whenever it is drawn, also from the cache.
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
    a_history: tuple[float, ...] = ()
    error: str = ""
    times: tuple[float, ...] = ()
    warnings: tuple[tuple[type, str], ...] = ()
    model: torch.nn.Module | None = field(repr=False, compare=False, default=None)  # None when loaded

    def warn(self) -> None:
        """Warn again with the warnings this run raised while it trained."""
        for category, message in dict.fromkeys(self.warnings):
            warnings.warn(message, category, stacklevel=3)

    def first_epoch_below(self, loss: float) -> int | None:
        """The first epoch (counted from 1) whose mean loss is below ``loss``; None if none is."""
        return next((k + 1 for k, v in enumerate(self.losses) if v < loss), None)


@dataclass
class _Trace:
    """One training run recorded epoch by epoch, so that the run of any number of epochs up to its own is read off
    it (training is deterministic: the first ``e`` epochs of a longer run are the run of ``e`` epochs)."""

    backward: str
    solver: str
    lr: float
    seed: int
    losses: list[float]
    forward_nfe: list[float]  # per epoch: mean per step
    backward_nfe: list[float]
    seconds: list[float]  # since the start, after each epoch
    weights: list[list[float]]  # the model's parameters after each epoch
    a_history: list[float]  # a before every step (then after the last one, when no step blew up)
    warnings: list[tuple[str, str, int]]  # (category name, message, the epoch it was raised in, from 1)
    error: str = ""  # the DivergenceError's message, when a step of epoch len(losses) + 1 blew up
    error_seconds: float = float("nan")

    def covers(self, epochs: int) -> bool:
        """Whether the run of ``epochs`` epochs can be read off this one."""
        return epochs <= len(self.losses) or bool(self.error)


#: The most epochs :func:`training_run` trains, and :func:`compare_backward_modes` over all its repeats: they train
#: in the notebook's process (and training_run keeps every epoch's weights for the plots); 100 times notebook 03's grid
MAX_EPOCHS = 10_000


def _check_epochs(epochs: Any, runs: int = 1) -> None:
    """Refuse ``epochs`` unless an int from 1 to :data:`MAX_EPOCHS` (over ``runs`` runs), with a clear error (before,
    ``epochs=10**9`` started a run of months)."""
    check_int("epochs", epochs, 1)
    if epochs * runs > MAX_EPOCHS:
        over = f" over {runs} runs (modes × repeats)" if runs > 1 else ""
        raise ValueError(
            f"epochs={epochs}{over} is more than this teaching function trains ({MAX_EPOCHS} epochs, in the "
            "notebook's process); for a longer run call deqkit.models.regression.fit_regression on a "
            "seed_regression_model yourself"
        )


_TRACES: dict[tuple, _Trace] = {}  # (lr, backward, solver, seed) -> the longest run trained or read so far
_RUNS: dict[tuple, RunResult] = {}  # training_run()'s results, one object per setting


def training_run(
    lr: float = 0.05,
    epochs: int = 100,
    backward: str = "implicit",
    solver: str = "dynamic_ss",
    seed: int = 0,
    *,
    progress: bool = False,
) -> RunResult:
    """The blog's model trained with these settings: read from the saved grid, or trained here once (cached).

    Settings in notebook 03's saved grid (:data:`GRID`: every learning rate of its slider, every backward mode and
    solver, seed 0, up to the grid's number of epochs) are read from it instead of trained: since training is
    deterministic, the first ``epochs`` epochs of a saved run are the run of ``epochs`` epochs. Other settings
    train here, once; a longer run then answers every shorter one.

    A run whose solve blows up (a learning rate so large that an Adam step throws ``a`` past 1, where the ODE
    has no stable equilibrium) is returned, not raised: its ``error`` holds the message and ``a_history``
    shows how ``a`` got there.

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
    progress : bool
        Show a ``tqdm`` bar while training (not part of the cache key).

    Returns
    -------
    RunResult
        Shared by every call with the same arguments: do not modify it or its model. ``seconds`` is the time
        those epochs took to train (for a saved run, on the machine that wrote the grid).

    Raises
    ------
    ValueError
        If ``solver`` is not a label of :data:`SOLVERS`, ``backward`` is not a backward mode, ``lr`` is outside
        ``(0, 1]`` or ``epochs`` is outside 1 to :data:`MAX_EPOCHS`.
    TypeError
        If ``epochs`` is not an integer.
    """
    choice("solver", solver, SOLVERS)
    choice("backward mode", backward, BACKWARD_MODES)
    check_int("seed", seed, 0)  # before, seed=0.7 or "0" silently read the grid's seed-0 run
    within(
        "lr",
        lr,
        1e-9,
        1.0,
        "Adam's learning rate is a positive step size; above 1 this model's a is thrown far past 1 at the first step",
    )
    _check_epochs(epochs)
    key = (float(lr), int(epochs), backward, solver, int(seed))
    if key not in _RUNS:
        setting = (float(lr), backward, solver, int(seed))
        trace = _TRACES.get(setting) or _in_grid(*setting)
        if trace is None or not trace.covers(epochs):
            trace = _TRACES[setting] = _trace(*setting, epochs=int(epochs), progress=progress)
        _RUNS[key] = _result(trace, int(epochs))
    return _RUNS[key]


def _block(model: DEQ) -> SeedBlock:
    """The block ``f`` of a :func:`seed_regression_model` (a ``DEQ``'s ``f`` is typed as any block)."""
    return cast(SeedBlock, model.f)


def _trace(lr: float, backward: str, solver: str, seed: int, *, epochs: int, progress: bool = False) -> _Trace:
    """Train one fresh model for ``epochs`` epochs, keeping its weights, time and warnings after every epoch."""
    model = seed_regression_model(seed, backward=backward, solver=SOLVERS[solver])
    trace = _Trace(backward, solver, lr, seed, [], [], [], [], [], [], [])
    # a training step's forward runs with autograd on; the final prediction at −5 does not
    hook = model.register_forward_pre_hook(
        lambda m, _: trace.a_history.append(m.f.affine()[0]) if torch.is_grad_enabled() else None
    )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def epoch_done(run: Any) -> None:
            epoch = len(run.losses)
            trace.warnings.extend((w.category.__name__, str(w.message), epoch) for w in caught)
            caught.clear()
            trace.seconds.append(run.seconds)
            trace.weights.append(parameters_to_vector(model.parameters()).tolist())
            trace.losses, trace.forward_nfe, trace.backward_nfe = run.losses, run.forward_nfe, run.backward_nfe

        try:
            fit_regression(model, epochs=epochs, lr=lr, seed=seed, progress=progress, on_epoch=epoch_done)
            trace.a_history.append(_block(model).affine()[0])  # after the last step
        except DivergenceError as err:
            trace.error, trace.error_seconds = str(err), time.perf_counter() - start
            trace.warnings.extend((w.category.__name__, str(w.message), len(trace.seconds) + 1) for w in caught)
        finally:
            hook.remove()
    return trace


def _result(trace: _Trace, epochs: int) -> RunResult:
    """The run of ``epochs`` epochs read off ``trace`` (its model rebuilt from the weights after that epoch)."""
    model = seed_regression_model(trace.seed, backward=trace.backward, solver=SOLVERS[trace.solver])
    known: dict[str, type[Warning]] = {"ConvergenceWarning": ConvergenceWarning}
    if trace.error and epochs > len(trace.losses):  # this run blew up in a step of its own
        done = len(trace.losses)
        if done:
            vector_to_parameters(torch.tensor(trace.weights[done - 1]), model.parameters())
        a, b = _block(model).affine()
        recorded = tuple((known.get(c, UserWarning), m) for c, m, _ in trace.warnings)
        nan = float("nan")
        return RunResult(
            trace.backward,
            trace.solver,
            trace.lr,
            epochs,
            trace.error_seconds,
            nan,
            nan,
            nan,
            nan,
            (),
            a,
            b,
            tuple(trace.a_history),
            trace.error,
            (trace.error_seconds,),
            recorded,
            model,
        )
    vector_to_parameters(torch.tensor(trace.weights[epochs - 1]), model.parameters())
    a, b = _block(model).affine()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            prediction = model(torch.tensor([[-5.0]])).item()
    recorded = tuple((known.get(c, UserWarning), m) for c, m, e in trace.warnings if e <= epochs)
    recorded += tuple((w.category, str(w.message)) for w in caught)
    seconds = trace.seconds[epochs - 1]
    steps = epochs * len(X_TRAIN)
    return RunResult(
        trace.backward,
        trace.solver,
        trace.lr,
        epochs,
        seconds,
        float(np.mean(trace.forward_nfe[:epochs])),
        float(np.mean(trace.backward_nfe[:epochs])),
        prediction,
        trace.losses[epochs - 1],
        tuple(trace.losses[:epochs]),
        a,
        b,
        (*trace.a_history[:steps], a),
        "",
        (seconds,),
        recorded,
        model,
    )


def _fit(lr: float, epochs: int, backward: str, solver: str, seed: int, *, progress: bool = False) -> RunResult:
    """Train one fresh model (no cache); record ``a`` before every step, the warnings, and catch a blow-up."""
    model = seed_regression_model(seed, backward=backward, solver=SOLVERS[solver])
    a_history: list[float] = []
    # a training step's forward runs with autograd on; the final prediction at −5 does not
    hook = model.register_forward_pre_hook(
        lambda m, _: a_history.append(m.f.affine()[0]) if torch.is_grad_enabled() else None
    )
    start = time.perf_counter()
    error = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            run = fit_regression(model, epochs=epochs, lr=lr, seed=seed, progress=progress)
        except DivergenceError as err:
            error = str(err)
        finally:
            hook.remove()
    recorded = tuple((w.category, str(w.message)) for w in caught)
    a, b = _block(model).affine()
    if error:
        nan, seconds = float("nan"), time.perf_counter() - start
        return RunResult(
            backward,
            solver,
            lr,
            epochs,
            seconds,
            nan,
            nan,
            nan,
            nan,
            (),
            a,
            b,
            tuple(a_history),
            error,
            (seconds,),
            recorded,
            model,
        )
    return RunResult(
        backward,
        solver,
        lr,
        epochs,
        run.seconds,
        float(np.mean(run.forward_nfe)),
        float(np.mean(run.backward_nfe)),
        run.prediction,
        run.losses[-1],
        tuple(run.losses),
        a,
        b,
        (*a_history, a),
        "",
        (run.seconds,),
        recorded,
        model,
    )


def _plot_a(ax: Any, r: RunResult) -> None:
    """``a`` per training step (in epochs), with the line a = 1 past which the ODE has no stable equilibrium."""
    steps = np.arange(len(r.a_history)) / len(X_TRAIN)
    ax.plot(steps, r.a_history, color="tab:purple", lw=1, marker="." if len(steps) < 50 else None)
    ax.axhline(1.0, color="tab:red", lw=1, ls="--", label="a = 1: no stable equilibrium above")
    ax.axhline(2 / 3, color="k", lw=0.8, ls=":", label="a = 2/3: the solution")
    if r.error:
        ax.plot(steps[-1], r.a_history[-1], "x", color="tab:red", ms=9, mew=2, label="the solve blew up")
    ax.set(xlabel="epoch (ten steps each)", ylabel="a = W₂W₁", title="a, before every step")
    ax.legend(fontsize=7)


def training_panel(
    lr: float = 0.05,
    epochs: int = 100,
    backward: str = "implicit",
    solver: str = "dynamic_ss",
    *,
    progress: bool = False,
) -> Panel:
    """Loss per epoch, ``a`` per step against the line a = 1, and the learned function against y = 2x.

    Parameters
    ----------
    lr, epochs, backward, solver
        The training settings, as for :func:`training_run` (seed 0; cached).
    progress : bool
        Show a ``tqdm`` bar while a new setting trains.

    Returns
    -------
    Panel
        The text gives the learned ``a`` and ``b``, the prediction at −5, the training time and the
        evaluations per step — or, when the training blew up, where ``a`` was and the solver's message.
    """
    r = training_run(lr, epochs, backward, solver, progress=progress)
    r.warn()
    fig, (ax, ax_a, ax2) = figure(3, width=3.6, layout="fixed")  # (a widget panel: redrawn at every move)
    if r.losses:
        ax.semilogy(np.arange(1, len(r.losses) + 1), r.losses)
    else:
        ax.text(
            0.5,
            0.5,
            "no completed epoch:\nthe training blew up",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="tab:red",
        )
    ax.set(xlabel="epoch", ylabel="mean loss Σ(y − ŷ)²", title=f"{backward} gradient, {solver} forward")
    _plot_a(ax_a, r)
    xs = np.linspace(-10, 12, 100)
    ax2.plot(xs, 2 * xs, "k--", lw=0.8, label="y = 2x")
    ax2.plot(X_TRAIN.numpy(), Y_TRAIN.numpy(), "k.", label="training data")
    if not r.error:
        ax2.plot(xs, (r.a * xs + r.b) / (1 - r.a), label="z* = (a x + b)/(1 − a)")
        ax2.plot([-5], [r.prediction], "o", color="tab:red", label=f"DEQ(−5) = {r.prediction:.3f}")
    ax2.set(xlabel="x", ylim=(-25, 30), title="what the DEQ learned")
    ax2.legend(fontsize=7)
    if r.error:
        step = len(r.a_history)
        text = (
            f"<b>The training blew up</b> at step {step} (epoch {(step - 1) // len(X_TRAIN) + 1}): the last "
            f"Adam step took a to {r.a_history[-1]:.3f} (it was {r.a_history[0]:.3f} at the start). For a > 1 "
            "dz/dt = (a − 1)z + ax + b has no stable equilibrium, and the solver says so: "
            f"<i>{html.escape(r.error)}</i>"
        )
    else:
        text = (
            f"a = {r.a:.4f}, b = {r.b:.4f} (the target is a = 2/3, b = 0); prediction at −5: "
            f"{r.prediction:.4f}; {r.seconds:.2f} s; per step, {r.forward_nfe:.1f} forward evaluations and "
            f"backward: {backward_cost(r)}."
        )
    return Panel(fig, text)


def prediction_panel(
    x: float = -5.0, lr: float = 0.05, epochs: int = 100, backward: str = "implicit", solver: str = "dynamic_ss"
) -> Panel:
    """The trained DEQ's prediction at one ``x`` (solved, not the closed form) against 2x.

    Parameters
    ----------
    x : float
        Where to predict; the training data cover 1 to 10.
    lr, epochs, backward, solver
        The training settings, as for :func:`training_run` (seed 0; cached).

    Returns
    -------
    Panel
        The text gives the prediction's error ``DEQ(x) − 2x``.

    Raises
    ------
    DivergenceError
        When the training with these settings blew up: there is no trained model to ask.
    """
    r = training_run(lr, epochs, backward, solver)
    if r.error:
        raise DivergenceError(f"no prediction: training with learning rate {lr:g} blew up ({r.error})")
    assert r.model is not None, "train() keeps its model (only load_comparison's runs have none)"
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


def _seconds(r: RunResult) -> str:
    if len(r.times) < 2:
        return f"{r.seconds:.2f}"
    return f"{r.seconds:.2f} ({min(r.times):.2f}–{max(r.times):.2f}, {len(r.times)} runs)"


def backward_cost(r: RunResult) -> str:
    """The backward cost per step in words: a solve's products for implicit; no count for unrolled, whose backward
    goes back through every forward evaluation (deqkit counts only solves); none for one-step."""
    if r.backward == "unrolled":
        return f"backprop through all {r.forward_nfe:.1f} forward evaluations"
    if r.backward == "one_step":
        return "no solve (u = g)"
    return f"{r.backward_nfe:.1f} vector–Jacobian products"


def results_table(results: list[RunResult]) -> str:
    """Return an HTML table of runs: settings, time, NFE per step, first epoch below 1e-2, prediction, final loss.

    The time is the median over the run's repeats, with the fastest and slowest in brackets.

    Parameters
    ----------
    results : list of RunResult

    Returns
    -------
    str
    """
    head = (
        "<tr><th>backward</th><th>forward solver</th><th>lr</th><th>epochs</th><th>seconds: median (range)</th>"
        "<th>forward NFE/step</th><th>backward per step</th><th>first epoch with loss &lt; 1e-2</th>"
        "<th>prediction at −5</th><th>final loss</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(r.backward)}</td><td>{html.escape(r.solver)}</td><td>{r.lr:g}</td>"
        f"<td>{r.epochs}</td><td>{_seconds(r)}</td><td>{r.forward_nfe:.1f}</td><td>{backward_cost(r)}</td>"
        f"<td>{r.first_epoch_below(1e-2) or '—'}</td><td>{r.prediction:.4f}</td><td>{r.final_loss:.2e}</td></tr>"
        for r in results
    )
    return f"<table>{head}{rows}</table>"


def compare_backward_modes(
    lr: float = 0.05,
    epochs: int = 100,
    solver: str = "dynamic_ss",
    modes: tuple[str, ...] = BACKWARD_MODES,
    repeats: int = 3,
    progress: Callable[[Any], Any] | None = None,
) -> list[RunResult]:
    """Train every backward mode ``repeats`` times with otherwise identical settings (fresh runs, not cached).

    The modes are trained in turns, so that other work on the machine slows every mode alike. Training is
    deterministic (same seed, same data order): the repeats differ only in wall time, and each result keeps all
    its repeats' times in ``times`` and their median in ``seconds``.

    Parameters
    ----------
    lr, epochs, solver
        As for :func:`training_run` (seed 0).
    modes : tuple of str
        Backward modes to train.
    repeats : int
        Runs per mode (≥ 1).
    progress : callable, optional
        Wraps the iterable of runs, e.g. ``tqdm.auto.tqdm`` for a progress bar.

    Returns
    -------
    list of RunResult
        One per mode, in the order of ``modes``.

    Raises
    ------
    ValueError
        If ``repeats`` < 1, or a setting is invalid (as for :func:`training_run`; ``modes`` must be backward modes).
    TypeError
        If ``epochs`` or ``repeats`` is not an integer.
    RuntimeError
        If two repeats of a mode disagree on the outcome (training would not be deterministic).
    """
    choice("solver", solver, SOLVERS)
    for mode in modes:
        choice("backward mode", mode, BACKWARD_MODES)
    within("lr", lr, 1e-9, 1.0, "Adam's learning rate is a positive step size")
    check_int("repeats", repeats, 1)
    _check_epochs(epochs, repeats * len(modes))
    jobs = [mode for _ in range(repeats) for mode in modes]
    runs: dict[str, list[RunResult]] = {m: [] for m in modes}
    for mode in (progress or iter)(jobs):
        runs[mode].append(_fit(lr, epochs, mode, solver, 0))
    out = []
    for mode in modes:
        first = runs[mode][0]
        if any(r.losses != first.losses for r in runs[mode]):
            raise RuntimeError(f"repeats of the {mode} run trained differently: training is not deterministic")
        times = tuple(r.seconds for r in runs[mode])
        out.append(replace(first, seconds=statistics.median(times), times=times))
        first.warn()  # once per mode: the repeats train identically
    return out


class ComparisonTable(StaticFallback, widgets.VBox):
    """A button that trains every backward mode with the given controls' settings and adds rows to a table.

    Each click trains each mode ``repeats`` times (a progress bar shows while it runs).

    Parameters
    ----------
    lr, epochs, solver : ipywidgets.ValueWidget
        The controls whose current values each click trains with (see :func:`compare_backward_modes`).
    repeats : int
        Runs per mode and click.
    """

    def __init__(
        self, lr: widgets.ValueWidget, epochs: widgets.ValueWidget, solver: widgets.ValueWidget, repeats: int = 3
    ):
        self.lr, self.epochs, self.solver, self.repeats = lr, epochs, solver, repeats
        self.button = widgets.Button(description="Run all backward modes", icon="play")
        self.progress = widgets.Output()
        self.table = widgets.HTML()
        self.results: list[RunResult] = []
        self.button.on_click(self.run)
        super().__init__([self.button, self.progress, self.table])

    def run(self, _: object = None) -> None:
        """Train every backward mode with the controls' values and append the rows (the button's click handler).

        The button is disabled while training runs; any error propagates after it is re-enabled.
        """
        self.button.disabled = True
        self.button.description = "running..."
        try:
            self.progress.clear_output()
            with self.progress:
                bar = functools.partial(tqdm, desc="runs", leave=False)
                self.results += compare_backward_modes(
                    self.lr.value, self.epochs.value, self.solver.value, repeats=self.repeats, progress=bar
                )
            self.table.value = results_table(self.results)
        finally:
            self.button.disabled = False
            self.button.description = "Run all backward modes"

    def static_bundle(self) -> dict[str, str]:
        """The table so far and what the button does, as ``text/html`` (for pages that cannot run widgets)."""
        note = (
            f"<p><em>Static view: in a running notebook the button \u201c{html.escape(self.button.description)}"
            "\u201d trains every backward mode and adds a row per mode to the table.</em></p>"
        )
        return {"text/html": f'<div class="deqkit-static">{self.table.value}{note}</div>'}


#: The grid of notebook 03's training widget: every learning rate of its slider (``10 ** e`` for ``e`` from −3 to
#: −0.5 in steps of 0.25) and its starting value, the blog's 0.05; every backward mode and forward solver; seed 0,
#: :data:`GRID_EPOCHS` epochs. Written by ``python -m deqkit.teach.y2x --grid`` so that each move of a control
#: answers at once.
GRID = pathlib.Path(__file__).resolve().parent / "results" / "regression_grid.json.gz"  # package data
GRID_EXPONENTS = tuple(-3 + 0.25 * k for k in range(11))
GRID_LRS = (0.05, *(10**e for e in GRID_EXPONENTS))
GRID_EPOCHS = 100
_GRID: dict[tuple, _Trace] | None = None


def grid_traces(progress: bool = False) -> list[_Trace]:
    """Train every setting of the grid (about 12 minutes on one core)."""
    settings = [(lr, backward, solver) for lr in GRID_LRS for backward in BACKWARD_MODES for solver in SOLVERS]
    return [
        _trace(lr, backward, solver, 0, epochs=GRID_EPOCHS)
        for lr, backward, solver in tqdm(settings, desc="grid", disable=not progress)
    ]


def save_grid(traces: list[_Trace], path: str | pathlib.Path = GRID) -> None:
    """Write the runs of :func:`grid_traces` (gzip-compressed JSON, numbers to 9 significant digits: exact for the
    float32 weights and values of ``a``, to 1e-9 relative for the mean losses and costs)."""

    def short(v: Any) -> Any:
        if isinstance(v, float):
            return float(f"{v:.9g}")  # 9 significant digits: every float32 value exactly
        return [short(x) for x in v] if isinstance(v, (list, tuple)) else v

    # the series to 9 digits, the settings (the learning rate) exactly
    rows = [{f.name: short(v) if isinstance(v := getattr(t, f.name), list) else v for f in fields(t)} for t in traces]
    info = {"epochs": GRID_EPOCHS, "lrs": GRID_LRS, "seed": 0, "torch": torch.__version__}
    with gzip.open(path, "wt") as out:
        json.dump({"settings": info, "runs": rows}, out, separators=(",", ":"), allow_nan=True)


def _grid(path: str | pathlib.Path | None = None) -> dict[tuple, _Trace]:
    """The saved grid, by ``(lr, backward, solver, seed)`` (empty, with a warning once, when the file is missing)."""
    global _GRID
    if path is None and _GRID is not None:
        return _GRID
    path = pathlib.Path(GRID if path is None else path)
    grid: dict[tuple, _Trace] = {}
    if path.is_file():
        try:
            grid = _read_grid(path)
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:  # gzip, JSON or a row's fields
            raise ValueError(
                f"{path} is not a readable saved grid ({type(err).__name__}: {err}): it is corrupted or from "
                "another version. Write it again with `python -m deqkit.teach.y2x --grid` (about 15 minutes), "
                "or delete it to train each setting when chosen"
            ) from err
    else:
        warnings.warn(
            f"{path} is missing, so every setting of notebook 03's training widget trains when chosen "
            "(seconds each); write it with `python -m deqkit.teach.y2x --grid` (about 15 minutes)",
            UserWarning,
            stacklevel=3,
        )
    if path == GRID:
        _GRID = grid
    return grid


def _read_grid(path: pathlib.Path) -> dict[tuple, _Trace]:
    """The runs of the saved grid at ``path``, by ``(lr, backward, solver, seed)``."""
    grid: dict[tuple, _Trace] = {}
    with gzip.open(path, "rt") as src:
        for row in json.load(src)["runs"]:
            row["warnings"] = [tuple(w) for w in row["warnings"]]
            # a and the weights are float32 values: 9 digits identify each exactly
            row["a_history"] = np.float32(row["a_history"]).tolist()
            row["weights"] = np.float32(row["weights"]).tolist()
            trace = _Trace(**row)
            grid[(trace.lr, trace.backward, trace.solver, trace.seed)] = trace
    return grid


def _in_grid(lr: float, backward: str, solver: str, seed: int) -> _Trace | None:
    """The saved run of this setting; a learning rate matches the grid's to 1e-9 relative (a slider in the browser
    computes ``10 ** e`` itself, which may differ in the last digit)."""
    for (glr, gbackward, gsolver, gseed), trace in _grid().items():
        if (gbackward, gsolver, gseed) == (backward, solver, seed) and abs(lr - glr) <= 1e-9 * glr:
            return trace
    return None


#: The comparison of notebook 03 (every backward mode, the blog's pure ODE, 100 epochs, three repeats), saved by
#: ``python -m deqkit.teach.y2x`` so that the notebook need not spend minutes retraining it.
COMPARISON = pathlib.Path(__file__).resolve().parent / "results" / "regression_modes.json"  # package data


class _ComparisonSettings(TypedDict):
    lr: float
    epochs: int
    solver: str
    repeats: int


COMPARISON_SETTINGS: _ComparisonSettings = {"lr": 0.05, "epochs": 100, "solver": "dynamic_ss(tsit5)", "repeats": 3}


def save_comparison(results: list[RunResult], path: str | pathlib.Path = COMPARISON) -> None:
    """Write runs of :func:`compare_backward_modes` as JSON (without the models; warnings by category name)."""
    rows = []
    for r in results:
        row = {f.name: getattr(r, f.name) for f in fields(r) if f.name not in ("model", "warnings")}
        row["warnings"] = [(category.__name__, message) for category, message in r.warnings]
        rows.append(row)
    pathlib.Path(path).write_text(json.dumps({"settings": COMPARISON_SETTINGS, "runs": rows}, indent=1) + "\n")


def load_comparison(path: str | pathlib.Path = COMPARISON) -> list[RunResult]:
    """Read runs written by :func:`save_comparison` (``model`` is None: the trained models are not saved).

    Raises
    ------
    FileNotFoundError
        With the command that writes the file, when it is missing.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: write it with `python -m deqkit.teach.y2x` "
            "(about 10 minutes on two cores), or run the comparison in the notebook yourself"
        )
    known: dict[str, type[Warning]] = {"ConvergenceWarning": ConvergenceWarning}
    runs = []
    for row in json.loads(path.read_text())["runs"]:
        row = dict(row, losses=tuple(row["losses"]), a_history=tuple(row["a_history"]), times=tuple(row["times"]))
        row["warnings"] = tuple((known.get(name, UserWarning), message) for name, message in row["warnings"])
        runs.append(RunResult(**row))
    return runs


def check_weights(w2: Any, b2: Any) -> str | None:
    """The check of notebook 03's exercise: do ``W₂ = w2``, ``b₂ = b2`` (with ``W₁ = (1, 1)ᵀ``, ``b₁ = 0``) make the
    untrained DEQ predict exactly ``2x``?

    The DEQ itself is solved at x = −10, −5, 0, 5, 10; the closed form only explains what went wrong.

    Parameters
    ----------
    w2 : sequence of two floats
        The second layer's weights.
    b2 : float
        The second layer's bias.

    Returns
    -------
    str or None
        None when right; else what is wrong and what to look at.
    """
    try:
        w = torch.as_tensor(w2, dtype=torch.float32).reshape(1, 2)
        bias = torch.as_tensor(b2, dtype=torch.float32).reshape(1)
    except (TypeError, ValueError, RuntimeError):
        return "w2 must be two numbers (the weights from the two hidden units) and b2 one number."
    model = seed_regression_model()
    l1, l2 = cast(tuple[torch.nn.Linear, torch.nn.Linear], tuple(_block(model).net))  # SeedBlock's two layers
    with torch.no_grad():
        l1.weight.fill_(1.0)
        l1.bias.zero_()
        l2.weight.copy_(w)
        l2.bias.copy_(bias)
    a, b = _block(model).affine()
    if a >= 1:
        return (
            f"a = W₂W₁ = {a:.4g} ≥ 1: dz/dt = (a − 1)z + ax + b then has no stable equilibrium, and the "
            "solver cannot find z*. a must be 2/3."
        )
    xs = torch.linspace(-10, 10, 5).unsqueeze(1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            pred = model(xs)
        except (ConvergenceWarning, DivergenceError) as err:
            return f"the DEQ could not be solved with these weights ({err})."
    if torch.allclose(pred, 2 * xs, atol=1e-3):
        return None
    return (
        f"the DEQ predicts {[round(v, 3) for v in pred.flatten().tolist()]} at x = −10, −5, 0, 5, 10 instead of "
        f"2x. With your weights a = W₂W₁ = {a:.4g} and b = W₂b₁ + b₂ = {b:.4g}; z* = (ax + b)/(1 − a) is 2x "
        "for every x only when a = 2/3 and b = 0."
    )


if __name__ == "__main__":  # python -m deqkit.teach.y2x [--grid]: regenerate notebook 03's saved runs
    import argparse

    from tqdm import tqdm as _bar

    parser = argparse.ArgumentParser(
        prog="python -m deqkit.teach.y2x",
        description="Write notebook 03's saved runs: the backward-mode comparison, or "
        "(--grid) the training widget's grid.",
    )
    parser.add_argument("--grid", action="store_true", help=f"write {GRID.name} instead of {COMPARISON.name}")
    if parser.parse_args().grid:
        torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead
        save_grid(grid_traces(progress=True))
        print(f"wrote {GRID}")
    else:
        save_comparison(compare_backward_modes(**COMPARISON_SETTINGS, progress=functools.partial(_bar, desc="runs")))
        print(f"wrote {COMPARISON}")
