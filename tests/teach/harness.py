"""The widget test harness: move every control of a :class:`~deqkit.teach.widgets.LiveFigure` across its range and
check that the plot changes and no callback has a bug. Used by the unit tests and by each notebook's collapsed test
cell (``from tests.teach.harness import sweep``: the notebook kernels get the repository root on ``PYTHONPATH`` from
conftest.py, docs/conf.py, the browser tests and scripts/lab.sh)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets

from deqkit.teach.widgets import SOLVE_ERRORS, LiveFigure

__all__ = ["control_values", "sweep"]


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
        return [control.base**e for e in exps]
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
        Whatever the callback raises other than deqkit's convergence and divergence errors (those are a
        result the learner should see; anything else is a bug).
    """
    seen: dict[str, int] = {}
    for name in names or list(app.controls):
        control = app.controls[name]
        start = control.value
        images = set()
        for value in control_values(control, points):
            control.value = value
            if app.last_error is not None and not isinstance(app.last_error, SOLVE_ERRORS):
                raise app.last_error
            images.add(bytes(app.image.value))
        control.value = start
        seen[name] = len(images)
        assert len(images) > 1, f"moving {name!r} across {control_values(control, points)} never changed the plot"
    return seen
