"""Callbacks for :func:`deqkit.train.train`: called after every optimiser step with that step's numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StepLog"]


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
    """

    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    fwd_nfe: list[int] = field(default_factory=list)
    bwd_nfe: list[int] = field(default_factory=list)
    unconverged: int = 0

    def __call__(self, info: dict[str, Any]) -> None:
        """Record one step from the dict :func:`deqkit.train.train` passes its ``callback``."""
        self.loss.append(info["loss"])
        self.acc.append(info["acc"])
        self.fwd_nfe.append(info["fwd_nfe"])
        self.bwd_nfe.append(info["bwd_nfe"])
        self.unconverged += info["unconverged"]
