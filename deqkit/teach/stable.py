"""Notebook 06: why a DEQ gets harder to solve as it trains, and what the Jacobian penalty, normalization and the
gradient method do about it.

Two parts. The *runs*: ten epochs of the LayerNorm MLP-DEQ (:func:`deqkit.models.mlp_deq`) trained with the DEQ's
defaults, without and with the Jacobian penalty (a sweep of γ), with spectral normalization, without LayerNorm, and
with the phantom and one-step gradients; after every epoch a fixed *probe* batch of test images measures how hard
the equilibrium has become: ρ(∂f/∂z) at z*, ‖∂f/∂z‖²_F / d, the evaluations Anderson needs to converge there
without a budget, and how close the run's gradient is to the implicit one. :func:`regenerate` trains them (what
``python -m benchmarks jacobian_reg`` runs and saves to ``docs/data/jacobian_reg.json``); :func:`load_runs` reads
them back. The *panels*: pure functions ``(runs or model, widget values) -> Panel`` the notebook wires to widgets.
"""

from __future__ import annotations

import html
import json
import math
import os
import pathlib
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..adjoint import GradientSpec, Implicit, Phantom
from ..diagnostics import spectral_radius
from ..errors import ConvergenceWarning
from ..models import mnist_model
from ..solvers import solve
from ..train import TrainConfig, train
from .widgets import Panel, figure

__all__ = ["BASELINE", "DATA", "GAMMA_RUNS", "GRADIENT_RUNS", "RUNS", "RUN_NAMES", "RunSpec", "check_picard_steps",
           "cosine", "curves_panel", "gradient_panel", "load_runs", "phantom_gradients", "phantom_panel", "probe",
           "regenerate", "summary", "tradeoff_panel", "train_run"]

#: Where ``python -m benchmarks jacobian_reg`` saves the runs (committed; read in fast mode).
DATA = pathlib.Path(__file__).resolve().parents[2] / "docs" / "data" / "jacobian_reg.json"


@dataclass(frozen=True)
class RunSpec:
    """One training run of the experiment: its name, model, penalty weight, gradient method, weight normalization."""

    name: str
    model: str = "mlp-ln"
    jac_reg: float = 0.0
    backward: str = "implicit"  # "implicit", "phantom" (Phantom(5, 0.5)) or "one_step"
    weight_norm: str | None = None

    def gradient(self) -> GradientSpec:
        return Phantom(steps=5, damping=0.5) if self.backward == "phantom" else self.backward

    def model_options(self) -> dict[str, Any]:
        return {"backward": self.gradient(), "weight_norm": self.weight_norm}


#: The unregularized LayerNorm run every other run is compared with.
BASELINE = "LayerNorm, γ = 0"
RUNS: tuple[RunSpec, ...] = (
    RunSpec(BASELINE),
    *(RunSpec(f"LayerNorm, γ = {g:g}", jac_reg=g) for g in (0.1, 0.3, 1.0, 3.0)),
    RunSpec("LayerNorm + spectral norm", weight_norm="spectral"),
    RunSpec("no LayerNorm", model="mlp"),
    RunSpec("LayerNorm, phantom(5, 0.5)", backward="phantom"),
    RunSpec("LayerNorm, one-step", backward="one_step"),
)
RUN_NAMES = tuple(r.name for r in RUNS)
GAMMA_RUNS = tuple(r.name for r in RUNS if r.model == "mlp-ln" and r.backward == "implicit" and not r.weight_norm)
GRADIENT_RUNS = (BASELINE, "LayerNorm, phantom(5, 0.5)", "LayerNorm, one-step")


# --------------------------------------------------------------------------------------------------------------
# Measuring a model at its equilibrium


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat vectors."""
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _parameter_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grad


def _frobenius(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor, x: torch.Tensor
               ) -> torch.Tensor:
    """Exact ``‖∂f/∂z‖²_F / d`` per sample at ``z``, one vector–Jacobian product per coordinate."""
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z, x)
    total = torch.zeros(z.shape[0], dtype=z.dtype)
    for i in range(z.shape[1]):
        e = torch.zeros_like(fz)
        e[:, i] = 1
        (row,) = torch.autograd.grad(fz, z, e, retain_graph=True)
        total += row.pow(2).sum(1)
    return total / z.shape[1]


def probe(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How hard the model's equilibrium is on a fixed batch, and how good its gradient is.

    Parameters
    ----------
    model : MNISTDEQ
        An MLP-DEQ of :func:`deqkit.models.mlp_deq`; left in the mode it was in, its gradients cleared.
    images, labels : torch.Tensor
        The probe batch.

    Returns
    -------
    dict
        ``probe_nfe``: evaluations Anderson needs for every sample to reach relative residual 1e-4, with no budget
        (at most 500); ``probe_converged``: the fraction it converged; ``rho_mean``, ``rho_max``: ρ(∂f/∂z) at that
        z* over the batch (:func:`deqkit.spectral_radius`); ``frobenius``: the mean of ``‖∂f/∂z‖²_F / d`` there
        (what :func:`deqkit.jacobian_penalty` estimates); ``grad_cos``: the cosine similarity of the model's own
        parameter gradient (its backward method, in training mode) with the implicit one solved to 1e-6.
    """
    was_training = model.training
    deq = model.deq
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted below
        x = model.features(images)
        z, stats = solve(lambda z: deq.f(z, x), torch.zeros_like(x), solver="anderson", abstol=0.0,
                         reltol=deq.reltol, max_steps=500)
    rho = spectral_radius(deq.f, z, x)
    out = {"probe_nfe": stats.nfe, "probe_converged": stats.num_converged / len(labels),
           "rho_mean": float(rho.mean()), "rho_max": float(rho.max()),
           "frobenius": float(_frobenius(deq.f, z, x).mean())}
    model.train()
    own = deq.backward
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mine = _parameter_gradient(model, images, labels)
            deq.backward = Implicit("gmres", abstol=0.0, reltol=1e-6, max_nfe=1000)
            exact = _parameter_gradient(model, images, labels)
    finally:
        deq.backward = own
        model.train(was_training)
    out["grad_cos"] = cosine(mine, exact)
    return out


# --------------------------------------------------------------------------------------------------------------
# The runs


@dataclass
class _EpochProbe:
    """A ``train`` callback that probes the model after the last step of every epoch."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    steps_per_epoch: int
    results: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, info: dict[str, Any]) -> None:
        if info["step"] == self.steps_per_epoch - 1:
            self.results.append(probe(self.model, self.images, self.labels))


def train_run(spec: RunSpec, train_set: TensorDataset, test_set: TensorDataset, *, epochs: int, probe_size: int = 256,
              batch_size: int = 128, lr: float = 1e-3, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Train one run of the experiment and return its record (JSON-ready).

    Adam (``lr``), batch ``batch_size``, the DEQ's default solver and budgets; the probe batch is the first
    ``probe_size`` test images. The record holds the spec and one dict per epoch: the training metrics of
    :data:`deqkit.train.METRIC_FIELDS` (``fwd_nfe_mean`` is forward evaluations per step) and the probe's
    (:func:`probe`), the probe before training as epoch 0.
    """
    model = mnist_model(spec.model, seed=seed, **spec.model_options())
    images, labels = test_set.tensors[0][:probe_size], test_set.tensors[1][:probe_size]
    steps = math.ceil(len(train_set) / batch_size)
    callback = _EpochProbe(model, images, labels, steps)
    initial = probe(model, images, labels)
    config = TrainConfig(model=spec.model, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, jac_reg=spec.jac_reg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted in the metrics (fwd_unconverged, ...)
        result = train(model, train_set, test_set, config, progress=progress, callback=callback)
    rows = [{"epoch": 0} | initial] + [row | found for row, found in zip(result.history, callback.results)]
    return {"name": spec.name, "model": spec.model, "jac_reg": spec.jac_reg, "backward": spec.backward,
            "weight_norm": spec.weight_norm, "epochs": rows}


def regenerate(*, epochs: int = 10, subset: int | None = None, only: Sequence[str] | None = None, seed: int = 0,
               progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the runs of :data:`RUNS` (or ``only`` those names) and return the document :func:`load_runs` reads.

    Parameters
    ----------
    epochs : int
        Epochs per run (10 for the saved runs).
    subset : int, optional
        Train on this many MNIST images (see :func:`deqkit.data.mnist_datasets`); all 60,000 by default.
    only : sequence of str, optional
        Names of :data:`RUNS` to train.
    seed : int
        Weights and data order (the same for every run).
    progress : bool
        Show ``train``'s progress bars.
    log : callable
        Called with one line per finished run.

    Raises
    ------
    ValueError
        If ``only`` names a run that is not in :data:`RUNS`.
    """
    from ..data import mnist_datasets

    specs = {r.name: r for r in RUNS}
    unknown = sorted(set(only or ()) - set(specs))
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; choose from {list(specs)}")
    train_set, test_set = mnist_datasets(subset=subset, seed=seed)
    runs = []
    for name in only or specs:
        start = time.perf_counter()
        runs.append(train_run(specs[name], train_set, test_set, epochs=epochs, seed=seed, progress=progress))
        last = runs[-1]["epochs"][-1]
        log(f"{name}: {time.perf_counter() - start:.0f} s, test accuracy {last['test_acc']:.2f}%, forward "
            f"evaluations per step {last['fwd_nfe_mean']:.1f}, ρ {last['rho_mean']:.3f}")
    settings = {"epochs": epochs, "subset": subset, "seed": seed, "batch_size": 128, "lr": 1e-3, "probe": 256}
    environment = {"torch": str(torch.__version__), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    return {"settings": settings, "environment": environment, "runs": runs}


def load_runs(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the saved runs (:data:`DATA` by default): the document :func:`regenerate` returns.

    Raises
    ------
    FileNotFoundError
        If the file is missing, saying how to make it.
    """
    path = pathlib.Path(path) if path is not None else DATA
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m benchmarks jacobian_reg` from the repository root "
                                "to train the runs and save them there")
    return json.loads(path.read_text())


def _by_name(runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in runs["runs"]}


def _series(run: dict[str, Any], key: str, *, trained_only: bool = False) -> tuple[list[int], list[float]]:
    rows = [r for r in run["epochs"] if key in r and r[key] is not None and (r["epoch"] > 0 or not trained_only)]
    return [r["epoch"] for r in rows], [r[key] for r in rows]


def summary(runs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each run's last epoch against the baseline's: ``nfe_ratio`` (forward evaluations per step),
    ``acc_drop`` (points of test accuracy below it), ``rho``, ``test_acc``, ``fwd_nfe``, ``seconds``."""
    by = _by_name(runs)
    base = by[BASELINE]["epochs"][-1]
    out = {}
    for name, run in by.items():
        last = run["epochs"][-1]
        out[name] = {"nfe_ratio": last["fwd_nfe_mean"] / base["fwd_nfe_mean"],
                     "acc_drop": base["test_acc"] - last["test_acc"], "rho": last["rho_mean"],
                     "test_acc": last["test_acc"], "fwd_nfe": last["fwd_nfe_mean"], "seconds": last["seconds"],
                     "probe_nfe": last["probe_nfe"]}
    return out


# --------------------------------------------------------------------------------------------------------------
# Panels


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
    by = _by_name(runs)
    if name not in by:
        raise KeyError(f"no run named {name!r}; the runs are {list(by)}")
    fig, axes = figure(2, 2, width=3.9, height=2.7)
    panels = (("fwd_nfe_mean", "forward evaluations / step", True), ("probe_nfe", "Anderson evaluations to 1e-4",
              False), ("rho_mean", "ρ(∂f/∂z) at z* (mean)", False), ("test_acc", "test accuracy (%)", True))
    for ax, (key, label, trained) in zip(axes.flat, panels):
        for other in others:
            if other not in (name, BASELINE) and other in by:
                ax.plot(*_series(by[other], key, trained_only=trained), color="0.8", lw=1)
        ax.plot(*_series(by[BASELINE], key, trained_only=trained), "k.-", lw=1.5, label=BASELINE)
        if name != BASELINE:
            ax.plot(*_series(by[name], key, trained_only=trained), "o-", color="tab:red", lw=2, label=name)
        ax.set(xlabel="epoch", title=label)
    axes[0, 0].legend(fontsize=7)
    s = summary(runs)[name]
    text = (f"<b>{html.escape(name)}</b>, last epoch: {s['fwd_nfe']:.1f} forward evaluations per step "
            f"(<b>{s['nfe_ratio']:.2f}×</b> the unregularized run's), Anderson needs {s['probe_nfe']} without a "
            f"budget, ρ = {s['rho']:.3f}, test accuracy {s['test_acc']:.2f}% "
            f"(<b>{0.0 - s['acc_drop']:+.2f} points</b>).")
    return Panel(fig, text)


def tradeoff_panel(runs: dict[str, Any], names: Sequence[str] | None = None, *, nfe_ratio: float = 0.7,
                   acc_drop: float = 0.3) -> Panel:
    """Last epoch's forward evaluations per step (ratio to the unregularized run) against its accuracy drop.

    The shaded box is the target: at most ``nfe_ratio`` of the evaluations for at most ``acc_drop`` points of
    test accuracy. The text names the runs inside it.
    """
    s = summary(runs)
    names = list(names or [n for n in s if n != BASELINE])
    fig, ax = figure(1, width=5.2, height=3.6)
    ax.add_patch(_box(nfe_ratio, acc_drop))
    for n in names:
        ax.plot(s[n]["nfe_ratio"], s[n]["acc_drop"], "o")
        ax.annotate(n.replace("LayerNorm, ", ""), (s[n]["nfe_ratio"], s[n]["acc_drop"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(1, color="k", lw=0.6)
    ax.set(xlabel="forward evaluations per step / unregularized", ylabel="test accuracy drop (points)",
           title="last epoch: cost against accuracy")
    inside = [n for n in names if s[n]["nfe_ratio"] <= nfe_ratio and s[n]["acc_drop"] <= acc_drop]
    text = (f"Inside the box (≤ {nfe_ratio:g}× the evaluations, ≤ {acc_drop:g} points lost): "
            + (", ".join(html.escape(n) for n in inside) if inside else "<b>none</b>") + ".")
    return Panel(fig, text)


def _box(width: float, height: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((0, -100), width, 100 + height, color="tab:green", alpha=0.12, label="target")


def gradient_panel(runs: dict[str, Any], method: str) -> Panel:
    """The gradient methods side by side: training time per epoch, the gradient's cosine similarity with the
    implicit one on the probe batch, and test accuracy over the epochs; ``method`` (a run name of
    :data:`GRADIENT_RUNS`) drawn bold."""
    by = _by_name(runs)
    if method not in GRADIENT_RUNS or method not in by:
        raise KeyError(f"no gradient run named {method!r}; choose from {[n for n in GRADIENT_RUNS if n in by]}")
    fig, (ax1, ax2, ax3) = figure(3, width=3.6, height=3.0)
    names = [n for n in GRADIENT_RUNS if n in by]
    short = [n.replace("LayerNorm, ", "").replace("γ = 0", "implicit") for n in names]
    secs = [float(np.mean([r["seconds"] for r in by[n]["epochs"] if r["epoch"] > 0])) for n in names]
    ax1.bar(short, secs, color=["tab:red" if n == method else "0.7" for n in names])
    ax1.set(ylabel="seconds per epoch (training steps)", title="cost")
    ax1.tick_params(axis="x", labelsize=7)
    for n, label in zip(names, short):
        style = {"lw": 2.2, "color": "tab:red"} if n == method else {"lw": 1, "color": "0.6"}
        ax2.plot(*_series(by[n], "grad_cos"), "o-", label=label, **style)
        ax3.plot(*_series(by[n], "test_acc", trained_only=True), "o-", label=label, **style)
    ax2.set(xlabel="epoch", title="cosine with the implicit gradient")
    ax3.set(xlabel="epoch", title="test accuracy (%)")
    ax3.legend(fontsize=7)
    last = by[method]["epochs"][-1]
    text = (f"<b>{html.escape(method)}</b>: {secs[names.index(method)]:.1f} s per epoch, gradient cosine "
            f"{last['grad_cos']:.4f} with the implicit one after the last epoch, test accuracy "
            f"{last['test_acc']:.2f}%.")
    return Panel(fig, text)


def phantom_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: Sequence[int],
                      damping: float) -> tuple[list[float], list[float], torch.Tensor]:
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
            exact = _parameter_gradient(model, images, labels)
            for k in steps:
                deq.backward = Phantom(steps=k, damping=damping)
                start = time.perf_counter()
                grad = _parameter_gradient(model, images, labels)
                seconds.append(time.perf_counter() - start)
                cosines.append(cosine(grad, exact))
    finally:
        deq.backward = own
    return cosines, seconds, exact


def phantom_panel(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int = 5,
                  damping: float = 0.5, max_steps: int = 20) -> Panel:
    """How close ``Phantom(steps, damping)`` comes to the implicit gradient on this model and batch.

    Left: cosine similarity against the number of unrolled steps ``k`` (1 … ``max_steps``) for this damping; the
    chosen ``k`` marked (``k = 1, damping = 1`` is the one-step gradient). Right: the time of each forward +
    backward pass.
    """
    ks = list(range(1, max_steps + 1))
    cosines, seconds, _ = phantom_gradients(model, images, labels, ks, damping)
    fig, (ax1, ax2) = figure(2, width=4.0, height=3.0)
    ax1.plot(ks, cosines, "o-", color="tab:blue", ms=3)
    ax1.plot([steps], [cosines[steps - 1]], "o", color="tab:red", ms=9)
    ax1.set(xlabel="phantom steps k", ylabel="cosine with the implicit gradient", title=f"damping τ = {damping:g}",
            ylim=(min(0.0, min(cosines)), 1.02))
    ax2.plot(ks, [s * 1e3 for s in seconds], "o-", color="tab:gray", ms=3)
    ax2.plot([steps], [seconds[steps - 1] * 1e3], "o", color="tab:red", ms=9)
    ax2.set(xlabel="phantom steps k", ylabel="ms", title="forward + backward time", ylim=(0, None))
    text = (f"Phantom(steps={steps}, damping={damping:g}): cosine <b>{cosines[steps - 1]:.4f}</b> with the implicit "
            f"gradient; {seconds[steps - 1] * 1e3:.1f} ms for the forward and backward pass.")
    return Panel(fig, text)


def check_picard_steps(picard_steps: Callable[[float, float], int]) -> str | None:
    """The exercise's check: ``picard_steps(rho, shrink)`` must be the number of plain iterations that shrink the
    residual of a map with contraction factor ``rho`` by ``shrink``, as deqkit's Picard solver counts them."""
    for rho in (0.5, 0.8, 0.9, 0.97):
        for shrink in (1e-2, 1e-4):
            def f(z: torch.Tensor, rho: float = rho) -> torch.Tensor:
                return rho * z + 1.0  # from z = 0 the residual after k steps is rho**k

            _, stats = solve(f, torch.zeros(1, 1, dtype=torch.float64), solver="picard", abstol=shrink, reltol=0.0,
                             max_steps=10_000, max_nfe=None)
            answer = picard_steps(rho, shrink)
            if answer != stats.steps:
                return (f"for ρ = {rho}, shrink = {shrink:g} Picard takes {stats.steps} steps, you said {answer!r}. "
                        "After k steps the residual is ρ^k times the first one: solve ρ^k ≤ shrink for the smallest "
                        "integer k.")
    return None
