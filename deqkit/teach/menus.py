"""Solver menus for the notebooks' dropdowns, built from deqkit's registries (:data:`deqkit.solvers.SOLVERS`,
:data:`deqkit.solvers.BACKWARD_SOLVERS`): a solver registered there appears in every menu that lists the registry,
and a menu names its configured extras in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..solvers import SOLVERS, Solver, as_solver

__all__ = ["solver_menu"]

Entry = str | Solver | tuple[str, Solver]


def solver_menu(
    *entries: Entry,
    registry: Mapping[str, type[Solver]] = SOLVERS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Solver]:
    """A dropdown's solvers in order: label -> configured solver.

    Parameters
    ----------
    *entries : str, Solver or (str, Solver)
        A name of ``registry`` (its class with the defaults, or with ``options[name]``; labelled by the name), a
        configured solver (labelled by its :attr:`~deqkit.Solver.label`), or a ``(label, solver)`` pair. No entries:
        every name of ``registry``, in its order.
    registry : dict
        Name -> solver class: :data:`deqkit.solvers.SOLVERS` (forward) by default, or
        :data:`deqkit.solvers.BACKWARD_SOLVERS` (adds ``"gmres"``).
    options : dict, optional
        Name -> keyword options of that registry class, e.g. ``{"gmres": {"trace": True}}``.

    Returns
    -------
    dict of str to Solver

    Raises
    ------
    ValueError
        If a name is not in ``registry``, ``options`` names a solver the menu does not build from the registry, or
        two entries share a label.
    TypeError
        If an entry is none of the three forms (or an option is not a parameter of its class).
    """
    options = dict(options or {})
    names = [e for e in entries if isinstance(e, str)] if entries else list(registry)
    unused = sorted(set(options) - set(names))
    if unused:
        raise ValueError(f"options for {unused}, which this menu does not build by name; menu names: {names}")
    menu: dict[str, Solver] = {}
    for entry in entries or tuple(registry):
        label, solver = _menu_entry(entry, registry, options)
        if label in menu:
            raise ValueError(f"two menu entries are labelled {label!r}: give one a (label, solver) pair")
        menu[label] = solver
    return menu


def _menu_entry(
    entry: Entry, registry: Mapping[str, type[Solver]], options: Mapping[str, Mapping[str, Any]]
) -> tuple[str, Solver]:
    if isinstance(entry, str):
        return entry, as_solver(entry, dict(options.get(entry, {})), dict(registry))
    if isinstance(entry, Solver):
        return entry.label, entry
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], Solver):
        return entry
    raise TypeError(f"a menu entry is a registry name, a configured Solver or a (label, Solver) pair, got {entry!r}")
