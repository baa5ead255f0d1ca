"""Limited-memory ("good") Broyden's method on ``g(z) = f(z) − z = 0``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..settings import check_int
from .core import IterativeSolver


@dataclass
class _Memory:
    z: torch.Tensor
    g: torch.Tensor
    u: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)


def _apply(x: torch.Tensor, u: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
    """``(−I + Σ uᵢ vᵢᵀ) x`` per sample, for ``(batch, dim)`` tensors."""
    out = -x
    for ui, vi in zip(u, v):
        out = out + ui * (vi * x).sum(1, keepdim=True)
    return out


class Broyden(IterativeSolver):
    """Broyden's method with a low-rank inverse-Jacobian estimate ``B ≈ (∂g/∂z)⁻¹ = −I + Σ uᵢ vᵢᵀ``.

    Each step is ``z ← z − B g``; after it, the secant pair ``(Δz, Δg)`` updates ``B`` by Broyden's "good"
    rule. Once ``m`` rank-one terms are stored, the method restarts from ``B = −I`` (a plain iteration step).
    Like Newton's method it solves ``f(z) = z`` without regard to stability, so it can land on an *unstable*
    equilibrium of ``dz/dt = f(z) − z``, one that plain iteration and the ODE view never reach.

    Parameters
    ----------
    m : int
        Number of rank-one updates stored before a restart.
    sync_every : int
        Host reads of the monitor's numbers: every step (1), or every ``sync_every`` steps with the per-sample
        bookkeeping kept on the device in between (fewer synchronisations on a GPU; see :class:`IterativeSolver`).
    """

    name = "broyden"
    default_max_steps = 100

    def __init__(self, m: int = 20, sync_every: int = 1):
        self.m = check_int("m", m, 1)
        self.sync_every = check_int("sync_every", sync_every, 1)

    def update(self, z: torch.Tensor, fz: torch.Tensor, mem: _Memory | None) -> tuple[torch.Tensor, _Memory]:
        # the secant algebra in at least float32: its inner products overflow or vanish in float16/bfloat16
        dtype = z.dtype
        z, fz = z.to(torch.promote_types(dtype, torch.float32)), fz.to(torch.promote_types(dtype, torch.float32))
        g = fz - z
        if mem is None or len(mem.u) == self.m:
            # start, or restart once the memory is full: each rank-one term was computed against the estimate
            # that included the older ones, so dropping only the oldest would leave an inverse that no longer
            # exists (measured: the linear backward problem then diverges to NaN from ‖W‖₂ ≥ 0.9)
            mem = _Memory(z, g)
        else:
            dz, dg = z - mem.z, g - mem.g
            b_dg = _apply(dg, mem.u, mem.v)
            vt = -dz + sum(
                (vi * (ui * dz).sum(1, keepdim=True) for ui, vi in zip(mem.u, mem.v)), torch.zeros_like(dz)
            )  # Bᵀ Δz
            denom = (vt * dg).sum(1, keepdim=True)  # Δzᵀ B Δg
            scale = dz.norm(dim=1, keepdim=True) * dg.norm(dim=1, keepdim=True)
            ok = denom.abs() > torch.finfo(dtype).eps * scale  # the input's precision bounds the secant's
            safe = torch.where(ok, denom, torch.ones_like(denom))
            mem.u.append(torch.where(ok, (dz - b_dg) / safe, torch.zeros_like(dz)))
            mem.v.append(vt)
            mem.z, mem.g = z, g
        return (z - _apply(g, mem.u, mem.v)).to(dtype), mem
