"""Diagnostics: the spectral radius of ∂f/∂z, and gradients compared with finite differences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adjoint import GRADIENTS
from .layer import DEQ
from .settings import check_int, check_real
from .state import Structure, detach


def spectral_radius(
    f: Callable[..., torch.Tensor], z: torch.Tensor, x: torch.Tensor | None = None, *, iters: int = 50, seed: int = 0
) -> torch.Tensor:
    """Estimate ρ(∂f/∂z) at ``z`` per sample, by power iteration with vector–Jacobian products.

    ρ(J) = ρ(Jᵀ), and ``‖(Jᵀ)ᵏ v‖^(1/k) → ρ`` for almost every ``v`` (Gelfand's formula), also when the
    dominant eigenvalues are a complex pair; the estimate is the geometric mean of the growth factors over
    the second half of the iterations. ρ < 1 means plain iteration converges near ``z``; ρ ≥ 1 that it does
    not (the ODE view may still converge, when every eigenvalue has real part below 1).

    Parameters
    ----------
    f : callable
        ``f(z, x)``, or ``f(z)`` when ``x`` is None.
    z : torch.Tensor, or tuple/list of torch.Tensor
        Where to linearise, shape ``(batch, ...)``; for a state of several tensors, that structure (the Jacobian
        is then that of the whole state, all tensors together).
    iters : int
        Power iterations (each one vector–Jacobian product).
    seed : int
        Seed of the random start vector (the estimate is reproducible).

    Returns
    -------
    torch.Tensor
        Shape ``(batch,)``.

    Raises
    ------
    TypeError, ValueError
        If ``iters`` is not an integer ≥ 2, ``z`` is not a floating-point ``(batch, ...)`` tensor, ``f`` does not
        return a tensor shaped like ``z``, or ``f``'s output does not depend on ``z`` through autograd.
    """
    iters = check_int("iters", iters, 2)
    structure = Structure.of(z, "z")
    if structure is not None:  # one flat (batch, N) state: the Jacobian couples every tensor of it
        flat_f = structure.block(f) if x is not None else structure.map(f)
        return spectral_radius(flat_f, structure.flatten(detach(z), "z"), x, iters=iters, seed=seed)
    if not isinstance(z, torch.Tensor) or z.dim() < 2 or not z.is_floating_point():
        raise ValueError(
            f"z must be a floating-point tensor of shape (batch, ...), got {getattr(z, 'shape', type(z).__name__)}"
        )
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z) if x is None else f(z, x.detach())
    if not isinstance(fz, torch.Tensor) or fz.shape != z.shape:
        raise ValueError(
            f"f(z) must be a tensor shaped like z {tuple(z.shape)}, got "
            f"{tuple(getattr(fz, 'shape', ())) or type(fz).__name__}: ∂f/∂z must be square"
        )
    if not (torch.isfinite(z).all() and torch.isfinite(fz.detach()).all()):
        what = "z" if not torch.isfinite(z).all() else "f(z)"
        raise ValueError(
            f"{what} contains NaN or Inf: ∂f/∂z is undefined there and the estimate would be NaN. "
            "Linearise at a finite point, e.g. the z* a solver returned."
        )
    if not fz.requires_grad:
        raise ValueError(
            "f(z) does not depend on z through autograd (f detaches it, runs under no_grad, or leaves "
            "torch, e.g. through numpy): the Jacobian ∂f/∂z cannot be estimated. Write f in torch ops."
        )
    gen = torch.Generator(device=z.device).manual_seed(seed)
    v = torch.randn(z.shape, generator=gen, dtype=z.dtype, device=z.device)
    v = v / v.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
    logs = []
    for _ in range(iters):
        (w,) = torch.autograd.grad(fz, z, v, retain_graph=True, allow_unused=True)
        w = torch.zeros_like(v) if w is None else w
        n = w.flatten(1).norm(dim=1).clamp_min(torch.finfo(z.dtype).tiny)
        logs.append(n.log())
        v = w / n.view(-1, *[1] * (z.dim() - 1))
    rho = torch.stack(logs[iters // 2 :]).mean(0).exp().detach()
    if not torch.isfinite(rho).all():
        raise ValueError(
            f"the spectral radius came out non-finite for {int((~torch.isfinite(rho)).sum())} samples: "
            "the vector–Jacobian products of f at z overflow or are NaN there (f is not differentiable "
            "at z, or its Jacobian is huge); check f at this z, or evaluate at a better-behaved point"
        )
    return rho


@dataclass
class GradientReport:
    """Gradients of each backward mode against a central finite-difference reference.

    ``reference`` and ``gradients[mode]`` are flat vectors over ``x`` and the parameters (or, with
    ``directions``, directional derivatives along fixed random directions).
    """

    reference: torch.Tensor
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)

    def cosine(self, mode: str) -> float:
        return float(torch.nn.functional.cosine_similarity(self.gradients[mode], self.reference, dim=0))

    def relative_error(self, mode: str) -> float:
        g = self.gradients[mode]
        return float((g - self.reference).norm() / self.reference.norm().clamp_min(torch.finfo(g.dtype).tiny))

    def __str__(self) -> str:
        rows = [f"{'mode':<10} {'cosine':>10} {'rel. error':>11}"]
        rows += [f"{m:<10} {self.cosine(m):>10.6f} {self.relative_error(m):>11.2e}" for m in self.gradients]
        return "\n".join(rows)


def compare_gradients(
    model: nn.Module,
    x: torch.Tensor,
    *,
    loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    modes: Sequence[str] = tuple(GRADIENTS),
    eps: float = 1e-6,
    directions: int | None = None,
    seed: int = 0,
) -> GradientReport:
    """Compare the gradients of ``loss(model(x))`` from each backward mode with central finite differences.

    Parameters
    ----------
    model : nn.Module
        A :class:`~deqkit.DEQ` or any module containing one (every DEQ inside is switched to each mode in turn).
        Use float64 and tight forward tolerances (e.g. ``abstol=1e-12``): finite differences divide the
        solver's error by ``eps``.
    x : torch.Tensor
        Input; its gradient is compared too.
    loss : callable, optional
        Scalar loss of the output; default a fixed random linear functional (every output entry matters).
    modes : sequence of str
        Backward modes to test.
    eps : float
        Finite-difference step, finite and > 0.
    directions : int, optional
        Compare directional derivatives along this many random directions (≥ 1; 2 solves each) instead of the
        full gradient (2 solves per entry of ``x`` and of every parameter).
    seed : int
        Seed of the random loss and directions.

    Returns
    -------
    GradientReport

    Raises
    ------
    ValueError
        If ``eps`` is not finite and > 0, ``directions`` < 1, a mode is unknown, no DEQ is inside, or the model
        or ``x`` is not float64.
    """
    try:
        eps = check_real("eps", eps, 0.0, float("inf"), low_open=True, high_open=True)
        directions = None if directions is None else check_int("directions", directions, 1)
    except ValueError as err:
        raise ValueError(
            f"{err}: eps is the finite-difference step (a finite number > 0, e.g. 1e-6) and "
            "directions the number of random directions (>= 1, or None for the full gradient)"
        ) from None
    unknown = [m for m in modes if m not in GRADIENTS]
    if unknown:
        raise ValueError(f"unknown backward mode(s) {unknown}; choose from {tuple(GRADIENTS)}")
    deqs = [m for m in model.modules() if isinstance(m, DEQ)]
    if not deqs:
        raise ValueError("compare_gradients needs a DEQ inside the model")
    params = [p for p in model.parameters() if p.requires_grad]
    if any(t.dtype != torch.float64 for t in [x, *params]):
        raise ValueError(
            "compare_gradients needs float64 (call model.double() and pass a float64 x): "
            "finite differences in float32 are too noisy to judge a gradient"
        )
    gen = torch.Generator().manual_seed(seed)
    if loss is None:
        with torch.no_grad():
            out = model(x)
        leaves = list(out) if isinstance(out, (tuple, list)) else [out]  # a state of several tensors, or one
        weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in leaves]

        def loss(y: Any) -> torch.Tensor:
            return sum((t * w).sum() for t, w in zip(y if isinstance(y, (tuple, list)) else [y], weights))

    total = x.numel() + sum(p.numel() for p in params)
    dirs = (
        None if directions is None else torch.randn(directions, total, generator=gen, dtype=torch.float64).to(x.device)
    )
    report = GradientReport(_finite_differences(model, x, params, loss, dirs, eps))
    saved = [d.backward for d in deqs]
    try:
        for mode in modes:
            for d in deqs:
                d.backward = mode
            xg = x.detach().clone().requires_grad_()
            grads = torch.autograd.grad(loss(model(xg)), [xg, *params], allow_unused=True)
            g = _flat([torch.zeros_like(t) if gi is None else gi for gi, t in zip(grads, [xg, *params])]).cpu()
            report.gradients[mode] = g if dirs is None else dirs.cpu() @ g
    finally:
        for d, s in zip(deqs, saved):
            d.backward = s
    return report


def _flat(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _finite_differences(
    model: nn.Module,
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
    loss: Callable[[torch.Tensor], torch.Tensor],
    dirs: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """Central differences of ``loss(model(x))`` along ``dirs`` (or every coordinate of ``x`` and ``params``)."""
    targets = [x.detach().clone(), *params]  # x and each parameter are perturbed in place, restored afterwards
    base = [t.detach().clone() for t in targets]

    def shifted(vec: torch.Tensor, scale: float) -> float:
        with torch.no_grad():
            offset = 0
            for t, b in zip(targets, base):
                t.copy_(b + scale * vec[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            value = float(loss(model(targets[0])))
            for t, b in zip(targets, base):
                t.copy_(b)
        return value

    basis = (
        dirs if dirs is not None else torch.eye(sum(t.numel() for t in targets), dtype=torch.float64, device=x.device)
    )
    return torch.tensor([(shifted(v, eps) - shifted(v, -eps)) / (2 * eps) for v in basis], dtype=torch.float64)
