"""What a training run measures: per-step tallies, one row of :data:`METRIC_FIELDS` per epoch, the metrics files."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import warnings
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from ..errors import ConvergenceWarning
from ..layer import DEQ, DEQStats
from .checkpoint import atomic_write
from .config import TrainConfig
from .distributed import DistContext

__all__ = ["METRIC_FIELDS", "MetricRow", "SolverCalls", "Tally", "epoch_row", "report_epoch", "write_metrics"]

#: Columns of ``metrics.csv``, one row per epoch.
METRIC_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "fwd_nfe_mean",
    "fwd_nfe_max",
    "bwd_nfe_mean",
    "bwd_nfe_max",
    "fwd_unconverged",
    "bwd_unconverged",
    "test_nfe_mean",
    "test_nfe_max",
    "test_unconverged",
    "seconds",
    "eval_seconds",
    "lr",
    "samples",
    "loadavg",
    "jac_penalty",
)
#: One epoch's metrics, keyed by :data:`METRIC_FIELDS`; ``jac_penalty`` is None when the run does not compute it.
MetricRow = dict[str, float | None]


class Tally:
    """Sums over one epoch's steps (this process's share); reduced over processes at the end."""

    SUMS = (
        "loss",
        "correct",
        "count",
        "steps",
        "fwd_nfe",
        "bwd_nfe",
        "fwd_unconverged",
        "bwd_unconverged",
        "jac_penalty",
    )
    MAXES = ("fwd_nfe_max", "bwd_nfe_max", "seconds")

    def __init__(self, saved: dict[str, float] | None = None):
        self.values = dict.fromkeys(self.SUMS + self.MAXES, 0.0)
        if saved:
            self.values.update(saved)

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.values[key] += value

    def top(self, **values: float) -> None:
        for key, value in values.items():
            self.values[key] = max(self.values[key], value)

    def reduced(self, ctx: DistContext) -> dict[str, float]:
        """The tallies summed (maxima: maximised) over all processes; a collective that every rank calls."""
        sums = dict(zip(self.SUMS, ctx.sum([self.values[k] for k in self.SUMS])))
        maxes = dict(zip(self.MAXES, ctx.max([self.values[k] for k in self.MAXES])))
        return sums | maxes


class SolverCalls:
    """The statistics of every call of every :class:`~deqkit.DEQ` in a model while it is open, not only the last.

    A model may call one DEQ several times per forward pass (a weight-tied second pass, a siamese model, a warm
    start): ``deq.last_stats`` then holds only the last call's statistics, and counting from it alone would
    report the other calls as free and converged. Used as a context manager around a step; forward hooks collect
    each call's :class:`~deqkit.layer.DEQStats`, whose ``backward`` entry the implicit backward pass fills in
    once ``backward()`` ran.

    Parameters
    ----------
    model : nn.Module
        Every :class:`~deqkit.DEQ` among its modules is watched.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.calls: list[DEQStats] = []
        self._handles: list[Any] = []

    def __enter__(self) -> SolverCalls:
        self._handles = [m.register_forward_hook(self._record) for m in self.model.modules() if isinstance(m, DEQ)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, deq: DEQ, args: Any, output: Any) -> None:
        if deq.last_stats is not None:
            self.calls.append(deq.last_stats)

    def counts(self) -> tuple[int, int, int, int]:
        """(forward NFE, backward NFE, forward and backward non-converged samples), summed over every call."""
        fnfe = bnfe = fbad = bbad = 0
        for stats in self.calls:
            fnfe += stats.forward.nfe
            fbad += int((~stats.forward.converged).sum())
            if stats.backward is not None:
                bnfe += stats.backward.nfe
                bbad += int((~stats.backward.converged).sum())
        return fnfe, bnfe, fbad, bbad


def epoch_row(
    epoch: int, tot: dict[str, float], test: dict[str, float], eval_seconds: float, lr: float, jac_reg: float = 0.0
) -> MetricRow:
    """One row of :data:`METRIC_FIELDS`: epoch ``epoch`` (from 0) from its reduced tallies and its evaluation.

    ``jac_penalty`` is the mean Jacobian penalty per step, None when the run does not compute it (``jac_reg`` 0).
    """
    return {
        "epoch": epoch + 1,
        "train_loss": tot["loss"] / tot["count"],
        "train_acc": 100.0 * tot["correct"] / tot["count"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "fwd_nfe_mean": tot["fwd_nfe"] / tot["steps"],
        "fwd_nfe_max": tot["fwd_nfe_max"],
        "bwd_nfe_mean": tot["bwd_nfe"] / tot["steps"],
        "bwd_nfe_max": tot["bwd_nfe_max"],
        "fwd_unconverged": int(tot["fwd_unconverged"]),
        "bwd_unconverged": int(tot["bwd_unconverged"]),
        "test_nfe_mean": test["nfe_mean"],
        "test_nfe_max": test["nfe_max"],
        "test_unconverged": int(test["unconverged"]),
        "seconds": tot["seconds"],
        "eval_seconds": eval_seconds,
        "lr": lr,
        "samples": int(tot["count"]),
        "loadavg": os.getloadavg()[0],
        "jac_penalty": tot.get("jac_penalty", 0.0) / tot["steps"] if jac_reg else None,
    }


def write_metrics(
    out: pathlib.Path, history: list[MetricRow], config: TrainConfig, environment: dict[str, Any]
) -> None:
    """Write ``metrics.csv`` (one row per epoch) and ``metrics.json`` (config, environment, rows) atomically."""
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "metrics.csv", metrics_csv(history))
    doc = {"config": config.to_dict(), "environment": environment, "epochs": history}
    _write_text(out / "metrics.json", json.dumps(doc, indent=2) + "\n")


def metrics_csv(history: list[dict[str, Any]]) -> str:
    """The text of ``metrics.csv`` for these rows (what :func:`write_metrics` writes; a resume compares it)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _write_text(path: pathlib.Path, text: str) -> None:
    atomic_write(path, "w", lambda f: f.write(text))


def report_epoch(row: MetricRow, show: bool, stacklevel: int) -> None:
    """Print the epoch's one-line summary (when ``show``); one :class:`~deqkit.ConvergenceWarning` if any solve
    missed its tolerance, attributed ``stacklevel`` frames up."""
    if show:
        tqdm.write(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | test loss "
            f"{row['test_loss']:.4f} acc {row['test_acc']:.2f}% | NFE fwd {row['fwd_nfe_mean']:.1f} (max "
            f"{row['fwd_nfe_max']:.0f}) bwd {row['bwd_nfe_mean']:.1f}"
            + ("" if row.get("jac_penalty") is None else f" | jac penalty {row['jac_penalty']:.4g}")
            + f" | {row['seconds']:.1f} s"
        )
    if any(row[key] for key in ("fwd_unconverged", "bwd_unconverged", "test_unconverged")):
        warnings.warn(
            f"epoch {row['epoch']}: {row['fwd_unconverged']} training samples (forward), "
            f"{row['bwd_unconverged']} (backward) and {row['test_unconverged']} test samples did not reach "
            "the solver tolerance; their best iterates were used. Raise max_steps or loosen the "
            "tolerances (model_options), or lower the learning rate if the count grows.",
            ConvergenceWarning,
            stacklevel=stacklevel + 1,
        )
