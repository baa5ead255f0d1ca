"""Jacobian regularization (Bai, Koltun & Kolter, 2021): keep ∂f/∂z at the equilibrium small, so the DEQ stays
cheap to solve as it trains."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .layer import DEQ
from .settings import check_int

__all__ = ["jacobian_penalty"]


def jacobian_penalty(model: nn.Module, *, samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hutchinson estimate of ``‖∂f/∂z‖²_F / dim(z)`` at the last equilibrium, per sample, averaged.

    With ``v ~ N(0, I)``, ``E‖vᵀ J‖² = ‖J‖²_F``: each sample draws ``samples`` such vectors and takes one
    vector–Jacobian product each, through the graph of the layer's own re-attached evaluation ``f(z*, x)`` (no
    extra evaluation of ``f``). The result is differentiable with respect to ``f``'s parameters (and ``x``), so
    ``loss + γ · jacobian_penalty(model)`` trains ``f`` towards a smaller Jacobian. Since
    ``ρ(J) ≤ ‖J‖₂ ≤ ‖J‖_F``, a penalty below ``1 / dim(z)`` guarantees ``ρ(J) < 1`` (plain iteration converges
    near ``z*``); above that the bound says nothing, but the penalty still shrinks every singular value, and in
    practice ρ and the solver's evaluations fall with it (notebook 06; docs/results.md, "The Jacobian penalty").

    Parameters
    ----------
    model : nn.Module
        A :class:`~deqkit.DEQ`, or a module containing DEQs (their penalties are averaged), called in grad mode
        just before.
    samples : int
        Random vectors per sample (≥ 1); more lowers the estimate's variance.
    generator : torch.Generator, optional
        For reproducible vectors (on the equilibrium's device).

    Returns
    -------
    torch.Tensor
        A scalar.

    Raises
    ------
    ValueError
        If the model holds no DEQ, or a DEQ has not been called in grad mode since it was built (under
        ``torch.no_grad()`` there is no graph to differentiate).
    """
    samples = check_int("samples", samples, 1)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"jacobian_penalty needs the model (a deqkit.DEQ or a module containing one), got {type(model).__name__}"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}: e.g. "
            "torch.Generator(device).manual_seed(0)"
        )
    deqs = [m for m in model.modules() if isinstance(m, DEQ)]
    if not deqs:
        raise ValueError("jacobian_penalty needs a deqkit.DEQ (or a module containing one)")
    terms = []
    for deq in deqs:
        if deq.last_equilibrium is None:
            raise ValueError(
                "jacobian_penalty: the DEQ has no equilibrium with a graph; call it in grad mode first "
                "(not under torch.no_grad()), then take the penalty before the next call"
            )
        z, fz = deq.last_equilibrium
        per_sample = torch.zeros(z.shape[0], dtype=fz.dtype, device=fz.device)
        for _ in range(samples):
            v = torch.randn(fz.shape, generator=generator, dtype=fz.dtype, device=fz.device)
            per_sample = per_sample + _vjp(fz, z, v).flatten(1).pow(2).sum(1)
        terms.append((per_sample / (samples * z[0].numel())).mean())
    return torch.stack(terms).mean()


def _vjp(fz: torch.Tensor, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``vᵀ ∂f/∂z`` with a graph, naming the cause when the equilibrium's graph cannot give it."""
    if not fz.requires_grad:
        raise ValueError(
            "jacobian_penalty: f(z*, x) carries no graph to z* (does f detach z, or run under "
            "torch.no_grad()?); the penalty needs ∂f/∂z"
        )
    try:
        (vj,) = torch.autograd.grad(fz, z, v, create_graph=True, retain_graph=True, allow_unused=True)
    except RuntimeError as err:
        if "backward through the graph a second time" in str(err):
            raise RuntimeError(
                "jacobian_penalty: the equilibrium's graph was freed by an earlier backward(); take "
                "the penalty before loss.backward(): (loss + gamma * jacobian_penalty(model))"
                ".backward()"
            ) from err
        raise
    if vj is None:
        warnings.warn(
            "jacobian_penalty: f(z*, x) does not depend on z* in its graph (f ignores z, or detaches it), "
            "so ∂f/∂z = 0 and the penalty is 0; if f should depend on z, do not detach it",
            stacklevel=3,
        )
        return torch.zeros_like(z)
    return vj
