"""Forward fixed-point solvers behind one verb, :func:`solve`.

``solve(f, z0, method=...)`` finds ``z = f(z)`` for a batched map ``f`` (first dimension = batch), with the
per-sample termination rule of :mod:`deqkit.solvers.core` and statistics in a :class:`~deqkit.SolverStats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..stats import SolverStats
from .anderson import Anderson
from .broyden import Broyden
from .core import Map, Monitor, Tolerances, make_options
from .dynamic_ss import DynamicSS
from .krylov import GMRES
from .picard import Picard

METHODS: dict[str, type] = {cls.name: cls for cls in (Picard, Anderson, Broyden, DynamicSS)}
# The backward pass solves a linear (affine) fixed point, where a Krylov method applies too.
BACKWARD_METHODS: dict[str, type] = METHODS | {GMRES.name: GMRES}

__all__ = ["METHODS", "BACKWARD_METHODS", "Solution", "make_solver", "run", "solve",
           "Picard", "Anderson", "Broyden", "DynamicSS", "GMRES"]


def make_solver(method: str, options: dict[str, Any], registry: dict[str, type] = METHODS) -> Any:
    """Return a configured solver for ``method``.

    Parameters
    ----------
    method : str
        A key of ``registry``, e.g. ``"anderson"``.
    options : dict
        Keyword arguments of the method's class (e.g. ``{"m": 5}`` for :class:`Anderson`).
    registry : dict
        Name -> solver class: :data:`METHODS` (forward) by default; :data:`BACKWARD_METHODS` adds ``"gmres"``.

    Returns
    -------
    object
        An instance of the method's class, ready for :func:`run`.

    Raises
    ------
    ValueError
        If ``method`` is not in ``registry``, or the class rejects an option's value (e.g. ``m < 1``).
    TypeError
        If an option is not a parameter of the method's class.
    """
    if method not in registry:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(registry)}")
    return make_options(registry[method], method, options)


@dataclass
class Solution:
    """The returned iterate ``z``, ``f(z)`` (already computed by the solver) and the statistics.

    Attributes
    ----------
    z : torch.Tensor
        Per sample, the converged iterate, or the lowest-residual one for a sample that did not converge.
    fz : torch.Tensor
        ``f(z)``.
    stats : SolverStats
    """

    z: torch.Tensor
    fz: torch.Tensor
    stats: SolverStats


def run(solver: Any, f: Map, z0: torch.Tensor, *, abstol: float, reltol: float, max_steps: int | None,
        strict: bool = False, record: bool = False) -> Solution:
    """Run a configured solver; the engine behind :func:`solve`, the DEQ layer and its backward pass.

    Parameters
    ----------
    solver : object
        A solver from :func:`make_solver`.
    f : callable
        The batched map; see :func:`solve`.
    z0 : torch.Tensor
        Floating-point starting point, shape ``(batch, ...)`` with ``batch ≥ 1``. Never modified or returned.
    abstol, reltol : float
        The termination rule of :func:`solve`; both ≥ 0, not both 0.
    max_steps : int or None
        Most solver steps (≥ 1); None: the solver's ``default_max_steps``.
    strict : bool
        Raise instead of warning when a sample does not converge.
    record : bool
        Keep every iterate in ``stats.trajectory``.

    Returns
    -------
    Solution

    Raises
    ------
    ValueError
        If ``z0`` is not a floating-point tensor with a non-empty batch dimension, a tolerance or ``max_steps``
        is invalid, or ``f(z)`` differs from ``z`` in shape, dtype or device.
    TypeError
        If ``f`` does not return a tensor.
    deqkit.DivergenceError
        At once, when an iterate becomes NaN or infinite.
    deqkit.ConvergenceError
        With ``strict=True``, when a sample does not converge within ``max_steps``.

    Warns
    -----
    deqkit.ConvergenceWarning
        When a sample does not converge within ``max_steps`` and ``strict`` is False.
    """
    if not isinstance(z0, torch.Tensor) or z0.dim() < 1 or z0.shape[0] == 0:
        raise ValueError("z0 must be a tensor whose first dimension is a non-empty batch, got "
                         f"{getattr(z0, 'shape', type(z0).__name__)}")
    if not z0.is_floating_point():
        raise ValueError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
    tol = Tolerances(abstol, reltol, solver.default_max_steps if max_steps is None else max_steps)
    monitor = Monitor(getattr(solver, "label", solver.name), z0, tol, strict=strict, record=record)
    steps, nfe = solver.run(f, z0, monitor)
    stats = monitor.finish(steps, nfe)
    z = monitor.best_z.clone() if monitor.best_z is z0 else monitor.best_z  # never hand back the caller's z0
    return Solution(z, monitor.best_fz, stats)


def solve(f: Map, z0: torch.Tensor, *, method: str = "dynamic_ss", abstol: float = 1e-5, reltol: float = 1e-5,
          max_steps: int | None = None, strict: bool = False, record: bool = False,
          **options: Any) -> tuple[torch.Tensor, SolverStats]:
    """Find the fixed point ``z* = f(z*)`` of a batched map.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``z0`` to one of the same shape, dtype and device. Samples (first dimension)
        are solved independently.
    z0 : torch.Tensor
        Starting point, shape ``(batch, ...)``.
    method : {"dynamic_ss", "anderson", "broyden", "picard"}
        ``"dynamic_ss"`` integrates ``dz/dt = f(z) − z`` to steady state (Tsit5 by default).
    abstol, reltol : float
        A sample has converged when ``‖f(z) − z‖∞ ≤ abstol`` or ``‖f(z) − z‖∞ ≤ reltol · ‖f(z)‖∞``.
    max_steps : int, optional
        Most solver steps (≥ 1); the method's own default when omitted.
    strict : bool
        Raise :class:`~deqkit.ConvergenceError` instead of warning when a sample does not converge.
    record : bool
        Keep every iterate in ``stats.trajectory`` (for plots; costs memory).
    **options
        The method's options (see :class:`Picard`, :class:`Anderson`, :class:`Broyden`, :class:`DynamicSS`);
        an unknown one raises ``TypeError``.

    Returns
    -------
    z_star : torch.Tensor
        The converged iterate (for a sample that did not converge: its lowest-residual iterate).
    stats : SolverStats

    Raises
    ------
    deqkit.DivergenceError
        At once, when an iterate becomes NaN or infinite.
    deqkit.ConvergenceError
        With ``strict=True``, when a sample does not converge within ``max_steps``.

    Warns
    -----
    deqkit.ConvergenceWarning
        When a sample does not converge within ``max_steps`` (how many, their best residual, what to try).
    """
    solver = make_solver(method, options)
    sol = run(solver, f, z0, abstol=abstol, reltol=reltol, max_steps=max_steps, strict=strict, record=record)
    return sol.z, sol.stats
