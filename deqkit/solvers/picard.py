"""Plain (optionally damped) fixed-point iteration."""

from __future__ import annotations

import torch

from ..settings import check_int, check_real
from .core import IterativeSolver


class Picard(IterativeSolver):
    """``z ← z + damping · (f(z) − z)``; ``damping = 1`` is plain iteration ``z ← f(z)``.

    Converges when ``f`` is a contraction (spectral radius of ∂f/∂z below 1 near the answer); damping widens
    that to maps whose Jacobian eigenvalues λ satisfy ``|1 − damping·(1 − λ)| < 1``.

    Parameters
    ----------
    damping : float
        Step fraction in (0, 1].
    sync_every : int
        Host reads of the monitor's numbers: every step (1), or every ``sync_every`` steps with the per-sample
        bookkeeping kept on the device in between (fewer synchronisations on a GPU; see :class:`IterativeSolver`).
    """

    name = "picard"
    default_max_steps = 500

    def __init__(self, damping: float = 1.0, sync_every: int = 1):
        self.damping = check_real("damping", damping, 0.0, 1.0, low_open=True)
        self.sync_every = check_int("sync_every", sync_every, 1)

    def update(self, z: torch.Tensor, fz: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        if self.damping == 1:
            return fz, None
        return torch.lerp(z, fz, self.damping), None
