"""Range checks for the teaching functions' arguments: a value outside what a panel was built for is refused
with its range and the reason, instead of a wrong picture, a bare ``KeyError`` or a computation of minutes."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["choice", "within"]


def within(name: str, value: Any, low: float, high: float, why: str) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number in ``[low, high]``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : Any
    low, high : float
        The closed range the function was built and checked for (usually its slider's range).
    why : str
        What goes wrong outside it, e.g. "the 2001-point grid would miss fixed points".

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is NaN or outside ``[low, high]``; the message gives the range and ``why``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or not low <= value <= high:
        raise ValueError(
            f"{name}={value!r} is outside [{low:g}, {high:g}], the range this function is built and "
            f"checked for: {why}. Choose {name} in that range."
        )
    return value


def choice(name: str, value: Any, options: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``options``; else a ``ValueError`` that lists them (not a bare KeyError)."""
    options = list(options)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(map(repr, options))}")
    return value
