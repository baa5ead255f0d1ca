"""The test problems every part of the kit shares: the tanh block, the linear map, the pitchfork and the spiral.

Tests, benchmarks and the notebooks' panels draw their problems from here, so a figure in a notebook, a number in
``docs/results.md`` and an assertion in ``tests/`` are about the same map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["KINDS", "SYSTEMS", "TanhBlock", "linear_problem", "system_map", "system_matrix", "tanh_problem",
           "tanh_weight"]

KINDS = ("orthogonal", "symmetric", "gaussian", "psd")
SYSTEMS = ("pitchfork", "spiral")


def tanh_weight(d: int, norm: float, kind: str = "orthogonal", *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random ``d × d`` weight with spectral norm ``‖W‖₂ = norm``, drawn in float64 from ``generator``.

    Parameters
    ----------
    d : int
    norm : float
    kind : {"orthogonal", "symmetric", "gaussian", "psd"}
        ``"orthogonal"``: ``norm · Q`` (every singular value is ``norm``); ``"symmetric"``: eigenvalues evenly
        spread over ``[−norm, norm]``; ``"gaussian"``: a Gaussian matrix rescaled; ``"psd"``: ``−norm · P/‖P‖₂``
        with ``P = AAᵀ`` (eigenvalues in ``[−norm, 0]``: a map that is not a contraction for ``norm > 1`` but whose
        ODE ``dz/dt = f(z) − z`` is stable).
    generator : torch.Generator, optional
    dtype : torch.dtype
        Of the result.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    if kind == "orthogonal":
        w = torch.linalg.qr(a)[0]
    elif kind == "symmetric":
        q = torch.linalg.qr(a)[0]
        w = q @ torch.diag(torch.linspace(-1.0, 1.0, d, dtype=torch.float64)) @ q.T
    elif kind == "gaussian":
        w = a
    else:
        w = -(a @ a.T)
    return (w * (norm / torch.linalg.matrix_norm(w, 2))).to(dtype)


class TanhBlock(nn.Module):
    """``f(z, x) = tanh(W z + x + b)`` with a random ``W`` of spectral norm ``norm`` (see :func:`tanh_weight`).

    Parameters
    ----------
    d : int
        Dimension of ``z`` and ``x``.
    norm : float
        ``‖W‖₂``.
    kind : {"orthogonal", "symmetric", "gaussian", "psd"}
    seed : int
        Seed of ``W`` and then ``b``.
    bias_scale : float
        Standard deviation of the entries of ``b``; 0 for no bias.
    dtype : torch.dtype
        Of the parameters (drawn in float64 and converted).
    """

    def __init__(self, d: int, norm: float, *, kind: str = "orthogonal", seed: int = 0, bias_scale: float = 0.1,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(tanh_weight(d, norm, kind, generator=gen, dtype=dtype))
        self.bias = nn.Parameter((bias_scale * torch.randn(d, generator=gen, dtype=torch.float64)).to(dtype))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``tanh(W z + x + b)`` for ``z`` and ``x`` of shape ``(batch, d)``."""
        return torch.tanh(z @ self.weight.T + x + self.bias)


def tanh_problem(d: int = 32, norm: float = 0.9, *, batch: int = 8, kind: str = "orthogonal",
                 x_scale: float = 1.0, bias_scale: float = 0.1, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> tuple[TanhBlock, torch.Tensor]:
    """A :class:`TanhBlock` and an input batch ``x`` with entries ``x_scale · N(0, 1)`` (drawn with ``seed + 1``).

    Returns
    -------
    block : TanhBlock
    x : torch.Tensor
        Shape ``(batch, d)``, in ``dtype``.
    """
    block = TanhBlock(d, norm, kind=kind, seed=seed, bias_scale=bias_scale, dtype=dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = (x_scale * torch.randn(batch, d, generator=gen, dtype=torch.float64)).to(dtype)
    return block, x


def linear_problem(d: int = 5, norm: float = 0.8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, x, w)`` of the linear DEQ ``z* = A z* + x`` with the loss ``w · z*``, float64.

    Its exact gradient is ``d(w · z*)/dx = w (I − A)⁻¹``: the implicit function theorem in closed form.

    Parameters
    ----------
    d : int
    norm : float
        ``‖A‖₂``; below 1, ``I − A`` is invertible and plain iteration converges.
    seed : int

    Returns
    -------
    a : torch.Tensor
        Shape ``(d, d)``.
    x : torch.Tensor
        Shape ``(1, d)``.
    w : torch.Tensor
        Shape ``(d,)``.
    """
    gen = torch.Generator().manual_seed(seed)
    a = tanh_weight(d, norm, "gaussian", generator=gen)
    x = torch.randn(1, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    return a, x, w


def system_matrix(system: str, a: float) -> torch.Tensor:
    """Return ``a·M``, the float64 2×2 matrix of the planar map ``f(z) = tanh(a·M z)``.

    Parameters
    ----------
    system : {"pitchfork", "spiral"}
        ``"pitchfork"``: ``M = [[1, 0.5], [0.5, 1]]`` (at ``a > 2/3`` the origin becomes a saddle between two
        stable equilibria); ``"spiral"``: ``M`` the rotation by 1.2 rad (a Hopf bifurcation as ``a`` grows).
    a : float
        Gain, the bifurcation parameter.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError
        If ``system`` is unknown.
    """
    if system == "pitchfork":
        m = [[1.0, 0.5], [0.5, 1.0]]
    elif system == "spiral":
        c, s = math.cos(1.2), math.sin(1.2)
        m = [[c, -s], [s, c]]
    else:
        raise ValueError(f"unknown system {system!r}; choose one of {SYSTEMS}")
    return a * torch.tensor(m, dtype=torch.float64)


def system_map(system: str, a: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the map ``f(z) = tanh(a·M z)`` of :func:`system_matrix` (the flow is ``f(z) − z``).

    Returns
    -------
    callable
        Maps float64 points of shape ``(batch, 2)`` to the same shape.
    """
    w = system_matrix(system, a)
    return lambda z: torch.tanh(z @ w.T)
