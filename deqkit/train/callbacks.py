"""Callbacks for :func:`deqkit.train.train`, called after every optimiser step: a log in memory, TensorBoard."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import RunFolderError
from .metrics import METRIC_FIELDS, MetricRow

__all__ = ["StepLog", "TensorBoardLog", "check_tensorboard"]


@dataclass
class StepLog:
    """A ``callback`` for :func:`deqkit.train.train` that keeps every step's loss, accuracy and NFE.

    Attributes
    ----------
    loss, acc : list of float
        This process's batch loss and accuracy (%) per step.
    fwd_nfe, bwd_nfe : list of int
        Forward and backward evaluations per step.
    unconverged : int
        Non-converged solves over all steps.
    jac_penalty : list of float or None
        The Jacobian penalty per step (None in runs without ``jac_reg``).
    """

    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    fwd_nfe: list[int] = field(default_factory=list)
    bwd_nfe: list[int] = field(default_factory=list)
    unconverged: int = 0
    jac_penalty: list[float | None] = field(default_factory=list)

    def __call__(self, info: dict[str, Any]) -> None:
        """Record one step from the dict :func:`deqkit.train.train` passes its ``callback``."""
        self.loss.append(info["loss"])
        self.acc.append(info["acc"])
        self.fwd_nfe.append(info["fwd_nfe"])
        self.bwd_nfe.append(info["bwd_nfe"])
        self.unconverged += info["unconverged"]
        self.jac_penalty.append(info.get("jac_penalty"))


def check_tensorboard() -> type:
    """Return ``torch.utils.tensorboard.SummaryWriter``, or say how to install what it needs.

    Returns
    -------
    type
        The ``SummaryWriter`` class.

    Raises
    ------
    ImportError
        If the ``tensorboard`` package is missing; the message names the extra to install.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"TensorBoard logging (--tensorboard, RunOptions(tensorboard=True)) needs the tensorboard package, "
            f'which is not installed here ({exc}): pip install "deqkit[tensorboard]"'
        ) from exc
    return SummaryWriter


class TensorBoardLog:
    """Writes a run's numbers as TensorBoard scalars: every optimiser step's, and every epoch's row.

    A ``callback`` for :func:`deqkit.train.train` (which also calls :meth:`epoch`); ``train(...,
    RunOptions(out, tensorboard=True))`` and ``python -m deqkit.train mnist --tensorboard`` make one in
    ``<out>/tensorboard``.
    The x axis of every scalar is the number of optimiser steps done: ``step/<key>`` after each step (this
    process's batch, as the callback receives it), ``epoch/<field>`` at the end of each epoch, one per
    column of :data:`~deqkit.train.METRIC_FIELDS`.

    Parameters
    ----------
    folder : str or os.PathLike
        Where the event files go (``tensorboard --logdir <folder>`` shows them).
    continue_after : int, optional
        For a resumed run: the optimiser steps it had done. Whatever the interrupted run logged after that
        step is hidden (TensorBoard's own purge, ``purge_step``), so that the resumed steps are not shown
        twice. None: a fresh run.
    overwrite : bool
        For a fresh run: remove the event files already in ``folder`` (an earlier run's). Without it, such
        files are an error: they are not this log's to delete.

    Raises
    ------
    ImportError
        If the ``tensorboard`` package is missing (see :func:`check_tensorboard`).
    FileExistsError
        For a fresh run, if ``folder`` holds event files and ``overwrite`` is False.
    """

    STEP_KEYS = ("loss", "acc", "fwd_nfe", "bwd_nfe", "unconverged", "lr", "jac_penalty")
    EPOCH_KEYS = tuple(f for f in METRIC_FIELDS if f != "epoch")

    def __init__(
        self, folder: str | os.PathLike, *, continue_after: int | None = None, overwrite: bool = False
    ) -> None:
        summary_writer = check_tensorboard()
        folder = pathlib.Path(folder)
        if continue_after is None:
            earlier = sorted(folder.glob("events.out.tfevents.*"))
            if earlier and not overwrite:
                raise FileExistsError(
                    f"{folder} holds {len(earlier)} event file(s) of an earlier run: pass "
                    "overwrite=True (RunOptions(start='overwrite') in train(), --overwrite) to replace them, or log "
                    "to another folder"
                )
            for old in earlier:
                old.unlink()
        self.folder = folder
        fresh = continue_after is None
        # creating the event file writes to it: a full disk fails here already, before any checkpoint exists
        with self._writing(
            "Free some space and start the run again" if fresh else "Free some space and resume the run (--resume)"
        ):
            try:
                purge_step = None if continue_after is None else continue_after + 1
                self.writer = summary_writer(log_dir=str(folder), purge_step=purge_step)
            except OSError:
                if fresh:  # the folder held no event file (checked above): what is there now is this failed start's
                    for partial in folder.glob("events.out.tfevents.*"):
                        partial.unlink(missing_ok=True)
                raise

    def __call__(self, info: dict[str, Any]) -> None:
        """Log one step from the dict :func:`deqkit.train.train` passes its ``callback``."""
        with self._writing():
            for key in self.STEP_KEYS:
                if info.get(key) is not None:  # jac_penalty only in runs that compute it
                    self.writer.add_scalar(f"step/{key}", info[key], info["global_step"] + 1)

    def epoch(self, row: MetricRow, steps_done: int) -> None:
        """Log an epoch's row of :data:`~deqkit.train.METRIC_FIELDS` at ``steps_done`` optimiser steps."""
        with self._writing():
            for key in self.EPOCH_KEYS:
                if row.get(key) is not None:
                    self.writer.add_scalar(f"epoch/{key}", row[key], steps_done)

    def flush(self) -> None:
        """Write what is queued to the event file (:func:`~deqkit.train.train` does before each checkpoint)."""
        with self._writing():
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        with self._writing():
            self.writer.close()

    @contextlib.contextmanager
    def _writing(self, fix: str = "Free some space and resume the run (--resume)") -> Iterator[None]:
        """A failed write of the event file (its writer thread's error, e.g. a full disk, surfaces at the next
        call) is a :class:`~deqkit.RunFolderError` naming the folder, its free space and ``fix``, not a raw
        ``OSError``."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, RunFolderError):
                raise
            try:
                free = f"{shutil.disk_usage(self.folder).free / 1e6:.1f} MB free"
            except OSError:
                free = "free space unknown"
            raise RunFolderError(
                f"TensorBoard could not write its event file in {self.folder} ({type(exc).__name__}: "
                f"{exc}); that disk has {free}. {fix}, or run without --tensorboard."
            ) from exc
