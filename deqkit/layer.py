"""The DEQ layer: ``z* = f(z*, x)`` as an ``nn.Module``."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .adjoint import Context, Gradient, GradientSpec, OneStep, Phantom, as_gradient
from .alerts import ConvergenceAlerts
from .errors import ConvergenceError
from .settings import check_int
from .solvers import Solution, Solver, SolverSpec, as_solver, run
from .solvers.core import Map, SampleMap
from .solvers.monitor import Tolerances
from .state import Structure, detach, is_structured
from .stats import SolverStats

# Shown by torch.compile(fullgraph=True), which cannot capture the solver loop.
EAGER = (
    "deqkit: a DEQ runs its solve eagerly: the solver loop stops on data-dependent conditions, which one graph "
    "cannot express, so torch.compile(fullgraph=True) cannot capture it. Use torch.compile without fullgraph "
    "(the rest of the model compiles, with a graph break at the DEQ), or compile f itself."
)

#: Default forward budget per call in training mode: evaluations of f (the implicit backward gets the same number of
#: vector–Jacobian products). A training step tolerates an inexact z*; TorchDEQ's usual setting is 30 iterations too.
#: How accurate the gradient is at this budget, per block family: docs/results.md ("Accuracy at the training budget").
TRAIN_NFE = 30
#: Default forward budget per call in ``eval()`` mode: evaluation wants the converged answer, and a runaway sample
#: still cannot cost more than this.
EVAL_NFE = 200

FORWARD_ADVICE = (
    "To converge more samples: raise the budget (DEQ(max_nfe=...) in training mode, eval_max_nfe=... in "
    "eval mode), loosen abstol/reltol, or make f easier to solve (deqkit.jacobian_penalty, spectral "
    "normalization). A training step tolerates an inexact equilibrium; evaluation should not."
)
BACKWARD_ADVICE = (
    "To converge more: give the gradient its own budget (backward=deqkit.Implicit(max_nfe=...)), a "
    "looser reltol, or another solver (deqkit.Implicit(solver=deqkit.GMRES(restart=...)))."
)

State = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]
InitialState = str | Callable[[torch.Tensor], State] | State


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
        Called as ``f(z, x)``; returns a tensor shaped like ``z``, or, for a state of several tensors (a tuple or
        list of tensors of different shapes, e.g. one feature map per resolution), the same structure. Its
        parameters, any tensor it captures, and ``x`` get gradients. Weights reparametrized by
        ``torch.nn.utils.parametrizations`` (weight or spectral norm; see :func:`deqkit.normalize`) inside an
        ``nn.Module`` f are computed once per call (the map stays one map during the solve); with a plain function
        f they are recomputed at every evaluation.
    solver : str or Solver
        Forward solver: a configured object (``deqkit.Anderson(m=6)``, ``deqkit.DynamicSS(ode_method="dopri5")``)
        or the name of one: ``"dynamic_ss"`` (the ODE ``dz/dt = f(z, x) − z`` run to steady state, Tsit5 by
        default), ``"anderson"``, ``"broyden"`` or ``"picard"``.
    backward : str or Gradient
        How gradients flow: ``deqkit.Implicit(solver="gmres", reltol=..., max_steps=...)`` (implicit function
        theorem, one linear fixed-point solve at ``z*``; memory does not grow with the forward iterations),
        ``deqkit.Unrolled()`` (backpropagate through every solver step: the naive baseline; allows double
        backward), ``deqkit.OneStep()`` (the Jacobian-free approximation ``(I − J)⁻¹ ≈ I``),
        ``deqkit.Phantom(steps, damping)`` (a few damped unrolled steps from ``z*``), or their names
        ``"implicit"``, ``"unrolled"``, ``"one_step"``, ``"phantom"`` with default settings.
    abstol, reltol : float
        Forward termination: ``‖f(z, x) − z‖∞ ≤ abstol`` or ``≤ reltol · ‖f(z, x)‖∞`` per sample.
    max_steps : int, optional
        Forward step limit (the solver's default when omitted).
    max_nfe, eval_max_nfe : int or None
        Forward evaluation budgets of ``f`` per call, in training mode and in ``eval()`` mode: the solve never
        exceeds them. Defaults :data:`TRAIN_NFE` (30) and :data:`EVAL_NFE` (200); None for no budget beyond
        ``max_steps``. Outside the solve, a call in grad mode evaluates ``f`` once more (the re-attached
        ``f(z*, x)`` that carries the graph), ``z0="f0"`` once more, and ``Phantom(steps=k)`` ``k − 1`` more. The
        implicit backward solve gets the same budget (of vector–Jacobian products) unless its
        :class:`~deqkit.Implicit` sets its own ``max_nfe``. A sample still running when the budget is spent stops at
        its best iterate and is counted as not converged in ``last_stats``. Raise ``max_nfe`` when many samples
        stop there during training (the warnings below count them) or when the gradient must be exact;
        ``eval_max_nfe`` when evaluation does not converge.
    z0 : {"zeros", "f0"}, callable, tensor, or tuple/list of tensors
        Starting point: ``"zeros"``: ``zeros_like(x)`` (so only for a state shaped like ``x``); ``"f0"``:
        ``f(zeros_like(x), x)`` (the seed blog's choice); a callable ``x -> z0`` (any state shape, e.g.
        ``lambda x: x.new_zeros(x.shape[0], 64)``); a tensor; or a tuple/list of tensors, which makes the state a
        multi-tensor one (``f`` then maps that structure to itself; a callable may return one too).
        ``forward(x, z0=...)`` overrides it for one call (warm starts).
    strict : bool
        Raise :class:`~deqkit.ConvergenceError` (forward and backward) instead of warning.
    correction : {"one_step", "phantom"}, OneStep or Phantom
        How the intermediate states of ``deq(x, states=k)`` get their gradients (fixed-point correction, Bai et
        al. 2022; TorchDEQ's ``n_states``/``grad``/``tau``): each sampled iterate ``zᵢ`` (detached) is returned as
        ``f(zᵢ, x)`` (``"one_step"``, the default, TorchDEQ's ``grad=1``) or after ``Phantom(steps, damping)``
        damped steps, which carry the gradient to ``x`` and ``f``'s parameters.
    per_sample : bool
        Each sample's ``f(z, x)`` depends on its own ``z`` and ``x`` alone (the per-sample results assume it), so
        the solvers may evaluate ``f`` on the samples still moving alone, once at most 3/4 of the batch moves
        (converged samples hold still): the same results, for less work. False evaluates the whole batch every
        time, e.g. for an ``f`` that captures a tensor shaped like the batch; a batch-norm layer in training mode
        in ``f`` (statistics over the batch) turns it off by itself. Every subset evaluation also takes one
        sample held still and compares it with its known value, so an ``f`` that mixes samples (``z.mean(0)``, an
        op over the batch of ``x``) raises ``ValueError`` naming this setting once the mixing changes a value.
    **options
        With a solver name, options of the forward solver's class (e.g. ``m=5`` for Anderson,
        ``ode_method="dopri5"``). Unknown ones raise ``TypeError``. Every setting is checked here, not at the first
        call.

    Attributes
    ----------
    last_stats : DEQStats or None
        Statistics of the last forward solve and of its backward solve; None before the first call and after a call
        that raised (a ``ConvergenceError`` with ``strict=True`` says in its message what the solve did).
    last_equilibrium : tuple of torch.Tensor, or None
        ``(z*, f(z*, x))`` of the last call in grad mode, with the graph of ``f`` at ``z*`` (what
        :func:`deqkit.jacobian_penalty` differentiates); None after a call under ``torch.no_grad()``. For a
        state of several tensors, both are the flattened ``(batch, N)`` tensors the solver worked on (the tensors
        of the state concatenated in order, each flattened per sample).

    Notes
    -----
    Unconverged solves are warned about once, then summarised: the layer's first call that leaves samples
    unconverged warns (:class:`~deqkit.ConvergenceWarning`) with the solver's message; later ones are counted, and a
    warning with the counts follows after 10, 100, 1000, ... such calls (forward and backward separately). Warning
    filters apply to the warnings issued (``"error"`` raises at the first and at each summary, not at the calls
    counted in between); ``strict=True`` raises at every call.

    The returned tensor is ``f(z*, x)``, one application of ``f`` past the solver's ``z*`` (they differ by at
    most the residual); under ``torch.no_grad()`` it is the value the solver already computed, and no graph
    is kept. Double backward through ``"implicit"`` raises an error rather than returning a wrong answer.
    """

    def __init__(
        self,
        f: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        solver: SolverSpec = "dynamic_ss",
        backward: GradientSpec = "implicit",
        abstol: float = 1e-5,
        reltol: float = 1e-5,
        max_steps: int | None = None,
        max_nfe: int | None = TRAIN_NFE,
        eval_max_nfe: int | None = EVAL_NFE,
        z0: InitialState = "zeros",
        strict: bool = False,
        correction: GradientSpec = "one_step",
        per_sample: bool = True,
        **options: Any,
    ):
        super().__init__()
        self.f = f  # (f, z0, strict and per_sample are checked by __setattr__, here and when set later)
        self.z0, self.strict, self.per_sample = z0, strict, per_sample
        # checked now, not at the first call: the budget of each mode, one object each from here to the solver
        # and the backward
        self._budgets = {
            True: Tolerances(abstol, reltol, max_steps, max_nfe),
            False: Tolerances(abstol, reltol, max_steps, eval_max_nfe, budget_name="eval_max_nfe"),
        }
        try:
            self.solver = as_solver(solver, options)
        except TypeError as err:  # an option of a gradient method, given to the DEQ: say where it belongs
            hint = _gradient_hint(options) + _torchdeq_hint(options)
            if not hint:  # neither a gradient's option nor a TorchDEQ setting: say the DEQ passed it on
                hint = (
                    ". DEQ passes every keyword it does not take itself to its solver; the DEQ's own settings "
                    "are: "
                    + ", ".join(
                        p.name
                        for p in inspect.signature(DEQ).parameters.values()
                        if p.kind is not inspect.Parameter.VAR_KEYWORD
                    )
                )
            raise TypeError(f"{err}{hint}") from err
        self.backward = backward
        self.alerts = {
            "forward": ConvergenceAlerts("forward", FORWARD_ADVICE),
            "backward": ConvergenceAlerts("backward", BACKWARD_ADVICE),
        }
        self.correction = correction
        self.last_stats: DEQStats | None = None
        self.last_equilibrium: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def tolerances(self) -> Tolerances:
        """The termination rule and budget of a call in the current mode (``max_nfe`` in training,
        ``eval_max_nfe`` in ``eval()`` mode): what the forward solve runs with and the backward starts from.
        Change it through the settings below, each checked when set."""
        return self._budgets[self.training]

    def _set_budget(self, mode: bool | None = None, **changes: Any) -> None:
        """Apply ``changes`` (checked) to the budget of one mode (True: training) or, with None, of both."""
        self._budgets = {m: tol.replace(**changes) if mode in (None, m) else tol for m, tol in self._budgets.items()}

    abstol = property(
        lambda self: self.tolerances.abstol,
        lambda self, value: self._set_budget(abstol=value),
        doc="The forward absolute tolerance (both modes); checked when set.",
    )
    reltol = property(
        lambda self: self.tolerances.reltol,
        lambda self, value: self._set_budget(reltol=value),
        doc="The forward relative tolerance (both modes); checked when set.",
    )
    max_steps = property(
        lambda self: self.tolerances.max_steps,
        lambda self, value: self._set_budget(max_steps=value),
        doc="The most forward solver steps (both modes; None: the solver's default); checked when set.",
    )
    max_nfe = property(
        lambda self: self._budgets[True].max_nfe,
        lambda self, value: self._set_budget(True, max_nfe=value),
        doc="The forward solve's evaluation budget in training mode; checked when set.",
    )
    eval_max_nfe = property(
        lambda self: self._budgets[False].max_nfe,
        lambda self, value: self._set_budget(False, max_nfe=value),
        doc="The forward solve's evaluation budget in eval() mode; checked when set.",
    )

    @property
    def solver(self) -> Solver:
        """The forward solver (settable with an object or a name, which means that solver's default settings)."""
        return self._solver

    @solver.setter
    def solver(self, spec: SolverSpec) -> None:
        self._solver = as_solver(spec)

    @property
    def backward(self) -> Gradient:
        """The gradient method (settable with an object or a name, which means that method's default settings)."""
        return self._backward

    @backward.setter
    def backward(self, spec: GradientSpec) -> None:
        self._backward = as_gradient(spec)

    @property
    def correction(self) -> Phantom:
        """The gradient of the intermediate states of ``deq(x, states=k)``: a :class:`~deqkit.Phantom`
        (``"one_step"`` / :class:`~deqkit.OneStep` is ``Phantom(steps=1, damping=1)``); settable like ``backward``."""
        return self._correction

    @correction.setter
    def correction(self, spec: GradientSpec) -> None:
        try:
            method = as_gradient(spec)
        except (TypeError, ValueError) as err:  # its message says "backward": this is the correction's setting
            raise type(err)(str(err).replace("backward", "correction", 1)) from err
        if isinstance(method, OneStep):
            method = Phantom(steps=1, damping=1.0)
        if not isinstance(method, Phantom):
            raise ValueError(
                f"correction must be 'one_step', 'phantom', deqkit.OneStep() or deqkit.Phantom(...), got "
                f"{method!r}: an intermediate state is attached by a few steps of f from it, as in "
                "TorchDEQ's fixed-point correction (the last state, z*, uses the layer's backward)"
            )
        self._correction = method

    def extra_repr(self) -> str:
        """The settings shown in ``repr(deq)``: solver, gradient, tolerances, step limit and budgets."""
        steps = "" if self.max_steps is None else f", max_steps={self.max_steps}"
        return (
            f"solver={self.solver!r}, backward={self.backward!r}, abstol={self.abstol:g}, "
            f"reltol={self.reltol:g}{steps}, max_nfe={self.max_nfe}, eval_max_nfe={self.eval_max_nfe}"
            + ("" if self.per_sample else ", per_sample=False")
        )

    def __setattr__(self, name: str, value: Any) -> None:
        """A checked setting (a property: ``max_nfe``, ``solver``, ...) goes to its setter, whatever the value:
        ``nn.Module`` would register a module or parameter under that name instead, past the check. ``f`` must stay
        callable, and a new attribute whose name is a near miss of a setting's (``max_stpes``) is refused: it
        would be ignored silently."""
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
            return
        if name == "f" and not callable(value):
            raise TypeError(f"f must be an nn.Module or a callable f(z, x), got {type(value).__name__}")
        if name == "z0":
            _check_z0(value)
        if name in ("strict", "per_sample") and not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
        if name not in _SETTINGS and not name.startswith("_") and name not in self.__dict__ and not hasattr(self, name):
            near = difflib.get_close_matches(name, _SETTINGS, n=1, cutoff=0.8)
            if near:
                raise AttributeError(
                    f"DEQ has no setting {name!r}; did you mean {near[0]!r}? (A new attribute of that name would be "
                    f"ignored by the layer; its settings: {', '.join(_SETTINGS)}.)"
                )
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        """What ``copy.deepcopy`` and ``pickle`` (``torch.save(deq)``) copy: everything but ``last_equilibrium``.

        That pair carries the autograd graph of the last call, which torch can neither copy nor pickle, and which
        belongs to that call, not to the model; the copy has ``last_equilibrium = None`` (``last_stats``, plain
        tensors, is kept).
        """
        state = self.__dict__.copy()
        state["last_equilibrium"] = None
        return state

    def initial_state(self, x: torch.Tensor, z0: InitialState | None = None) -> State:
        """Return the solver's starting point for input ``x``, detached (the answer does not depend on it).

        Parameters
        ----------
        x : torch.Tensor
            The layer's input, shape ``(batch, ...)``.
        z0 : {"zeros", "f0"}, callable, tensor or tuple/list of tensors, optional
            Overrides the constructor's ``z0``: ``"zeros"``: ``zeros_like(x)`` (so ``z`` must be shaped like
            ``x``); ``"f0"``: ``f(zeros_like(x), x)``; a callable: ``z0(x)``; a tensor or a tuple/list of
            tensors: itself.

        Returns
        -------
        torch.Tensor or tuple/list of torch.Tensor
            The starting point, computed under ``torch.no_grad()`` and detached.
        """
        z0 = self.z0 if z0 is None else z0
        _check_z0(z0)
        with torch.no_grad():
            if isinstance(z0, torch.Tensor) or is_structured(z0):
                return detach(z0)
            if callable(z0):
                start = z0(x)
                if not (isinstance(start, torch.Tensor) or is_structured(start)):
                    raise TypeError(
                        f"the callable z0 returned a {type(start).__name__}: it must return the "
                        "starting state, a tensor (batch, ...) or a tuple/list of them"
                    )
                return detach(start)
            zeros = torch.zeros_like(x)
            return zeros if z0 == "zeros" else detach(self.f(zeros, x))

    def forward(self, x: torch.Tensor, z0: InitialState | None = None, states: int | None = None) -> Any:
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
        states : int, optional
            Also return intermediate states along the forward solve, for a fixed-point correction loss or deep
            supervision (TorchDEQ's ``n_states``): a list of ``states`` outputs, the last being the usual output
            ``f(z*, x)`` with the layer's ``backward`` gradient, the others taken from iterates evenly spaced along
            the solve (after its start; the solve records its iterates for this), each passed through
            ``self.correction`` (one step of ``f`` by default), whose graph carries their gradient. They cost
            ``(states − 1) · correction.steps`` more evaluations of ``f``, outside the budget. With a solve of
            fewer steps than ``states − 1``, iterates repeat.

        Returns
        -------
        torch.Tensor, or tuple/list of torch.Tensor
            ``f(z*, x)``, shaped like ``z`` (in the structure of ``z`` for a state of several tensors). Under
            ``torch.no_grad()``, the ``f(z)`` the solver already computed at its returned iterate. With
            ``states``: a list of ``states`` such outputs (see there), the last one ``f(z*, x)``.

        Raises
        ------
        TypeError
            If ``x`` is not a tensor, or ``f`` does not return one.
        ValueError
            If ``x`` contains NaN or Inf; if the starting point is not a floating-point tensor (or tuple/list of
            them) whose first dimension is ``x``'s batch size; or if ``f(z, x)`` differs from ``z`` in structure,
            shape, dtype or device. With ``z0="zeros"`` or ``"f0"`` (``zeros_like(x)``), a shape error at the
            first evaluation of ``f`` is re-raised as a ``ValueError`` that says so and how to give the state's
            shape (``z0=lambda x: x.new_zeros(...)``).
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
        self._check_input(x)
        if states is not None:
            states = check_int("states", states, 1)
        if not isinstance(self.f, nn.Module):  # its parametrized modules, if any, are out of reach: no cache
            return self._forward(x, z0, states)
        # weights reparametrized with torch.nn.utils.parametrizations (weight or spectral norm) are computed once
        # per call, not once per evaluation of f: the map stays the same map during the solve
        with parametrize.cached():
            if torch.is_grad_enabled():
                self._cache_parametrizations()
            return self._forward(x, z0, states)

    def _cache_parametrizations(self) -> None:
        """Compute f's reparametrized weights now, with autograd on: the cache would otherwise be filled during
        the solve, which runs without a graph, and the re-attached ``f(z*, x)`` would then use weights that carry
        no gradient to the parameters behind them."""
        with torch.enable_grad():
            for module in self.modules():
                if parametrize.is_parametrized(module):
                    for name in cast(nn.ModuleDict, module.parametrizations):  # a ModuleDict, by name
                        getattr(module, name)

    def _forward(self, x: torch.Tensor, z0: InitialState | None, states: int | None) -> Any:
        # a call that raises leaves no statistics of an earlier call behind (they would read as this call's)
        self.last_stats, self.last_equilibrium = None, None
        mode = self.z0 if z0 is None else z0
        with _explained_start(mode, x) as first:
            start = self.initial_state(x, z0)
        structure = Structure.of(start, "z0")
        _check_batch(start, x)
        # A multi-tensor state is one (batch, N) tensor for the solvers and the gradient methods, and a structure
        # for f and the caller: `block` is f on flat states.
        block = self.f if structure is None else structure.block(self.f)
        flat = start if structure is None else structure.flatten(start, "z0")
        # In grad mode always re-attach: parameters that f captures by closure are invisible from here.
        needs_grad = torch.is_grad_enabled()
        with _explained_start(mode, x, first) as first:
            sol = self._solve(
                first.watch(block),
                x,
                flat,
                needs_grad and self.backward.records_graph,
                record=states is not None and states > 1,
            )
        iterates = _evenly_spaced(sol.stats.trajectory, states or 1)
        sol.stats.trajectory = []  # recorded only to sample the states: not kept
        unflatten = (lambda z: z) if structure is None else structure.unflatten
        corrected = [unflatten(self.correction.unroll(z, x, block)) for z in iterates]
        stats = DEQStats(sol.stats)
        self.last_stats, self.last_equilibrium = stats, None
        if not needs_grad:
            out = unflatten(sol.fz)
            return out if states is None else [*corrected, out]
        # Re-attach: f once more with autograd on, at z* as a fresh leaf (the solver's graph for Unrolled), which
        # carries the graph to x and to f's parameters, and ∂f/∂z at z* for deqkit.jacobian_penalty.
        z = sol.z if self.backward.records_graph else sol.z.detach().requires_grad_()
        out = block(z, x)
        self.last_equilibrium = (z, out)
        ctx = Context(
            block,
            self.tolerances,  # the forward's, in this mode: the backward's defaults
            self.strict,
            lambda s: setattr(stats, "backward", s),
            (z, out),
            self.alerts["backward"],
        )
        result = unflatten(self.backward.attach(out, sol, x, ctx))
        return result if states is None else [*corrected, result]

    @torch.compiler.disable(reason=EAGER)
    def _solve(
        self,
        block: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        start: torch.Tensor,
        record_graph: bool,
        record: bool = False,
    ) -> Solution:
        """The forward solve, run eagerly under ``torch.compile``: its loop stops on data-dependent conditions,
        which a compiled graph cannot express (the code around the DEQ still compiles, with a graph break here)."""
        alerts = self.alerts["forward"]
        with torch.set_grad_enabled(record_graph):
            sol = run(
                self.solver,
                self._per_sample(block, x),
                start,
                self.tolerances,
                strict=self.strict,
                record=record,
                warn=alerts.warn,
            )
        if sol.stats.all_converged:
            alerts.observe(sol.stats)
        return sol

    def _per_sample(self, block: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor) -> Map:
        """``z ↦ block(z, x)`` for the solvers, which may evaluate it on the samples still moving alone (see
        ``per_sample``); the whole batch every time where ``per_sample`` is False or ``f`` has a batch-norm layer
        in training mode."""

        def whole(z: torch.Tensor) -> torch.Tensor:
            return block(z, x)

        if not isinstance(self.per_sample, bool):  # checked here too: it may be reassigned after construction
            raise TypeError(f"per_sample must be True or False, got {self.per_sample!r}")
        training = {type(m) for m in self.f.modules() if m.training} if isinstance(self.f, nn.Module) else set()
        if not self.per_sample or any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in training):
            return whole

        def on(index: torch.Tensor) -> Map:
            part = x.index_select(0, index)
            return lambda z: block(z, part)

        # Each subset evaluation is compared with a held-still sample's known value; not with dropout in training
        # mode, random per call (yet per sample), where no second evaluation could match
        random = any(issubclass(t, nn.modules.dropout._DropoutNd) for t in training)
        return SampleMap(whole, on, compare=not random)

    @torch.compiler.disable(reason=EAGER)
    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse an input the solve cannot use, naming the cause and the fix (before any evaluation of f)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"DEQ expects a tensor input x, got {type(x).__name__}")
        if _functorch_wrapped(x):
            raise RuntimeError(
                "deqkit: the DEQ cannot run under torch.func transforms (vmap, grad, jacrev, ...): its solver stops "
                "each sample on data-dependent conditions. Batch the inputs yourself (the DEQ solves each sample "
                "of a batch independently) and use torch.autograd.grad or DEQ(..., backward='unrolled')."
            )
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(
                f"x must have shape (batch, ...) with a non-empty batch, got shape {tuple(x.shape)}; "
                "for one sample, add the batch dimension: x[None]"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}: convert it, e.g. x.float()")
        if x.device.type == "meta":
            raise ValueError(
                "x is on the meta device (shapes only, no values): a fixed point needs values; "
                "materialise the model and data first (model.to_empty(device='cpu'), then load weights)"
            )
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        if param is not None and (param.dtype != x.dtype or param.device != x.device):
            raise ValueError(
                f"x is {x.dtype} on {x.device} but f's parameters are {param.dtype} on {param.device}: move one to "
                f"the other, e.g. x.to(next(deq.parameters())) or deq.to({x.dtype}).to('{x.device}')"
            )
        if not torch.isfinite(x).all():
            raise ValueError(
                f"the input x contains NaN or Inf ({int((~torch.isfinite(x)).sum())} entries): a "
                "fixed point of f(z, x) is undefined there; clean the data or check the layer below"
            )


#: The names of the DEQ's settings (its constructor's parameters): near misses of them are refused as attributes
_SETTINGS = tuple(p.name for p in inspect.signature(DEQ).parameters.values() if p.kind is not p.VAR_KEYWORD)


class _FirstCall:
    """Counts the evaluations of a block and keeps the shape of its first output, for :func:`_explained_start`."""

    def __init__(self) -> None:
        self.calls, self.shape = 0, None

    def watch(self, block: Callable[[Any, torch.Tensor], Any]) -> Callable[[Any, torch.Tensor], Any]:
        def counted(z: Any, x: torch.Tensor) -> Any:
            self.calls += 1
            out = block(z, x)
            if self.calls == 1:
                self.shape = getattr(out, "shape", None)
            return out

        return counted


@contextlib.contextmanager
def _explained_start(mode: Any, x: torch.Tensor, first: _FirstCall | None = None) -> Iterator[_FirstCall]:
    """Turn a shape error at the first evaluation of f from ``z0="zeros"`` / ``"f0"`` (which mean
    ``zeros_like(x)``) into one that says so and how to give the state's own shape: otherwise the user sees torch's
    ``mat1 and mat2 shapes cannot be multiplied`` from inside f, or a shape mismatch that names no cause."""
    first = first or _FirstCall()
    try:
        yield first
    except (RuntimeError, ValueError) as err:
        shapes = any(word in str(err) for word in ("shape", "size", "channels", "dimension"))
        if not (isinstance(mode, str) and first.calls <= 1 and shapes) or isinstance(
            err, (ConvergenceError, torch.cuda.OutOfMemoryError)
        ):
            raise
        if x.dim() == 1:  # zeros_like(x) then has no feature dimension: refused before f ever ran
            raise ValueError(
                f"x has shape {tuple(x.shape)}: one dimension, which the DEQ reads as a batch of {x.shape[0]} samples "
                f"with no features, so z0={mode!r} (zeros_like(x)) is no (batch, ...) state. For a batch of scalars "
                "pass x[:, None]; for one sample of a vector, x[None]; or give the state's shape with z0, e.g. "
                "DEQ(f, z0=lambda x: x.new_zeros(len(x), n))."
            ) from err
        start = "starts from" if mode == "zeros" else "evaluates f(z, x) at"
        state = f"x.shape[0], {', '.join(map(str, first.shape[1:]))}" if first.shape is not None else "x.shape[0], ..."
        raise ValueError(
            f"f(z, x) does not fit the starting point: z0={mode!r} {start} zeros_like(x), shape "
            f"{tuple(x.shape)}, and the first evaluation of f failed ({err}). If the state z is not shaped like x, "
            f"give its shape with z0 as a callable of x, e.g. DEQ(f, z0=lambda x: x.new_zeros({state})), or as a "
            "tensor (a tuple/list of tensors for a state of several)."
        ) from err


def _evenly_spaced(trajectory: list[torch.Tensor], states: int) -> list[torch.Tensor]:
    """The ``states − 1`` iterates that split a recorded solve of ``n`` steps evenly, ``z*`` being the last state:
    steps ``⌈n·i / states⌉`` for ``i = 1 … states − 1`` (e.g. 10 and 20 of 30 for 3 states)."""
    n = len(trajectory) - 1
    return [trajectory[math.ceil(n * i / states)] for i in range(1, states)]


def _check_z0(z0: Any) -> None:
    """Refuse a ``z0`` setting that is none of the accepted kinds."""
    if isinstance(z0, str):
        ok = z0 in ("zeros", "f0")
    else:
        ok = callable(z0) or isinstance(z0, torch.Tensor) or is_structured(z0)
    if not ok:
        raise ValueError(
            f"z0 must be 'zeros', 'f0', a callable or a tensor, got {z0!r} (for a state of several "
            "tensors: a tuple or list of tensors)"
        )


def _check_batch(start: State, x: torch.Tensor) -> None:
    """The starting state's batch dimension must be x's."""
    first = start[0] if is_structured(start) else start
    if not isinstance(first, torch.Tensor) or first.dim() == 0 or first.shape[0] != x.shape[0]:
        what = "z0[0]" if is_structured(start) else "z0"
        raise ValueError(
            f"{what} has shape {tuple(getattr(first, 'shape', ()))} but x has batch size "
            f"{x.shape[0]}: the first dimension of z0 must be the batch of x"
        )


#: TorchDEQ's settings (get_deq / DEQBase / DEQIndexing) -> deqkit's, for the error about an unknown option
#: (docs/torchdeq.md has the full table).
TORCHDEQ_NAMES = {
    "f_solver": "solver=...",
    "b_solver": "backward=deqkit.Implicit(solver=...)",
    "f_max_iter": "max_steps=... / max_nfe=...",
    "b_max_iter": "backward=deqkit.Implicit(max_nfe=...)",
    "f_tol": "abstol=... / reltol=...",
    "b_tol": "backward=deqkit.Implicit(reltol=...)",
    "f_stop_mode": "abstol=... (abs) or reltol=... (rel)",
    "eval_factor": "eval_max_nfe=...",
    "eval_f_max_iter": "eval_max_nfe=...",
    "ift": "backward='implicit' (the default)",
    "hook_ift": "backward='implicit'",
    "grad": "backward=deqkit.Phantom(steps=...)",
    "tau": "backward=deqkit.Phantom(damping=...)",
    "n_states": "deq(x, states=k) at the call",
    "indexing": "deq(x, states=k) at the call",
    "norm_type": "deqkit.normalize(f, 'weight' or 'spectral')",
    "core": "nothing: one graph, see docs/torchdeq.md",
}


def _torchdeq_hint(options: dict[str, Any]) -> str:
    """``". TorchDEQ's 'f_max_iter' is max_steps=... / max_nfe=... here"``, or ``""``."""
    known = [k for k in options if k in TORCHDEQ_NAMES]
    hint = "".join(f". TorchDEQ's {k!r} is {TORCHDEQ_NAMES[k]} here" for k in known)
    if "record" in options:
        hint += ". For iterates along the solve call deq(x, states=k); deqkit.solve(f, z0, record=True) keeps them all"
    return hint


def _gradient_hint(options: dict[str, Any]) -> str:
    """``". 'steps' is an option of the gradient: backward=deqkit.Phantom(steps=...)"``, or ``""``."""
    from .adjoint import GRADIENTS

    for cls in GRADIENTS.values():
        mine = [k for k in options if k in inspect.signature(cls).parameters]
        if mine:
            settings = ", ".join(f"{k}=..." for k in mine)
            return (
                f". {', '.join(map(repr, mine))}: an option of the gradient, pass backward=deqkit.{cls.__name__}"
                f"({settings})"
            )
    return ""


def _functorch_wrapped(x: torch.Tensor) -> bool:
    """True inside ``torch.func.vmap`` / ``grad`` (x is then a functorch wrapper tensor)."""
    probe = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(probe is not None and probe(x))
