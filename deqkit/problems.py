"""The test problems every part of the kit shares: the tanh block, the linear map, the pitchfork and the spiral.

Tests, benchmarks and the notebooks' panels draw their problems from here, so a figure in a notebook, a number in
``docs/results.md`` and an assertion in ``tests/`` are about the same map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "FAMILIES",
    "KINDS",
    "SYSTEMS",
    "ConvGNFamily",
    "MDEQFamily",
    "MLPFamily",
    "TanhBlock",
    "block_problem",
    "linear_problem",
    "system_map",
    "system_matrix",
    "tanh_problem",
    "tanh_weight",
]

KINDS = ("orthogonal", "symmetric", "gaussian", "psd")
SYSTEMS = ("pitchfork", "spiral")


def tanh_weight(
    d: int,
    norm: float,
    kind: str = "orthogonal",
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
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

    def __init__(
        self,
        d: int,
        norm: float,
        *,
        kind: str = "orthogonal",
        seed: int = 0,
        bias_scale: float = 0.1,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(tanh_weight(d, norm, kind, generator=gen, dtype=dtype))
        self.bias = nn.Parameter((bias_scale * torch.randn(d, generator=gen, dtype=torch.float64)).to(dtype))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``tanh(W z + x + b)`` for ``z`` and ``x`` of shape ``(batch, d)``."""
        return torch.tanh(z @ self.weight.T + x + self.bias)


def tanh_problem(
    d: int = 32,
    norm: float = 0.9,
    *,
    batch: int = 8,
    kind: str = "orthogonal",
    x_scale: float = 1.0,
    bias_scale: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[TanhBlock, torch.Tensor]:
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
        ``"pitchfork"``: ``M = [[1, 0.5], [0.5, 1]]`` (for ``2/3 < a < 2`` the origin is a saddle between two
        stable equilibria; past ``a = 2`` a source, with two saddles on the anti-diagonal); ``"spiral"``: ``M``
        the rotation by 1.2 rad (a Hopf bifurcation as ``a`` grows).
    a : float
        Gain, the bifurcation parameter.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError
        If ``system`` is unknown, or ``a`` is not a finite number (a NaN gain makes f NaN everywhere).
    """
    if not math.isfinite(float(a)):
        raise ValueError(f"a must be a finite number, got {a!r}: it is the gain of f(z) = tanh(a·M z)")
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


#: The block families people train, as shared test problems (see :func:`block_problem`).
FAMILIES = ("mlp", "layernorm", "conv_gn", "mdeq")


class MLPFamily(nn.Module):
    """``f(z, x) = norm(tanh(W z + b + x))``: the MLP-DEQ block, plain (``norm=False``) or with LayerNorm."""

    def __init__(self, d: int, *, norm: bool):
        super().__init__()
        self.linear = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d) if norm else nn.Identity()

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``norm(tanh(W z + b + x))``; ``z`` and ``x`` have shape ``(batch, d)``."""
        return self.norm(torch.tanh(self.linear(z) + x))


class MDEQFamily(nn.Module):
    """``f(z, x) = GN(relu(x + conv₂(GN(relu(conv₁ z)))))``: MDEQ's residual block at one resolution."""

    def __init__(self, channels: int, hidden: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(hidden, channels, 3, padding=1, bias=False)
        self.norm1, self.norm2 = nn.GroupNorm(groups, hidden), nn.GroupNorm(groups, channels)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(torch.relu(x + self.conv2(self.norm1(torch.relu(self.conv1(z))))))


class ConvGNFamily(MDEQFamily):
    """``f(z, x) = GN(relu(z + GN(x + conv₂(GN(relu(conv₁ z))))))``: the implicit-layers tutorial's residual block
    (MDEQ's layers plus a skip connection and a third normalization)."""

    def __init__(self, channels: int, hidden: int, groups: int):
        super().__init__(channels, hidden, groups)
        self.norm3 = nn.GroupNorm(groups, channels)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(torch.relu(self.conv1(z)))
        return self.norm3(torch.relu(z + self.norm2(x + self.conv2(y))))


def block_problem(
    family: str, *, batch: int = 8, size: int = 32, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[nn.Module, torch.Tensor]:
    """A block of one family, initialised as PyTorch initialises it, and an input batch ``x``.

    Parameters
    ----------
    family : {"mlp", "layernorm", "conv_gn", "mdeq"}
        ``"mlp"``: ``tanh(W z + b + x)``; ``"layernorm"``: ``LayerNorm(tanh(W z + b + x))`` (both ``size``-d);
        ``"conv_gn"``: :class:`ConvGNFamily`; ``"mdeq"``: :class:`MDEQFamily` (both with ``size`` channels on
        8×8 maps, ``2·size`` hidden channels, 8 groups).
    batch : int
    size : int
        Width of the MLPs, channels of the conv blocks (a multiple of 8 for those).
    seed : int
        Seeds the weights, then ``x`` (entries ``N(0, 1)``).
    dtype : torch.dtype

    Returns
    -------
    block : nn.Module
        Called as ``block(z, x)``; ``z`` is shaped like ``x``.
    x : torch.Tensor

    Raises
    ------
    ValueError
        If ``family`` is unknown, ``batch`` or ``size`` is not a positive integer, ``dtype`` is not a floating-point
        dtype, or a conv family's ``size`` is not a multiple of 8.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown block family {family!r}; choose one of {FAMILIES}")
    for name, value in (("batch", batch), ("size", size), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'seed' else 1}, got {value!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")
    if family in ("conv_gn", "mdeq") and size % 8:
        raise ValueError(f"the conv families use 8 groups: size must be a multiple of 8, got {size}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if family in ("mlp", "layernorm"):
            block: nn.Module = MLPFamily(size, norm=family == "layernorm")
            shape: tuple[int, ...] = (batch, size)
        else:
            block = (ConvGNFamily if family == "conv_gn" else MDEQFamily)(size, 2 * size, 8)
            shape = (batch, size, 8, 8)
        x = torch.randn(shape, dtype=torch.float64)
    return block.to(dtype), x.to(dtype)
