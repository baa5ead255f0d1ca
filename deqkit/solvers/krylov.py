"""Restarted GMRES for the fixed point of an *affine* map, batched per sample.

The implicit backward pass solves ``u = g + Jᵀu`` — the fixed point of an affine map ``T`` — which is the
linear system ``(I − Jᵀ) u = g``. GMRES needs only ``T``: the product with its linear part is
``Jᵀ v = T(u₀ + v) − T(u₀)`` (or ``T.linear(v)`` for an :class:`~deqkit.solvers.core.AffineMap`, as the implicit
backward passes it), and with the system matrix ``A v = v − Jᵀ v``. It converges for any non-singular system,
also where plain iteration on ``T`` diverges (spectral radius of ``J`` above 1, as at the stable equilibria
that ``dynamic_ss`` finds for non-contractive maps).

The small least-squares problem of each sample is kept in QR form and updated by one Givens rotation per
product, so the 2-norm of every sample's residual is known after each product at the cost of a few batched
operations on ``restart``-sized matrices; the iterate itself, and the termination rule on it, are formed only
when that residual says they may be needed. That residual is exact only when ``T`` is affine and acts on each
sample separately: before GMRES stops (and at every restart), it evaluates the true residual at every sample's
answer and re-judges each sample on it, so a map that couples samples (BatchNorm in training mode) or is not
affine keeps iterating, or ends with a ConvergenceWarning — never with a false success.
"""

from __future__ import annotations

import torch

from ..settings import INT_MAX, check_int
from .core import AffineMap, Map, Solver, first_evaluation
from .monitor import Monitor, where_rows

REORTHOGONALIZE = 0.5**0.5  # a second Gram–Schmidt pass where a projection keeps less than this share of ‖w‖
SLACK = 1.5  # the rule is checked once every sample's predicted ∞-norm residual is within this factor of its tolerance


class GMRES(Solver):
    """GMRES(restart), one Krylov space per sample.

    Parameters
    ----------
    restart : int or None
        Krylov vectors kept before a restart (memory: ``restart`` copies of the state, at most the step limit:
        a cycle never takes more products). None: no restart (full GMRES, as many vectors as the state has
        entries), which converges in at most that many products for any invertible system; restarted GMRES can
        stall when the eigenvalues of ``I − Jᵀ`` surround the origin.
    trace : bool
        Form the iterate and check the termination rule after every product, so that the statistics' residual
        history has one entry per product (for plots). Off by default: the rule (an ∞-norm, per sample) is checked
        when the 2-norm residual that GMRES updates for free predicts that every sample may meet it, at restarts
        and at the step or evaluation limit; the answer and the number of products are the same or, rarely, one
        product later. Tracing costs a triangular solve, a product with the basis and a check per product, which on
        a small problem can cost more than the product itself.
    """

    name = "gmres"
    default_max_steps = 200

    def __init__(self, restart: int | None = 20, trace: bool = False):
        self.restart = None if restart is None else check_int("restart", restart, 1, INT_MAX)
        if not isinstance(trace, bool):
            raise TypeError(f"trace must be True or False, got {trace!r}")
        self.trace = trace

    @property
    def label(self) -> str:
        return f"gmres({'full' if self.restart is None else self.restart})"

    def run(self, T: Map, u0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        shape = u0.shape
        tu = first_evaluation(T, u0, "T")
        nfe, step = 1, 0
        u, r = u0.flatten(1), (tu - u0).flatten(1)
        monitor.check(0, u0, r.view(shape), tu, nfe)
        # a cycle never takes more products than the step limit: no room for more (a huge restart is harmless)
        restart = min(u.shape[1] if self.restart is None else self.restart, monitor.max_steps)
        limit, basis = _limit(monitor, _norm_ratio(r)), None
        while not monitor.done and step < monitor.max_steps and monitor.affords(nfe, 2):
            try:
                cycle = _Cycle(u, r, restart, basis)
            except (RuntimeError, TypeError) as err:  # (an allocator's refusal is named by the solve)
                if "verflow" not in str(err):
                    raise
                raise ValueError(
                    f"GMRES(restart={self.restart}) with max_steps={monitor.max_steps}: a Krylov basis of "
                    f"{restart} + 1 vectors of {u.shape[1]} entries per sample is more than torch can index "
                    f"({str(err).splitlines()[0]}); lower restart or the step limit"
                ) from err
            basis, product = cycle.basis, _linear_part(T, u, r, shape)
            uk: torch.Tensor | None = None
            start = monitor.residual  # (replaced, not written into, by the checks)
            for j in range(restart):
                cycle.extend(product(cycle.basis[:, j]))
                nfe, step = nfe + 1, step + 1
                # (room is kept for the true residual evaluated below)
                last = j == restart - 1 or step >= monitor.max_steps or not monitor.affords(nfe, 2)
                if last or self.trace or cycle.may_meet(limit):
                    uk, rk = cycle.iterate()
                    monitor.check(step, uk.view(shape), rk.view(shape), (uk + rk).view(shape), nfe)
                    limit = _limit(monitor, _norm_ratio(rk))
                if monitor.done or last:
                    break
            # Restart (or stop) from the true residual, not the recurrence, at each sample's best answer; but a
            # running sample whose best did not improve in this cycle restarts from its last iterate: from its best
            # again, the cycle would only repeat itself, forever.
            stop = monitor.done or step >= monitor.max_steps or not monitor.fits(nfe + 1, 2)
            u, from_last = monitor.best_z.flatten(1), None
            if not stop and uk is not None:
                from_last = ~monitor.converged & (monitor.residual >= start)
                u = where_rows(from_last, uk, u)
            tu = T(u.view(shape))
            r, nfe = tu.flatten(1) - u, nfe + 1
            monitor.verify(u.view(shape), r.view(shape), tu, elsewhere=from_last)
            limit = _limit(monitor, _norm_ratio(r))
        return step, nfe


def _linear_part(T: Map, u: torch.Tensor, r: torch.Tensor, shape: torch.Size) -> Map:
    """``v ↦ Jᵀ v``, the linear part of the affine ``T`` (``r = T(u) − u``; flat vectors): given, for an
    :class:`~deqkit.solvers.core.AffineMap`, else probed as ``T(u + v) − T(u)``."""
    if isinstance(T, AffineMap):
        linear = T.linear
        # a contiguous copy of the basis row: a custom autograd Function may .view() the gradient it is handed
        return lambda v: linear(v.contiguous().view(shape)).flatten(1)
    tu = u + r
    # probe with v times the problem's size: with a unit v, T(u + v) − T(u) would be rounding where T(u) is large
    # (a loss scaled by 2^16 in float32) and lose v where it is tiny
    size = torch.maximum(u.abs().amax(1), tu.abs().amax(1))
    size = torch.where(size > 0, size, 1.0)[:, None]
    return lambda v: (T((u + size * v).view(shape)).flatten(1) - tu) / size


def _limit(monitor: Monitor, ratio: torch.Tensor) -> torch.Tensor:
    """The 2-norm residual below which a sample's ∞-norm residual may meet its tolerance, per sample, from the
    monitor's tolerance and scale at its last check (they change only there) and ``ratio`` (:func:`_norm_ratio`
    of the residual then), infinite for the samples converged then: formed once per check, not at every product."""
    limit = SLACK * ratio * monitor.bound()
    return limit.masked_fill(monitor.converged, float("inf"))  # a converged sample never holds the check back


def _norm_ratio(r: torch.Tensor) -> torch.Tensor:
    """``‖r‖₂ / ‖r‖∞`` per sample (between 1 and √dim): turns the 2-norm residual into a predicted ∞-norm."""
    return (r / r.abs().amax(1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)).norm(dim=1)


def _norm(r: torch.Tensor) -> torch.Tensor:
    """``‖r‖₂`` per sample, as ``‖r‖∞ · ‖r / ‖r‖∞‖₂``: its squares neither underflow (1e-30 in float32) nor
    overflow."""
    return r.abs().amax(1) * _norm_ratio(r)


class _Cycle:
    """One restart cycle: the Arnoldi basis, and the QR factors ``Ω H = [R; 0]`` of its Hessenberg matrix.

    ``Ω`` is the product of the Givens rotations applied so far, kept as a matrix, so that a new column of ``H``
    is rotated by one batched product. With ``g = Ω β e₁``, the least-squares solution is ``y = R⁻¹ g[:j]`` and
    the residual ``β e₁ − H y = g_j Ωᵀ e_j``, whose norm ``|g_j|`` is known without solving for ``y``.
    """

    def __init__(self, u: torch.Tensor, r: torch.Tensor, restart: int, basis: torch.Tensor | None = None):
        batch, dim = r.shape
        self.u, self.j, self.tiny = u, 0, torch.finfo(r.dtype).tiny
        self.beta = _norm(r)
        # the Krylov basis as rows of one preallocated tensor (the backward solve records no graph), uninitialised
        # (only the rows written so far are read) and handed on to the next cycle: filling it with zeros cost
        # more than a product on a conv block (1.4 ms for 128 × 21 × 784 floats)
        self.basis = r.new_empty(batch, restart + 1, dim) if basis is None else basis
        self.basis[:, 0] = r / self.beta.clamp_min(self.tiny)[:, None]
        self.rfac = r.new_zeros(batch, restart, restart)
        self.eye = torch.eye(restart + 1, dtype=r.dtype, device=r.device)
        self.omega = self.eye.repeat(batch, 1, 1)
        self.residual = self.beta  # 2-norm of the least-squares residual, per sample

    def extend(self, w: torch.Tensor) -> None:
        """Add ``A v_j = v_j − w`` to the basis and the next column of ``R``, given ``w = Jᵀ v_j`` (the linear part
        of ``T``).

        Arnoldi runs on ``Jᵀ``, whose Krylov spaces are those of ``A = I − Jᵀ``: ``A v_j`` has a large component
        along ``v_j`` itself, which classical Gram–Schmidt cancels and which would call for a second pass at
        every product, while ``Jᵀ v_j`` loses little to the projection. Where any sample loses more than 1 − 1/√2
        of its norm (Daniel, Gragg, Kaufman & Stewart's test, "twice is enough") the batch gets the second pass;
        always on a GPU (any device but the CPU), where reading that test would cost a host synchronisation per
        product.
        """
        j = self.j
        v = self.basis[:, : j + 1]
        h = torch.bmm(w.unsqueeze(1), v.transpose(1, 2))  # (batch, 1, j+1), products written in the fast orientation
        before, w = w.norm(dim=1), w - torch.bmm(h, v).squeeze(1)
        norm = w.norm(dim=1)
        if w.device.type != "cpu" or bool((norm < REORTHOGONALIZE * before).any()):
            h2 = torch.bmm(w.unsqueeze(1), v.transpose(1, 2))
            h, w = h + h2, w - torch.bmm(h2, v).squeeze(1)
            norm = w.norm(dim=1)
        # A v_j = v_j − Jᵀ v_j = V (e_j − h) − w: the new basis vector is −w / ‖w‖, the column e_j − h over ‖w‖.
        # (Written with few operations: on small problems each costs about as much as its arithmetic.)
        torch.div(w, norm.clamp_min(self.tiny).neg_().unsqueeze(1), out=self.basis[:, j + 1])
        col = torch.bmm(self.eye[j, : j + 1] - h, self.omega[:, : j + 1, : j + 1].transpose(1, 2)).squeeze(1)  # Ω h
        top = col[:, j]
        rho = torch.hypot(top, norm)
        # a zero pivot means that sample's Krylov space is exhausted (it has converged): keep y finite
        live = rho > 0
        pivot = torch.where(live, rho, 1.0)
        c = torch.where(live, top / pivot, 1.0)
        s = torch.where(live, norm / pivot, 0.0)
        top.copy_(pivot)
        self.rfac[:, : j + 1, j] = col
        # rotate rows j and j+1 of Ω (row j+1 is still e_{j+1}) by one batched 2 × 2 product
        rows = self.omega[:, j : j + 2, : j + 2]
        rows.copy_(torch.bmm(torch.stack([c, s, -s, c], 1).view(-1, 2, 2), rows))
        self.j = j + 1
        self.residual = self.beta * rows[:, 1, 0].abs()

    def may_meet(self, limit: torch.Tensor) -> bool:
        """True when every running sample's predicted ∞-norm residual may meet its tolerance (or is not finite);
        ``limit``: :func:`_limit` at the last check (infinite for the converged samples)."""
        return not bool((self.residual > limit).any())

    def iterate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current iterate ``u + V y`` and its residual ``V (β e₁ − H y)``."""
        j = self.j
        g = self.beta[:, None] * self.omega[:, : j + 1, 0]  # Ω β e₁
        # float16 and bfloat16 have no triangular solve (on the CPU): solve the small system in float32
        wide = torch.promote_types(g.dtype, torch.float32)
        y = torch.linalg.solve_triangular(self.rfac[:, :j, :j].to(wide), g[:, :j, None].to(wide), upper=True)
        y = y.squeeze(-1).to(g.dtype)
        coef = torch.stack([torch.cat([y, torch.zeros_like(g[:, :1])], 1), g[:, j:] * self.omega[:, j, : j + 1]], 1)
        step, rk = torch.bmm(coef, self.basis[:, : j + 1]).unbind(1)
        return self.u + step, rk
