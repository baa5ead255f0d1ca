"""The exercise check: unanswered, wrong and right answers; the solution cell's code."""

import pytest

from deqkit.errors import ExerciseError
from deqkit.teach.exercises import check, solution_code


def _is_two(x):
    return None if x == 2 else f"x is {x}, look again"


def test_unanswered_says_so_and_goes_on(capsys):
    assert check("ex", {"x": ...}, _is_two) is False
    assert "not answered yet (set x" in capsys.readouterr().out


def test_wrong_raises_with_the_message_and_right_passes(capsys):
    with pytest.raises(ExerciseError, match="ex: not quite. x is 3, look again"):
        check("ex", {"x": 3}, _is_two)
    assert check("ex", {"x": 2}, _is_two) is True and "ex: correct." in capsys.readouterr().out


def test_solution_code_is_the_fenced_block():
    md = "<details><summary>Solution</summary>\n\n```python\nx = 2\n```\n</details>"
    assert solution_code(md) == "x = 2\n"
    with pytest.raises(ValueError, match="fenced block"):
        solution_code("no code here")
