"""Settings and argument checks that solvers and gradient methods stand on.

:class:`Configured` is the base of every configured object (a solver such as ``Anderson(m=6)``, a gradient method
such as ``Implicit(solver="gmres")``): its settings are checked once, in the constructor, and fixed from then on.
:func:`check_int` and :func:`check_real` are the argument checks used throughout deqkit; :func:`named` and
:func:`make_options` turn a registry's name (and keyword options) into such an object, naming the choices when
they are wrong.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, cast

#: The largest value of an integer setting that sizes or counts tensors (torch's integers are 64-bit)
INT_MAX = 2**63 - 1


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (Python, NumPy, ...) ``>= minimum`` (and ``<= maximum``,
    e.g. :data:`INT_MAX` for a setting that sizes or counts tensors); else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and int(value) > maximum:  # else an overflow deep inside torch, far from its cause
        why = " (it sizes or counts tensors, whose integers are 64-bit)" if maximum == INT_MAX else ""
        raise ValueError(f"{name} must be an integer from {minimum} to {maximum}{why}, got {value!r}")
    return int(value)


def check_real(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a ``float`` if it is a real number (Python, NumPy, ...) in the given interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range (10**400): outside any interval a setting has
        value = math.inf if value > 0 else -math.inf
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if math.isnan(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def named(spec: Any, registry: dict[str, type], what: str, example: str) -> type:
    """The registry's class for the name ``spec``, or an error naming the choices (a name, or an object)."""
    if not isinstance(spec, str):
        raise TypeError(
            f"{what} must be a name ({sorted(registry)}) or a deqkit object such as {example}, got {spec!r}"
        )
    if spec not in registry:
        raise ValueError(f"unknown {what} {spec!r}; choose one of {sorted(registry)}")
    return registry[spec]


def make_options(cls: type, method: str, options: dict[str, Any]) -> Any:
    """Instantiate a solver class from keyword options, refusing unknown ones by name."""
    params = {p.name for p in cls.settings()} if issubclass(cls, Configured) else set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - params)
    if unknown:
        valid = ", ".join(p for p in inspect.signature(cls).parameters if p in params) or "none"
        moved = getattr(cls, "MOVED", {})
        hint = "".join(f"; for {k}, use {moved[k]}" for k in unknown if k in moved)
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for solver {method!r}; its options are: {valid}{hint}"
        )
    return cls(**options)


class Configured:
    """Base of the configured objects (solvers, gradient methods): their settings are fixed once built.

    A constructor checks its arguments and may derive state from them (e.g. :class:`DynamicSS`'s polishing
    solver and step-size controller), so assigning a setting later would skip the check or be silently ignored,
    and assigning derived state would disagree with the settings (a ``polisher`` of None while ``polish`` and
    the statistics still say "anderson"). Both raise instead: every public attribute the constructor set is
    fixed. Attributes whose names start with ``_``, and those set after construction, stay assignable.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _settling(cls.__dict__["__init__"])  # type: ignore[method-assign]  # wraps it, on purpose

    @classmethod
    def settings(cls) -> list[inspect.Parameter]:
        """The constructor's parameters: the settings fixed once an object is built."""
        return list(_settings_of(cast(type, cls)))  # (the class object: mypy takes Configured.__hash__ for its own)

    def _changed_options(self) -> list[str]:
        """``name=value`` for each setting that differs from its default."""
        shown = []
        for param in self.settings():
            value = getattr(self, param.name, param.default)
            if value is not param.default and value != param.default:
                shown.append(f"{param.name}={value!r}")
        return shown

    def __repr__(self) -> str:
        """``Anderson(m=6)``: the class and the settings that differ from their defaults."""
        return f"{type(self).__name__}({', '.join(self._changed_options())})"

    def __eq__(self, other: object) -> bool:
        """Same class and same settings (two ``Anderson(m=6)`` are interchangeable)."""
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, p.name, None) == getattr(other, p.name, None) for p in self.settings())

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_settled") and name in {p.name for p in self.settings()}:
            kind = type(self).__name__
            raise AttributeError(
                f"{kind}.{name} cannot be changed after construction (settings are checked, and what depends on "
                f"them is built, once): make a new one, e.g. {kind}({name}={value!r}), and use it instead"
            )
        if name in self.__dict__.get("_built", ()):
            kind = type(self).__name__
            raise AttributeError(
                f"{kind}.{name} is built from the settings at construction and cannot be replaced (the settings "
                f"and the statistics' label would no longer describe what runs): make a new {kind} with the "
                f"settings you want, e.g. {kind}({', '.join(p.name + '=...' for p in self.settings()[:2])})"
            )
        super().__setattr__(name, value)


@functools.cache
def _settings_of(cls: type) -> tuple[inspect.Parameter, ...]:
    """:meth:`Configured.settings`, read from the signature once per class (``inspect.signature`` takes tens of µs,
    and a solve by name builds its solver and labels its statistics with them)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return tuple(p for p in inspect.signature(cls).parameters.values() if p.kind not in variadic)


def _settling(init: Callable[..., None]) -> Callable[..., None]:
    """``init``, then mark the object built, unless a subclass's constructor is still running around it."""

    @functools.wraps(init)  # keeps the signature, which names the settings
    def wrapper(self: Configured, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is wrapper:
            self.__dict__["_settled"] = True
            settings = {p.name for p in self.settings()}
            self.__dict__["_built"] = frozenset(k for k in self.__dict__ if not k.startswith("_") and k not in settings)

    return wrapper
