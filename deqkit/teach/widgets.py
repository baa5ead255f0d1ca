"""Wiring widgets to pure plotting functions.

A callback takes the widget values as keyword arguments and returns a :class:`Panel` (a matplotlib
``Figure`` built without pyplot, plus an HTML readout). :class:`LiveFigure` re-renders it into an
``ipywidgets.Image`` on every change and shows any deqkit warning or error the callback raised, so a learner
sees exactly what a user of the library would see. The widgets are honest about what they show:

* a callback that raises replaces the plot by a "no plot: <error>" image (:func:`error_figure`), never leaving
  the previous plot on screen as if it belonged to the new settings;
* a panel comparing several methods runs each through :func:`attempt`, so one failing method is reported
  while the others still plot;
* a busy indicator shows while a callback runs, and loops wrapped in :func:`progress` show a tqdm bar once
  they have run for :data:`PROGRESS_DELAY_S` seconds.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import html
import io
import re
import textwrap
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, LogFormatterSciNotation
from tqdm.auto import tqdm

from ..errors import ConvergenceError, DivergenceError

BROWSER_SLIDER_CLASS = "deqkit-browser-slider"  # the slider the real-browser test moves
BROWSER_PLOT_CLASS = "deqkit-browser-plot"  # the image it watches
BUSY_CLASS = "deqkit-busy"  # on a LiveFigure (and its status line) while its callback runs
PROGRESS_DELAY_S = 2.0  # a progress bar appears only for loops that run longer than this
SOLVE_ERRORS = (ConvergenceError, DivergenceError)  # how a solve fails: shown to the learner as a result


@dataclass
class Panel:
    """What a widget callback returns: a figure and an HTML readout under it.

    Attributes
    ----------
    figure : matplotlib.figure.Figure
    text : str
        HTML, shown as it is (escape any user-supplied text).
    """

    figure: Figure
    text: str = ""


# Margins of the "fixed" layout, in inches: room for tick labels, an axis label and a title of normal size.
FIXED_MARGINS = {"left": 0.75, "right": 0.15, "bottom": 0.55, "top": 0.35, "wspace": 0.8, "hspace": 0.8}


def figure(
    ncols: int = 1,
    nrows: int = 1,
    *,
    width: float = 4.2,
    height: float = 3.2,
    layout: str = "constrained",
    **kwargs: Any,
) -> tuple[Figure, Any]:
    """Return a pyplot-free figure (no global state, nothing shown twice) and its axes.

    Parameters
    ----------
    ncols, nrows : int
        Grid of axes.
    width, height : float
        Size of each axes' cell in inches; the figure is ``width · ncols`` by ``height · nrows``.
    layout : {"constrained", "fixed"}
        ``"constrained"``: matplotlib's constrained layout, which fits any labels, colorbars and outside
        legends, but costs about as much as drawing the figure on every render. ``"fixed"``: the margins of
        :data:`FIXED_MARGINS`, computed once — for widget panels that must redraw fast and keep their legends
        inside the axes.
    **kwargs
        Passed to ``Figure.subplots`` (e.g. ``sharey=True``).

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : Axes or numpy.ndarray of Axes
        One ``Axes`` for a 1×1 grid, else an array squeezed as by ``plt.subplots``.

    Raises
    ------
    ValueError
        If ``layout`` is neither.
    """
    if layout not in ("constrained", "fixed"):
        raise ValueError(f"layout must be 'constrained' or 'fixed', got {layout!r}")
    fig_w, fig_h = width * ncols, height * nrows
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained" if layout == "constrained" else None)
    if layout == "fixed":
        m = FIXED_MARGINS
        cell_w = (fig_w - m["left"] - m["right"] - m["wspace"] * (ncols - 1)) / ncols
        cell_h = (fig_h - m["bottom"] - m["top"] - m["hspace"] * (nrows - 1)) / nrows
        kwargs["gridspec_kw"] = {
            "left": m["left"] / fig_w,
            "right": 1 - m["right"] / fig_w,
            "bottom": m["bottom"] / fig_h,
            "top": 1 - m["top"] / fig_h,
            "wspace": m["wspace"] / cell_w,
            "hspace": m["hspace"] / cell_h,
            **kwargs.get("gridspec_kw", {}),
        }
    return fig, subplots(fig, nrows, ncols, **kwargs)


def subplots(fig: Figure, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> Any:
    """``fig.subplots(nrows, ncols, **kwargs)``, with each title pinned at the top of its axes.

    Matplotlib otherwise measures every tick label of an axes on each draw, to lift the title above any that sit
    on top; no panel here has labels there, so pinning the titles saves that work on every redraw and leaves the
    image unchanged (the timings: docs/results.md, "Notebook controls in a real browser").
    """
    with matplotlib.rc_context({"axes.titley": 1.0}):
        return fig.subplots(nrows, ncols, squeeze=True, **kwargs)


@contextlib.contextmanager
def young_garbage() -> Iterator[None]:
    """Pause Python's automatic cyclic garbage collection inside the block, then collect only what it allocated.

    A matplotlib figure is many objects held in reference cycles (figure, axes, artists). Left to the automatic
    collector, a redraw's figure is promoted to the oldest generation while it is drawn, so it is freed only by
    full collections, which traverse every object in the kernel (torch and IPython loaded): a pause every few
    redraws. Collected while still young, one redraw's garbage is cheap to free (the timings: docs/results.md,
    "Notebook controls in a real browser"). Collection is left off if it was off before.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(0)


def render_png(fig: Figure, dpi: int = 80) -> bytes:
    """Render ``fig`` as PNG.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    dpi : int
        Resolution; the image is ``dpi`` pixels per inch of the figure's size.

    Returns
    -------
    bytes
        The PNG file's content.

    Notes
    -----
    Log axes are labelled in plain text (``10⁻⁴``; see :class:`PlainLogFormatter`).
    """
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if type(axis.get_major_formatter()) is LogFormatterSciNotation:
                axis.set_major_formatter(PlainLogFormatter(axis.get_major_formatter()))
            if type(axis.get_minor_formatter()) is LogFormatterSciNotation:
                axis.set_minor_formatter(PlainLogFormatter(axis.get_minor_formatter()))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


_SUPERSCRIPTS = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_MATHTEXT_POWER = re.compile(r"\$\\mathdefault\{(?:([\d.]+)\\times)?(\d+)\^\{(-?\d+)\}\}\$")


class PlainLogFormatter(Formatter):
    """A log axis's own labels (``$\\mathdefault{10^{-4}}$``) written as plain text: ``10⁻⁴``, ``2×10⁻³``.

    Matplotlib parses mathtext labels again for every new figure (its parse cache belongs to the renderer, and
    each figure has its own), a sizeable part of a redraw. Labels of any other form are passed through unchanged.

    Parameters
    ----------
    inner : matplotlib.ticker.Formatter
        The formatter whose labels are rewritten; it still decides which ticks are labelled.
    """

    def __init__(self, inner: Formatter):
        self.inner = inner

    def set_axis(self, axis: Any) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs: Any) -> None:
        self.inner.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = self.inner(x, pos)
        match = _MATHTEXT_POWER.fullmatch(label)
        if match is None:
            return label
        coefficient, base, exponent = match.groups()
        return f"{coefficient + '×' if coefficient else ''}{base}{exponent.translate(_SUPERSCRIPTS)}"


def static(panel: Panel, dpi: int = 80) -> Any:
    """Show a :class:`Panel` once in a notebook (an inline PNG and its text), without pyplot.

    Parameters
    ----------
    panel : Panel
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    IPython.display.HTML
        Displayed when it is a cell's last value, or with ``display()``.
    """
    from IPython.display import HTML

    data = base64.b64encode(render_png(panel.figure, dpi)).decode()
    return HTML(f'<img src="data:image/png;base64,{data}"/><div>{panel.text}</div>')


def error_figure(err: BaseException, width: float = 6.0, height: float = 2.0) -> Figure:
    """Return a figure that says "no plot" and why: what replaces a plot whose callback raised.

    Parameters
    ----------
    err : BaseException
        The error; its type and message are printed, wrapped to the figure's width.
    width, height : float
        Size in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(width, height))
    message = textwrap.fill(f"{type(err).__name__}: {err}", width=int(width * 13), max_lines=8)
    fig.text(0.02, 0.9, "no plot:", color="#a40000", fontsize=12, weight="bold", va="top")
    fig.text(0.02, 0.72, message, color="#a40000", fontsize=8, va="top", family="monospace")
    return fig


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """Call ``fn``; return ``(result, None)``, or ``(None, error)`` when it fails the way a solve fails.

    Panels that compare several methods call each through this, so that one method raising
    :class:`~deqkit.DivergenceError` or :class:`~deqkit.ConvergenceError` is reported in its row of the
    readout while the others still plot. Any other exception (a bug, a bad argument) propagates.

    Parameters
    ----------
    fn : callable
    *args, **kwargs
        Passed to ``fn``.

    Returns
    -------
    result : object or None
    error : Exception or None
    """
    try:
        return fn(*args, **kwargs), None
    except SOLVE_ERRORS as err:
        return None, err


def progress(iterable: Iterable[Any], *, total: int | None = None, desc: str | None = None) -> tqdm:
    """Wrap a loop of a widget callback or a notebook cell in a tqdm bar shown once it runs past ~2 s.

    In a notebook this is a widget bar (``tqdm.auto``); inside a :class:`LiveFigure` callback it appears under
    the controls and is cleared when the callback returns. Loops shorter than :data:`PROGRESS_DELAY_S` show
    nothing.

    Parameters
    ----------
    iterable : iterable
    total : int, optional
        Number of items, when ``len(iterable)`` is not defined.
    desc : str, optional
        Label in front of the bar.

    Returns
    -------
    tqdm.auto.tqdm
        Iterate over it as over ``iterable``.
    """
    return tqdm(iterable, total=total, desc=desc, delay=PROGRESS_DELAY_S, leave=False)


def _in_kernel() -> bool:
    """True inside a Jupyter kernel, where widget outputs are shown."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _alert(kind: str, message: str) -> str:
    color = {"warning": "#8a6d00", "error": "#a40000"}[kind]
    return (
        f'<div class="deqkit-{kind}" style="color:{color};border-left:3px solid {color};padding-left:6px">'
        f"<b>{html.escape(kind)}:</b> {html.escape(message)}</div>"
    )


class StaticFallback:
    """Mixin for an ipywidgets widget: beside the live view, a static picture of it for front ends without widgets.

    JupyterLab renders the widget view and ignores the rest of the bundle. A static page (the documentation site,
    a notebook viewer, a notebook reopened without its kernel) cannot run widgets and shows what
    :meth:`static_bundle` returns instead of the widget's ``repr`` text. Put it first among the base classes:
    ``class MyWidget(StaticFallback, widgets.VBox)``.
    """

    def static_bundle(self) -> dict[str, str]:
        """Return mimetype -> data of the widget as it looks now (e.g. ``text/html``); empty for none."""
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        # a mixin: the widget class after it in the MRO (ipywidgets, untyped) defines _repr_mimebundle_
        bundle = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        if bundle is not None:
            bundle.update(self.static_bundle())
        return bundle


class LiveFigure(StaticFallback, widgets.VBox):
    """Controls, a plot and a readout; the plot is ``fn(**values)`` and is redrawn whenever a value changes.

    Parameters
    ----------
    fn : callable
        ``fn(**values) -> Panel``.
    controls : dict
        Keyword name -> value widget (sliders, dropdowns, ...).
    primary : str, optional
        The control the browser test moves (gets the CSS class ``deqkit-browser-slider``; the plot gets
        ``deqkit-browser-plot``). Give it to one LiveFigure per notebook.
    dpi : int
        Resolution of the rendered PNG.

    Attributes
    ----------
    image : ipywidgets.Image
        The plot of the current values, or the "no plot: <error>" image of :func:`error_figure` when the last
        render raised.
    readout : ipywidgets.HTML
        The panel's text, then any error and any warning the last render raised.
    status : ipywidgets.HTML
        The busy indicator: "computing …" while the callback runs, empty otherwise.
    progress_area : ipywidgets.Output
        Where the callback's :func:`progress` bars appear while it runs.
    renders : int
        Number of renders so far (the first one runs in the constructor).
    last_error : Exception or None
        The exception the last render raised, if any.
    """

    def __init__(
        self,
        fn: Callable[..., Panel],
        controls: dict[str, widgets.ValueWidget],
        *,
        primary: str | None = None,
        dpi: int = 80,
    ):
        self.fn, self.controls, self.dpi = fn, controls, dpi
        self.image = widgets.Image(format="png")
        self.readout = widgets.HTML()
        self.status = widgets.HTML()
        self.progress_area = widgets.Output()
        self.renders = 0
        self.last_error: Exception | None = None
        if primary is not None:  # the browser test moves this control and watches this image
            controls[primary].add_class(BROWSER_SLIDER_CLASS)
            self.image.add_class(BROWSER_PLOT_CLASS)
        for control in controls.values():
            control.observe(self.update, names="value")
        box = widgets.HBox(list(controls.values()) + [self.status], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([box, self.progress_area, self.image, self.readout])
        self.update()

    @property
    def values(self) -> dict[str, Any]:
        """The controls' current values, by keyword name."""
        return {name: c.value for name, c in self.controls.items()}

    @property
    def busy(self) -> bool:
        """True while the callback runs."""
        return BUSY_CLASS in self._dom_classes

    def update(self, change: Any = None) -> None:
        """Recompute and redraw; errors and warnings are shown to the learner, not swallowed.

        While the callback runs, :attr:`status` says so and its :func:`progress` bars show in
        :attr:`progress_area`. When it raises, the image becomes the "no plot: <error>" figure, the error is
        shown in the readout and kept in :attr:`last_error` (the tests' ``sweep`` re-raises any that is not a solve
        error). Every warning is shown too.

        Parameters
        ----------
        change : object, optional
            The ``traitlets`` change notification when called by an observer; unused.
        """
        self._set_busy(True)
        try:
            with young_garbage():
                png, notes = self._render()
        finally:
            self._set_busy(False)
        self.image.value = png
        self.readout.value = notes
        self.renders += 1

    def _render(self) -> tuple[bytes, str]:
        """The PNG and the readout of the current values (the figure is garbage once this returns)."""
        panel, self.last_error, caught = self._call()
        notes = [_alert("warning", f"{w.category.__name__}: {w.message}") for w in caught]
        if panel is None:
            err = self.last_error
            assert err is not None, "_call returns an error whenever it returns no panel"
            notes.insert(0, _alert("error", f"{type(err).__name__}: {err}"))
            return render_png(error_figure(err), self.dpi), "".join(notes)
        notes.insert(0, panel.text)
        return render_png(panel.figure, self.dpi), "".join(notes)

    def _call(self) -> tuple[Panel | None, Exception | None, list[warnings.WarningMessage]]:
        """Run the callback inside the progress area, recording its warnings and catching its error."""
        with warnings.catch_warnings(record=True) as caught, self.progress_area:
            warnings.simplefilter("always")
            try:
                return self.fn(**self.values), None, caught
            except Exception as err:  # shown as the plot, never a stale image; sweep re-raises bugs
                return None, err, caught
            finally:
                if _in_kernel():  # outside a kernel there is nothing to clear (and IPython would print escapes)
                    self.progress_area.clear_output()

    def _set_busy(self, busy: bool) -> None:
        for w in (self, self.status):
            (w.add_class if busy else w.remove_class)(BUSY_CLASS)
        self.status.value = '<span title="the plot is being recomputed">⏳ computing …</span>' if busy else ""

    def static_bundle(self) -> dict[str, str]:
        """The current plot, its readout and the controls' values, as ``text/html`` and ``image/png``."""
        if not self.image.value:
            return {}
        png = base64.b64encode(bytes(self.image.value)).decode()
        # a selection's label (what the reader sees on the control), not the value behind it
        values = ", ".join(
            f"{html.escape(str(c.description or name))} = {html.escape(_shown(getattr(c, 'label', c.value)))}"
            for name, c in self.controls.items()
        )
        return {
            "text/html": f'<div class="deqkit-static"><img src="data:image/png;base64,{png}" alt="plot at {values}"/>'
            f"<div>{self.readout.value}</div>"
            f"<p><em>Static view at {values}: run the notebook to move the controls.</em></p></div>",
            "image/png": png,
        }


def _shown(value: Any) -> str:
    """A control's value as a reader would write it (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_shown(v) for v in value) + ")"
    return str(value)
