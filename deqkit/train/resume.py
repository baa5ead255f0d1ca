"""Checks that a checkpoint can be resumed: its fields agree with each other, with the run's settings and with
the run folder's metrics files, and its numbers are finite.

The checksum (:func:`~deqkit.train.checkpoint.load_checkpoint`) catches a damaged file; these checks catch a
file that is intact but inconsistent (edited and re-saved, or written by other code), before any of it is
loaded into the model, so that the error names the cause and not a symptom far downstream.
"""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from .config import TrainConfig

__all__ = ["REQUIRED", "check_resumable", "load_states", "load_weights"]

#: Entries every training checkpoint holds.
REQUIRED = ("config", "model", "optimizer", "scheduler", "epoch", "step", "rng", "metrics", "tally")
_FIX = "restore an intact copy, or start a new run in another folder"


def check_resumable(state: dict[str, Any], config: TrainConfig, path: pathlib.Path, steps_per_epoch: int) -> None:
    """Refuse a checkpoint that the run with ``config`` cannot continue exactly.

    Parameters
    ----------
    state : dict
        From :func:`~deqkit.train.load_checkpoint`.
    config : TrainConfig
        The resuming run's settings (more epochs than the checkpoint's are allowed with a constant schedule).
    path : pathlib.Path
        The checkpoint; its folder holds the run's ``metrics.json`` and ``metrics.csv``.
    steps_per_epoch : int
        Optimiser steps per epoch of this run.

    Raises
    ------
    CheckpointError
        Naming the first problem found: a missing entry, other settings, an epoch or step out of range,
        metrics or tallies that disagree with the epoch and step, metrics files that disagree with the
        checkpoint, non-finite weights or optimiser state.
    """
    missing = [k for k in REQUIRED if k not in state]
    if missing or not isinstance(state["rng"], dict) or "torch" not in state["rng"]:
        what = ", ".join(map(repr, missing)) or "'rng'['torch']"
        raise CheckpointError(
            f"{path} has no {what} entry: it was not written by deqkit's training loop, or was edited; {_FIX}"
        )
    _check_settings(state["config"], config, path)
    _check_progress(state, path, steps_per_epoch)
    _check_metrics_files(state["metrics"], path)
    _check_optimizer(state["optimizer"], path)


def _check_settings(old: dict[str, Any], config: TrainConfig, path: pathlib.Path) -> None:
    """Refuse settings that would change the run's numbers (more epochs are allowed with a constant rate)."""
    new, default = config.to_dict(), TrainConfig().to_dict()
    ignore = {"epochs", "data_dir"} if config.schedule == "constant" else {"data_dir"}
    # a setting added after the checkpoint was written (e.g. jac_reg) had its default value there
    differ = [k for k in new if k not in ignore and old.get(k, default[k]) != new[k]]
    if differ:
        pairs = ", ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new[k]!r}" for k in differ)
        raise CheckpointError(
            f"cannot resume from {path}: the run's settings differ ({pairs}). Resume with the "
            "same settings, or start a new run in another folder."
        )


def _check_progress(state: dict[str, Any], path: pathlib.Path, steps_per_epoch: int) -> None:
    """Epoch and step in range, and agreeing with the finished epochs' metrics and the partial epoch's tallies."""
    epoch, step, metrics, tally = state["epoch"], state["step"], state["metrics"], state["tally"]
    epochs = state["config"].get("epochs")
    if not _is_int(epoch) or not _is_int(epochs) or not 0 <= epoch <= epochs:
        raise CheckpointError(f"{path} says epoch {epoch!r} of a run of {epochs!r} epochs: impossible; {_FIX}")
    if epoch < epochs and not (_is_int(step) and 0 <= step < steps_per_epoch):
        raise CheckpointError(
            f"{path} says step {step!r} of epoch {epoch + 1}, which has steps 0 to {steps_per_epoch - 1}; {_FIX}"
        )
    if epoch == epochs and step != 0:  # a finished run stops at step 0 after its last epoch
        raise CheckpointError(
            f"{path} says the run finished its {epochs} epochs, yet stopped at step {step!r} (expected 0); {_FIX}"
        )
    if not isinstance(metrics, list) or [r.get("epoch") for r in metrics] != list(range(1, epoch + 1)):
        found = [r.get("epoch") for r in metrics] if isinstance(metrics, list) else type(metrics).__name__
        raise CheckpointError(
            f"{path} says epoch {epoch} but holds metrics of epochs {found} (expected 1 to {epoch}); {_FIX}"
        )
    batch_size = state["config"].get("batch_size")
    if (step == 0) != (tally is None) or (
        tally is not None and (not isinstance(tally, dict) or tally.get("count") != step * batch_size)
    ):
        raise CheckpointError(
            f"{path} stopped at step {step} but its partial-epoch tallies are {tally!r} (expected "
            f"{'none' if step == 0 else f'{step * batch_size} samples'}); {_FIX}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_metrics_files(metrics: list[dict[str, Any]], path: pathlib.Path) -> None:
    """The run folder's metrics files hold the checkpoint's epochs (and at most one more: a kill between the
    metrics and the checkpoint repeats that epoch)."""
    folder, done = path.parent, len(metrics)
    if done == 0:
        return
    try:
        rows = json.loads((folder / "metrics.json").read_text())["epochs"]
        with open(folder / "metrics.csv", newline="") as f:
            reader = csv.DictReader(f)
            csv_rows, header = list(reader), reader.fieldnames or []
        # every field as write_metrics wrote it (str() of the number; None as empty), in the file's own columns
        expected = [{k: "" if r.get(k) is None else str(r.get(k)) for k in header} for r in rows]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} has {done} finished epochs, but the run's metrics.json and metrics.csv "
            f"cannot be read ({type(exc).__name__}: {exc}); {_FIX}"
        ) from exc
    if len(rows) not in (done, done + 1) or json.dumps(rows[:done]) != json.dumps(metrics):
        raise CheckpointError(
            f"{path} and the run's metrics.json disagree on the {done} finished epochs (the file "
            f"holds {len(rows)} rows); it was edited or belongs to another run; {_FIX}"
        )
    if "epoch" not in header or csv_rows != expected:
        where = next(
            (
                f"epoch {i + 1}, column {k!r}: {a.get(k)!r} in metrics.csv, {b[k]!r} in metrics.json"
                for i, (a, b) in enumerate(zip(csv_rows, expected))
                for k in b
                if a.get(k) != b[k]
            ),
            f"{len(csv_rows)} rows and columns {header} in metrics.csv, {len(rows)} rows in metrics.json",
        )
        raise CheckpointError(
            f"{path}: the run's metrics.csv disagrees with metrics.json and the checkpoint "
            f"({where}); it was edited or belongs to another run; {_FIX}"
        )


def _check_finite(tensors: dict[str, Any], what: str, path: pathlib.Path) -> None:
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(
                f"{path}: {what} entry {name!r} holds NaN or infinite values: the run diverged "
                f"before this checkpoint, or the file was edited; {_FIX}"
            )


def _check_optimizer(optimizer: dict[str, Any], path: pathlib.Path) -> None:
    """Adam's state: finite moments, a non-negative second moment and step count."""
    for index, param_state in optimizer.get("state", {}).items():
        _check_finite(param_state, f"optimizer state of parameter {index}:", path)
        for key in ("exp_avg_sq", "max_exp_avg_sq", "step"):
            value = param_state.get(key)
            if isinstance(value, torch.Tensor) and bool((value < 0).any()):
                raise CheckpointError(
                    f"{path}: optimizer state of parameter {index}: {key!r} is negative "
                    f"(min {float(value.min()):.3g}), which Adam never produces; {_FIX}"
                )


def load_weights(
    model: nn.Module, weights: dict[str, Any], name: str, options: dict[str, Any], path: pathlib.Path
) -> None:
    """Load ``weights`` into ``model`` after checking they are finite; a mismatch is a :class:`CheckpointError`."""
    _check_finite(weights, "model", path)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: the saved weights do not fit the model {name!r} with options {options} "
            f"({_shorten(exc)}); the file was written for another model, or its "
            f"config was edited; {_FIX}"
        ) from exc


def _shorten(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_states(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: TrainConfig,
    device: torch.device,
    path: pathlib.Path,
) -> None:
    """Load the checkpoint's weights, optimiser and schedule states and the RNG state (after
    :func:`check_resumable`); a mismatch is a :class:`CheckpointError`."""
    load_weights(model, state["model"], config.model, config.model_options, path)
    try:
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state["scheduler"] is None:
                raise ValueError("no learning-rate scheduler state for the cosine schedule")
            scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"cannot resume from {path}: its optimiser or schedule state does not fit this "
            f"run, or its random-number state is damaged ({exc}); {_FIX}"
        ) from exc
