"""The interface every fixed-point solver implements: :class:`Solver`, and :class:`IterativeSolver` for the
methods that take one evaluation of the map per step; and what solvers share when they evaluate the map
(:class:`SampleMap`, :func:`evaluate_moving`, :func:`first_evaluation`, :func:`check_map_output`).

A solver reports every iterate to the :class:`~deqkit.solvers.monitor.Monitor`, which owns the termination rule,
the per-sample bookkeeping and the statistics (:mod:`deqkit.solvers.monitor`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..settings import Configured
from .monitor import Monitor, where_rows

Map = Callable[[torch.Tensor], torch.Tensor]


def check_map_output(fz: torch.Tensor, z: torch.Tensor, what: str = "f") -> None:
    """Refuse a map whose output does not look like its input (shape, dtype, device)."""
    if not isinstance(fz, torch.Tensor):
        hint = (
            ": the state z is one tensor, so f must return one; for a state of several tensors, start from that "
            "structure (z0 a tuple/list of tensors, or a callable of x returning one)"
            if isinstance(fz, (tuple, list))
            else ""
        )
        raise TypeError(f"{what} must return a torch.Tensor, got {type(fz).__name__}{hint}")
    for attr in ("shape", "dtype", "device"):
        if getattr(fz, attr) != getattr(z, attr):
            raise ValueError(
                f"{what}(z) has {attr} {getattr(fz, attr)} but z has {attr} {getattr(z, attr)}: a fixed point "
                f"z = {what}(z) needs both to match. Check z0 (its shape must be {what}'s output shape) and "
                "that f does not change dtype or device."
            )


def first_evaluation(f: Map, z: torch.Tensor, what: str = "f") -> torch.Tensor:
    """Evaluate ``f(z)`` for the first time in a solve, refusing a map that changes its input in place.

    Every solver keeps past iterates (history, best iterate, the caller's ``z0``); a map that writes into its
    argument would corrupt them and make the first residual look like zero.
    """
    version = None if z.is_inference() else z._version  # inference tensors keep no version counter
    fz = f(z)
    if fz is z or (version is not None and z._version != version):
        raise ValueError(
            f"{what} changed its input in place (it {'returned its argument' if fz is z else 'wrote into it'}, "
            "e.g. z.mul_(...) or z += ...): the solver keeps past iterates, which this would corrupt. Write "
            f"{what} out of place (z * 0.5 instead of z.mul_(0.5)), or clone first: lambda z: g(z.clone())."
        )
    check_map_output(fz, z, what)
    return fz


class SampleMap:
    """A batched map whose samples are independent, that can also be evaluated on some of them alone.

    ``f(z)`` evaluates the whole batch; ``f.on(index)`` is the map on the samples ``index`` (a 1-D index tensor)
    alone. The solvers use it to skip samples that hold still (converged, or waiting for the flow), whose ``f(z)``
    they already know: see :func:`evaluate_moving`. The DEQ layer hands its block to the solvers this way.
    With ``compare`` (the default), every subset evaluation also takes one sample that holds still, whose value
    is known, and compares the two: this catches an ``f`` that mixes samples (``z.mean(0)``, ``x.amax(0)``) at
    the evaluation where mixing would change a result, at the cost of one sample and one host read. False for an
    ``f`` that is random per call (dropout in training mode), which no second evaluation could match.
    """

    def __init__(self, f: Map, on: Callable[[torch.Tensor], Map], compare: bool = True) -> None:
        self._f, self._on, self.compare = f, on, compare

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self._f(z)

    def on(self, index: torch.Tensor) -> Map:
        """The map on the samples ``index`` alone."""
        return self._on(index)


class AffineMap:
    """An affine map ``u ↦ offset + linear(u)`` whose linear part is known.

    :class:`~deqkit.solvers.krylov.GMRES` applies ``linear`` to its basis vectors directly (one evaluation each),
    where for any other map it probes the linear part as ``T(u + v) − T(u)``: four vector operations fewer per
    product and no probe to scale. The other solvers call the map as it is. The implicit backward hands its
    ``u ↦ g + uJ`` to the solvers this way.

    Parameters
    ----------
    offset : torch.Tensor
        The map's value at 0, shaped like the state (one tensor: structured states are not supported).
    linear : callable
        ``u ↦ linear(u)``, linear in ``u`` (GMRES relies on it: an affine ``linear`` makes it fail to converge),
        returning a tensor of ``u``'s shape, dtype and device (checked at every call).
    """

    def __init__(self, offset: torch.Tensor, linear: Map) -> None:
        if not isinstance(offset, torch.Tensor):
            raise TypeError(
                f"AffineMap(offset, linear): offset must be one tensor shaped like the state, got "
                f"{type(offset).__name__}; for a structured (tuple) state pass the map itself, u ↦ offset + linear(u)"
            )
        if not callable(linear):
            raise TypeError(f"AffineMap(offset, linear): linear must be callable, got {type(linear).__name__}")
        self.offset, self.linear = offset, linear

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.offset + self.linear(u)


#: With at most this share of a batch moving, a :class:`SampleMap` is evaluated on the moving samples alone
#: (gathering them and scattering the result costs a few copies of the state: worth it when f is much more).
COMPACT_SHARE = 0.75


def evaluates_subset(f: Map, count: int, batch: int) -> bool:
    """Whether :func:`evaluate_moving` evaluates ``f`` on its ``count`` moving samples (of ``batch``) alone, so that
    the others keep their known values of ``f`` exactly. Where it evaluates the whole batch, a map that mixes samples
    may give the samples held still new values."""
    return isinstance(f, SampleMap) and 0 < count <= COMPACT_SHARE * batch


def evaluate_moving(f: Map, z: torch.Tensor, fz: torch.Tensor | None, moving: torch.Tensor) -> torch.Tensor:
    """``f(z)``, where only the samples ``moving`` changed since ``fz`` was evaluated (the others are where ``fz``
    was taken, so ``fz`` is their value).

    With a :class:`SampleMap` and at most :data:`COMPACT_SHARE` of the batch moving, ``f`` runs on the moving
    samples alone and the others keep ``fz``: the same result (a sample's ``f`` does not depend on its batch), at
    the cost of the moving share of the batch. Reads the count of moving samples (a host synchronisation).
    """
    if fz is None or not isinstance(f, SampleMap):
        return f(z)
    count = int(moving.sum())
    if not evaluates_subset(f, count, moving.numel()):
        return f(z)
    index = moving.nonzero().squeeze(1)
    # to compare with its known value: one sample holding still, evaluated with the moving ones
    witness = (~moving).nonzero()[:1].squeeze(1) if f.compare else index[:0]
    part, failure = None, ""
    try:
        rows = torch.cat([index, witness])
        part = f.on(rows)(z.index_select(0, rows))
    except RuntimeError as err:
        if not any(word in str(err) for word in ("shape", "size", "dimension")):
            raise
        failure = f"failed ({err})"
    if part is not None and part.shape != (rows.numel(), *fz.shape[1:]):
        failure = f"returned shape {tuple(part.shape)}, not {(rows.numel(), *fz.shape[1:])}"
    elif part is not None and (part.dtype, part.device) != (fz.dtype, fz.device):
        failure = f"returned {part.dtype} on {part.device}, not {fz.dtype} on {fz.device} as for the whole batch"
    if failure or part is None:  # part is None only when f failed
        raise ValueError(
            f"f evaluated on the {count} samples still moving (of {moving.numel()}"
            f"{', with one held still to compare' if witness.numel() else ''}) {failure}. The solvers evaluate "
            "f on those samples alone, which needs each sample's f(z, x) to depend on its own z and x only: a tensor "
            "shaped like the batch that f captures (a mask, a per-sample bias) does not shrink with them, and "
            "batch statistics mix samples. Pass such tensors inside x or the state, or evaluate the whole batch "
            "every time with DEQ(..., per_sample=False)."
        )
    if f.compare:
        _same_as_known(part[count:], fz.index_select(0, witness), count, moving.numel())
    return fz.index_copy(0, index, part[:count])


def _same_as_known(part: torch.Tensor, known: torch.Tensor, count: int, batch: int) -> None:
    """Raise where ``f`` on a subset gave a held-still sample another value (``part``) than it had (``known``,
    from the whole batch or an earlier subset), beyond rounding: ``f`` mixes samples, and the per-sample results
    would silently depend on which samples moved."""
    with torch.no_grad():
        slack = torch.finfo(part.dtype).eps ** 0.5 if part.is_floating_point() else 0.0
        gap = (part.detach() - known.detach()).abs().max()
        scale = known.detach().abs().max().clamp_min(1)
    if not bool(gap <= slack * scale):
        by = "NaN on one side only" if math.isnan(float(gap)) else f"by up to {float(gap):.3g}"
        raise ValueError(
            f"f on the {count} samples still moving (of {batch}) and one held still gives that one another value "
            f"than it had with other samples ({by}): f mixes samples (z.mean(0), x.amax(0), x.sort(0), softmax over "
            "the batch, ...) or is random (dropout in training mode), so the solvers' per-sample evaluation would "
            "change results silently. Keep each sample's f(z, x) to its own z and x, or evaluate the whole batch "
            "every time with DEQ(..., per_sample=False)."
        )


class Solver(Configured, abc.ABC):
    """The one interface of every fixed-point method, forward (Picard, Anderson, Broyden, DynamicSS) or
    backward-only (GMRES).

    A solver is a small configured object: its constructor takes and validates the method's options (so a wrong
    setting fails where it is written), and :meth:`run` drives one solve, reporting every iterate to the
    :class:`Monitor`, which owns termination, statistics and failure. To add a method, subclass this (or
    :class:`IterativeSolver`), set ``name``, and add the class to the registry in :mod:`deqkit.solvers`.

    Attributes
    ----------
    name : str
        The registry key and the string shorthand, e.g. ``"anderson"``.
    default_max_steps : int
        The step limit when the caller gives none.
    """

    name: ClassVar[str]
    default_max_steps: ClassVar[int] = 100

    @property
    def label(self) -> str:
        """A short description for statistics, plots and menus: ``name`` with the options that differ from their
        defaults, e.g. ``"anderson"`` or ``"picard(damping=0.5)"``."""
        changed = self._changed_options()
        return self.name + (f"({', '.join(changed)})" if changed else "")

    @abc.abstractmethod
    def run(self, f: Map, z0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        """Solve ``z = f(z)`` from ``z0``, checking each iterate with ``monitor``; return ``(steps, evaluations)``.

        Stop when ``monitor.done`` or after ``monitor.max_steps`` steps. ``f`` is evaluated on tensors
        shaped like ``z0``; ``z0`` must not be modified.
        """


class IterativeSolver(Solver):
    """A solver that takes one evaluation of the map per step: ``z_{k+1} = update(z_k, f(z_k))``.

    Subclasses see flattened ``(batch, dim)`` tensors and keep whatever history they need in ``state``, and set
    ``sync_every`` (a setting of their constructor): how often the host reads the monitor's numbers.

    With ``sync_every = k > 1`` the per-sample bookkeeping still runs at every step on the tensors' device (each
    sample is frozen at the step it converged, with that step, its evaluations and its best iterate recorded
    exactly), but the counts that decide whether to stop, the residual history and the NaN check reach the host
    only every ``k`` steps, and at the step or evaluation limit: one pair of host synchronisations per ``k`` steps
    instead of per step, which is what a GPU waits on. Each sample's result is the same as with ``k = 1``; the solve
    as a whole may take up to ``k − 1`` more steps (after its last sample converged, before the next read), never
    more than ``max_steps`` or ``max_nfe``; a NaN is reported at the read after it, naming the step it appeared at.
    On a CPU a read costs no more than the operations around it: keep ``k = 1`` there.
    """

    sync_every: int = 1

    def init_state(self, z: torch.Tensor, fz: torch.Tensor) -> Any:
        return None

    @abc.abstractmethod
    def update(self, z: torch.Tensor, fz: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """The next iterate from ``z`` and ``fz = f(z)``, both ``(batch, dim)``."""

    def run(self, f: Map, z0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        """Iterate until every sample converged or ``max_steps`` updates; return ``(steps, evaluations)``."""
        fz = first_evaluation(f, z0)
        monitor.check(0, z0, fz - z0, fz, 1)
        state = self.init_state(z0.flatten(1), fz.flatten(1))
        z, moving, step, nfe, last_read = z0, monitor.running, 0, 1, 0
        limit, deferred = monitor.max_steps, self.sync_every > 1
        while not monitor.done and step < limit and monitor.affords(nfe, 1):
            z_next, state = self.update(z.flatten(1), fz.flatten(1), state)
            if not deferred and not monitor.any_converged:  # every sample moves: skip the masked copy
                z = z_next.view_as(z)
            else:
                z = where_rows(moving, z_next.view_as(z), z)
            # the samples held still keep their f(z) exactly only where f ran on the moving ones alone: else a map
            # that mixes samples may have changed it, and their answer stays the f(z) they converged with
            held_fz = not deferred and evaluates_subset(f, z.shape[0] - monitor.n_converged, z.shape[0])
            fz = f(z) if deferred else evaluate_moving(f, z, fz, moving)
            nfe, step = nfe + 1, step + 1
            # read at the interval, and at the last step the limits allow (so the solve ends on a read)
            read = step - last_read >= self.sync_every or step >= limit or not monitor.fits(nfe, 1)
            moving = moving & monitor.check(step, z, fz - z, fz, nfe, frozen=True, read=read, held_fz=held_fz)
            last_read = step if read else last_read
        return step, nfe
