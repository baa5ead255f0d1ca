"""Restarted GMRES for the fixed point of an *affine* map, batched per sample.

The implicit backward pass solves ``u = g + Jᵀu`` — the fixed point of an affine map ``T`` — which is the
linear system ``(I − Jᵀ) u = g``. GMRES needs only ``T``: with ``r(u) = T(u) − u = g − (I − Jᵀ)u``, the
product with the system matrix is ``A v = r(u₀) − r(u₀ + v)``. It converges for any non-singular system,
also where plain iteration on ``T`` diverges (spectral radius of ``J`` above 1, as at the stable equilibria
that ``dynamic_ss`` finds for non-contractive maps).

Between restarts the termination rule is checked on the Krylov residual, which costs nothing but is exact only
when ``T`` is affine and acts on each sample separately. Before GMRES stops, it evaluates the true residual
at every sample's answer and re-judges each sample on it: a map that couples samples (BatchNorm in training
mode) or is not affine then keeps iterating, or ends with a ConvergenceWarning — never with a false success.
"""

from __future__ import annotations

import torch

from .core import Map, Monitor, Solver, check_int, first_evaluation


class GMRES(Solver):
    """GMRES(restart), one Krylov space per sample; the termination rule is checked after every product.

    Parameters
    ----------
    restart : int or None
        Krylov vectors kept before a restart (memory: ``restart`` copies of the state). None: no restart (full
        GMRES, as many vectors as the state has entries), which converges in at most that many products for any
        invertible system; restarted GMRES can stall when the eigenvalues of ``I − Jᵀ`` surround the origin.
    """

    name = "gmres"
    default_max_steps = 200

    def __init__(self, restart: int | None = 20):
        self.restart = None if restart is None else check_int("restart", restart, 1)

    @property
    def label(self) -> str:
        return f"gmres({'full' if self.restart is None else self.restart})"

    def run(self, T: Map, u0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        shape, batch = u0.shape, u0.shape[0]
        tu = first_evaluation(T, u0, "T")
        nfe, step = 1, 0
        u, r = u0.flatten(1), (tu - u0).flatten(1)
        monitor.check(0, u0, r.view(shape), tu, nfe)
        tiny = torch.finfo(u.dtype).tiny
        restart = u.shape[1] if self.restart is None else self.restart
        while not monitor.done and step < monitor.tol.max_steps and monitor.affords(nfe, 2):
            beta = r.norm(dim=1)
            # the Krylov basis as rows of one preallocated tensor (the backward solve records no graph)
            basis = u.new_zeros(batch, restart + 1, u.shape[1])
            basis[:, 0] = r / beta.clamp_min(tiny)[:, None]
            hess = u.new_zeros(batch, restart + 1, restart)
            for j in range(restart):
                vj = basis[:, j]
                w = r - (T((u + vj).view(shape)).flatten(1) - (u + vj))
                nfe, step = nfe + 1, step + 1
                # classical Gram–Schmidt, twice (CGS2: as stable as modified G–S), as batched products written
                # (1, dim) @ (dim, j+1), the fast orientation on CPU
                v = basis[:, : j + 1]
                h = torch.bmm(w.unsqueeze(1), v.transpose(1, 2))  # (batch, 1, j+1)
                w = w - torch.bmm(h, v).squeeze(1)
                h2 = torch.bmm(w.unsqueeze(1), v.transpose(1, 2))
                w = w - torch.bmm(h2, v).squeeze(1)
                hess[:, : j + 1, j] = (h + h2).squeeze(1)
                hess[:, j + 1, j] = w.norm(dim=1)
                basis[:, j + 1] = w / hess[:, j + 1, j].clamp_min(tiny)[:, None]
                y = _least_squares(hess[:, : j + 2, : j + 1], beta)
                uk = u + torch.bmm(y.unsqueeze(1), v).squeeze(1)
                # r_k = V_{j+1} (β e₁ − H y): the residual without another product
                coef = -(hess[:, : j + 2, : j + 1] @ y.unsqueeze(-1)).squeeze(-1)
                coef[:, 0] += beta
                rk = torch.bmm(coef.unsqueeze(1), basis[:, : j + 2]).squeeze(1)
                monitor.check(step, uk.view(shape), rk.view(shape), (uk + rk).view(shape), nfe)
                if monitor.done or step >= monitor.tol.max_steps or not monitor.affords(nfe, 2):
                    break  # (room is kept for the true residual evaluated below)
            # restart (or stop) from the true residual at each sample's best answer, not the recurrence
            u = monitor.best_z.flatten(1)
            tu = T(u.view(shape))
            r, nfe = tu.flatten(1) - u, nfe + 1
            monitor.verify(u.view(shape), r.view(shape), tu)
        return step, nfe


def _least_squares(h: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``argmin_y ‖β e₁ − H y‖`` for a batch of small Hessenberg matrices, via QR."""
    q, rmat = torch.linalg.qr(h)
    rhs = beta[:, None] * q[:, 0, :]
    diag = rmat.diagonal(dim1=1, dim2=2)
    # a zero pivot means that sample's Krylov space is exhausted (it has converged): keep y finite
    small = torch.finfo(h.dtype).eps * diag.abs().amax(-1, keepdim=True)
    fix = torch.where(diag.abs() <= small, 1.0, 0.0)
    rmat = rmat + torch.diag_embed(fix)
    return torch.linalg.solve_triangular(rmat, rhs.unsqueeze(-1), upper=True).squeeze(-1)
