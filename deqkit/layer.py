"""The DEQ layer: ``z* = f(z*, x)`` as an ``nn.Module``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adjoint import BACKWARD_MODES, AdjointConfig, ImplicitAdjoint
from .solvers import BACKWARD_METHODS, make_solver, run
from .stats import SolverStats

InitialState = str | Callable[[torch.Tensor], torch.Tensor] | torch.Tensor


@dataclass
class DEQStats:
    """Statistics of the last call: ``forward`` solve, and ``backward`` once a backward pass ran.

    Attributes
    ----------
    forward : SolverStats
    backward : SolverStats or None
        Set by the implicit backward solve; stays None for ``"unrolled"`` and ``"one_step"``.
    """

    forward: SolverStats
    backward: SolverStats | None = None


class DEQ(nn.Module):
    """A deep equilibrium layer: returns the fixed point ``z* = f(z*, x)`` with exact gradients.

    Parameters
    ----------
    f : nn.Module or callable
        Called as ``f(z, x)``; returns a tensor shaped like ``z``. Its parameters, any tensor it captures, and
        ``x`` get gradients.
    solver : str
        Forward method: ``"dynamic_ss"`` (the ODE ``dz/dt = f(z, x) − z`` run to steady state, Tsit5 by
        default), ``"anderson"``, ``"broyden"`` or ``"picard"``.
    backward : {"implicit", "unrolled", "one_step"}
        ``"implicit"``: implicit function theorem, one linear fixed-point solve at ``z*``; memory does not grow
        with the forward iterations. ``"unrolled"``: backpropagate through every solver step (the naive
        baseline; allows double backward). ``"one_step"``: the Jacobian-free approximation ``(I − J)⁻¹ ≈ I``.
    abstol, reltol : float
        Forward termination: ``‖f(z, x) − z‖∞ ≤ abstol`` or ``≤ reltol · ‖f(z, x)‖∞`` per sample.
    max_steps : int, optional
        Forward step limit (the method's default when omitted).
    z0 : {"zeros", "f0"}, callable or tensor
        Starting point: zeros shaped like ``x``; ``"f0"``: ``f(0, x)`` (the seed blog's choice); a callable
        ``x -> z0``; or a tensor. ``forward(x, z0=...)`` overrides it for one call (warm starts).
    strict : bool
        Raise :class:`~deqkit.ConvergenceError` (forward and backward) instead of warning.
    backward_solver : str
        Method for ``u = g + u ∂f/∂z``: ``"gmres"`` (default; converges whenever ``I − J`` is invertible),
        ``"anderson"``, ``"broyden"``, ``"picard"`` or ``"dynamic_ss"`` (the adjoint ODE run to steady state).
    backward_abstol, backward_reltol, backward_max_steps :
        The backward solve's tolerances and step limit. Default: relative only, ``backward_abstol = 0`` and
        ``backward_reltol = max(abstol, reltol)``, because the scale of the incoming gradient is the loss's
        business (a batch mean divides it by the batch size) and an absolute tolerance could accept the first
        guess ``u = g`` — silently the one-step gradient.
    **options
        Options of the forward method (e.g. ``m=5`` for Anderson, ``ode_method="dopri5"``); options prefixed
        ``backward_`` go to the backward method (e.g. ``backward_restart=30``). Unknown ones raise ``TypeError``.

    Attributes
    ----------
    last_stats : DEQStats or None
        Statistics of the last forward solve and of its backward solve.

    Notes
    -----
    The returned tensor is ``f(z*, x)``, one application of ``f`` past the solver's ``z*`` (they differ by at
    most the residual); under ``torch.no_grad()`` it is the value the solver already computed, and no graph
    is kept. Double backward through ``"implicit"`` raises an error rather than returning a wrong answer.
    """

    def __init__(self, f: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 solver: str = "dynamic_ss", backward: str = "implicit",
                 abstol: float = 1e-5, reltol: float = 1e-5, max_steps: int | None = None,
                 z0: InitialState = "zeros", strict: bool = False, backward_solver: str = "gmres",
                 backward_abstol: float | None = None, backward_reltol: float | None = None,
                 backward_max_steps: int | None = None, **options: Any):
        super().__init__()
        if isinstance(z0, str) and z0 not in ("zeros", "f0"):
            raise ValueError(f"z0 must be 'zeros', 'f0', a callable or a tensor, got {z0!r}")
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or a callable f(z, x), got {type(f).__name__}")
        self.f = f
        self.z0, self.strict = z0, strict
        self.abstol, self.reltol, self.max_steps = abstol, reltol, max_steps
        # Relative by default: the incoming gradient's scale depends on the loss (a batch mean makes it ~1/batch),
        # and an absolute tolerance could accept the first guess u = g, which is the one-step gradient.
        self.backward_abstol = 0.0 if backward_abstol is None else backward_abstol
        self.backward_reltol = max(abstol, reltol) if backward_reltol is None else backward_reltol
        self.backward_max_steps = backward_max_steps
        self._backward_options = {k.removeprefix("backward_"): v for k, v in options.items()
                                  if k.startswith("backward_")}
        self._forward_options = {k: v for k, v in options.items() if not k.startswith("backward_")}
        self.solver, self.backward, self.backward_solver = solver, backward, backward_solver
        self.last_stats: DEQStats | None = None

    # Switching a mode or a solver after construction takes effect (and is checked) at once, with the options
    # given to the constructor: nothing is silently kept from the previous choice.
    @property
    def backward(self) -> str:
        """Backward mode: ``"implicit"``, ``"unrolled"`` or ``"one_step"`` (settable; checked).

        Setting another value raises ``ValueError``.
        """
        return self._backward

    @backward.setter
    def backward(self, mode: str) -> None:
        if mode not in BACKWARD_MODES:
            raise ValueError(f"unknown backward {mode!r}; choose one of {BACKWARD_MODES}")
        self._backward = mode

    @property
    def solver(self) -> str:
        """Forward method's name (settable: rebuilds the solver with the constructor's options).

        Setting an unknown name raises ``ValueError``; a constructor option the new method does not take raises
        ``TypeError``.
        """
        return self._solver

    @solver.setter
    def solver(self, name: str) -> None:
        self.forward_method = make_solver(name, self._forward_options)
        self._solver = name

    @property
    def backward_solver(self) -> str:
        """Backward (linear) solver's name (settable: rebuilds it with the constructor's ``backward_`` options).

        Setting an unknown name raises ``ValueError``; a ``backward_`` option the new method does not take raises
        ``TypeError``.
        """
        return self._backward_solver

    @backward_solver.setter
    def backward_solver(self, name: str) -> None:
        self.backward_method = make_solver(name, self._backward_options, BACKWARD_METHODS)
        self._backward_solver = name

    def extra_repr(self) -> str:
        """The solver settings shown in ``repr(deq)``."""
        return (f"solver={self.solver!r}, backward={self.backward!r}, abstol={self.abstol:g}, "
                f"reltol={self.reltol:g}, backward_solver={self.backward_solver!r}")

    def initial_state(self, x: torch.Tensor, z0: InitialState | None = None) -> torch.Tensor:
        """Return the solver's starting point for input ``x``, detached (the answer does not depend on it).

        Parameters
        ----------
        x : torch.Tensor
            The layer's input, shape ``(batch, ...)``.
        z0 : {"zeros", "f0"}, callable or tensor, optional
            Overrides the constructor's ``z0``: ``"zeros"``: ``zeros_like(x)`` (so ``z`` must be shaped like
            ``x``); ``"f0"``: ``f(zeros_like(x), x)``; a callable: ``z0(x)``; a tensor: itself.

        Returns
        -------
        torch.Tensor
            The starting point, computed under ``torch.no_grad()`` and detached.
        """
        z0 = self.z0 if z0 is None else z0
        with torch.no_grad():
            if isinstance(z0, torch.Tensor):
                return z0.detach()
            if callable(z0):
                return z0(x).detach()
            if z0 not in ("zeros", "f0"):
                raise ValueError(f"z0 must be 'zeros', 'f0', a callable or a tensor, got {z0!r}")
            zeros = torch.zeros_like(x)
            return zeros if z0 == "zeros" else self.f(zeros, x)

    def forward(self, x: torch.Tensor, z0: InitialState | None = None) -> torch.Tensor:
        """Solve ``z* = f(z*, x)`` and return ``f(z*, x)``, with gradients by the layer's ``backward`` mode.

        The solve builds no graph, except with ``backward="unrolled"`` in grad mode. Its statistics are stored in
        ``last_stats``; with ``backward="implicit"`` the backward solve's are added once ``backward()`` runs.

        Parameters
        ----------
        x : torch.Tensor
            Input, shape ``(batch, ...)``; every entry finite.
        z0 : {"zeros", "f0"}, callable or tensor, optional
            Starting point for this call only (e.g. the previous ``z*`` as a warm start); default the
            constructor's ``z0``. See :meth:`initial_state`.

        Returns
        -------
        torch.Tensor
            ``f(z*, x)``, shaped like ``z``. Under ``torch.no_grad()``, the ``f(z)`` the solver already computed
            at its returned iterate.

        Raises
        ------
        TypeError
            If ``x`` is not a tensor, or ``f`` does not return one.
        ValueError
            If ``x`` contains NaN or Inf; if the starting point is not a floating-point tensor whose first
            dimension is ``x``'s batch size; or if ``f(z, x)`` differs from ``z`` in shape, dtype or device.
        deqkit.DivergenceError
            At once, when an iterate becomes NaN or infinite.
        deqkit.ConvergenceError
            With ``strict=True``, when a sample does not converge within ``max_steps`` (the backward solve raises
            it from ``backward()``).

        Warns
        -----
        deqkit.ConvergenceWarning
            When a sample does not converge within ``max_steps`` (forward, or backward during ``backward()``).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"DEQ expects a tensor input, got {type(x).__name__}")
        if not torch.isfinite(x).all():
            raise ValueError(f"the input x contains NaN or Inf ({int((~torch.isfinite(x)).sum())} entries): a "
                             "fixed point of f(z, x) is undefined there; clean the data or check the layer below")
        start = self.initial_state(x, z0)
        if start.dim() == 0 or start.shape[0] != x.shape[0]:
            raise ValueError(f"z0 has shape {tuple(start.shape)} but x has batch size {x.shape[0]}: the first "
                             "dimension of z0 must be the batch of x")
        # In grad mode always re-attach: parameters that f captures by closure are invisible from here.
        needs_grad = torch.is_grad_enabled()
        unrolled = needs_grad and self.backward == "unrolled"
        with torch.set_grad_enabled(unrolled):
            sol = run(self.forward_method, lambda z: self.f(z, x), start, abstol=self.abstol,
                      reltol=self.reltol, max_steps=self.max_steps, strict=self.strict)
        stats = DEQStats(sol.stats)
        self.last_stats = stats
        if not needs_grad:
            return sol.fz
        if unrolled:
            return self.f(sol.z, x)
        out = self.f(sol.z.detach(), x)  # re-attach: the graph to x and to f's parameters
        if self.backward == "one_step":
            return out
        config = AdjointConfig(self.f, self.backward_method, self.backward_abstol, self.backward_reltol,
                               self.backward_max_steps, self.strict, lambda s: setattr(stats, "backward", s))
        return ImplicitAdjoint.apply(out, sol.z, x, config)
