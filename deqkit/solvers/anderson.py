"""Anderson acceleration (type II), batched, with a regularised least-squares step."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from ..settings import INT_MAX, check_int, check_real
from .core import IterativeSolver


@dataclass
class _History:
    z: torch.Tensor
    g: torch.Tensor
    fz: torch.Tensor
    dg: list[torch.Tensor] = field(default_factory=list)  # ΔG: differences of residuals
    dm: list[torch.Tensor] = field(default_factory=list)  # ΔZ + β ΔG: what the step mixes (ΔF when β = 1)
    # Without autograd the columns live in two preallocated (batch, m, dim) ring buffers instead (stacking the lists
    # allocates two batch × m × dim tensors per step), and ΔGᵀΔG in a (batch, m, m) one, updated by the new
    # column's inner products alone: k products per step instead of k².
    ring: tuple[torch.Tensor, torch.Tensor] | None = None
    gram: torch.Tensor | None = None
    count: int = 0  # columns written so far (the ring holds the last min(count, m))


class Anderson(IterativeSolver):
    """Anderson acceleration with memory ``m``.

    With residuals ``g = f(z) − z`` and the last ``m`` differences ``ΔZ``, ``ΔG`` (per sample), solve
    ``γ = argmin ‖g − ΔG γ‖² + λ‖γ‖²`` and step ``z ← z − ΔZ γ + β (g − ΔG γ)``. λ is relative to the
    largest diagonal entry of ``ΔGᵀΔG``, so the step is scale-free; a sample whose small system is still
    singular (or yields a non-finite γ) falls back to a plain damped step instead of failing.

    Parameters
    ----------
    m : int
        Number of past differences kept.
    beta : float
        Mixing (damping) parameter in (0, 1].
    lam : float
        Relative Tikhonov regularisation of the least-squares problem.
    sync_every : int
        Host reads of the monitor's numbers: every step (1), or every ``sync_every`` steps with the per-sample
        bookkeeping kept on the device in between (fewer synchronisations on a GPU; see :class:`IterativeSolver`).
    """

    name = "anderson"
    default_max_steps = 100

    def __init__(self, m: int = 5, beta: float = 1.0, lam: float = 1e-8, sync_every: int = 1):
        self.m = check_int("m", m, 1, INT_MAX)
        self.beta = check_real("beta", beta, 0.0, 1.0, low_open=True)
        self.lam = check_real("lam", lam, 0.0)
        self.sync_every = check_int("sync_every", sync_every, 1)

    def update(self, z: torch.Tensor, fz: torch.Tensor, h: _History | None) -> tuple[torch.Tensor, _History]:
        g = fz - z
        plain = fz if self.beta == 1 else z + self.beta * g
        if h is None:
            return plain, _History(z, g, fz)
        dg = g - h.g
        # the step's (ΔZ + β ΔG), formed once per new column (ΔF when β = 1)
        dm = fz - h.fz if self.beta == 1 else (z - h.z) + self.beta * dg
        h.z, h.g, h.fz = z, g, fz
        if torch.is_grad_enabled() and (dg.requires_grad or dm.requires_grad):
            # the unrolled backward mode backpropagates through this update, and autograd needs every tensor it
            # saved unchanged: keep the columns as lists, stacked once per step
            h.dg.append(dg)
            h.dm.append(dm)
            del h.dg[: -self.m], h.dm[: -self.m]
            dgs = torch.stack(h.dg, 1)
            return self._mix(plain, g, dgs, torch.stack(h.dm, 1), torch.bmm(dgs, dgs.transpose(1, 2))), h
        dgs, dms, gram = self._ring(h, dg, dm)
        return self._mix(plain, g, dgs, dms, gram), h

    def _ring(self, h: _History, dg: torch.Tensor, dm: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Write the new column into the ring buffers; the last ``m`` columns ΔG and ΔZ + βΔG as ``(batch, k, dim)``
        tensors and their ``(batch, k, k)`` Gram matrix ΔGᵀΔG (the order of the columns does not matter: the
        least-squares step is the same for any order)."""
        if h.ring is None or h.gram is None:  # set together, on the first step
            batch, dim = dg.shape
            try:
                h.ring = (dg.new_empty(batch, self.m, dim), dm.new_empty(batch, self.m, dim))
                h.gram = dg.new_empty(batch, self.m, self.m)
            except RuntimeError as err:  # (an allocator's refusal is named by the solve, with the setting to lower)
                if "overflow" not in str(err):
                    raise
                raise ValueError(
                    f"Anderson(m={self.m}): a history of m columns of {dim} entries for each of {batch} samples "
                    f"is more than torch can index ({str(err).splitlines()[0]}). A solve uses at most one column "
                    "per step: an m above its step limit changes nothing but the memory; lower m."
                ) from err
        slot, h.count = h.count % self.m, h.count + 1
        k = min(h.count, self.m)
        h.ring[0][:, slot] = dg
        h.ring[1][:, slot] = dm
        dgs = h.ring[0][:, :k]
        row = torch.bmm(dg.unsqueeze(1), dgs.transpose(1, 2)).squeeze(1)  # (batch, k): the new column's products
        h.gram[:, slot, :k] = row
        h.gram[:, :k, slot] = row
        return dgs, h.ring[1][:, :k], h.gram[:, :k, :k]

    def _mix(
        self, plain: torch.Tensor, g: torch.Tensor, dgs: torch.Tensor, dms: torch.Tensor, gram: torch.Tensor
    ) -> torch.Tensor:
        """``plain − (ΔZ + βΔG) γ`` with ``γ = argmin ‖g − ΔG γ‖² + λ‖γ‖²`` per sample (``gram`` = ΔGᵀΔG)."""
        # Products written as (batch, 1, dim) @ (batch, dim, k): on CPU a (k, dim) @ (dim, 1) bmm is several times
        # slower than the same product in this orientation.
        rhs = torch.bmm(g.unsqueeze(1), dgs.transpose(1, 2))  # (batch, 1, k) = (ΔGᵀ g)ᵀ
        # the small k×k system in at least float32: torch has no LU for float16/bfloat16, and it would lose γ anyway
        wide = torch.promote_types(dgs.dtype, torch.float32)
        if wide != dgs.dtype:
            gram, rhs = gram.to(wide), rhs.to(wide)
        k = gram.shape[-1]
        eye = torch.eye(k, dtype=wide, device=gram.device)
        # at least the input's precision: below it, ΔG is rounding noise and an unregularised γ amplifies it
        lam = max(self.lam, torch.finfo(dgs.dtype).eps) if dgs.dtype != wide else self.lam
        reg = gram.diagonal(dim1=1, dim2=2).amax(-1, keepdim=True) * lam + torch.finfo(wide).tiny  # (batch, 1)
        # γᵀ (ΔGᵀΔG + λI) = (ΔGᵀ g)ᵀ: the system is symmetric, so solving from the right gives γᵀ in the shape the
        # step needs
        gamma_t, info = torch.linalg.solve_ex(torch.addcmul(gram, reg.unsqueeze(2), eye), rhs, left=False)
        # a singular system or a non-finite γ: γ = 0 for that sample, which is the plain damped step
        ok = gamma_t.sum(2, keepdim=True).isfinite() & (info == 0).view(-1, 1, 1)
        gamma_t = torch.where(ok, gamma_t, 0.0).to(dgs.dtype)  # (batch, 1, k)
        return torch.baddbmm(plain.unsqueeze(1), gamma_t, dms, alpha=-1).squeeze(1)  # plain − (ΔZ + βΔG) γ

    def secants(
        self, h: _History | None, rows: torch.Tensor, z: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The differences ``ΔZ`` and ``ΔG`` (residuals) the history holds for the samples ``rows``, with the step to
        the iterate ``z`` just evaluated (``r = f(z) − z``): shape ``(len(rows), k, dim)`` (see
        :func:`growth_rates`)."""
        pick = functools.partial(torch.index_select, dim=0, index=rows)  # faster than tensor[rows] on small batches
        z, g = pick(z.detach().flatten(1)), pick(r.detach().flatten(1))
        if h is None:
            empty = z.new_zeros(rows.numel(), 0, z.shape[1])
            return empty, empty
        dz, dg = (z - pick(h.z.detach())).unsqueeze(1), (g - pick(h.g.detach())).unsqueeze(1)  # the newest step
        if h.ring is not None:
            k = min(h.count, self.m)
            old_g, old_m = pick(h.ring[0])[:, :k], pick(h.ring[1])[:, :k]
        elif h.dg:
            old_g, old_m = pick(torch.stack(h.dg, 1).detach()), pick(torch.stack(h.dm, 1).detach())
        else:
            return dz, dg
        return torch.cat([old_m - self.beta * old_g, dz], 1), torch.cat([old_g, dg], 1)


def growth_rates(dz: torch.Tensor, dg: torch.Tensor, above: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fastest growth rate of the flow ``dz/dt = f(z) − z`` that secant pairs see, per sample.

    The differences satisfy ``ΔG ≈ (J − I) ΔZ`` (``J = ∂f/∂z``). With ``ΔZ = Q S Wᵀ`` (``W``, ``S²``: the
    eigenvectors and eigenvalues of ``ΔZᵀΔZ``; directions whose ``S²`` is at the rounding level of the largest
    dropped), the small matrix ``A = Qᵀ ΔG W S⁻¹ = S⁻¹ Wᵀ (ΔZᵀΔG) W S⁻¹`` is the Galerkin projection of ``J − I``
    onto the directions the iteration explored, and its eigenvalues (Ritz values) approximate the flow's growth rates
    along them. A positive real part means the flow leaves the point along that direction: an unstable equilibrium.
    No evaluation of ``f`` is spent. More pairs than the state has dimensions, or pairs nearly parallel, leave ``ΔZ``
    rank-deficient: only the directions it determines are kept, so they add no spurious rate. Samples a cheap
    bound already shows below ``above`` skip that work: the numerical abscissa of ``A`` (the largest eigenvalue
    of its symmetric part), formed with a Cholesky factor of ``ΔZᵀΔZ`` in place of the eigendecomposition.

    Parameters
    ----------
    dz, dg : torch.Tensor
        ``ΔZ`` and ``ΔG`` as rows, shape ``(n, k, dim)`` (zero rows are ignored).
    above : float
        Only rates above this are computed exactly; the others are reported as at most ``above``.

    Returns
    -------
    rates : torch.Tensor
        Shape ``(n,)``: the largest real part where it may exceed ``above``; where a bound (the numerical
        abscissa, or a Gershgorin bound) shows it does not, that bound clipped at ``above`` (``-inf`` with no
        differences).
    directions : torch.Tensor
        Shape ``(n, dim)``, in at least float32: the Ritz vector of that rate, scaled to unit ∞-norm.
    """
    if math.isnan(above):  # every comparison with it is False: each rate would come back NaN
        raise ValueError("above must be a number (the rate threshold, e.g. 0.0) or ±inf, got nan")
    wide = torch.promote_types(dz.dtype, torch.float32)  # a sign test: float32 is plenty, float16 is not
    # eigenvalues of ΔZᵀΔZ below this share of the largest: rounding noise (at most 1e-2: for bfloat16, 1e3·eps
    # exceeds 1 and would drop every direction, reporting no rate at all)
    cutoff = min(1e3 * torch.finfo(dz.dtype).eps, 1e-2)
    dz, dg = dz.to(wide), dg.to(wide)
    n, k, dim = dz.shape
    rates, directions = dz.new_full((n,), -torch.inf), dz.new_zeros(n, dim)
    if k == 0:
        return rates, directions
    gram, rhs, scale = _unit_products(dz, dg)
    # Stage one, cheap: with ΔZᵀΔZ = L Lᵀ, L⁻¹ (ΔZᵀΔG) L⁻ᵀ is orthogonally similar to A; where a Gershgorin bound,
    # or else the largest eigenvalue of its symmetric part (the numerical abscissa, often far tighter), shows every
    # rate at most `above`, that is the answer. Zero pairs (padding) become decoupled directions of rate above − 1
    # (moderate: a huge entry would cost the symmetric eigensolver its accuracy on the others).
    zero = gram.diagonal(dim1=1, dim2=2) == 0
    lower, info = torch.linalg.cholesky_ex(gram + torch.diag_embed(zero.to(gram.dtype)))
    half = torch.linalg.solve_triangular(
        lower, rhs + torch.diag_embed(torch.where(zero, above - 1.0, 0.0)), upper=False
    )
    quick = torch.linalg.solve_triangular(lower, half.transpose(1, 2), upper=False).transpose(1, 2)
    usable = (info == 0) & torch.isfinite(quick).flatten(1).all(1) & ~zero.all(1)
    bound = _gershgorin(quick)  # cheaper still, and often enough
    tighten = (usable & (bound > above)).nonzero().squeeze(1)
    if tighten.numel():
        bound[tighten] = torch.minimum(bound[tighten], _abscissa(quick[tighten]))
    done = usable & (bound <= above)
    rates = torch.where(done, bound, rates)
    # a non-finite pair (an overflowed or NaN difference) says nothing: those samples keep -inf, as eigh would fail
    finite = torch.isfinite(gram).flatten(1).all(1) & torch.isfinite(rhs).flatten(1).all(1)
    rows = (~done & ~zero.all(1) & finite).nonzero().squeeze(1)
    if rows.numel() == 0:
        return rates, directions
    # Stage two, for the rest: A from the directions ΔZ determines (nearly dependent pairs dropped)
    lam, w = torch.linalg.eigh(gram[rows])  # ascending
    kept = lam > cutoff * lam[:, -1:]
    wd = w * torch.where(kept, torch.where(kept, lam, 1.0).rsqrt(), 0.0)[:, None, :]  # W S⁻¹, zero where dropped
    a = wd.transpose(1, 2) @ rhs[rows] @ wd  # S⁻¹ Wᵀ (ΔZᵀΔG) W S⁻¹
    # a dropped direction's row and column are zero: give it a rate far below any real one, not a spurious 0
    a = a - torch.diag_embed(torch.where(kept, 0.0, 1e30))
    ok = torch.isfinite(a).flatten(1).all(1) & kept[:, -1]
    # only where the Gershgorin bound exceeds `above` is the (per-matrix, slow) eigenvalue problem solved
    bound = _gershgorin(a)
    rates[rows] = torch.where(ok, bound.clamp_max(above), rates[rows])
    exact = (ok & (bound > above)).nonzero().squeeze(1)
    if exact.numel() == 0:
        return rates, directions
    values, vectors = torch.linalg.eig(a[exact])
    top = values.real.argmax(-1)
    rows = rows[exact]
    rates[rows] = values.real.gather(1, top[:, None]).squeeze(1)
    y = vectors.real.gather(2, top[:, None, None].expand(-1, k, 1))  # (m, k, 1)
    v = (dz[rows].transpose(1, 2) @ (wd[exact] @ y / scale[rows, :, None])).squeeze(2)  # Q y = ΔZ D⁻¹ W S⁻¹ y
    directions[rows] = v / v.abs().amax(1, keepdim=True).clamp_min(torch.finfo(wide).tiny)
    return rates, directions


def _unit_products(dz: torch.Tensor, dg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ΔZᵀΔZ`` and ``ΔZᵀΔG`` with each pair scaled to a unit step (``A`` does not change, ``ΔZᵀΔZ`` gets
    comparable entries), and the scales (the norms of the ``ΔZ`` rows, 1 for zero rows).

    The products are formed unscaled and scaled afterwards (scaling the ``(n, k, dim)`` pairs costs as much as
    the products); samples whose squares overflow or come near underflow are formed again from pairs scaled first."""
    gram, rhs, scale = _scaled(dz @ dz.transpose(1, 2), dz @ dg.transpose(1, 2))
    risky = ~(torch.isfinite(gram).flatten(1).all(1) & torch.isfinite(rhs).flatten(1).all(1))
    risky |= (scale < torch.finfo(dz.dtype).tiny ** 0.25).any(1)  # squares near underflow lost their digits
    vanished = (gram.diagonal(dim1=1, dim2=2) == 0).any(1)  # a pair whose squares underflowed to 0 (or padding)
    if bool(vanished.any()):
        risky[vanished] |= (dz[vanished].abs().amax(2) > 0).any(1)
    if not bool(risky.any()):
        return gram, rhs, scale
    rows = risky.nonzero().squeeze(1)
    big = dz[rows].abs().amax(2, keepdim=True)  # a first scale that cannot overflow
    big = torch.where(big > 0, big, 1.0)
    a, b = dz[rows] / big, dg[rows] / big
    gram[rows], rhs[rows], unit = _scaled(a @ a.transpose(1, 2), a @ b.transpose(1, 2))
    scale[rows] = big.squeeze(2) * unit
    return gram, rhs, scale


def _abscissa(a: torch.Tensor) -> torch.Tensor:
    """An upper bound on the largest real part of each matrix's eigenvalues: the largest eigenvalue of its
    symmetric part ``(a + aᵀ)/2`` (the numerical abscissa; ``a`` finite)."""
    return torch.linalg.eigvalsh(0.5 * (a + a.transpose(1, 2)))[:, -1]


def _gershgorin(a: torch.Tensor) -> torch.Tensor:
    """An upper bound on the largest real part of each matrix's eigenvalues: ``max_i (a_ii + Σ_j≠i |a_ij|)``, over
    rows and over columns, the smaller."""
    diag = a.diagonal(dim1=1, dim2=2)
    off = a.abs() - torch.diag_embed(diag.abs())
    return torch.minimum((diag + off.sum(2)).amax(-1), (diag + off.sum(1)).amax(-1))


def _scaled(gram: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``D⁻¹ gram D⁻¹``, ``D⁻¹ rhs D⁻¹`` and ``D``, with ``D`` the square roots of ``gram``'s diagonal (1 where 0)."""
    sq = gram.diagonal(dim1=1, dim2=2)
    scale = torch.where(sq > 0, sq, 1.0).sqrt()
    outer = (1.0 / scale)[:, :, None] * (1.0 / scale)[:, None, :]
    return gram * outer, rhs * outer, scale
