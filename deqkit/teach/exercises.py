"""Checking a learner's answer to a notebook exercise, Neuromatch style.

Every exercise in the notebooks is three cells, tagged in their metadata:

* ``exercise`` — the learner's code cell: a stub that sets the answer variables to ``...`` (Ellipsis). Its cell
  metadata carries ``{"deqkit": {"wrong": "<code>"}}``: a plausible wrong answer, which the test suite injects
  to prove that the check can fail.
* ``solution`` — a markdown cell, collapsed, holding the solution as one fenced ``python`` block inside
  ``<details>``; it is never executed in the notebook (the learner's variables stay the learner's).
* ``check`` — a code cell that calls :func:`check` on the learner's variables.

Run as shipped, the stub's answers are ``...``: :func:`check` prints "not answered yet" and the notebook goes on.
A wrong answer (or one whose code raises) prints "not quite. <what to look at>" and the notebook goes on too: the
check returns a :class:`CheckResult` whose ``passed`` is False, it never raises. ``tests/test_exercises.py`` runs
each exercise with the stub, the wrong answer and the solution injected into the exercise cell, and asserts on
the printed message and on :data:`last`'s ``passed``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ExerciseError

__all__ = ["CheckResult", "ExerciseError", "check", "solution_code", "yours_or_kit"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one :func:`check`.

    Attributes
    ----------
    name : str
        The exercise's title.
    answered : bool
        False while any answer is still ``...``.
    passed : bool
        True when answered and right. ``bool(result)`` is the same.
    message : str
        What was printed for the learner.
    """

    name: str
    answered: bool
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed


last: CheckResult | None = None  # the latest check run in this kernel: what tests/test_exercises.py reads


def check(name: str, answers: dict[str, object], test: Callable[..., str | None]) -> CheckResult:
    """Check a learner's answers and print the verdict; never raise, so that Run All goes on.

    Parameters
    ----------
    name : str
        The exercise's title, repeated in every message.
    answers : dict
        The learner's variables by name, e.g. ``{"rate": rate}``.
    test : callable
        Called with the answers as keyword arguments once all are given. Returns None when they are right, or a
        message (what is wrong and what to look at) when they are not.

    Returns
    -------
    CheckResult
        ``.passed`` is True when answered and right; False when not answered yet, wrong, or when the learner's
        code raised (the error is part of the printed feedback). Also kept in :data:`last`.
    """
    global last
    missing = [key for key, value in answers.items() if value is ...]
    if missing:
        message = f"{name}: not answered yet (set {', '.join(missing)} in the exercise cell, then run this cell again)"
        answered = passed = False
    else:
        answered = True
        try:
            problem = test(**answers)
        except Exception as err:  # the learner's code failed inside the check: that is feedback too
            problem = f"your answer raised {type(err).__name__}: {err}"
        passed = not problem
        message = f"{name}: correct." if passed else f"{name}: not quite. {problem}"
    print(message)
    last = CheckResult(name, answered, passed, message)
    return last


def yours_or_kit(result: CheckResult, yours: object, kit: object) -> object:
    """Return the learner's answer once its check has passed, else the kit's own (and say so).

    Later cells of a notebook can then build on the learner's code without stopping Run All while it is missing
    or wrong.
    """
    if result.passed:
        return yours
    print(
        f"Until yours passes, the cells below use the kit's {getattr(kit, '__qualname__', kit)} "
        f"(from {getattr(kit, '__module__', 'deqkit')})."
    )
    return kit


_FENCE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def solution_code(markdown: str) -> str:
    """Return the code of a ``solution`` cell: the first fenced ``python`` block of its markdown.

    Raises
    ------
    ValueError
        If the markdown holds no such block.
    """
    found = _FENCE.search(markdown)
    if found is None:
        raise ValueError("a solution cell must hold its code in a ```python fenced block")
    return found.group(1)
