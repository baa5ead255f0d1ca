"""Forward fixed-point solvers behind one verb, :func:`solve`, and one registry.

``solve(f, z0, solver=...)`` finds ``z = f(z)`` for a batched map ``f`` (first dimension = batch), with the
per-sample termination rule of :mod:`deqkit.solvers.monitor` and statistics in a :class:`~deqkit.SolverStats`.
A solver is a configured :class:`Solver` object (``Anderson(m=6)``) or its name as a shorthand (``"anderson"``).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DivergenceError, StepFailure
from ..settings import check_real, make_options, named
from ..state import Structure
from ..stats import SolverStats
from .anderson import Anderson
from .broyden import Broyden
from .core import AffineMap, IterativeSolver, Map, SampleMap, Solver
from .dynamic_ss import DynamicSS, StepSizeController
from .krylov import GMRES
from .monitor import Monitor, Tolerances, overflow_hint
from .picard import Picard

# The registry: name -> class. A new forward method is one file with a Solver subclass plus one entry here.
SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (Picard, Anderson, Broyden, DynamicSS)}
# The backward pass solves a linear (affine) fixed point, where a Krylov method applies too.
BACKWARD_SOLVERS: dict[str, type[Solver]] = SOLVERS | {GMRES.name: GMRES}

SolverSpec = str | Solver

__all__ = [
    "SOLVERS",
    "BACKWARD_SOLVERS",
    "Solution",
    "Solver",
    "SolverSpec",
    "IterativeSolver",
    "as_solver",
    "register",
    "run",
    "solve",
    "Picard",
    "Anderson",
    "Broyden",
    "DynamicSS",
    "GMRES",
    "AffineMap",
    "StepSizeController",
    "Tolerances",
]


def register(cls: type[Solver], *, backward_only: bool = False) -> type[Solver]:
    """Add a solver class to the registry, so that its ``name`` works as a shorthand everywhere.

    Parameters
    ----------
    cls : type
        A subclass of :class:`Solver` with a ``name`` not taken yet.
    backward_only : bool
        Register it for the implicit backward pass only (like :class:`GMRES`, which needs an affine map).

    Returns
    -------
    type
        ``cls`` (so that ``register`` can decorate a class).

    Raises
    ------
    TypeError
        If ``cls`` is not a :class:`Solver` subclass with a string ``name``.
    ValueError
        If the name is taken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Solver) and isinstance(getattr(cls, "name", None), str)):
        raise TypeError(f"register() takes a subclass of deqkit.Solver with a string `name`, got {cls!r}")
    if cls.name in BACKWARD_SOLVERS:
        raise ValueError(f"a solver named {cls.name!r} is registered already ({BACKWARD_SOLVERS[cls.name].__name__})")
    if not backward_only:
        SOLVERS[cls.name] = cls
    BACKWARD_SOLVERS[cls.name] = cls
    return cls


def as_solver(
    spec: SolverSpec, options: dict[str, Any] | None = None, registry: dict[str, type[Solver]] = SOLVERS
) -> Solver:
    """Return the configured solver that ``spec`` names.

    Parameters
    ----------
    spec : str or Solver
        A key of ``registry`` (built with ``options``), or a configured instance (returned as it is).
    options : dict, optional
        Keyword options of the named method's class (e.g. ``{"m": 5}`` for :class:`Anderson`); only with a name.
    registry : dict
        Name -> solver class: :data:`SOLVERS` (forward) by default; :data:`BACKWARD_SOLVERS` adds ``"gmres"``.

    Returns
    -------
    Solver

    Raises
    ------
    ValueError
        If ``spec`` is not a name of ``registry``, or the class rejects an option's value (e.g. ``m < 1``).
    TypeError
        If ``spec`` is neither a name nor a :class:`Solver`, an option is not a parameter of the method's class,
        or options come with an instance (configure the instance instead).
    """
    options = options or {}
    if isinstance(spec, Solver):
        if options:
            raise TypeError(
                f"options {sorted(options)} were given with the configured solver {spec!r}: set them "
                f"on the object instead, e.g. {type(spec).__name__}({', '.join(options)}=...)"
            )
        if spec.name not in registry:
            raise ValueError(f"{type(spec).__name__} cannot be used here; choose one of {sorted(registry)}")
        return spec
    return make_options(named(spec, registry, "solver", "deqkit.Anderson(m=6)"), spec, options)


@dataclass
class Solution:
    """The returned iterate ``z``, ``f(z)`` (already computed by the solver) and the statistics.

    Attributes
    ----------
    z : torch.Tensor or tuple/list of torch.Tensor
        Per sample, the converged iterate, or the lowest-residual one for a sample that did not converge (in the
        structure of ``z0``).
    fz : torch.Tensor or tuple/list of torch.Tensor
        ``f(z)``.
    stats : SolverStats
    """

    z: Any
    fz: Any
    stats: SolverStats


def check_start(z0: Any, what: str = "z0") -> None:
    """Refuse a starting point that is not a floating-point ``(batch, ...)`` tensor, naming the fix."""
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (batch, ...), got {type(z0).__name__}")
    if z0.dim() < 2 or z0.shape[0] == 0:
        raise ValueError(
            f"{what} must have shape (batch, ...) with a non-empty batch and at least one feature dimension, got "
            f"shape {tuple(z0.shape)}. For a single sample of a vector map, add the batch dimension: {what}[None]."
        )
    if z0.numel() == 0:
        raise ValueError(
            f"{what} has no entries per sample (shape {tuple(z0.shape)}): a state needs at least one; check the "
            "size of its feature dimensions"
        )
    if not z0.is_floating_point():
        raise ValueError(
            f"{what} must be a floating-point tensor, got dtype {z0.dtype}: convert it, e.g. {what}.float()"
        )
    if z0.device.type == "meta":
        raise ValueError(
            f"{what} is on the meta device (shapes only, no values): a fixed point needs values; "
            f"create {what} on a real device, e.g. torch.zeros(shape, device='cpu')"
        )


def run(
    solver: Solver,
    f: Map,
    z0: Any,
    tol: Tolerances,
    *,
    strict: bool = False,
    record: bool = False,
    warn: Callable[[str, SolverStats], None] | None = None,
    units: float = 1.0,
) -> Solution:
    """Run a configured solver; the engine behind :func:`solve`, the DEQ layer and its backward pass.

    Parameters
    ----------
    solver : Solver
    f : callable
        The batched map; see :func:`solve`.
    z0 : torch.Tensor, or tuple/list of torch.Tensor
        Floating-point starting point, shape ``(batch, ...)`` with ``batch ≥ 1``; or a tuple/list of such tensors
        of different shapes, sharing batch size, dtype and device (``f`` then maps such a structure to the same
        structure; the solver sees them concatenated into one ``(batch, N)`` tensor, the returned ``z``,
        ``fz`` and recorded trajectory have ``z0``'s structure). Never modified or returned.
    tol : Tolerances
        The termination rule of :func:`solve` and the budget: ``max_steps`` (None: the solver's
        ``default_max_steps``) and ``max_nfe``, evaluations of ``f`` (the first included), never exceeded: a
        solver stops before a step that would cost more (None: no budget beyond ``max_steps``).
    strict : bool
        Raise instead of warning when a sample does not converge.
    record : bool
        Keep every iterate in ``stats.trajectory``.
    warn : callable, optional
        ``warn(message, stats)`` receives the warning about unconverged samples instead of :func:`warnings.warn`
        (the DEQ layer counts and summarises them).
    units : float
        The caller solves for ``z / units`` (a rescaled linear problem): the statistics' residuals and history,
        ``abstol`` and the messages are given times ``units``, in the caller's own units.

    Returns
    -------
    Solution

    Raises
    ------
    ValueError
        If ``z0`` is not a floating-point ``(batch, ...)`` tensor (or a tuple/list of them sharing batch size,
        dtype and device), a tolerance or ``max_steps`` is invalid, ``f(z)`` differs from ``z`` in structure,
        shape, dtype or device, or ``f`` changes its input in place.
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
    structure = Structure.of(z0)
    if structure is not None:  # the solver sees one (batch, N) tensor; the caller gets its own structure back
        sol = run(
            solver,
            structure.map(f),
            structure.flatten(z0, "z0"),
            tol,
            strict=strict,
            record=record,
            warn=warn,
            units=units,
        )
        sol.stats.trajectory = [structure.unflatten(z) for z in sol.stats.trajectory]
        return Solution(structure.unflatten(sol.z), structure.unflatten(sol.fz), sol.stats)
    check_start(z0)
    _check_run(solver, tol, strict, record, warn, units)
    if tol.max_steps is None:
        tol = tol.replace(max_steps=solver.default_max_steps)
    z0 = z0.detach().clone()  # the solver's own copy: the caller's z0 is never touched or handed back
    autocast = _autocast_dtype(z0.device.type)
    monitor = Monitor(
        solver.label,
        z0,
        tol,
        strict=strict,
        record=record,
        warn=warn,
        units=units,
        within=autocast,
        linear=isinstance(f, AffineMap),
    )
    if autocast is not None:  # the solver's own arithmetic (least squares, Krylov bases) in z0's precision
        f = _under_autocast(f, z0.device.type, autocast)  # and f as the caller asked
    with contextlib.nullcontext() if autocast is None else torch.autocast(z0.device.type, enabled=False):
        steps, nfe = _run_solver(solver, _out_of_place(f), z0, monitor)
    stats = monitor.finish(steps, nfe)
    return Solution(monitor.best_z, monitor.best_fz, stats)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype of the ``torch.autocast`` region the solve runs in, on this device type (None: not in one)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (RuntimeError, TypeError, ValueError):  # a device type without autocast
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _under_autocast(f: Map, device_type: str, dtype: torch.dtype) -> Map:
    """``f`` evaluated under ``torch.autocast(device_type, dtype)`` (the solve itself runs without it), keeping what
    the solvers read off ``f``'s kind."""
    if isinstance(f, AffineMap):
        return AffineMap(f.offset, _under_autocast(f.linear, device_type, dtype))

    def cast(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            out = f(z)
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != z.dtype:
            name = str(dtype).removeprefix("torch.")
            raise ValueError(
                f"f(z) comes back as {str(out.dtype).removeprefix('torch.')} under torch.autocast({name}) while the "
                f"state z is {str(z.dtype).removeprefix('torch.')}: autocast ran f's last matrix product or "
                f"convolution in {name}. End f with a cast to the state's dtype (return out.to(z.dtype), or "
                "out.float()), or keep the solve out of the autocast region."
            )
        return out

    if isinstance(f, SampleMap):
        return SampleMap(cast, lambda index: _under_autocast(f.on(index), device_type, dtype), f.compare)
    return cast


def _check_run(solver: Any, tol: Any, strict: Any, record: Any, warn: Any, units: Any) -> None:
    """Refuse the arguments of :func:`run` that would fail late (after the solve) or report nonsense."""
    if not isinstance(solver, Solver):
        raise TypeError(
            f"run() takes a configured solver object, got {solver!r}: build one, e.g. deqkit.Anderson() or "
            "deqkit.solvers.as_solver('anderson'), or call deqkit.solve(f, z0, solver=...)"
        )
    for name, flag in (("strict", strict), ("record", record)):  # strict: DEQ.strict may be reassigned
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if not isinstance(tol, Tolerances):
        raise TypeError(f"tol must be a deqkit.solvers.Tolerances, got {type(tol).__name__}")
    if warn is not None and not callable(warn):
        raise TypeError(f"warn must be a callable warn(message, stats) or None, got {warn!r}")
    check_real("units", units, 0.0, math.inf, low_open=True, high_open=True)  # residuals are reported times it


def _run_solver(solver: Solver, f: Map, z0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
    """``solver.run``, with the real cause named where the solver's own error names a symptom."""
    try:
        counts = solver.run(f, z0, monitor)
        monitor.settle()  # the best-iterate merges still pending allocate too: inside this handler
        return counts
    except DivergenceError as err:
        # An ODE step that torchdiffeq refused is reported as a flow that blows up; where the problem's own scale
        # overflows the dtype, that is the cause to name
        refused = isinstance(err.__cause__, StepFailure)
        cause = (overflow_hint(z0.dtype, monitor.start_scale) if refused else "") or _ode_settings_hint(
            solver, z0.dtype, refused
        )
        if not cause:
            raise
        raise DivergenceError(f"{solver.label}: {cause} (The solver's own report: {err})") from err
    except RuntimeError as err:  # an allocator's message names bytes, not the setting that asked for them
        if "vmap" in str(err) and ".item()" in str(err):  # (torch.func.grad and jacrev through a solve work)
            raise RuntimeError(
                "deqkit: a solve cannot run under torch.func.vmap: its solver stops each sample on data-dependent "
                "conditions, which vmap cannot batch. Batch the problems yourself: the solvers solve each sample "
                "(the first dimension of z0) independently."
            ) from err
        if not any(word in str(err) for word in ("can't allocate", "out of memory")):
            raise
        stored = (
            "GMRES's Krylov basis (restart + 1 vectors per sample; restart=None: as many as the state has entries) "
            "or the batch is too large for this device; lower restart or the batch size"
            if isinstance(solver, GMRES)
            else "the solver's stored history (e.g. Anderson's or Broyden's m) or the batch is too large for this "
            "device; lower m or the batch size"
        )
        raise type(err)(
            f"the solve ran out of memory with {solver!r} on a batch of shape {tuple(z0.shape)} "
            f"({' '.join(str(err).split())[:300]}): {stored}"
        ) from err


def _ode_settings_hint(solver: Solver, dtype: torch.dtype, refused: bool) -> str:
    """An ODE setting that explains a failed solve better than "the flow blows up"; "" if none does.

    ``refused``: torchdiffeq refused a step (its step size underflowed), rather than an iterate becoming NaN/Inf.
    Reads the settings by name, so that it applies to any solver that has them (:class:`DynamicSS`).
    """
    step, method = getattr(solver, "step_size", None), getattr(solver, "ode_method", "")
    if step is not None and not refused:
        return (
            f"{method} with the fixed step_size={step:g} is itself unstable when h·|1 − λ| > 2 for an eigenvalue "
            "λ of ∂f/∂z (at λ = 0: h > 2), so the blow-up may be the step's, not f's: lower "
            "step_size, or use an adaptive method (ode_method='tsit5')"
        )
    if not refused:
        return ""
    eps = torch.finfo(dtype).eps
    controller = getattr(solver, "controller", None)
    rtol, atol = getattr(controller, "rtol", None), getattr(controller, "atol", None)
    if rtol is not None and atol is not None and rtol < eps and atol < eps:
        return (
            f"the ODE tolerances StepSizeController(rtol={rtol:g}, atol={atol:g}) are below "
            f"{str(dtype).removeprefix('torch.')}'s precision (eps {eps:.2g}): no step can meet them, so the step "
            "size shrinks until it underflows; set them above eps (or leave them unset for the defaults)"
        )
    first = getattr(controller, "first_step", None)
    if first is not None and first > 1e3:
        return (
            f"StepSizeController(first_step={first:g}) is far beyond the flow's time scale (about 1, that of the "
            "−z term): the first trial steps overflow and the step size underflows; leave first_step unset, or "
            "choose it <= 1"
        )
    return ""


def _shaped_like_input(linear: Map) -> Map:
    """An :class:`AffineMap`'s linear part, refusing a result that is not a tensor of its argument's shape, dtype and
    device (``offset + linear(u)`` would promote or broadcast it, and GMRES, which calls it alone, would fail deep
    inside)."""

    def checked(u: torch.Tensor) -> torch.Tensor:
        out = linear(u)
        if not isinstance(out, torch.Tensor) or (out.shape, out.dtype, out.device) != (u.shape, u.dtype, u.device):
            got = (
                f"{tuple(out.shape)} {out.dtype} on {out.device}"
                if isinstance(out, torch.Tensor)
                else type(out).__name__
            )
            raise ValueError(
                f"AffineMap.linear returned {got} for an argument of {tuple(u.shape)} {u.dtype} on {u.device}: it "
                "must return a tensor of its argument's shape, dtype and device"
            )
        return out

    return checked


def _written_output(previous: tuple[weakref.ref, int] | None) -> torch.Tensor | None:
    """The tensor ``f`` returned at its previous evaluation, where something wrote into it since (else None)."""
    if previous is None:
        return None
    prior = previous[0]()
    return prior if prior is not None and prior._version != previous[1] else None


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors share storage (their storages start at the same address)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _reused_output_error(calls: int) -> ValueError:
    """Where ``f`` wrote into the tensor it returned at its previous evaluation (an output buffer it reuses, e.g.
    ``torch.tanh(..., out=buf)``): the solvers keep past values of ``f`` (the best iterate's, Anderson's history),
    which this overwrites without a trace."""
    return ValueError(
        f"f wrote into the tensor it returned at its previous evaluation (evaluation {calls} reuses an output "
        "buffer, e.g. torch.tanh(..., out=buf) or buf.copy_(...)): the solver keeps past values of f, which this "
        "overwrites. Return a new tensor at each call (drop out=, or return buf.clone())."
    )


def _out_of_place(f: Map) -> Map:
    """``f``, refusing every call that writes into its argument or returns it, not only the first one (of an
    :class:`AffineMap`, its linear part).

    The solvers keep past iterates (the best one, Anderson's history, the ODE stages), often as views of one
    another: a map that changes its input from its second call on would corrupt them and make a residual look
    like zero; so would one that writes into the tensor it returned the time before (a reused output buffer).
    Reading version counters costs no host synchronisation and no tensor operation.
    """
    if isinstance(f, AffineMap):
        return AffineMap(f.offset, _shaped_like_input(_out_of_place(f.linear)))
    calls, previous = 0, None  # previous: the last output (weakly) and its version when returned

    def checked(z: torch.Tensor) -> torch.Tensor:
        nonlocal calls, previous
        calls += 1
        version = None if z.is_inference() else z._version  # inference tensors keep no version counter
        try:
            fz = f(z)
        except RuntimeError as err:
            if calls == 1 and any(word in str(err) for word in ("shape", "size")):
                raise ValueError(
                    f"f failed at its first evaluation, at the starting point of shape {tuple(z.shape)} ({err}). "
                    "The start must have the shape of f's state: check z0 (for a DEQ, z0='zeros' is shaped like "
                    "x, so a state of another size needs z0=lambda x: x.new_zeros(batch, ...))."
                ) from err
            raise
        written = _written_output(previous)
        if written is not None and isinstance(fz, torch.Tensor) and _shares_memory(written, fz):
            raise _reused_output_error(calls)  # (even where that output came back as the input: z = f(z) steps)
        if fz is z or (version is not None and z._version != version):
            raise ValueError(
                f"f changed its input in place at its evaluation {calls} (it "
                f"{'returned its argument' if fz is z else 'wrote into it'}, e.g. z.mul_(...) or z += ...): the "
                "solver keeps past iterates, which this corrupts, and would report a false residual. Write f out "
                "of place (z * 0.5 instead of z.mul_(0.5)), or clone first: lambda z: g(z.clone())."
            )
        if written is not None:  # f keeps and overwrites its past outputs, returning new ones
            raise _reused_output_error(calls)
        if isinstance(fz, torch.Tensor) and not fz.is_inference():  # else: refused later, or no version counter
            previous = (weakref.ref(fz), fz._version)
        return fz

    if not isinstance(f, SampleMap):
        return checked

    def on(index: torch.Tensor) -> Map:
        part = f.on(index)

        def checked_part(z: torch.Tensor) -> torch.Tensor:  # z is a gathered copy: writing into it harms nothing
            fz = part(z)
            if fz is z:
                raise ValueError(
                    "f returned its argument: the solver would see a residual of zero. Write f out of "
                    "place, or clone first: lambda z: g(z.clone())."
                )
            return fz

        return checked_part

    return SampleMap(checked, on, f.compare)


def solve(
    f: Map,
    z0: Any,
    *,
    solver: SolverSpec = "dynamic_ss",
    abstol: float = 1e-5,
    reltol: float = 1e-5,
    max_steps: int | None = None,
    max_nfe: int | None = None,
    strict: bool = False,
    record: bool = False,
    **options: Any,
) -> tuple[torch.Tensor, SolverStats]:
    """Find the fixed point ``z* = f(z*)`` of a batched map.

    Parameters
    ----------
    f : callable
        Maps a tensor shaped like ``z0`` to one of the same shape, dtype and device, out of place. Samples
        (first dimension) are solved independently.
    z0 : torch.Tensor, or tuple/list of torch.Tensor
        Starting point, shape ``(batch, ...)``; or a tuple/list of tensors of different shapes (one state of
        several tensors, sharing batch size, dtype and device), which ``f`` maps to the same structure.
    solver : str or Solver
        A configured solver (``deqkit.Anderson(m=6)``, ``deqkit.DynamicSS(ode_method="dopri5")``) or the name
        of one with default settings: ``"dynamic_ss"`` (integrates ``dz/dt = f(z) − z`` to steady state, Tsit5
        by default), ``"anderson"``, ``"broyden"``, ``"picard"``.
    abstol, reltol : float
        A sample has converged when ``‖f(z) − z‖∞ ≤ abstol`` or ``‖f(z) − z‖∞ ≤ reltol · ‖f(z)‖∞`` (the
        relative rule does not accept an iterate that runs away with a residual that never fell).
    max_steps : int, optional
        Most solver steps (≥ 1); the method's own default when omitted.
    max_nfe : int, optional
        Most evaluations of ``f`` (≥ 2, the first included); never exceeded. Samples still running when it is
        spent stop with their best iterate and are warned about. No budget beyond ``max_steps`` when omitted.
        The default ``"dynamic_ss"`` starts with its polisher and can stop after any evaluation; without a
        polisher (``DynamicSS(polish=None)``) it needs its start and one ODE step (8 with Tsit5 and no
        ``first_step``, which the solver then chooses with an evaluation), else ``ValueError``.
    strict : bool
        Raise :class:`~deqkit.ConvergenceError` instead of warning when a sample does not converge.
    record : bool
        Keep every iterate in ``stats.trajectory`` (for plots; costs memory).
    **options
        With a solver name, options of its class (see :class:`Picard`, :class:`Anderson`, :class:`Broyden`,
        :class:`DynamicSS`); an unknown one raises ``TypeError``.

    Returns
    -------
    z_star : torch.Tensor, or tuple/list of torch.Tensor
        The converged iterate (for a sample that did not converge: its lowest-residual iterate), in ``z0``'s
        structure.
    stats : SolverStats

    Raises
    ------
    ValueError
        If an option is invalid, or ``max_nfe`` cannot pay for one step of the method.
    deqkit.DivergenceError
        At once, when an iterate becomes NaN or infinite.
    deqkit.ConvergenceError
        With ``strict=True``, when a sample does not converge within ``max_steps``.

    Warns
    -----
    deqkit.ConvergenceWarning
        When a sample does not converge within ``max_steps`` (how many, their best residual, what to try).
    """
    if "method" in options:  # torchdiffeq's and scipy's name for it
        raise TypeError(
            "solve() takes solver=..., not method=... (the fixed-point method, as in DEQ(solver=...); the ODE "
            f"method of dynamic_ss is ode_method=...): solve(f, z0, solver={options['method']!r})"
        )
    chosen = as_solver(solver, options)
    sol = run(chosen, f, z0, Tolerances(abstol, reltol, max_steps, max_nfe), strict=strict, record=record)
    return sol.z, sol.stats
