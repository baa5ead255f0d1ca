"""The logic behind the notebooks' widgets: pure functions ``(widget values) -> Panel``, one module per notebook,
named after its subject (``y2x``, ``digits``, ``implicit``, ...); where a notebook measures a lot, what it measures
is a module apart (``implicit_measures``, ``stable_runs``).

Notebooks only build controls and wire them with :class:`~deqkit.teach.widgets.LiveFigure`; tests call the
same functions. Nothing in the library imports this package.
"""

from __future__ import annotations

import os

__all__ = ["fast_mode"]


def fast_mode() -> bool:
    """Return True when ``DEQKIT_FAST`` or ``CI`` is set to a true value: notebooks shrink data and epochs.

    A true value is ``1``, ``true``, ``yes`` or ``on``, in any case, surrounding spaces ignored.
    """
    for name in ("DEQKIT_FAST", "CI"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False
