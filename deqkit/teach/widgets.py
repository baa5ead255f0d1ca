"""Wiring widgets to pure plotting functions, and sweeping them in tests.

A callback takes the widget values as keyword arguments and returns a :class:`Panel` (a matplotlib
``Figure`` built without pyplot, plus an HTML readout). :class:`LiveFigure` re-renders it into an
``ipywidgets.Image`` on every change and shows any deqkit warning or error the callback raised, so a learner
sees exactly what a user of the library would see.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from ..errors import ConvergenceError, DivergenceError

BROWSER_SLIDER_CLASS = "deqkit-browser-slider"  # the slider the real-browser test moves
BROWSER_PLOT_CLASS = "deqkit-browser-plot"  # the image it watches


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


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.2, height: float = 3.2,
           **kwargs: Any) -> tuple[Figure, Any]:
    """Return a pyplot-free figure (no global state, nothing shown twice) and its axes.

    Parameters
    ----------
    ncols, nrows : int
        Grid of axes.
    width, height : float
        Size of each axes' cell in inches; the figure is ``width · ncols`` by ``height · nrows``.
    **kwargs
        Passed to ``Figure.subplots`` (e.g. ``sharey=True``).

    Returns
    -------
    fig : matplotlib.figure.Figure
        With the constrained layout.
    axes : Axes or numpy.ndarray of Axes
        One ``Axes`` for a 1×1 grid, else an array squeezed as by ``plt.subplots``.
    """
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kwargs)
    return fig, axes


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
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _alert(kind: str, message: str) -> str:
    color = {"warning": "#8a6d00", "error": "#a40000"}[kind]
    return (f'<div class="deqkit-{kind}" style="color:{color};border-left:3px solid {color};padding-left:6px">'
            f"<b>{html.escape(kind)}:</b> {html.escape(message)}</div>")


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
        bundle = super()._repr_mimebundle_(**kwargs)
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
        The last rendered plot (kept when a render fails).
    readout : ipywidgets.HTML
        The panel's text, then any deqkit error and any warning the last render raised.
    renders : int
        Number of renders so far (the first one runs in the constructor).
    last_error : Exception or None
        The :class:`~deqkit.DivergenceError` or :class:`~deqkit.ConvergenceError` of the last render, if any.
    """

    def __init__(self, fn: Callable[..., Panel], controls: dict[str, widgets.ValueWidget], *,
                 primary: str | None = None, dpi: int = 80):
        self.fn, self.controls, self.dpi = fn, controls, dpi
        self.image = widgets.Image(format="png")
        self.readout = widgets.HTML()
        self.renders = 0
        self.last_error: Exception | None = None
        if primary is not None:  # the browser test moves this control and watches this image
            controls[primary].add_class(BROWSER_SLIDER_CLASS)
            self.image.add_class(BROWSER_PLOT_CLASS)
        for control in controls.values():
            control.observe(self.update, names="value")
        box = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([box, self.image, self.readout])
        self.update()

    @property
    def values(self) -> dict[str, Any]:
        """The controls' current values, by keyword name."""
        return {name: c.value for name, c in self.controls.items()}

    def update(self, change: Any = None) -> None:
        """Recompute and redraw; deqkit warnings and errors are shown to the learner, not swallowed.

        A :class:`~deqkit.DivergenceError` or :class:`~deqkit.ConvergenceError` keeps the previous image and is
        shown in the readout (and kept in ``last_error``); every warning is shown there too. Any other
        exception propagates.

        Parameters
        ----------
        change : object, optional
            The ``traitlets`` change notification when called by an observer; unused.
        """
        notes = []
        self.last_error = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                panel = self.fn(**self.values)
            except (DivergenceError, ConvergenceError) as err:
                self.last_error = err
                panel = None
                notes.append(_alert("error", f"{type(err).__name__}: {err}"))
        notes += [_alert("warning", f"{w.category.__name__}: {w.message}") for w in caught]
        if panel is not None:
            self.image.value = render_png(panel.figure, self.dpi)
            notes.insert(0, panel.text)
        self.readout.value = "".join(notes)
        self.renders += 1

    def static_bundle(self) -> dict[str, str]:
        """The current plot, its readout and the controls' values, as ``text/html`` and ``image/png``."""
        if not self.image.value:
            return {}
        png = base64.b64encode(bytes(self.image.value)).decode()
        values = ", ".join(f"{html.escape(str(c.description or name))} = {html.escape(_shown(c.value))}"
                           for name, c in self.controls.items())
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


def control_values(control: widgets.ValueWidget, points: int = 5) -> list[Any]:
    """Return values spanning a control's range: every option of a dropdown, ends and interior points of a slider.

    Parameters
    ----------
    control : ipywidgets.ValueWidget
        A widget with ``options`` (each option alone, then all together for ``SelectMultiple``), a
        ``Checkbox`` / ``ToggleButton`` (both states, the current one last), or a slider with ``min`` and
        ``max`` (evenly spaced in the exponent for ``FloatLogSlider``; rounded and deduplicated for
        ``IntSlider``).
    points : int
        Values per slider, ends included (≥ 2).

    Returns
    -------
    list
    """
    if points < 2:
        raise ValueError(f"points must be >= 2 (both ends of the range), got {points}")
    if hasattr(control, "options"):
        values = [opt[1] if isinstance(opt, tuple) else opt for opt in control.options]
        if isinstance(control, widgets.SelectMultiple):  # each option alone, then all of them
            return [(v,) for v in values] + [tuple(values)]
        return values
    if isinstance(control, widgets.Checkbox | widgets.ToggleButton):
        return [not control.value, control.value]
    lo, hi = control.min, control.max
    if isinstance(control, widgets.FloatLogSlider):
        exps = [control.min + (control.max - control.min) * i / (points - 1) for i in range(points)]
        return [control.base ** e for e in exps]
    if isinstance(control, widgets.IntSlider):
        return sorted({round(lo + (hi - lo) * i / (points - 1)) for i in range(points)})
    return [lo + (hi - lo) * i / (points - 1) for i in range(points)]


def sweep(app: LiveFigure, points: int = 5, names: Iterable[str] | None = None) -> dict[str, int]:
    """Move every control across its range (others at their initial values); return images seen per control.

    Each control goes through :func:`control_values` and back to its starting value.

    Parameters
    ----------
    app : LiveFigure
    points : int
        Values per slider (see :func:`control_values`).
    names : iterable of str, optional
        The controls to move; default all of them.

    Returns
    -------
    dict of str to int
        Number of distinct images seen while moving each control.

    Raises
    ------
    AssertionError
        When moving a control never changes the image.
    Exception
        Whatever the callback raises other than deqkit's convergence and divergence errors.
    """
    seen: dict[str, int] = {}
    for name in names or list(app.controls):
        control = app.controls[name]
        start = control.value
        images = set()
        for value in control_values(control, points):
            control.value = value
            images.add(bytes(app.image.value))
        control.value = start
        seen[name] = len(images)
        assert len(images) > 1, f"moving {name!r} across {control_values(control, points)} never changed the plot"
    return seen
