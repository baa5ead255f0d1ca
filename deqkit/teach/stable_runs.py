"""The Jacobian-penalty experiment behind notebook 06 (its panels: :mod:`deqkit.teach.stable`) and
``python -m benchmarks jacobian_reg``.

Ten epochs of the LayerNorm MLP-DEQ (:func:`deqkit.models.mlp_deq`) trained with the DEQ's defaults, without and with
the Jacobian penalty (a sweep of γ), with spectral normalization, without LayerNorm, and with the phantom and
one-step gradients; after every epoch a fixed *probe* batch of test images measures how hard the equilibrium has
become: ρ(∂f/∂z) at z*, ‖∂f/∂z‖²_F / d, the evaluations Anderson needs to converge there without a budget, and how
close the run's gradient is to the implicit one. :func:`regenerate` trains them (the benchmark saves them as
package data, :data:`DATA`, so that an installed deqkit finds them); :func:`load_runs` reads them back;
:func:`summary` condenses the last epoch, :func:`runs_by_name` and :func:`series` pick runs and measurements.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..adjoint import GradientSpec, Implicit, Phantom
from ..diagnostics import spectral_radius
from ..errors import ConvergenceWarning
from ..models import MNISTDEQ, mnist_model
from ..solvers import solve
from ..train import RunOptions, TrainConfig, train
from ..train.metrics import MetricRow

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

__all__ = [
    "BASELINE",
    "DATA",
    "GAMMA_RUNS",
    "GRADIENT_RUNS",
    "RUNS",
    "RUN_NAMES",
    "RunSpec",
    "cosine",
    "load_runs",
    "parameter_gradient",
    "probe",
    "regenerate",
    "runs_by_name",
    "series",
    "summary",
    "train_run",
]

#: The saved runs, package data of :mod:`deqkit.teach` (``deqkit/teach/results/jacobian_reg.json`` in the
#: repository, where ``python -m benchmarks jacobian_reg`` writes them): found in a checkout and in an installed
#: deqkit alike. Notebook 06 reads them in both modes.
DATA: Traversable = resources.files("deqkit.teach") / "results" / "jacobian_reg.json"


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


def parameter_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The gradient of the cross-entropy on ``(images, labels)`` with respect to every parameter of ``model``, flat.

    One forward and backward pass with the model's own gradient method, in the mode it is in; the model's ``.grad``
    fields are cleared before and after, so the call leaves no trace on it.
    """
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return grad


def _frobenius(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Exact ``‖∂f/∂z‖²_F / d`` per sample at ``z``, one vector–Jacobian product per coordinate."""
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z, x)
    total = z.new_zeros(z.shape[0])
    for i in range(z.shape[1]):
        e = torch.zeros_like(fz)
        e[:, i] = 1
        (row,) = torch.autograd.grad(fz, z, e, retain_graph=True)
        total += row.pow(2).sum(1)
    return total / z.shape[1]


def probe(model: MNISTDEQ, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
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
        ``probe_nfe``: evaluations Anderson needs for every sample to reach relative residual 1e-4, with no
        evaluation budget but at most 500 steps; ``probe_converged``: the fraction it converged; ``rho_mean``,
        ``rho_max``: ρ(∂f/∂z) at that z* over the batch (:func:`deqkit.spectral_radius`); ``frobenius``: the mean
        of ``‖∂f/∂z‖²_F / d`` there (what :func:`deqkit.jacobian_penalty` estimates); ``grad_cos``: the cosine
        similarity of the model's own parameter gradient (its backward method, in training mode) with the
        implicit one solved to 1e-6.
    """
    was_training = model.training
    deq = model.deq
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted below
        x = model.features(images)
        z, stats = solve(
            lambda z: deq.f(z, x), torch.zeros_like(x), solver="anderson", abstol=0.0, reltol=deq.reltol, max_steps=500
        )
    rho = spectral_radius(deq.f, z, x)
    out = {
        "probe_nfe": stats.nfe,
        "probe_converged": stats.num_converged / len(labels),
        "rho_mean": float(rho.mean()),
        "rho_max": float(rho.max()),
        "frobenius": float(_frobenius(deq.f, z, x).mean()),
    }
    model.train()
    own = deq.backward
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mine = parameter_gradient(model, images, labels)
            deq.backward = Implicit("gmres", abstol=0.0, reltol=1e-6, max_nfe=1000)
            exact = parameter_gradient(model, images, labels)
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

    model: MNISTDEQ
    images: torch.Tensor
    labels: torch.Tensor
    steps_per_epoch: int
    results: list[dict[str, float]] = field(default_factory=list)

    def __call__(self, info: dict[str, Any]) -> None:
        if info["step"] == self.steps_per_epoch - 1:
            self.results.append(probe(self.model, self.images, self.labels))


def train_run(
    spec: RunSpec,
    train_set: TensorDataset,
    test_set: TensorDataset,
    *,
    epochs: int,
    probe_size: int = 256,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
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
        result = train(model, train_set, test_set, config, RunOptions(progress=progress), callback=callback)
    rows: list[MetricRow] = [{"epoch": 0, **initial}]
    rows += [{**row, **found} for row, found in zip(result.history, callback.results)]
    return {
        "name": spec.name,
        "model": spec.model,
        "jac_reg": spec.jac_reg,
        "backward": spec.backward,
        "weight_norm": spec.weight_norm,
        "epochs": rows,
    }


def regenerate(
    *,
    epochs: int = 10,
    subset: int | None = None,
    only: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
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
        log(
            f"{name}: {time.perf_counter() - start:.0f} s, test accuracy {last['test_acc']:.2f}%, forward "
            f"evaluations per step {last['fwd_nfe_mean']:.1f}, ρ {last['rho_mean']:.3f}"
        )
    settings = {"epochs": epochs, "subset": subset, "seed": seed, "batch_size": 128, "lr": 1e-3, "probe": 256}
    environment = {
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return {"settings": settings, "environment": environment, "runs": runs}


def load_runs(path: str | os.PathLike | Traversable | None = None) -> dict[str, Any]:
    """Read the saved runs (:data:`DATA` by default): the document :func:`regenerate` returns.

    Raises
    ------
    FileNotFoundError
        If the file is missing, saying how to make it.
    """
    path = DATA if path is None else path if isinstance(path, Traversable) else pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `python -m benchmarks jacobian_reg` from the repository root "
            "to train the runs and save them in deqkit/teach/results/jacobian_reg.json"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def runs_by_name(runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs of a document of :func:`load_runs`, by name (in the document's order)."""
    return {r["name"]: r for r in runs["runs"]}


def series(run: dict[str, Any], key: str, *, trained_only: bool = False) -> tuple[list[int], list[float]]:
    """One measurement of a run over its epochs: ``(epochs, values)``, leaving out epochs that lack it.

    ``trained_only`` leaves out epoch 0 (the probe before training), where the training metrics do not exist.
    """
    rows = [r for r in run["epochs"] if key in r and r[key] is not None and (r["epoch"] > 0 or not trained_only)]
    return [r["epoch"] for r in rows], [r[key] for r in rows]


def summary(runs: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each run's last epoch against the baseline's: ``nfe_ratio`` (forward evaluations per step),
    ``acc_drop`` (points of test accuracy below it), ``rho``, ``test_acc``, ``fwd_nfe``, ``seconds``."""
    by = runs_by_name(runs)
    base = by[BASELINE]["epochs"][-1]
    out = {}
    for name, run in by.items():
        last = run["epochs"][-1]
        out[name] = {
            "nfe_ratio": last["fwd_nfe_mean"] / base["fwd_nfe_mean"],
            # accuracies are hundredths of a percent (10,000 test images): no float residue
            "acc_drop": round(base["test_acc"] - last["test_acc"], 2),
            "rho": last["rho_mean"],
            "test_acc": last["test_acc"],
            "fwd_nfe": last["fwd_nfe_mean"],
            "seconds": last["seconds"],
            "probe_nfe": last["probe_nfe"],
        }
    return out
