"""``python -m benchmarks <name> [options]``: run one benchmark module (``--help`` after the name for its options).

    python -m benchmarks                     # list the benchmarks
    python -m benchmarks forward --repeats 15
    python -m benchmarks ode_baseline
    python -m benchmarks training_step
    python -m benchmarks seed_regression --epochs 100

Every module of this package with a ``main(argv)`` is a benchmark; the list shows the start of its docstring.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).parent


def benchmarks() -> dict[str, str]:
    """Benchmark name -> first sentence of its docstring, found without importing the modules."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            first = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
            found[path.stem] = first.split(". ")[0].split(";")[0].rstrip(".")
    return found


def usage() -> str:
    names = benchmarks()
    width = max(map(len, names), default=0)
    lines = [__doc__.strip(), "", "benchmarks:"]
    lines += [f"  {name:<{width}}  {what}" for name, what in names.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in benchmarks():
        print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    result = importlib.import_module(f"benchmarks.{name}").main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
