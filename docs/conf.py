"""Sphinx configuration of the deqkit site: ``bash scripts/docs.sh`` builds it into ``docs/_build/html``.

Why these tools: Sphinx is the Python ecosystem's documentation builder (autodoc reads the docstrings from the
code, so the API reference cannot drift from it); MyST-NB executes the notebooks at build time and renders their
outputs, and reads Markdown pages; numpydoc renders the NumPy-style docstrings as NumPy, SciPy and scikit-learn
do; pydata-sphinx-theme is the maintained theme of those projects. Jupyter Book 2 was the alternative: it builds on
a Node.js toolchain (mystmd) without Sphinx's autodoc, a second ecosystem for a weaker API page.

Notebooks run in their fast mode (``DEQKIT_FAST=1``). A notebook whose metadata says
``{"deqkit": {"requires": ["mnist"]}}`` is executed only when MNIST can be loaded (found or downloaded); otherwise
it is shown without outputs, its page says so, the build log says so, and ``_build/html/deqkit-build.json``
records it for the site test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's deqkit, also without an editable install
# ... and run the notebooks on it (the kernels inherit the environment)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("DEQKIT_FAST", "1")
# notebooks draw with the inline backend (a CI-wide MPLBACKEND=Agg would leave the pages without figures)
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

import deqkit  # noqa: E402

logger = logging.getLogger("deqkit-docs")

project = "deqkit"
author = "deqkit contributors"
copyright = "deqkit contributors, MIT licence"
release = version = deqkit.__version__

extensions = [
    "myst_nb",  # Markdown pages and executed notebooks (also loads myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
]
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]
root_doc = "index"

# --- notebooks -------------------------------------------------------------------------------------------------
nb_execution_mode = "force"  # the notebooks are committed without outputs: every build runs them
nb_execution_timeout = 600  # per cell; a fast-mode notebook takes under a minute on two cores
nb_execution_raise_on_error = True  # a failing notebook fails the build
nb_execution_show_tb = True
nb_merge_streams = True
# Widgets: the static page cannot run them (no kernel, and no CDN for the ipywidgets JavaScript offline).
# deqkit's LiveFigure also returns text/html (its plot as a PNG, the readout and the controls' values): prefer it
# over the widget view, and load no widget JavaScript.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_ipywidgets_js: dict = {}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# Not nitpicky (yet): the docstring of deqkit.solve refers to the solver classes Picard, Anderson, Broyden and
# DynamicSS, which deqkit does not export, so those references cannot resolve. Unresolved references render as
# plain text (never as broken links); set nitpicky = True once every docstring reference names a public object.
nitpicky = False

# --- API reference ---------------------------------------------------------------------------------------------
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections say the types
numpydoc_show_class_members = False  # DEQ is an nn.Module: list its own documented members, not torch's
numpydoc_xref_param_type = False
numpydoc_validation_checks: set = set()
intersphinx_mapping: dict = {}  # offline builds: no inventories fetched

# --- theme -----------------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"deqkit {release}"
html_static_path: list[str] = []
# MathJax from the site itself when scripts/docs.sh has copied it there (the default, a CDN, leaves every formula as
# raw LaTeX on a machine without network); tests/browser/test_site.py checks that every formula is typeset offline
if (Path(__file__).parent / "_static" / "mathjax" / "tex-chtml.js").is_file():
    html_static_path = ["_static"]
    mathjax_path = "mathjax/tex-chtml.js"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False

# Progress bars: a static page can only show a tqdm bar widget as its text when it appeared ("0%"). tqdm's own
# TQDM_DELAY setting (read by the kernels, which inherit it) holds every bar back for longer than any build, so the
# pages show none; the training cells print their per-epoch summary lines anyway.
os.environ.setdefault("TQDM_DELAY", "1e9")

# --- what this build can run -----------------------------------------------------------------------------------

NOTEBOOKS = sorted((DOCS / "notebooks").glob("*.ipynb"))


def _requires(path: Path) -> list[str]:
    return list((json.loads(path.read_text()).get("metadata", {}).get("deqkit") or {}).get("requires", []))


def _mnist_missing() -> str | None:
    """Why MNIST cannot be loaded here (found or downloaded as the notebooks would), or None."""
    from deqkit.data import mnist_unavailable

    return mnist_unavailable()


NOT_EXECUTED: dict[str, str] = {}
if any("mnist" in _requires(p) for p in NOTEBOOKS) and (why := _mnist_missing()):
    for p in NOTEBOOKS:
        if "mnist" in _requires(p):
            NOT_EXECUTED[f"notebooks/{p.stem}"] = f"MNIST is not available ({why})"
nb_execution_excludepatterns = [f"notebooks/{Path(d).name}.ipynb" for d in NOT_EXECUTED]


def _repository() -> str | None:
    """The GitHub repository (``owner/name``) for the Binder link: ``$DEQKIT_REPOSITORY_URL``, else git's origin."""
    url = os.environ.get("DEQKIT_REPOSITORY_URL", "")
    if not url:
        import subprocess

        got = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True, text=True)
        url = got.stdout.strip()
    for prefix in ("https://github.com/", "git@github.com:"):
        if url.startswith(prefix):
            return url[len(prefix) :].removesuffix(".git").strip("/")
    return None


REPOSITORY = _repository()
BINDER = (
    f"https://mybinder.org/v2/gh/{REPOSITORY}/HEAD?urlpath=lab/tree/notebooks/00_welcome.ipynb" if REPOSITORY else None
)


class Api(SphinxDirective):
    """``.. deqkit-api::``: a summary table, then the documentation, of every name in ``deqkit.__all__``.

    Read from the code at build time, so a new public name appears by itself. Each name gets the autodoc directive
    of its kind; ``automodule``'s ``:members:`` would silently leave out imported data such as ``METHODS``.
    """

    def run(self) -> list[nodes.Node]:
        # reStructuredText (api.rst): autosummary and autodoc produce rST. After ``automodule:: deqkit``, deqkit is
        # the current module, and autosummary wants the bare names.
        lines = [".. autosummary::", ""] + [f"   {name}" for name in deqkit.__all__] + [""]
        for name in deqkit.__all__:
            lines += [f".. {_autodoc_directive(getattr(deqkit, name))}:: deqkit.{name}", ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="deqkit.__all__"), self.content_offset, container)
        return container.children


def _autodoc_directive(obj: object) -> str:
    if isinstance(obj, type):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    return "autofunction" if callable(obj) else "autodata"


class Binder(SphinxDirective):
    """``{deqkit-binder}``: the Binder launch link of this repository, or how to make one when none is known."""

    def run(self) -> list[nodes.Node]:
        if BINDER:
            text = (
                f"[Launch the notebooks on Binder]({BINDER}) (Binder builds the environment from "
                f"`environment.yml` of `{REPOSITORY}`; the first start takes several minutes)."
            )
        else:
            text = (
                "Binder: this copy of the site was built from a checkout without a GitHub remote, so it has no "
                "launch link. On <https://mybinder.org>, enter the repository's GitHub address; Binder builds "
                "the environment from `environment.yml` (set `DEQKIT_REPOSITORY_URL` when building the site to "
                "get the link here)."
            )
        container = nodes.container()
        self.state.nested_parse(StringList([text], source="conf.py"), self.content_offset, container)
        return container.children


def _note_not_executed(app, docname: str, source: list[str]) -> None:
    """Put a visible note on a notebook page that was not executed (it has no outputs)."""
    if docname in NOT_EXECUTED and app.env.doc2path(docname).suffix == ".ipynb":
        nb = json.loads(source[0])
        note = (
            f"```{{warning}}\nThis page was built without running the notebook: {NOT_EXECUTED[docname]}. "
            "Set `DEQKIT_MNIST_DIR` to a folder holding the four MNIST `.gz` files and rebuild to see its "
            "outputs.\n```"
        )
        nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": note})
        source[0] = json.dumps(nb)


def _write_build_record(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        record = {"deqkit_all": list(deqkit.__all__), "not_executed": NOT_EXECUTED, "binder": BINDER}
        (Path(app.outdir) / "deqkit-build.json").write_text(json.dumps(record, indent=2) + "\n")


def setup(app):
    app.add_directive("deqkit-api", Api)
    app.add_directive("deqkit-binder", Binder)
    app.connect("source-read", _note_not_executed)
    app.connect("build-finished", _write_build_record)
    for docname, why in NOT_EXECUTED.items():  # shown on the page too; the site test reports it as a skip
        logger.info(f"deqkit-docs: {docname} is NOT executed: {why}", color="red")
    if not BINDER:
        logger.info("deqkit-docs: no GitHub repository known, the run page has no Binder link")
