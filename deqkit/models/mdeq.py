"""An MDEQ-style convolutional DEQ (Bai, Koltun & Kolter, 2020, "Multiscale Deep Equilibrium Models"), sized for
MNIST on a CPU: one state per resolution, solved together as one fixed point.

Each resolution ``i`` has a residual conv branch ``yᵢ = conv₂(GN(relu(conv₁(zᵢ))))`` and an injection (``x``, and
``x_lo = inject(x)`` by a strided conv); the branches are fused by a strided conv (down) and a 1×1 conv plus nearest
upsampling (up):

    z_hi ← GN(relu(x + y_hi + up(y_lo)))        z_lo ← GN(relu(x_lo + y_lo + down(y_hi)))

(Each state gets an injection of order one: a GroupNorm of the small branch outputs alone would blow them up, and
the map would not start near a contraction.)

With one resolution this is ``f(z, x) = GN(relu(x + conv₂(GN(relu(conv₁(z))))))``. The two-resolution state is the
tuple ``(z_hi, z_lo)`` (14×14 and 7×7 maps for MNIST), which :class:`~deqkit.DEQ` solves as one state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..adjoint import Implicit
from ..settings import check_int
from .base import MNISTDEQ, _deq, normalize_weight

__all__ = ["MDEQBranch", "MDEQHead", "MultiscaleBlock", "mdeq"]


def _groups(channels: int) -> int:
    return math.gcd(4, channels)


class MDEQBranch(nn.Module):
    """``y = conv₂(GN(relu(conv₁(z))))``: one resolution's residual branch (3×3 convolutions, no bias)."""

    def __init__(self, channels: int, hidden: int, init_std: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(_groups(hidden), hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return ``conv₂(GN(relu(conv₁(z))))``, shaped like ``z``."""
        return self.conv2(self.norm(torch.relu(self.conv1(z))))


class MultiscaleBlock(nn.Module):
    """The MDEQ block ``f(z, x)`` with one or two resolutions (see the module docstring).

    Parameters
    ----------
    channels : int
        Channels of ``x`` and of the high-resolution state.
    hidden : int
        Channels between each branch's two convolutions.
    resolutions : {1, 2}
        2: the state is ``(z_hi, z_lo)``, ``z_lo`` with ``2 · channels`` channels at half the size.
    init_std : float
        Standard deviation of the convolutions' initial weights (small: ``f`` starts near a contraction).
    """

    def __init__(self, channels: int = 16, hidden: int = 32, resolutions: int = 2, init_std: float = 0.01):
        super().__init__()
        if isinstance(resolutions, bool) or resolutions not in (1, 2):
            raise ValueError(f"resolutions must be 1 or 2, got {resolutions!r}")
        self.channels, self.resolutions = check_int("channels", channels, 1), resolutions
        self.hi = MDEQBranch(channels, check_int("hidden", hidden, 1), init_std)
        self.norm_hi = nn.GroupNorm(_groups(channels), channels)
        if resolutions == 2:
            low = 2 * channels
            self.lo = MDEQBranch(low, hidden, init_std)
            self.norm_lo = nn.GroupNorm(_groups(low), low)
            self.down = nn.Conv2d(channels, low, 3, stride=2, padding=1, bias=False)
            self.up = nn.Conv2d(low, channels, 1, bias=False)
            for conv in (self.down, self.up):
                nn.init.normal_(conv.weight, 0.0, init_std)
            self.inject = nn.Conv2d(channels, low, 3, stride=2, padding=1, bias=False)  # torch's default init

    def initial_state(self, x: torch.Tensor) -> Any:
        """Zeros in the state's structure: ``zeros_like(x)``, and with two resolutions the half-size map too."""
        hi = torch.zeros_like(x)
        if self.resolutions == 1:
            return hi
        return hi, x.new_zeros(x.shape[0], 2 * self.channels, (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2)

    def forward(self, z: Any, x: torch.Tensor) -> Any:
        """Return ``f(z, x)``: a tensor for one resolution, the tuple ``(z_hi, z_lo)`` for two."""
        if self.resolutions == 1:
            return self.norm_hi(torch.relu(x + self.hi(z)))
        z_hi, z_lo = z
        y_hi, y_lo = self.hi(z_hi), self.lo(z_lo)
        up = F.interpolate(self.up(y_lo), size=y_hi.shape[-2:], mode="nearest")
        return (
            self.norm_hi(torch.relu(x + y_hi + up)),
            self.norm_lo(torch.relu(self.inject(x) + y_lo + self.down(y_hi))),
        )


class MDEQHead(nn.Module):
    """Logits from the equilibrium: each resolution average-pooled to the lowest one, concatenated, one linear layer.

    Parameters
    ----------
    channels : int
        High-resolution channels.
    size : int
        The low-resolution side (7 for MNIST).
    resolutions : {1, 2}
    """

    def __init__(self, channels: int, size: int, resolutions: int):
        super().__init__()
        self.size = size
        features = channels * (3 if resolutions == 2 else 1) * size * size
        self.linear = nn.Linear(features, 10)

    def forward(self, z: Any) -> torch.Tensor:
        """Return logits ``(batch, 10)`` from ``z`` (a tensor, or the tuple ``(z_hi, z_lo)``)."""
        maps = z if isinstance(z, (tuple, list)) else (z,)
        pooled = [F.adaptive_avg_pool2d(m, self.size).flatten(1) for m in maps]
        return self.linear(torch.cat(pooled, 1))


def mdeq(
    *,
    channels: int = 16,
    hidden: int = 32,
    resolutions: int = 2,
    weight_norm: str | None = None,
    seed: int | None = None,
    **deq_options: Any,
) -> MNISTDEQ:
    """An MDEQ-style MNIST model (``"mdeq"``): two resolutions (14×14 and 7×7) solved as one tuple state.

    ``encoder``: conv 3×3 (1→``channels``) + GroupNorm + ReLU, stride 2 (14×14): the injection ``x``. ``f``:
    :class:`MultiscaleBlock`. ``head``: :class:`MDEQHead`. Solved by default with Anderson from zeros to tolerances
    1e-2 in at most 30 steps, forward and backward (``Implicit("gmres", abstol=1e-12, reltol=1e-2, max_steps=30)``),
    like ``"conv"``.

    Parameters
    ----------
    channels : int
        Channels of ``x`` and the 14×14 state (the 7×7 state has twice as many).
    hidden : int
        Inner channels of each branch.
    resolutions : {1, 2}
        1: a single 14×14 state (``f(z, x) = GN(relu(x + conv₂(GN(relu(conv₁(z))))))``).
    weight_norm : {None, "weight", "spectral"}
        Normalization of the block's convolutions (:func:`deqkit.normalize`). ``"spectral"`` rescales each
        convolution to ``‖W‖₂ ≈ 1``, far above the small initial weights, so the map need not start near a
        contraction (with 4 channels and one resolution, its default 30-step Anderson solve did not converge at
        initialisation); ``"weight"`` keeps the initial weights.
    seed : int, optional
        Seed ``torch``'s global generator before initialising (reproducible weights).
    **deq_options
        Any :class:`~deqkit.DEQ` keyword (e.g. ``solver="dynamic_ss"``, ``max_steps=40``).

    Returns
    -------
    MNISTDEQ
        Named ``"mdeq"``; ``model.deq(x)`` returns the tuple ``(z_hi, z_lo)`` with two resolutions.
    """

    if seed is not None:
        torch.manual_seed(seed)
    channels = check_int("channels", channels, 1)
    encoder = nn.Sequential(
        nn.Conv2d(1, channels, 3, stride=2, padding=1, bias=False), nn.GroupNorm(_groups(channels), channels), nn.ReLU()
    )
    block = MultiscaleBlock(channels, hidden, resolutions)
    normalize_weight(block, weight_norm)
    defaults = {
        "solver": "anderson",
        "abstol": 1e-2,
        "reltol": 1e-2,
        "max_steps": 30,
        "max_nfe": None,
        "eval_max_nfe": None,
        "z0": block.initial_state,
        "backward": Implicit("gmres", abstol=1e-12, reltol=1e-2, max_steps=30),
    }
    deq = _deq(block, defaults, deq_options)
    return MNISTDEQ(encoder, deq, MDEQHead(channels, 7, resolutions), name="mdeq")
