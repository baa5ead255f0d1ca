"""Committed notebooks: outputs stripped, every one wired for the browser test and checked by nbval."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; clear them (Edit > Clear All Outputs), then commit"
    assert "widgets" not in nb.metadata, f"{path.name}: stored widget state; strip it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_wired_for_the_browser_test_and_checks_its_widgets(path):
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert source.count("primary=") == 1, (
        f"{path.name}: mark exactly one slider for the browser test to move (LiveFigure(..., primary=...))"
    )
    assert "sweep(" in source, f"{path.name}: end with a cell that sweeps every widget (tests.teach.harness.sweep)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_only_test_cells_import_the_test_harness(path):
    # a learner's lesson cells run from an installed deqkit; the harness lives in the repository's tests/
    lesson = [
        c.get("id")
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "code" and "from tests." in c.source and "test" not in c.metadata.get("tags", [])
    ]
    assert not lesson, f"{path.name}: cells {lesson} import from tests/ but are not tagged 'test'"
