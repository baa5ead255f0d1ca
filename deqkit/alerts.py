"""Warnings about non-converged solves of one layer, told once and then summarised, so a training loop is not flooded.

A layer's first call that leaves samples unconverged warns with the solver's full message; later ones are counted,
and a summary with the counts is issued after 10, 100, 1000, ... such calls. Every warning issued goes
through :func:`warnings.warn` as a :class:`~deqkit.ConvergenceWarning`, so filters apply to it as usual: ``"error"``
raises at the first failing call and at each summary (the calls in between are counted, not warned about), ``"ignore"``
hides them. To raise at every call with unconverged samples, use ``strict=True``.
"""

from __future__ import annotations

import warnings

from .errors import ConvergenceWarning, user_stacklevel
from .stats import SolverStats


class ConvergenceAlerts:
    """Counts one solve direction's unconverged samples for a layer and warns on the schedule above.

    Parameters
    ----------
    what : str
        ``"forward"`` or ``"backward"``, for the messages.
    advice : str
        What to change, appended to every summary.
    """

    def __init__(self, what: str, advice: str):
        self.what, self.advice = what, advice
        self.failing = 0  # calls with unconverged samples, ever
        self.next = 1  # the failing call at which the next warning is issued
        self._reset()

    def _reset(self) -> None:
        self.calls = self.calls_failing = self.samples = self.unconverged = 0

    def observe(self, stats: SolverStats) -> None:
        """Count one call whose samples all converged (:meth:`warn` counts the others)."""
        self.calls += 1
        self.samples += stats.converged.numel()

    def warn(self, message: str, stats: SolverStats) -> None:
        """A call with unconverged samples: warn now if it is due, else count it for the next summary."""
        self.observe(stats)
        self.failing += 1
        self.calls_failing += 1
        self.unconverged += stats.converged.numel() - stats.num_converged
        if self.failing < self.next:
            return
        if self.failing == 1:
            text = (
                f"{message} Further {self.what} solves of this layer that leave samples unconverged are counted "
                "and summarised (after 10, 100, 1000, ... of them); `last_stats` holds every call's counts."
            )
        else:
            text = (
                f"{self.calls_failing} of this layer's last {self.calls} {self.what} solves left samples "
                f"unconverged: {self.unconverged} of {self.samples} samples in all. The latest: {message} "
                f"{self.advice} The next summary comes after {10 * self.next} such solves."
            )
        self.next *= 10
        self._reset()
        warnings.warn(text, ConvergenceWarning, stacklevel=user_stacklevel())
