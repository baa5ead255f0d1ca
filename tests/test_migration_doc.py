"""docs/torchdeq.md ("Coming from TorchDEQ"): every deqkit snippet runs, in order, in one namespace, as CI's
reader would paste them; the TorchDEQ halves run too where TorchDEQ is installed (it is not a dependency)."""

import importlib.util
import re
from pathlib import Path

import pytest

import deqkit
import deqkit.models

DOC = Path(__file__).resolve().parents[1] / "docs" / "torchdeq.md"
TEXT = DOC.read_text()
DEQKIT = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
TORCHDEQ = re.findall(r"```\{code-block\} python\n:caption: TorchDEQ\n\n(.*?)```", TEXT, flags=re.S)


def test_the_page_is_in_the_site_and_pairs_each_torchdeq_snippet_with_deqkit():
    index = (DOC.parent / "index.md").read_text()
    assert "torchdeq.md" in index and re.search(r"```\{toctree\}[^`]*\btorchdeq\b", index)
    assert len(TORCHDEQ) == 5 and len(DEQKIT) == 5


def test_every_deqkit_snippet_runs(capsys):
    namespace: dict = {}
    for i, block in enumerate(DEQKIT):
        exec(compile(block, f"{DOC.name}[python block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "converged" in out and "correction loss" in out


def test_every_deqkit_name_the_tables_use_exists():
    """The tables name deqkit functions and objects: each one must exist (a renamed API fails here)."""
    names = set(re.findall(r"`deqkit\.(\w+)", TEXT))
    assert {"normalize", "remove_normalization", "jacobian_penalty", "spectral_radius", "Phantom"} <= names
    missing = [n for n in names if not hasattr(deqkit, n) and n not in ("solvers", "models")]
    assert not missing, missing
    assert hasattr(deqkit.solvers, "register") and hasattr(deqkit.models, "mdeq")


@pytest.mark.skipif(importlib.util.find_spec("torchdeq") is None, reason="TorchDEQ is not installed here")
def test_each_torchdeq_snippet_runs_after_its_deqkit_half():
    """Side by side for real: each TorchDEQ block runs with the names its deqkit half defined (block, x, ...)."""
    namespace: dict = {}
    for i, (ours, theirs) in enumerate(zip(DEQKIT, TORCHDEQ)):
        exec(compile(ours, f"{DOC.name}[python block {i}]", "exec"), namespace)
        exec(compile(theirs, f"{DOC.name}[TorchDEQ block {i}]", "exec"), namespace)
        if "z_out" in theirs:
            assert isinstance(namespace["z_out"], list)
