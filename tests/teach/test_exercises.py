"""The exercise check: unanswered, wrong, raising and right answers; the solution cell's code."""

import pytest

from deqkit.teach import exercises
from deqkit.teach.exercises import check, solution_code


def _is_two(x):
    return None if x == 2 else f"x is {x}, look again"


def test_unanswered_says_so_and_goes_on(capsys):
    result = check("ex", {"x": ...}, _is_two)
    assert not result.passed and not result.answered and not result
    assert "not answered yet (set x" in capsys.readouterr().out


def test_wrong_prints_the_message_and_fails_without_raising(capsys):
    result = check("ex", {"x": 3}, _is_two)
    assert result.answered and not result.passed and not result and exercises.last is result
    assert "ex: not quite. x is 3, look again" in capsys.readouterr().out
    result = check("ex", {"x": 2}, _is_two)
    assert result.passed and result and exercises.last is result and "ex: correct." in capsys.readouterr().out


def test_an_answer_that_raises_is_feedback_not_a_traceback(capsys):
    result = check("ex", {"fn": lambda: 1 / 0}, lambda fn: fn())
    assert not result.passed
    assert "ex: not quite. your answer raised ZeroDivisionError: division by zero" in capsys.readouterr().out


def test_solution_code_is_the_fenced_block():
    md = "<details><summary>Solution</summary>\n\n```python\nx = 2\n```\n</details>"
    assert solution_code(md) == "x = 2\n"
    with pytest.raises(ValueError, match="fenced block"):
        solution_code("no code here")
