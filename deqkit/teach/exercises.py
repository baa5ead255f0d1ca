"""Checking a learner's answer to a notebook exercise, Neuromatch style.

Every exercise in the notebooks is three cells, tagged in their metadata:

* ``exercise`` — the learner's code cell: a stub that sets the answer variables to ``...`` (Ellipsis). Its cell
  metadata carries ``{"deqkit": {"wrong": "<code>"}}``: a plausible wrong answer, which the test suite injects
  to prove that the check can fail.
* ``solution`` — a markdown cell, collapsed, holding the solution as one fenced ``python`` block inside
  ``<details>``; it is never executed in the notebook (the learner's variables stay the learner's).
* ``check`` — a code cell that calls :func:`check` on the learner's variables.

Run as shipped, the stub's answers are ``...``: :func:`check` prints "not answered yet" and the notebook goes on.
``tests/test_exercises.py`` runs each exercise twice, with the solution and with the wrong answer injected into
the exercise cell, and requires the check to pass and to fail with its message.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import ExerciseError

__all__ = ["ExerciseError", "check", "solution_code"]


def check(name: str, answers: dict[str, object], test: Callable[..., str | None]) -> bool:
    """Check a learner's answers; say "not answered yet" while any is still ``...``.

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
    bool
        True when answered and right; False when not answered yet.

    Raises
    ------
    ExerciseError
        When every answer is given and ``test`` returns a message.
    """
    missing = [key for key, value in answers.items() if value is ...]
    if missing:
        print(f"{name}: not answered yet (set {', '.join(missing)} in the exercise cell, then run this cell again)")
        return False
    problem = test(**answers)
    if problem:
        raise ExerciseError(f"{name}: not quite. {problem}")
    print(f"{name}: correct.")
    return True


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
