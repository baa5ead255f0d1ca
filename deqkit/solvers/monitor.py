"""The termination rule and the per-sample bookkeeping of one solve: :class:`Tolerances` and :class:`Monitor`.

The termination rule is SteadyStateDiffEq's default, applied per sample with the infinity norm:
a sample has converged when

    ‖f(z) − z‖∞ ≤ abstol   or   ‖f(z) − z‖∞ ≤ reltol · ‖f(z)‖∞

(for the ODE view, ``f(z) − z`` is ``dz/dt`` and ``f(z) = dz/dt + z``). A converged sample is frozen: it stops
changing while the rest of the batch goes on. The monitor also keeps each sample's best iterate, the residual
history and the statistics, and fails loudly: at once on a NaN or infinite iterate, with a warning (or an error)
naming the cause and what to try for samples that did not converge.

The per-sample records (vectors of batch length: residuals, masks, steps) are numpy arrays on the CPU, where a
check's twenty-odd small operations cost a third of torch's dispatch, and tensors elsewhere (:func:`host_arrays`);
the monitor hands them out as tensors either way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConvergenceError, ConvergenceWarning, DivergenceError, user_stacklevel
from ..settings import check_int, check_real
from ..stats import SolverStats

LOW_PRECISION = (torch.float16, torch.bfloat16)
DRIFT = 100.0  # growth of ‖f(z)‖∞ over its start, with no fall of the residual, that marks a runaway iterate


def max_pending(device: torch.device) -> int:
    """How many merges of best iterates :class:`Monitor` may leave pending on ``device``: :data:`PENDING_MERGES` on
    the CPU, where a merge costs several operations' dispatch and memory is plentiful; 1 (merge at once) elsewhere,
    where a merge is one kernel and holding past iterates would take scarce device memory."""
    return PENDING_MERGES if device.type == "cpu" else 1


def _norms(x: torch.Tensor) -> torch.Tensor:
    """``‖x_i‖∞`` per sample, without autograd (``abs().amax()``: torch's ``vector_norm(ord=inf)`` is 10 times
    slower on CPU)."""
    return (x.detach() if x.requires_grad else x).flatten(1).abs().amax(1)


def batch_view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(batch,)`` tensor so that it broadcasts against ``like``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


# Monitor.check takes its shorter way where it reads (tests switch it off to compare the two ways)
READ_SHORTCUT = True
# Best iterates noted but not yet merged (Monitor._merge_best): at most this many past iterates (and their f) held
PENDING_MERGES = 3
# Merge batches by copying rows on the CPU (see where_rows); tests that count host reads switch it off to count
# what a GPU, which always takes torch.where, would read.
COPY_ROWS_ON_CPU = True
# ... from this many entries on: below, torch.where is faster (one thread: 10 µs against 11.5 µs at 128 × 128;
# 18 µs against 14 µs at 128 × 256)
COPY_ROWS_FROM = 1 << 15


def where_rows(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.where`` over the batch: row ``i`` of ``a`` where ``mask[i]``, else row ``i`` of ``b`` (a new tensor,
    the same bits).

    On the CPU it copies rows instead, from :data:`COPY_ROWS_FROM` entries on: torch.where's CPU kernel is slow
    (torch 2.13, one thread: 49 µs on a 128 × 784 float32 batch, against 27 µs for this), and the solvers merge
    batches a few times per step. Finding the rows is a host synchronisation, free on the CPU; elsewhere (a GPU)
    this is ``torch.where``.
    """
    if (
        not COPY_ROWS_ON_CPU
        or a.device.type != "cpu"
        or a.numel() < COPY_ROWS_FROM
        or (a.shape, a.dtype) != (b.shape, b.dtype)
        or a.dim() < 2
    ):
        return torch.where(batch_view(mask, a), a, b)
    rows = mask.nonzero().squeeze(1)
    if 2 * rows.numel() > mask.numel():  # copy the larger share whole, the other one row by row
        a, b, rows = b, a, (~mask).nonzero().squeeze(1)
    return b.clone().index_copy_(0, rows, a.index_select(0, rows))


# The per-sample records of a solve on the CPU are numpy arrays (tests switch it off to compare the two ways).
HOST_ARRAYS = True
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def host_arrays(z0: torch.Tensor) -> bool:
    """Whether :class:`Monitor` keeps its per-sample records (vectors of batch length) as numpy arrays: on the CPU,
    in float32 or float64, where numpy's arithmetic is torch's, bit for bit, at a third of its cost per operation
    (torch 2.13, one thread, a 128-vector: a comparison 0.5 µs against 1.5 µs, a product with a number 0.9 µs against
    3.9 µs); a check takes about twenty of them. Elsewhere (a GPU, half precision) they are tensors on z0's device."""
    return HOST_ARRAYS and z0.device.type == "cpu" and z0.dtype in _NUMPY_DTYPES


@dataclass(frozen=True)
class Tolerances:
    """The termination rule and the evaluation budget of a solve, validated (integers and reals of any library):
    one object on the budget's road, from the :class:`~deqkit.DEQ` layer (or :func:`~deqkit.solve`) to the
    solver's monitor, and from it (with :meth:`replace`) to the backward solve.

    ``max_steps`` None: the solver's ``default_max_steps`` (:func:`~deqkit.solvers.run` fills it in).
    ``max_nfe``: evaluations of the map, the first one included. ``budget_note``: where ``max_nfe`` came from,
    when the user did not set it there (shown in messages). ``budget_name``: the setting that holds ``max_nfe``,
    as messages name it (``"eval_max_nfe"`` for a layer in ``eval()`` mode).
    """

    abstol: float
    reltol: float
    max_steps: int | None = None
    max_nfe: int | None = None
    budget_note: str = ""
    budget_name: str = "max_nfe"

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)  # frozen: the checked values replace the given ones once
        if not isinstance(self.budget_note, str) or not (isinstance(self.budget_name, str) and self.budget_name):
            raise TypeError(
                "budget_note must be a str ('' for none) and budget_name a setting's name such as 'max_nfe' (they "
                f"label the messages), got budget_note={self.budget_note!r}, budget_name={self.budget_name!r}"
            )
        put("abstol", self.check("abstol", self.abstol))
        put("reltol", self.check("reltol", self.reltol))
        if self.abstol == 0 and self.reltol == 0:
            raise ValueError("abstol and reltol are both 0: no iterate could ever converge; set one > 0")
        if self.max_steps is not None:
            put("max_steps", check_int("max_steps", self.max_steps, 1))
        if self.max_nfe is not None:
            put("max_nfe", check_int(self.budget_name, self.max_nfe, 2))

    def replace(self, **changes: Any) -> Tolerances:
        """A copy with ``changes`` (checked like the original)."""
        return dataclasses.replace(self, **changes)

    @staticmethod
    def check(name: str, value: Any) -> float:
        """Return a tolerance as a ``float``: an ``abstol`` finite and ≥ 0, a ``reltol`` in ``[0, 1)``.

        Bounded above as well as below: an infinite ``abstol`` or a ``reltol ≥ 1`` accepts every iterate
        (``‖f(z) − z‖∞ ≤ ‖f(z)‖∞`` holds at ``z = 0``), so every start would be reported converged at once.
        ``name`` ends in ``abstol`` or ``reltol`` (e.g. ``"backward reltol"``).
        """
        relative = name.endswith("reltol")
        try:
            return check_real(name, value, 0.0, 1.0 if relative else math.inf, high_open=True)
        except ValueError as err:
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range (10**400), as check_real reads it
                number = math.inf if value > 0 else -math.inf
            if not (number >= (1.0 if relative else math.inf)):  # NaN or negative: the interval says it all
                raise
            why = (
                "a relative tolerance of 1 or more accepts any iterate (‖f(z) − z‖∞ ≤ ‖f(z)‖∞ at z = 0)"
                if relative
                else "an infinite tolerance accepts any iterate"
            )
            raise ValueError(
                f"{err}: {why}, so every start would be reported converged at once. Use a small "
                f"value such as {name.split()[-1]}=1e-5."
            ) from None

    def limits(self) -> str:
        """``max_steps=…`` (and ``max_nfe=…``), for messages."""
        return (
            f"max_steps={self.max_steps}"
            + ("" if self.max_nfe is None else f" / {self.budget_name}={self.max_nfe}")
            + (f" ({self.budget_note})" if self.budget_note and self.max_nfe is not None else "")
        )


class _Record:
    """A per-sample record of :class:`Monitor`, kept as ``_<name>`` (a numpy array or a tensor, see
    :func:`host_arrays`) and handed out as a tensor."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, monitor: Monitor, owner: type | None = None) -> torch.Tensor:
        return monitor._tensor(getattr(monitor, self.attr))


class Monitor:
    """Per-sample termination, best iterate, residual history and NaN/Inf checks for one solve."""

    def __init__(
        self,
        method: str,
        z0: torch.Tensor,
        tol: Tolerances,
        *,
        strict: bool,
        record: bool,
        warn: Callable[[str, SolverStats], None] | None = None,
        units: float = 1.0,
        within: torch.dtype | None = None,
        linear: bool = False,
    ):
        batch = z0.shape[0]
        self.within = within  # the dtype of the torch.autocast region f runs in, if any (named in the warnings)
        self.linear = linear  # an affine map (the implicit backward's u = g + uJ): its own advice in the warnings
        if tol.max_steps is None:
            raise ValueError("the monitor needs a step limit: Tolerances.max_steps is None (run() fills it in)")
        self.method, self.tol, self.strict, self.record, self.warn = method, tol, strict, record, warn
        self.max_steps: int = tol.max_steps
        self.units = units  # the caller solved for z / units: residuals are reported times this
        # the per-sample records (vectors of batch length), as numpy arrays where that is the same arithmetic (see
        # host_arrays), else as tensors on z0's device: _vector and _tensor convert, the properties hand out tensors
        start_size: Any = _norms(z0)
        self._host = host_arrays(z0)
        if self._host:
            try:
                start_size = start_size.numpy()
            except (RuntimeError, TypeError):  # no storage of its own (under torch.func transforms, a fake tensor)
                self._host = False
        xp: Any = np if self._host else torch
        self._xp = xp
        dtype: Any = _NUMPY_DTYPES[z0.dtype] if self._host else z0.dtype
        new = {} if self._host else {"device": z0.device}
        self._converged = xp.zeros(batch, dtype=bool if self._host else torch.bool, **new)
        self._running = ~self._converged  # kept with `converged`: its complement is needed at every check
        self._residual = xp.full((batch,), math.inf, dtype=dtype, **new)
        self._scale = xp.ones(batch, dtype=dtype, **new)
        self._current = xp.full((batch,), math.nan, dtype=dtype, **new)  # each sample's residual at the last check
        # the drift rule's reference, per sample: max(‖z0‖∞, ‖f(z0)‖∞). Not ‖f(z0)‖∞ alone: where it is 0 or tiny
        # (z0 is nearly a root of f), any growth would look like a runaway, even onto an exact solution.
        self._start_scale: Any = None
        self._drift_from: Any = None  # DRIFT · start_scale
        self._start_size = start_size
        self._last_scale: Any = None
        self._peak = xp.zeros(batch, dtype=dtype, **new)  # largest residual so far
        self._fell = xp.zeros_like(self._converged)  # the residual fell to half its peak, above rounding level
        self._drifting = xp.zeros_like(self._converged)
        self.all_fell = False  # every sample's residual has fallen (none can drift)
        self.any_converged = False
        self._marked = xp.zeros_like(self._converged)  # see check(mark_below=...)
        self.n_marked = 0
        self.n_converged = 0  # samples converged so far (read at each check with the other counts)
        self._converged_step = xp.full((batch,), -1, dtype=np.int64 if self._host else torch.long, **new)
        self._converged_nfe = xp.full((batch,), -1, dtype=np.int64 if self._host else torch.long, **new)
        # abstol as the records' dtype holds it: infinite where it is beyond the dtype's range (torch compares a
        # tensor with such a number as with inf, but refuses to clamp to it; numpy warns as it casts it)
        self._abstol = math.inf if tol.abstol > torch.finfo(z0.dtype).max else tol.abstol
        self._rounding = 8 * torch.finfo(z0.dtype).eps
        self._best = (z0, z0)  # each sample's best iterate and its f, where no merge is pending (see _merge_best)
        # merges noted: (better, z, fz, whole_z), whole_z the running count where z is every sample's best, else None
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]] = []
        self.done = False
        self.out_of_budget = False  # a solver stopped because its next step would exceed max_nfe
        self.stats = SolverStats(method, 0, 0, self.converged, self.residual, self.residual)
        self._unread: list[tuple[int, int, float | None, torch.Tensor]] = []  # checks not yet read by the host
        self._start = time.perf_counter()

    def fits(self, nfe: int, cost: int) -> bool:
        """True when ``cost`` more evaluations stay within ``max_nfe``."""
        return self.tol.max_nfe is None or nfe + cost <= self.tol.max_nfe

    def affords(self, nfe: int, cost: int) -> bool:
        """:meth:`fits`, noting a solver stopped by the budget when not (the budget is never exceeded)."""
        if self.fits(nfe, cost):
            return True
        self.out_of_budget = True
        return False

    def _vector(self, values: torch.Tensor) -> Any:
        """A per-sample tensor (a solver's mask) as the records hold it."""
        return self._vectors(values)[0]

    def _vectors(self, *values: torch.Tensor | None) -> tuple[Any, ...]:
        """Per-sample tensors (norms, a solver's masks or bounds; None stays None) as the records hold them."""
        if self._host:
            try:
                return tuple(None if v is None else v.detach().numpy() for v in values)
            except (RuntimeError, TypeError):  # no storage of their own (under torch.func transforms, fake tensors)
                self._to_tensors()
        return values

    def _to_tensors(self) -> None:
        """Keep the records as tensors from now on (what torch's errors then say about the solve holds)."""
        self._host, self._xp = False, torch
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                setattr(self, name, torch.from_numpy(value))
        # (from the constructor, before these exist, where z0 has no storage of its own)
        pending, unread = getattr(self, "_pending", []), getattr(self, "_unread", [])
        self._pending = [(torch.from_numpy(better), *rest) for better, *rest in pending]
        self._unread = [(*rest, torch.tensor(float(worst))) for *rest, worst in unread]

    def _tensor(self, values: Any) -> torch.Tensor:
        """A per-sample record as a tensor (on the CPU the array's memory: the records are replaced, never written
        into)."""
        return torch.from_numpy(values) if self._host else values

    converged = _Record("Which samples have converged (``(batch,)`` bool).")
    running = _Record("Which samples are still running: ``~converged``.")
    residual = _Record("Each sample's best residual ‖f(z) − z‖∞ so far (at convergence, where it converged).")
    scale = _Record("‖f(z)‖∞ at each sample's best iterate.")
    current = _Record("Each sample's residual at the last check.")
    marked = _Record("The running samples below ``mark_below`` at the last check (see :meth:`check`).")
    drifting = _Record("The samples the drift rule holds back (see :meth:`_meets`).")
    converged_step = _Record("The step at which each sample converged (−1: not converged).")
    converged_nfe = _Record("The evaluations each sample had taken when it converged (−1: not converged).")

    @property
    def start_scale(self) -> torch.Tensor | None:
        """The drift rule's reference per sample, max(‖z0‖∞, ‖f(z0)‖∞); None before the first check."""
        return None if self._start_scale is None else self._tensor(self._start_scale)

    @property
    def last_scale(self) -> torch.Tensor | None:
        """‖f(z)‖∞ per sample at the last check; None before the first."""
        return None if self._last_scale is None else self._tensor(self._last_scale)

    def _counts(self, masks: list[Any]) -> list[int]:
        """How many samples each mask holds (one host synchronisation for all on a GPU)."""
        if self._host:
            return [int(np.count_nonzero(mask)) for mask in masks]
        return torch.stack(masks).sum(1).tolist()

    def _threshold(self, scale: Any) -> Any:
        """``max(abstol, reltol · scale)`` per sample (one operation where a tolerance is 0)."""
        if self.tol.reltol == 0:
            return self._abstol
        if self.tol.abstol == 0:
            return self.tol.reltol * scale
        if self._host:
            return np.maximum(self.tol.reltol * scale, self._abstol)
        return (self.tol.reltol * scale).clamp_min(self._abstol)

    def bound(self) -> torch.Tensor:
        """The termination rule's bound ``max(abstol, reltol · ‖f(z)‖∞)`` per sample, at each sample's best
        iterate."""
        return (self.tol.reltol * self.scale).clamp_min(self._abstol)

    def _meets(self, res: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The termination rule, per sample, refusing an iterate that runs away.

        A sample whose ``‖f(z)‖∞`` has grown over :data:`DRIFT` times its start while its residual never fell to
        half its largest value (above the rounding level of ``f(z)``) is drifting, not converging: ``f(z) = z + 1``
        has no fixed point, yet its residual 1 is eventually small next to ``‖f(z)‖``, and in floating point
        ``z + 1`` even rounds to ``z`` once ``z`` is large enough. Once every sample's residual has fallen, none
        can drift any more, and the bookkeeping stops (it is most of a check's cost on small problems).
        """
        if self._start_scale is None:
            self._start_scale = self._xp.maximum(scale, self._start_size)
            with np.errstate(over="ignore"):  # (torch's product overflows to inf silently, as this then does)
                self._drift_from = DRIFT * self._start_scale
        self._last_scale = scale
        meets = res <= self._threshold(scale)
        if self.all_fell:
            return meets
        self._peak = self._xp.maximum(self._peak, res)
        rounding = self._rounding * scale
        self._fell = self._fell | ((res < 0.5 * self._peak) & (res > rounding))
        self._drifting = (scale > self._drift_from) & ~self._fell
        return meets & ~self._drifting

    def check(
        self,
        step: int,
        z: torch.Tensor,
        r: torch.Tensor,
        fz: torch.Tensor,
        nfe: int,
        t: float | None = None,
        cap: torch.Tensor | None = None,
        mark_below: torch.Tensor | None = None,
        frozen: bool = False,
        read: bool = True,
        held_fz: bool = True,
    ) -> torch.Tensor:
        """Record the iterate ``z`` with residual ``r = f(z) − z``; return the mask of samples still running.

        ``cap`` (per sample): a sample converges at this check only if its residual is also at most its entry (a
        solver's own further condition, e.g. :class:`~deqkit.solvers.dynamic_ss.DynamicSS`'s settling; NaN: never).
        ``mark_below`` (per sample) sets ``self.marked``, the running samples whose residual is at most their entry,
        and ``self.n_marked``, their count, read with the monitor's own counts (a solver's decisions that need a
        count at every check cost no further host synchronisation); without it ``n_marked`` is 0.
        ``frozen``: the caller kept every sample that had converged before this check where it converged, so where
        every running sample improved, ``z`` is every sample's best iterate and no copy is needed.
        ``held_fz`` (with ``frozen``): ``fz`` holds those samples' f(z) from when they converged. False where they
        were evaluated again (a whole batch, with a map that may mix samples or be random): their answer keeps the
        f(z) their residual was judged on, at the cost of one selection per check at which some sample converged.
        ``read=False``: update the per-sample state on the device only (what converged, when, and the best iterates
        stay exact) and leave the counts, the history and the NaN check to the next read; ``done``,
        ``n_converged`` and ``any_converged`` keep their values from the last read meanwhile (``mark_below`` needs a
        read).
        Two host synchronisations per read: the numbers that decide whether to stop are read together. (The
        operations are few on purpose: on small problems a check costs as much as an evaluation of ``f``.)
        """
        res, scale, cap, mark_below = self._vectors(_norms(r), _norms(fz), cap, mark_below)
        if read and not self._unread and READ_SHORTCUT:
            return self._check_read(step, z, fz, res, scale, nfe, t, cap, mark_below, frozen, held_fz)
        running = self._running
        meets = running & self._meets(res, scale)
        if cap is not None:
            meets = meets & (res <= cap)
        better = running & ((res < self._residual) | meets)
        worst = self._xp.where(running, res, self._residual).max()  # NaN or Inf when a running sample blew up
        self._residual = self._xp.where(better, res, self._residual)
        self._scale = self._xp.where(better, scale, self._scale)
        self._converged = self._converged | meets
        self._running = ~self._converged
        self._current = res
        if not read:
            return self._unread_check(step, z, fz, nfe, t, meets, better, worst)
        masks = [self._converged, better, self._fell]
        if mark_below is not None:
            self._marked = self._running & (res <= mark_below)
            masks.append(self._marked)
        # two reads: one concatenated read of the counts and the worst residual costs more operations on CPU
        self._read_history(step, nfe, t, worst, running, res, z, fz)
        n_converged, n_better, n_fell, *n_marked = self._counts(masks)
        batch = res.shape[0]
        self.any_converged, self.all_fell = n_converged > 0, n_fell == batch
        if n_converged > self.n_converged:  # only then: two fewer operations per check in the common case
            self._converged_step = self._xp.where(meets, step, self._converged_step)
            self._converged_nfe = self._xp.where(meets, nfe, self._converged_nfe)
        n_running = batch - self.n_converged  # before this check
        self.n_converged = n_converged
        self.n_marked = n_marked[0] if n_marked else 0
        return self._close_read(z, fz, better, n_better, n_running, frozen, held_fz)

    def _check_read(
        self,
        step: int,
        z: torch.Tensor,
        fz: torch.Tensor,
        res: torch.Tensor,
        scale: torch.Tensor,
        nfe: int,
        t: float | None,
        cap: torch.Tensor | None,
        mark_below: torch.Tensor | None,
        frozen: bool,
        held_fz: bool,
    ) -> torch.Tensor:
        """:meth:`check` with a read and no unread check before it: the same results in fewer operations (on small
        problems each costs about as much as its arithmetic). The counts are of this check's news (``n_converged``
        is exact after every read), so the masks of converged samples are only updated where some converged; while
        none has, masking by the running ones is left out; where every sample improved, its records are replaced
        whole."""
        some = self.any_converged  # else every sample is running
        running = self._running
        meets = self._meets(res, scale)
        if some:
            meets = meets & running
        if cap is not None:
            meets = meets & (res <= cap)
        better = (res < self._residual) | meets
        if some:
            better = better & running
        masks = [meets, better, self._fell]
        if mark_below is not None:
            self._marked = (res <= mark_below) & ~meets  # the running samples, after this check
            if some:
                self._marked = self._marked & running
            masks.append(self._marked)
        self._current = res
        worst = self._xp.where(running, res, self._residual) if some else res  # a converged sample may rest elsewhere
        self._read_history(step, nfe, t, worst.max(), running, res, z, fz)
        n_new, n_better, n_fell, *n_marked = self._counts(masks)
        batch, n_running = res.shape[0], res.shape[0] - self.n_converged
        self.n_converged += n_new
        self.any_converged, self.all_fell = self.n_converged > 0, n_fell == batch
        self.n_marked = n_marked[0] if n_marked else 0
        if n_new:
            self._converged = self._converged | meets if some else meets
            self._running = ~self._converged
            self._converged_step = self._xp.where(meets, step, self._converged_step)
            self._converged_nfe = self._xp.where(meets, nfe, self._converged_nfe)
        if n_better == batch:
            self._residual, self._scale = res, scale
        else:
            self._residual = self._xp.where(better, res, self._residual)
            self._scale = self._xp.where(better, scale, self._scale)
        return self._close_read(z, fz, better, n_better, n_running, frozen, held_fz)

    def _close_read(
        self,
        z: torch.Tensor,
        fz: torch.Tensor,
        better: torch.Tensor,
        n_better: int,
        n_running: int,
        frozen: bool,
        held_fz: bool,
    ) -> torch.Tensor:
        """The end of a read check (the counts updated): the best iterates, the trajectory, ``done``; the mask of
        samples still running. ``n_running``: running before this check."""
        batch = better.shape[0]
        if n_better == batch or (frozen and held_fz and n_better == n_running):
            # the common cases: this iterate is every running sample's best, and the others rest at theirs
            self._set_best(z, fz)
        elif frozen and n_better == n_running:  # z is every sample's best; f(z) only the running samples'
            self._merge_best(better, z, fz, whole_z=n_running)
        else:
            self._merge_best(better, z, fz)
        if self.record:
            self.stats.trajectory.append(z.detach().clone())
        self.done = self.n_converged == batch
        return self.running

    @property
    def best_z(self) -> torch.Tensor:
        """Each sample's best iterate so far (at convergence, where it converged)."""
        return self._merged_best()[0]

    @property
    def best_fz(self) -> torch.Tensor:
        """``f`` at :attr:`best_z`."""
        return self._merged_best()[1]

    def _set_best(self, z: torch.Tensor, fz: torch.Tensor) -> None:
        """Every sample's best iterate is ``z`` (merges still pending are moot)."""
        self._best, self._pending = (z, fz), []

    def _merge_best(self, better: torch.Tensor, z: torch.Tensor, fz: torch.Tensor, whole_z: int | None = None) -> None:
        """Take the samples ``better`` of ``z`` into the best iterates: noted, and merged only when read or when
        :data:`PENDING_MERGES` are pending. A later check where every sample improves makes them moot, as it often
        does (a sample's ∞-norm residual rises for a step now and then, by rounding or the norm): this saves two
        batch-sized selections per such step (their torch.where costs more than a solver step's arithmetic on
        small problems), at the cost of holding on to a few past iterates (the solvers never write into them): on the
        CPU only (see :func:`max_pending`).

        ``whole_z``: ``z`` is every sample's best and ``better`` the ``whole_z`` samples running before this check
        (see ``held_fz`` of :meth:`check`). Such a note replaces the one before it where that one has the same running
        samples (none converged in between): the later f(z) replaces the earlier on exactly those samples."""
        last = self._pending[-1] if self._pending else None
        if whole_z is not None and last is not None and last[3] == whole_z:
            self._pending[-1] = (better, z, fz, whole_z)
            return
        self._pending.append((better, z, fz, whole_z))
        if len(self._pending) >= max_pending(z.device):
            self._merged_best()

    def settle(self) -> None:
        """Do the best-iterate merges still pending now (they allocate: a solver's caller may want them where it
        handles running out of memory)."""
        self._merged_best()

    def _merged_best(self) -> tuple[torch.Tensor, torch.Tensor]:
        best_z, best_fz = self._best
        for better, z, fz, whole_z in self._pending:  # in order: a later sample's best replaces an earlier one
            mask = self._tensor(better)
            best_z = z if whole_z is not None else where_rows(mask, z, best_z)
            best_fz = where_rows(mask, fz, best_fz)
        self._best, self._pending = (best_z, best_fz), []
        return self._best

    def _unread_check(
        self,
        step: int,
        z: torch.Tensor,
        fz: torch.Tensor,
        nfe: int,
        t: float | None,
        meets: torch.Tensor,
        better: torch.Tensor,
        worst: torch.Tensor,
    ) -> torch.Tensor:
        """The rest of a check without a host read: the per-sample records unconditionally (which samples changed
        is not known here), the history kept for the next read."""
        self._converged_step = self._xp.where(meets, step, self._converged_step)
        self._converged_nfe = self._xp.where(meets, nfe, self._converged_nfe)
        self._merge_best(better, z, fz)
        self._unread.append((step, nfe, t, worst))
        if self.record:
            self.stats.trajectory.append(z.detach().clone())
        return self.running

    def _read_history(
        self,
        step: int,
        nfe: int,
        t: float | None,
        worst: torch.Tensor,
        running: torch.Tensor,
        res: torch.Tensor,
        z: torch.Tensor,
        fz: torch.Tensor,
    ) -> None:
        """Read the worst residuals of this check and of the unread ones before it (one host synchronisation) into
        the history; raise at the first that is NaN or infinite."""
        if self._unread:
            checks = [*self._unread, (step, nfe, t, worst)]
            self._unread = []
            worsts = [float(w) for *_, w in checks] if self._host else torch.stack([w for *_, w in checks]).tolist()
        else:
            checks, worsts = [(step, nfe, t, worst)], [worst.item()]
        for (at, _, _, _), value in zip(checks, worsts):
            if not math.isfinite(value):
                bad = self._tensor(running) & ~torch.isfinite(self._tensor(res))
                raise DivergenceError(
                    f"{self.method}: f(z) − z became NaN or infinite at step {at} for {int(bad.sum())} of "
                    f"{bad.numel()} samples{'' if at == step else f' (read at step {step}: sync_every)'}. "
                    + (_undefined_hint(z, fz, bad) or _blow_up_hint(at, z.dtype, self.start_scale))
                )
        for (_, evaluations, time_, _), value in zip(checks, worsts):
            self.stats.history.append(value)
            self.stats.nfe_history.append(evaluations)
            if time_ is not None:
                self.stats.times.append(time_)

    def reject(self, mask: torch.Tensor) -> None:
        """Un-mark samples judged converged (e.g. at an unstable equilibrium): they are running again."""
        self._reject(self._vector(mask))

    def _reject(self, mask: Any) -> None:
        self._merged_best()  # (a later note with as many running samples would not have the same ones)
        self._converged = self._converged & ~mask
        self._running = ~self._converged
        self._converged_step = self._xp.where(mask, -1, self._converged_step)
        self._converged_nfe = self._xp.where(mask, -1, self._converged_nfe)
        self.n_converged = int(self._converged.sum())
        self.any_converged = self.n_converged > 0
        self.done = self.n_converged == self._converged.shape[0]

    def verify(self, z: torch.Tensor, r: torch.Tensor, fz: torch.Tensor, elsewhere: torch.Tensor | None = None) -> None:
        """Re-judge every sample on a freshly evaluated residual ``r = f(z) − z`` at ``z`` (one per sample).

        For solvers whose running residual is a recurrence rather than an evaluation (GMRES): a sample the
        recurrence called converged but the true residual does not is running again (its step and evaluation of
        convergence are cleared, as by :meth:`reject`). ``z`` is every sample's best iterate, except the running
        samples ``elsewhere`` (a mask; a GMRES restart from another iterate), whose best it becomes only where its
        residual is lower.
        """
        res, scale, elsewhere = self._vectors(_norms(r), _norms(fz), elsewhere)
        meets = self._meets(res, scale)
        if elsewhere is not None:
            better = ~elsewhere | (res < self._residual)
            self._merge_best(better, z, fz)
            self._residual = self._xp.where(better, res, self._residual)
            self._scale = self._xp.where(better, scale, self._scale)
        else:
            self._set_best(z, fz)
            self._residual, self._scale = res, scale
        self._current = res
        self._reject(self._converged & ~meets)

    def finish(self, steps: int, nfe: int) -> SolverStats:
        """Fill in the statistics; warn (or raise, if strict) about samples that did not converge."""
        s = self.stats
        s.steps, s.nfe = steps, nfe
        residual, scale = self.residual, self.scale
        s.converged, s.residual = self.converged, residual * self.units
        s.converged_step, s.converged_nfe = self.converged_step, self.converged_nfe
        s.relative_residual = residual / scale.clamp_min(torch.finfo(scale.dtype).tiny)
        s.wall_time = time.perf_counter() - self._start
        if self.units != 1.0:
            s.history = [h * self.units for h in s.history]
        if not self.done:
            failed = ~s.converged
            last_scale = self.last_scale
            assert last_scale is not None  # a solve checks its start before it can finish
            n_failed, best, worst = int(failed.sum()), float(s.residual[failed].min()), float(s.residual[failed].max())
            message = (
                f"{self.method}: {n_failed} of {failed.numel()} samples did not converge within "
                f"{self.tol.limits()}{' (the evaluation budget ran out)' if self.out_of_budget else ''} "
                f"(abstol={self.tol.abstol * self.units:g}, reltol={self.tol.reltol:g}); "
                f"their best residual ‖f(z) − z‖∞ is {best:.3g} (worst {worst:.3g}); "
                "their best iterates are returned. "
                + _diagnosis(
                    failed & self.drifting,
                    last_scale,
                    self.start_scale,
                    residual.masked_fill(~failed, math.inf),  # the samples that failed, not the converged
                    self.tol,
                    last_scale.masked_fill(~failed, 0),
                    self._tensor(self._peak),
                    self.within,
                    self.linear,
                )
            )
            if self.strict:
                raise ConvergenceError(message)
            if self.warn is not None:  # the caller counts and summarises (a layer called in a training loop)
                self.warn(message, s)
            else:
                warnings.warn(message, ConvergenceWarning, stacklevel=user_stacklevel())
        return s


def _undefined_hint(z: torch.Tensor, fz: torch.Tensor, bad: torch.Tensor) -> str:
    """For a NaN that f returned at a finite, moderate iterate: f is undefined there, which is not a blow-up."""
    zb, fb = z.detach()[bad].flatten(1), fz.detach()[bad].flatten(1)
    if zb.numel() == 0 or not bool(torch.isfinite(zb).all()) or not bool(torch.isnan(fb).any()):
        return ""
    size = float(zb.abs().max())
    if size > math.sqrt(torch.finfo(z.dtype).max):
        return ""
    return (
        f"f returned NaN at a finite iterate (largest |z| there {size:.3g}): f is undefined at that point "
        "(e.g. log or sqrt of a negative number, 0/0, inf − inf), which is no sign of an expansive map. Find "
        "where with torch.autograd.detect_anomaly(), or guard f (e.g. clamp its argument)."
    )


def overflow_hint(dtype: torch.dtype, start: torch.Tensor | None) -> str:
    """Why a solve overflowed, when the problem's own scale (``start``: max(‖z0‖∞, ‖f(z0)‖∞) per sample) is the
    cause rather than its dynamics; "" otherwise."""
    size = 0.0 if start is None else float(torch.nan_to_num(start, nan=0.0, posinf=0.0).max())
    if size <= math.sqrt(torch.finfo(dtype).max):
        return ""
    return (
        f"f's values are already {size:.3g} at the start, so their squares and products (norms, inner "
        f"products, step sizes) overflow {str(dtype).removeprefix('torch.')} (largest "
        f"{torch.finfo(dtype).max:.3g}); this says nothing about f's stability. Rescale the problem so "
        "that z is of order 1 (e.g. divide the input or bias by its size), or compute in float64."
    )


def _blow_up_hint(step: int, dtype: torch.dtype, start: torch.Tensor | None = None) -> str:
    """What to try, for the error about a NaN/Inf iterate (``start``: max(‖z0‖∞, ‖f(z0)‖∞) per sample)."""
    if step == 0:
        return "The input or z0 is already non-finite, or f returns NaN at z0: check them."
    overflow = overflow_hint(dtype, start)
    if overflow:
        return overflow
    if dtype in LOW_PRECISION:
        return (
            f"In {str(dtype).removeprefix('torch.')} (eps {torch.finfo(dtype).eps:.2g}, largest value "
            f"{torch.finfo(dtype).max:.3g}) the residual cannot fall below the precision, and a solver's steps "
            "can then amplify rounding noise until they overflow: solve in float32 (z0.float() and a float32 "
            "f), or use tolerances well above eps with solver='picard' or 'anderson'."
        )
    return (
        "The iteration is blowing up: the map is probably expansive there (spectral radius of ∂f/∂z ≥ 1). Try "
        "damping, solver='dynamic_ss', or constraining f (e.g. spectral normalisation)."
    )


def _diagnosis(
    drifting: torch.Tensor,
    scale: torch.Tensor,
    start_scale: torch.Tensor | None,
    residual: torch.Tensor,
    tol: Tolerances,
    failed_scale: torch.Tensor,
    peak: torch.Tensor,
    within: torch.dtype | None = None,
    linear: bool = False,
) -> str:
    """What to try, for the warning about samples that did not converge (``residual`` and ``failed_scale``: theirs,
    inf and 0 at the others; ``peak``: each sample's largest residual; ``within``: the autocast dtype f ran in;
    ``linear``: the map is affine, as the implicit backward's)."""
    if start_scale is not None and bool(drifting.any()):  # drifting is measured from start_scale
        i = int(drifting.nonzero()[0])
        return (
            f"{int(drifting.sum())} of them drift away: ‖f(z)‖∞ grew from {float(start_scale[i]):.3g} to "
            f"{float(scale[i]):.3g} while the residual never fell below half its largest value (for the first: "
            f"{float(residual[i]):.3g}, largest {float(peak[i]):.3g}), so f probably has no fixed point there (check "
            "f, e.g. a missing contraction or bias term); or, if the residual is falling, slowly, the iteration "
            "contracts by a factor near 1: try more steps (max_steps) or solver='anderson'."
        )
    dtype = residual.dtype
    eps = torch.finfo(dtype).eps
    hint = (
        f"Try: more steps (max_steps, {tol.budget_name}), another method ('anderson', 'broyden', or 'dynamic_ss', "
        "which also converges where plain iteration diverges), damping, or a smaller spectral norm of f's weights "
        "(check deqkit.spectral_radius)."
    )
    if linear:  # u = g + uJ: a linear system, whose difficulty is the spectrum of J at z*
        hint = (
            f"This is a linear problem (for a DEQ, the implicit backward's u = g + u·∂f/∂z at z*). Try: more steps "
            f"(max_steps, {tol.budget_name}; for a DEQ, deqkit.Implicit(max_steps=..., max_nfe=...)), or GMRES "
            "(solver='gmres'; deqkit.GMRES(restart=None), full GMRES, solves any invertible system within as many "
            "products as the state has entries). It is hard where ∂f/∂z at z* has eigenvalues near 1 (check "
            "deqkit.spectral_radius): a smaller spectral norm of f's weights helps."
        )
    size = max(float(failed_scale.max()), 1.0)
    if float(residual.min()) <= 10 * eps * size:  # at the rounding level of f(z)
        hint = (
            f"The residual is at the precision of {str(dtype).removeprefix('torch.')} (eps {eps:.2g}): tolerances "
            "below about eps·‖f(z)‖ cannot be met. Loosen abstol/reltol or compute in a wider dtype (float32 or "
            "float64). " + hint
        )
    elif within is not None and dtype in (torch.float32, torch.float16) and torch.finfo(within).eps > eps:
        # whether f's results carry the autocast dtype's precision depends on what f does: said as a condition
        low = torch.finfo(within).eps
        if float(residual.min()) <= 10 * low * size:
            name = str(within).removeprefix("torch.")
            hint = (
                f"f runs under torch.autocast({name}): where it casts (matrix products and convolutions do), its "
                f"results carry {name}'s precision (eps {low:.2g}), and residuals below about eps·‖f(z)‖ are out of "
                "reach; if so, loosen abstol/reltol or solve outside the autocast region. " + hint
            )
    return hint
