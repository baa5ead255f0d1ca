"""Anderson acceleration (type II), batched, with a regularised least-squares step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .core import IterativeSolver


@dataclass
class _History:
    z: torch.Tensor
    g: torch.Tensor
    dz: list[torch.Tensor] = field(default_factory=list)
    dg: list[torch.Tensor] = field(default_factory=list)


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
    """

    name = "anderson"
    default_max_steps = 100

    def __init__(self, m: int = 5, beta: float = 1.0, lam: float = 1e-8):
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        if not 0 < beta <= 1:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.m, self.beta, self.lam = m, beta, lam

    def update(self, z: torch.Tensor, fz: torch.Tensor, h: _History | None) -> tuple[torch.Tensor, _History]:
        g = fz - z
        plain = z + self.beta * g
        if h is None:
            return plain, _History(z, g)
        h.dz.append(z - h.z)
        h.dg.append(g - h.g)
        del h.dz[: -self.m], h.dg[: -self.m]
        h.z, h.g = z, g
        dz, dg = torch.stack(h.dz, 1), torch.stack(h.dg, 1)  # (batch, k, dim)
        gram = dg @ dg.transpose(1, 2)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        reg = self.lam * gram.diagonal(dim1=1, dim2=2).amax(-1) + torch.finfo(gram.dtype).tiny
        gamma, info = torch.linalg.solve_ex(gram + reg[:, None, None] * eye, (dg @ g.unsqueeze(-1)))
        step = plain - ((dz + self.beta * dg).transpose(1, 2) @ gamma).squeeze(-1)
        ok = (info == 0) & torch.isfinite(step).all(1)
        return torch.where(ok[:, None], step, plain), h
