"""The logic behind the notebooks' widgets: pure functions ``(widget values) -> Panel``, one module per notebook.

Notebooks only build controls and wire them with :class:`~deqkit.teach.widgets.LiveFigure`; tests call the
same functions. Nothing in the library imports this package.
"""

from __future__ import annotations

import os

__all__ = ["fast_mode"]


def fast_mode() -> bool:
    """True when ``DEQKIT_FAST`` is set to a true value or ``CI`` is: notebooks shrink data and epochs."""
    for name in ("DEQKIT_FAST", "CI"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False
