"""Warnings and errors raised by deqkit.

Every message says what happened, where, and what to try next, so that a learner who meets one in a notebook
knows how to react without reading the source.
"""

from __future__ import annotations

import inspect
import os

__all__ = [
    "ConvergenceWarning",
    "ConvergenceError",
    "DivergenceError",
    "CheckpointError",
    "RunFolderError",
    "MNISTError",
    "ExerciseError",
    "StepFailure",
]


class ConvergenceWarning(RuntimeWarning):
    """Some samples did not reach the tolerance within ``max_steps``; their best iterate is returned."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when a solve is run with ``strict=True``."""


class DivergenceError(FloatingPointError):
    """An iterate became NaN or infinite; raised at once, with the step at which it happened."""


class StepFailure(RuntimeError):
    """torchdiffeq refused an ODE step (step size underflow, non-finite state).

    Raised by :mod:`deqkit.solvers.torchdiffeq_adapter`; ``dynamic_ss`` turns it into a :class:`DivergenceError`
    that says what it means for the fixed point.
    """


class ExerciseError(AssertionError):
    """A notebook exercise was answered, and the answer is wrong; the message says what to look at."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not belong to the run that tries to resume from it."""


class RunFolderError(CheckpointError, OSError):
    """A training run's folder cannot be written: not a folder, not writable, or its disk is full.

    Also an ``OSError``. The message names the folder (for a failed write, also the free space on its disk);
    an atomic write that fails leaves the previous file intact.
    """


class MNISTError(RuntimeError):
    """An MNIST file is missing, corrupt or could not be downloaded; the message says how to fix it."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning, issued by the caller of this function, point at the first frame
    outside deqkit and torch (stacklevel 1 is that caller's own frame)."""
    level = 1
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_PACKAGE_DIR) or f"{os.sep}torch{os.sep}" in name):
            return level
        frame = frame.f_back
        level += 1
    return level
