"""Every exercise of every notebook can be passed and can be failed.

An exercise is three cells (see :mod:`deqkit.teach.exercises`): an ``exercise``-tagged code cell (the learner's
stub, with a plausible wrong answer in its metadata ``deqkit.wrong`` and, in ``deqkit.expect``, a phrase the check's
message for it must contain: the misconception it names), a ``solution``-tagged markdown cell (the
solution in a collapsed ``<details>``, one fenced ``python`` block) and a ``check``-tagged code cell.

Each notebook runs in one kernel (fast mode), its cells executed once, in order, up to each exercise; ``test``-tagged
cells (the widget sweeps and claim checks, run by nbval) are skipped. At each exercise three tests run the check: on
the stub as shipped (it says "not answered yet" and does not fail), on the wrong answer injected into the exercise
cell (it prints "not quite" with the expected message, returns a failed result and does not raise: Run All goes
on) and on the solution injected there (it passes); each time the test also reads
``deqkit.teach.exercises.last.passed``. Finally the same kernel runs the rest of the notebook, still without its
``test`` cells: the learner's path must not depend on hidden cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from deqkit.teach.exercises import solution_code

pytestmark = pytest.mark.slow  # each case executes a notebook in a fresh kernel: 2-18 s

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
VARIANTS = ("stub", "wrong", "solution")  # in this order: the kernel is left with the solution's state
CELL_TIMEOUT_S = 600


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


@dataclass(frozen=True)
class Exercise:
    """Where one exercise's cells are, and the code the tests inject."""

    notebook: Path
    number: int  # 1, 2, ... within the notebook
    cell: int  # index of the exercise cell
    check: int  # index of its check cell
    stub: str
    solution: str
    wrong: str
    expect: str  # a phrase of the check's message for the wrong answer

    @property
    def id(self) -> str:
        return f"{self.notebook.stem}-ex{self.number}"


def _exercises(path: Path) -> list[Exercise]:
    """Parse a notebook's exercises; a malformed one fails with the cell index and what is missing."""
    cells = nbformat.read(path, as_version=4).cells
    found = []
    for i, cell in enumerate(cells):
        if "exercise" not in _tags(cell):
            continue
        where = f"{path.name}, cell {i}"
        assert cell.cell_type == "code", f"{where}: an exercise cell must be a code cell"
        wrong = cell.metadata.get("deqkit", {}).get("wrong")
        assert wrong, f'{where}: give a plausible wrong answer in the cell metadata {{"deqkit": {{"wrong": ...}}}}'
        expect = cell.metadata.get("deqkit", {}).get("expect")
        assert expect, f'{where}: say what the check must answer to the wrong one: {{"deqkit": {{"expect": ...}}}}'
        following = list(enumerate(cells))[i + 1 :]
        solution = next((c for _, c in following if "solution" in _tags(c)), None)
        check = next((j for j, c in following if "check" in _tags(c)), None)
        assert solution is not None and check is not None, f"{where}: needs a solution cell and a check cell after it"
        nxt = next((j for j, c in following if "exercise" in _tags(c)), len(cells))
        assert check < nxt, f"{where}: its check cell comes after the next exercise"
        assert solution.cell_type == "markdown" and "<details>" in solution.source, (
            f"{where}: the solution must be a markdown cell collapsed in <details> (off the learner's path)"
        )
        assert "check(" in cells[check].source, f"{where}: the check cell must call deqkit.teach.exercises.check"
        found.append(
            Exercise(path, len(found) + 1, i, check, cell.source, solution_code(solution.source), wrong, expect)
        )
    return found


EXERCISES = {path: _exercises(path) for path in NOTEBOOKS}
CASES = [
    pytest.param(ex, variant, id=f"{ex.id}-{variant}")
    for exercises in EXERCISES.values()
    for ex in exercises
    for variant in VARIANTS
]


def test_every_notebook_has_an_exercise_and_there_are_at_least_six():
    missing = [path.name for path, exercises in EXERCISES.items() if not exercises]
    assert not missing, f"notebooks without an exercise-tagged cell: {missing}"
    assert sum(map(len, EXERCISES.values())) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stubs_leave_the_answers_open(path):
    for ex in EXERCISES[path]:
        assert "= ..." in ex.stub, f"{ex.id}: the stub must set its answers to ... (Ellipsis)"
        assert "= ..." not in ex.solution and ex.solution.strip() != ex.wrong.strip(), ex.id


class NotebookRunner:
    """One kernel on one notebook; executes its cells in order, once, up to the exercise a test asks for."""

    def __init__(self, path: Path):
        self.nb = nbformat.read(path, as_version=4)
        self.client = NotebookClient(
            self.nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        )
        self.client.km = self.client.create_kernel_manager()
        self.client.start_new_kernel()
        self.client.start_new_kernel_client()
        self.cursor = 0  # cells before it have been executed

    def run(self, source: str, index: int) -> nbformat.NotebookNode:
        """Execute ``source`` as cell ``index``; return the cell with its outputs."""
        cell = nbformat.v4.new_code_cell(source)
        return self.client.execute_cell(cell, index)

    def advance_to(self, index: int) -> None:
        """Execute every code cell before ``index`` not yet executed, except ``test``-tagged ones."""
        assert self.cursor <= index, "exercises must be run in notebook order"
        for i in range(self.cursor, index):
            cell = self.nb.cells[i]
            if cell.cell_type == "code" and "test" not in _tags(cell):
                self.client.execute_cell(cell, i)
        self.cursor = index

    def close(self) -> None:
        self.client._cleanup_kernel()


@pytest.fixture(scope="module")
def runners():
    """A kernel per notebook, started on first use; restarted if a test asks for an earlier exercise."""
    started: dict[Path, NotebookRunner] = {}

    def get(notebook: Path, cell: int) -> NotebookRunner:
        runner = started.get(notebook)
        if runner is None or runner.cursor > cell:
            if runner is not None:
                runner.close()
            runner = started[notebook] = NotebookRunner(notebook)
        return runner

    yield get
    for runner in started.values():
        runner.close()


def _text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.get("output_type") == "stream")


@pytest.mark.parametrize("ex,variant", CASES)
def test_exercise(runners, ex: Exercise, variant: str):
    runner = runners(ex.notebook, ex.cell)
    runner.advance_to(ex.cell)
    runner.run({"stub": ex.stub, "wrong": ex.wrong, "solution": ex.solution}[variant], ex.cell)
    probe = "\nimport deqkit.teach.exercises as _ex\nprint('check passed:', _ex.last.passed)"
    out, _, passed = _text(runner.run(runner.nb.cells[ex.check].source + probe, ex.check)).rpartition("check passed: ")
    passed = passed.strip()
    expected = {"stub": "not answered yet", "wrong": "not quite", "solution": "correct"}[variant]
    assert expected in out, f"{ex.id}: with the {variant} the check printed {out!r}"
    assert passed == str(variant == "solution"), f"{ex.id}: with the {variant} the check's result says {passed}"
    if variant == "wrong":
        assert ex.expect in out, f"{ex.id}: the message for the wrong answer should contain {ex.expect!r}: {out!r}"
        assert "your answer raised" not in out, f"{ex.id}: the wrong answer should be wrong, not crash: {out!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_learner_path_runs_without_the_test_cells(runners, path):
    """Cells on the learner's path never depend on ``test``-tagged (hidden) cells: run to the end without them."""
    runner = runners(path, len(nbformat.read(path, as_version=4).cells))
    runner.advance_to(len(runner.nb.cells))
