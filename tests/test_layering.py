"""The layering of docs/architecture.md is enforced: import-linter's contracts in pyproject.toml are kept by the code,
a deliberate violation of each is reported, and the doc's table, the ``layers`` contract and the modules of
``deqkit/`` agree."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deqkit"
DOC = ROOT / "docs" / "architecture.md"
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {contract["id"]: contract for contract in CONFIG["contracts"]}


def lint_imports(cwd: Path, *contract_ids: str) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` (this interpreter's import-linter) on the ``deqkit`` found in ``cwd``, without a cache."""
    limit = [arg for cid in contract_ids for arg in ("--contract", cid)]
    command = [
        sys.executable,
        "-c",
        "from importlinter.cli import lint_imports_command as c; c()",
        "--no-cache",
        "--no-logo",
        *limit,
    ]
    # lint-imports puts its working directory first on sys.path: the deqkit analysed is the one in cwd
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for contract in CONTRACTS.values():
        assert re.search(rf"{re.escape(contract['name'])} KEPT", result.stdout), result.stdout


# (contract broken, file under deqkit/ to append to (created if missing), the line appended, text of the report)
VIOLATIONS = {
    "upward import": ("layers", "errors.py", "from deqkit.teach import limits", "deqkit.errors -> deqkit.teach"),
    "import within a row": (
        "layers",
        "measure.py",
        "from deqkit import diagnostics",
        "deqkit.measure -> deqkit.diagnostics",
    ),
    "module missing from the table": ("layers", "extra.py", "import torch", "deqkit.extra"),
    "panels import the CLI": ("cli", "teach/widgets.py", "from deqkit.train import __main__", "deqkit.train.__main__"),
    "torchdiffeq outside its seam": ("torchdiffeq-seam", "layer.py", "import torchdiffeq", "deqkit.layer"),
    "import cycle": ("acyclic", "train/checkpoint.py", "from deqkit.train import loop", "deqkit.train"),
}


@pytest.mark.parametrize("case", VIOLATIONS)
def test_a_violation_of_each_contract_is_reported(case, tmp_path):
    """The real contracts on a copy of deqkit with one import added: lint-imports fails and names it."""
    contract_id, path, line, reported = VIOLATIONS[case]
    shutil.copytree(PACKAGE, tmp_path / "deqkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path, contract_id).returncode == 0  # the copy keeps the contract before the edit
    target = tmp_path / "deqkit" / path
    with target.open("a") as file:
        file.write(f"\n{line}\n")
    result = lint_imports(tmp_path, contract_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CONTRACTS[contract_id]['name']} BROKEN" in result.stdout and reported in result.stdout, result.stdout


def doc_table() -> list[tuple[str, list[str]]]:
    """The rows of the doc's table "Where each concept lives": (layer cell, paths named in the module cell).

    A path that starts with a folder of the repository root (``deqkit/``, ``notebooks/``, ``tests/``) is from the
    root, any other (``solvers/core.py``) from ``deqkit/``; a bare name (``anderson.py``, ``welcome``) is a module in
    the folder of the path before it, and a ``<placeholder>`` only sets that folder."""
    section = DOC.read_text().split("## Where each concept lives", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or cells[0] in ("layer", "---"):
            continue
        paths, folder = [], None
        for token in re.findall(r"`([^`]+)`", cells[1]):
            if "/" in token:
                path = token if (ROOT / token.split("/")[0]).is_dir() else f"deqkit/{token}"
                folder = path.rstrip("/") if path.endswith("/") else path.rsplit("/", 1)[0]
                if "<" not in path:
                    paths.append(path)
            else:
                assert folder, f"{DOC.name}: {token!r} names no folder before it: {line}"
                paths.append(f"{folder}/{token if token.endswith('.py') else token + '.py'}")
        rows.append((cells[0], paths))
    assert rows, f"{DOC.name} has no table under 'Where each concept lives'"
    return rows


def real_top_level() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()
    }


def doc_layers() -> list[set[str]]:
    """The table's layers, top to bottom, as sets of deqkit's top-level names; a row without a layer name continues
    the one above; entry points (``__main__.py``) and notebooks are no layer's members (see the ``cli`` contract)."""
    layers: list[set[str]] = []
    for label, paths in doc_table():
        if label:
            layers.append(set())
        layers[-1] |= {
            Path(p).parts[1].removesuffix(".py")
            for p in paths
            if p.startswith("deqkit/") and not p.endswith("__main__.py")
        }
    return [layer for layer in layers if layer]


def test_every_path_the_table_names_exists():
    for _, paths in doc_table():
        for path in paths:
            assert list(ROOT.glob(path)), f"{DOC.name} names {path}, which does not exist"


def test_the_table_names_every_module_of_deqkit_once():
    named = [name for layer in doc_layers() for name in layer]
    assert sorted(named) == sorted(set(named)), f"{DOC.name} puts a module in two layers: {named}"
    assert set(named) == real_top_level(), (
        f"{DOC.name}'s table and deqkit/ differ: only in the doc {sorted(set(named) - real_top_level())}, "
        f"only in deqkit/ {sorted(real_top_level() - set(named))}"
    )


def test_packages_listed_file_by_file_are_listed_completely():
    """A package the table names as a folder (``deqkit/train/``) is one entry; one named file by file
    (``solvers``, ``teach``) must name each of its modules."""
    paths = [p for _, row in doc_table() for p in row if p.startswith("deqkit/")]
    as_folders = {Path(p).parts[1] for p in paths if p.endswith("/")}
    by_file: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(path).parts
        if len(parts) == 3 and parts[1] not in as_folders:
            by_file.setdefault(parts[1], set()).add(Path(path).stem)
    assert by_file, "the table names no package file by file"
    for package, named in by_file.items():
        real = {p.stem for p in (PACKAGE / package).glob("*.py")}
        assert named - {"__init__"} == real - {"__init__"}, (
            f"{DOC.name} lists deqkit/{package}/ file by file but differs from it: only in the doc "
            f"{sorted(named - real)}, only in deqkit/{package}/ {sorted(real - named - {'__init__'})}"
        )


def test_the_layers_contract_is_the_table():
    contract = CONTRACTS["layers"]
    assert contract["type"] == "layers" and contract["containers"] == ["deqkit"] and contract.get("exhaustive")
    assert not any(":" in layer for layer in contract["layers"]), "modules in one row must be independent ('|')"
    in_contract = [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]
    assert in_contract == doc_layers(), f"pyproject.toml's layers {in_contract} != {DOC.name}'s {doc_layers()}"


def test_the_doc_names_the_contracts_and_the_cli_contract_names_the_doc_entry_point():
    text = DOC.read_text()
    assert "[tool.importlinter]" in text and "pyproject.toml" in text and "tests/test_layering.py" in text
    entry_points = {
        p.removesuffix(".py").replace("/", ".") for _, row in doc_table() for p in row if p.endswith("__main__.py")
    }
    assert entry_points and entry_points == set(CONTRACTS["cli"]["forbidden_modules"])
