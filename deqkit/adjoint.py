"""Gradients through a fixed point, as objects: :class:`Implicit`, :class:`Unrolled`, :class:`OneStep`,
:class:`Phantom`.

At ``z* = f(z*, x)`` the implicit function theorem gives ``dz*/dθ = (I − J)⁻¹ ∂f/∂θ`` with ``J = ∂f/∂z``.
The layer returns ``out = f(z*, x)`` evaluated once more with autograd on ("re-attached"), so ``out`` carries
the graph to ``x`` and to every parameter of ``f`` however ``f`` holds them. For an incoming gradient ``g``
the exact gradient of ``out`` is ``u ∂f/∂(θ, x)`` with ``u = g (I − J)⁻¹``, i.e. the fixed point of

    u = g + uJ      (a vector–Jacobian product per evaluation)

:class:`Implicit` swaps ``g`` for ``u`` on the way back; any forward solver or GMRES finds ``u``.
:class:`OneStep` keeps ``u = g`` (the Jacobian-free gradient); :class:`Unrolled` backpropagates through the solver;
:class:`Phantom` backpropagates through a few damped steps taken from ``z*``.

To add a gradient method: subclass :class:`Gradient`, implement :meth:`Gradient.attach`, and add the class to
:data:`GRADIENTS`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .alerts import ConvergenceAlerts
from .errors import DivergenceError
from .settings import Configured, check_int, check_real, named
from .solvers import BACKWARD_SOLVERS, Solution, SolverSpec, as_solver, run
from .solvers.core import AffineMap, Solver
from .solvers.monitor import Tolerances
from .stats import SolverStats

Block = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["GRADIENTS", "Gradient", "GradientSpec", "Implicit", "OneStep", "Phantom", "Unrolled", "as_gradient"]


@dataclass
class Context:
    """What the layer hands a gradient method: the block, the forward tolerances and budget, where to report."""

    f: Block
    tol: Tolerances  # the forward solve's, in the layer's current mode: the backward's defaults
    strict: bool
    report: Callable[[SolverStats], None]
    equilibrium: tuple[torch.Tensor, torch.Tensor]  # (z*, f(z*, x)) of the layer's re-attached evaluation
    alerts: ConvergenceAlerts | None = None  # counts and summarises the backward's unconverged solves


class Gradient(Configured, abc.ABC):
    """How the layer's output gets its gradient; one object per method.

    Attributes
    ----------
    name : str
        The string shorthand, e.g. ``"implicit"``.
    records_graph : bool
        True when the forward solve itself must run with autograd on (backpropagation through the solver).
    """

    name: ClassVar[str]
    records_graph: ClassVar[bool] = False

    @abc.abstractmethod
    def attach(self, out: torch.Tensor, sol: Solution, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Return the layer's output wired for this method's gradient (grad mode is on).

        ``out`` is ``f(z*, x)`` evaluated once more with autograd on by the layer: at the solver's own graph for
        ``records_graph`` methods, else at ``z*`` as a fresh leaf (which :func:`deqkit.jacobian_penalty` uses).
        """

    @property
    def label(self) -> str:
        """A short description for statistics and plots (default: ``name``)."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Unrolled(Gradient):
    """Backpropagate through every step of the forward solver (the naive baseline; allows double backward).

    Memory grows with the number of forward steps.
    """

    name = "unrolled"
    records_graph = True

    def attach(self, out: torch.Tensor, sol: Solution, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return out


class OneStep(Gradient):
    """The Jacobian-free gradient: ``(I − J)⁻¹ ≈ I``, i.e. backpropagate through one application of ``f``."""

    name = "one_step"

    def attach(self, out: torch.Tensor, sol: Solution, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return out


class Phantom(Gradient):
    """Phantom gradient (Geng et al., 2021): backpropagate through ``steps`` damped steps taken from ``z*``.

    ``z₀ = z*`` (no gradient), ``zᵢ₊₁ = (1 − damping) zᵢ + damping · f(zᵢ, x)``; the output is ``z_steps``. Its
    gradient is the implicit one with ``(I − J)⁻¹`` replaced by a truncated damped Neumann series: cheap (``steps``
    evaluations with autograd, no linear solve) and close to the implicit gradient when ``ρ(J)`` is well below 1.
    ``Phantom(steps=1, damping=1)`` is :class:`OneStep`.

    Parameters
    ----------
    steps : int
        Unrolled steps (≥ 1); each costs one evaluation of ``f`` in the forward and one product in the backward.
    damping : float
        In (0, 1].
    """

    name = "phantom"

    def __init__(self, steps: int = 5, damping: float = 0.5):
        self.steps = check_int("steps", steps, 1)
        self.damping = check_real("damping", damping, 0.0, 1.0, low_open=True)

    @property
    def label(self) -> str:
        return f"phantom({self.steps}, {self.damping:g})"

    def __repr__(self) -> str:
        return f"Phantom(steps={self.steps}, damping={self.damping:g})"

    def attach(self, out: torch.Tensor, sol: Solution, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return self.unroll(sol.z, x, ctx.f, out)  # the layer's own evaluation serves as the first step's

    def unroll(self, z: torch.Tensor, x: torch.Tensor, f: Block, first: torch.Tensor | None = None) -> torch.Tensor:
        """``steps`` damped steps of ``f`` from ``z`` (detached), with autograd: this gradient from any iterate.

        ``first``, if given, is ``f(z, x)`` already evaluated with autograd on. Used by :meth:`attach` at ``z*``
        and by the layer for the intermediate states of a fixed-point correction (``deq(x, states=k)``).
        """
        z = z.detach()
        for i in range(self.steps):
            fz = first if i == 0 and first is not None else f(z, x)
            z = torch.lerp(z, fz, self.damping) if self.damping != 1 else fz
        return z


class Implicit(Gradient):
    """The implicit function theorem: one linear fixed-point solve ``u = g + u ∂f/∂z`` at ``z*``.

    Memory does not grow with the forward iterations.

    Parameters
    ----------
    solver : str or Solver
        The backward solver: ``"gmres"`` (default; restarted GMRES(20), which also converges where plain iteration
        diverges, though restarts slow it near ρ(J) = 1 and can stall it where the eigenvalues of ``I − J``
        surround the origin; ``deqkit.GMRES(restart=None)`` never stalls), ``"anderson"``, ``"broyden"``,
        ``"picard"``, ``"dynamic_ss"`` (the adjoint ODE run to steady state), or a configured object such as
        ``deqkit.GMRES(restart=30)``.
    abstol, reltol : float, optional
        Termination of the backward solve. Default: relative only, ``abstol = 0`` and ``reltol`` the larger of the
        layer's forward tolerances: the scale of the incoming gradient is the loss's business (a batch mean divides
        it by the batch size) and an absolute tolerance could accept the first guess ``u = g`` — silently the
        one-step gradient.
    max_steps : int, optional
        Step limit of the backward solve (the solver's default when omitted).
    max_nfe : int, optional
        Most vector–Jacobian products of the backward solve (never exceeded). Default: the forward's budget, the
        layer's ``max_nfe`` in training (:data:`deqkit.layer.TRAIN_NFE` unless set) or ``eval_max_nfe`` in
        ``eval()`` mode, so that one hard sample cannot keep the whole batch's backward solve going to
        ``max_steps``; no budget beyond ``max_steps`` where that is None: the backward may cost what the forward
        may. How close the budgeted gradient is to the converged one: docs/results.md ("Accuracy at the training
        budget").
    **options
        With a solver name, options of its class (e.g. ``restart=30``); unknown ones raise ``TypeError``.
    """

    name = "implicit"

    def __init__(
        self,
        solver: SolverSpec = "gmres",
        *,
        abstol: float | None = None,
        reltol: float | None = None,
        max_steps: int | None = None,
        max_nfe: int | None = None,
        **options: Any,
    ):
        self.solver: Solver = as_solver(solver, options, BACKWARD_SOLVERS)
        # bounded as the forward's are: an infinite abstol or a reltol >= 1 would accept the first guess u = g,
        # silently the one-step gradient
        self.abstol = None if abstol is None else Tolerances.check("abstol", abstol)
        self.reltol = None if reltol is None else Tolerances.check("reltol", reltol)
        if self.reltol == 0 and not self.abstol:  # abstol None means 0
            raise ValueError(
                "the backward abstol and reltol are both 0: no backward solve could ever converge; set "
                "reltol > 0 (the default follows the forward tolerances)"
            )
        self.max_steps = None if max_steps is None else check_int("max_steps", max_steps, 1)
        self.max_nfe = None if max_nfe is None else check_int("max_nfe", max_nfe, 2)

    @property
    def label(self) -> str:
        return f"implicit({self.solver.label})"

    def __repr__(self) -> str:
        shown = [f"solver={self.solver!r}"] + [
            f"{k}={getattr(self, k)!r}"
            for k in ("abstol", "reltol", "max_steps", "max_nfe")
            if getattr(self, k) is not None
        ]
        return f"Implicit({', '.join(shown)})"

    def tolerances(self, forward: Tolerances) -> Tolerances:
        """The backward solve's tolerances and budget, given the forward solve's (see the class docstring)."""
        if not isinstance(forward, Tolerances):
            raise TypeError(
                "Implicit.tolerances() takes the forward solve's deqkit.solvers.Tolerances (e.g. deq.tolerances), "
                f"got {type(forward).__name__}"
            )
        abstol = 0.0 if self.abstol is None else self.abstol
        reltol = max(forward.abstol, forward.reltol) if self.reltol is None else self.reltol
        if self.reltol is None and reltol >= 1:
            raise ValueError(
                f"the backward reltol defaults to the larger forward tolerance, {reltol:g}, which is >= 1 "
                "and would accept the first guess (the one-step gradient): set the backward's own, "
                "e.g. backward=deqkit.Implicit(reltol=1e-5)"
            )
        inherited = self.max_nfe is None and forward.max_nfe is not None
        note = (
            "inherited from the DEQ's forward budget; give the backward its own with "
            "backward=deqkit.Implicit(max_nfe=...)"
        )
        return Tolerances(
            abstol,
            reltol,
            self.solver.default_max_steps if self.max_steps is None else self.max_steps,
            forward.max_nfe if self.max_nfe is None else self.max_nfe,
            note if inherited else "",
            # messages name the setting that holds the number: the DEQ's eval_max_nfe in eval() mode
            forward.budget_name if inherited else "max_nfe",
        )

    def attach(self, out: torch.Tensor, sol: Solution, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return _ImplicitFunction.apply(out, (self, ctx))


class _ImplicitFunction(torch.autograd.Function):
    """Identity on the forward pass; on the backward pass ``g ↦ u`` with ``u = g + uJ`` at ``z*``."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, config: tuple[Implicit, Context]) -> torch.Tensor:
        ctx.config = config
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "deqkit: double backward (create_graph=True) through the implicit DEQ gradient is not supported: "
                "its backward pass is itself a fixed-point solve. Use DEQ(..., backward='unrolled') for "
                "higher-order derivatives."
            )
        method, layer = ctx.config
        _check_incoming(grad)
        z, fz = layer.equilibrium  # the layer's own evaluation at z*: no extra forward evaluation here
        # The solve is linear in grad: solve for grad / scale, a power of two (exact), where grad's size would make
        # the solver's inner products overflow or underflow (a loss scaled by 1e20 or 1e-30 in float32)
        scale = _gradient_scale(grad)
        g = grad if scale == 1.0 else grad / scale

        calls = 0

        def vjp(u: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            (uj,) = torch.autograd.grad(fz, z, u, retain_graph=True, allow_unused=True)
            calls += 1
            if calls == 1 and uj is not None:  # at the finite start g: a NaN here is f's derivative, not a blow-up
                _check_jacobian(uj)
            return torch.zeros_like(u) if uj is None else uj

        tol = method.tolerances(layer.tol)
        if scale != 1.0:
            tol = tol.replace(abstol=min(tol.abstol / scale, torch.finfo(torch.float64).max))
        alerts = layer.alerts
        try:
            sol = run(
                method.solver,
                AffineMap(g, vjp),  # u ↦ g + uJ
                g,
                tol,
                strict=layer.strict,
                warn=None if alerts is None else alerts.warn,
                units=scale,
            )
        except DivergenceError as err:
            if calls <= 1:  # f's derivative at z* (see _check_jacobian), or the start: said as it is
                raise
            raise DivergenceError(
                f"implicit backward: the linear solve u = g + u·∂f/∂z at the equilibrium (solver "
                f"{method.solver.label}) blew up; the forward solve had finished. Here f(z) − z in the solver's "
                "report below means g + uJ − u. Plain iteration on it diverges where the spectral radius of ∂f/∂z "
                "at z* is 1 or more (check deqkit.spectral_radius): use backward=deqkit.Implicit(solver='gmres'), "
                f"which converges there too, or constrain f. (The solver's report: {str(err).split('. ')[0]}.)"
            ) from err
        if alerts is not None and sol.stats.all_converged:
            alerts.observe(sol.stats)
        layer.report(sol.stats)
        return sol.z if scale == 1.0 else sol.z * scale, None


def _check_jacobian(uj: torch.Tensor) -> None:
    """Raise where the first vector–Jacobian product (at the finite incoming gradient) is not finite: ``f`` is not
    differentiable at ``z*``, which the solver would report as ``f`` being undefined there."""
    bad = ~torch.isfinite(uj.flatten(1)).all(1)
    if bool(bad.any()):
        raise DivergenceError(
            "implicit backward: the first vector–Jacobian product (with the incoming gradient, which is finite) "
            f"became NaN or infinite at step 0 for {int(bad.sum())} of {bad.numel()} samples: the gradient of f at "
            "the equilibrium z* is not finite, so f is not differentiable at their z* (e.g. sqrt or abs at 0, log "
            "near 0, a norm of a zero vector) and no implicit gradient exists there. Make f smooth there (e.g. "
            "sqrt(z² + 1e-12)), or check those samples' z* (deq.last_equilibrium)."
        )


def _gradient_scale(grad: torch.Tensor) -> float:
    """1, or the power of two nearest ``max |grad|`` where that lies outside ``[2^-30, 2^30]``: there, squares of
    the entries (norms, inner products of GMRES and Anderson) overflow or underflow in float32 and the backward
    solve would fail with a message about an expansive map that is not the cause."""
    peak = float(grad.detach().abs().max())
    if peak == 0 or 2.0**-30 <= peak <= 2.0**30:
        return 1.0
    return 2.0 ** round(math.log2(peak))


def _check_incoming(grad: torch.Tensor) -> None:
    """One check per backward, not per step: name the real culprit of a NaN/Inf gradient, not the solver."""
    bad = ~torch.isfinite(grad)
    if bad.any():
        raise DivergenceError(
            f"deqkit: the gradient arriving at the DEQ's output contains NaN or Inf ({int(bad.sum())} entries, "
            f"{int(bad.flatten(1).any(1).sum())} of {grad.shape[0]} samples) before the backward solve started: "
            "the loss or a layer after the DEQ produced it (check them, e.g. with "
            "torch.autograd.set_detect_anomaly(True))."
        )


GRADIENTS: dict[str, type[Gradient]] = {cls.name: cls for cls in (Implicit, Unrolled, OneStep, Phantom)}
GradientSpec = str | Gradient


def as_gradient(spec: GradientSpec) -> Gradient:
    """Return the gradient method ``spec`` names: a :class:`Gradient` as it is, or a name with default settings.

    Raises
    ------
    ValueError
        If ``spec`` is a string that is not a key of :data:`GRADIENTS`.
    TypeError
        If ``spec`` is neither.
    """
    if isinstance(spec, Gradient):
        return spec
    return named(spec, GRADIENTS, "backward", "deqkit.Implicit(solver='gmres')")()
