"""The seed blog's first example: a DEQ learns y = 2x.

Model (as in the blog): ``net = Linear(1, 2) → Linear(2, 1)`` (no activation), fixed point
``z = net(z + x)`` started from ``z0 = net(x)``, solved to steady state with tolerances 1e-5; trained with
Adam(0.05) on x = 1..10, batch 1, shuffled, 100 epochs, loss ``Σ (y − ŷ)²``. ``net`` is affine,
``net(v) = a v + b``, so ``z* = (a x + b) / (1 − a)``: the DEQ fits y = 2x with ``a = 2/3, b = 0`` and then
predicts −10 at x = −5.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from ..layer import DEQ

X_TRAIN = torch.arange(1.0, 11.0).unsqueeze(1)
Y_TRAIN = 2 * X_TRAIN


class SeedBlock(nn.Module):
    """``f(z, x) = net(z + x)`` with the blog's ``net = Linear(1, 2) → Linear(2, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        linears = (nn.Linear(1, 2), nn.Linear(2, 1))
        self.net = nn.Sequential(*linears)
        for layer in linears:  # Flux's Dense defaults: Glorot-uniform weights, zero bias
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``net(z + x)``; ``z`` and ``x`` have shape ``(batch, 1)``."""
        return self.net(z + x)

    def affine(self) -> tuple[float, float]:
        """Return ``(a, b)`` with ``net(v) = a v + b`` (the two linear layers composed), as Python floats."""
        l1, l2 = cast(tuple[nn.Linear, nn.Linear], tuple(self.net))  # the two Linear layers of __init__
        a = (l2.weight @ l1.weight).item()
        b = (l2.weight @ l1.bias + l2.bias).item()
        return a, b

    def closed_form(self, x: torch.Tensor) -> torch.Tensor:
        """Return the exact fixed point ``(a x + b) / (1 − a)`` for input ``x``.

        It exists for ``a ≠ 1``; plain iteration converges to it for ``|a| < 1``, the ODE ``dz/dt = f(z, x) − z``
        for ``a < 1``. Computed from the current weights, without gradients to them.
        """
        a, b = self.affine()
        return (a * x + b) / (1 - a)


def seed_regression_model(seed: int = 0, **deq_options: Any) -> DEQ:
    """The blog's regression DEQ: ``SeedBlock`` solved from ``z0 = f(0, x) = net(x)`` with tolerances 1e-5.

    Parameters
    ----------
    seed : int
        Seeds ``torch``'s global generator before the weights are drawn.
    **deq_options
        Override the DEQ's settings (e.g. ``backward="unrolled"``, ``solver="anderson"``); any
        :class:`~deqkit.DEQ` keyword.

    Returns
    -------
    DEQ
        Maps ``(batch, 1)`` inputs to ``(batch, 1)`` outputs; ``model.f`` is the :class:`SeedBlock`.
    """
    torch.manual_seed(seed)
    # the blog's DynamicSS has no evaluation budget
    options: dict[str, Any] = {
        "abstol": 1e-5,
        "reltol": 1e-5,
        "z0": "f0",
        "max_nfe": None,
        "eval_max_nfe": None,
    } | deq_options
    return DEQ(SeedBlock(), **options)


@dataclass
class RegressionRun:
    """What one training run measured.

    Attributes
    ----------
    losses : list of float
        Mean loss over the ten samples, per epoch.
    forward_nfe, backward_nfe : list of float
        Mean forward / backward evaluations per training step, per epoch (0 for a model that is not a DEQ).
    seconds : float
        Wall time of the training loop.
    prediction : float
        The trained model's output at ``x = −5`` (the target is −10).
    """

    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    forward_nfe: list[float] = field(default_factory=list)  # mean per training step, per epoch
    backward_nfe: list[float] = field(default_factory=list)
    seconds: float = 0.0
    prediction: float = float("nan")  # model(−5) after training


def fit_regression(
    model: nn.Module,
    *,
    epochs: int = 100,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool = False,
    on_epoch: Callable[[RegressionRun], None] | None = None,
) -> RegressionRun:
    """Train on the blog's data (batch 1, shuffled each epoch, Adam) and return the measurements.

    Parameters
    ----------
    model : nn.Module
        Maps ``(1, 1)`` inputs to ``(1, 1)`` outputs; trained in place, in the dtype of its first parameter. If
        it has ``last_stats`` (a :class:`~deqkit.DEQ`), its solver statistics are recorded.
    epochs : int
        Passes over the ten samples x = 1..10.
    lr : float
        Adam's learning rate.
    seed : int
        Seed of the shuffling (not of the weights).
    progress : bool
        Show a ``tqdm`` bar with the running loss.
    on_epoch : callable, optional
        Called after every epoch with the measurements so far (``seconds`` is the time since the start), e.g. to
        keep the weights after each epoch.

    Returns
    -------
    RegressionRun
    """
    params = list(model.parameters())
    if not params:
        raise ValueError("fit_regression needs a model with parameters to train (got none)")
    dtype = params[0].dtype
    xs, ys = X_TRAIN.to(dtype), Y_TRAIN.to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    run = RegressionRun()
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="y = 2x", disable=not progress)
    for _ in bar:
        total = fnfe = bnfe = 0.0
        for i in torch.randperm(len(xs), generator=gen).tolist():
            loss = (ys[i : i + 1] - model(xs[i : i + 1])).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            stats = getattr(model, "last_stats", None)
            if stats is not None:
                fnfe += stats.forward.nfe
                bnfe += stats.backward.nfe if stats.backward is not None else 0
        run.losses.append(total / len(xs))
        run.forward_nfe.append(fnfe / len(xs))
        run.backward_nfe.append(bnfe / len(xs))
        bar.set_postfix(loss=f"{run.losses[-1]:.3g}")
        if on_epoch is not None:
            run.seconds = time.perf_counter() - start
            on_epoch(run)
    run.seconds = time.perf_counter() - start
    with torch.no_grad():
        run.prediction = model(torch.tensor([[-5.0]], dtype=dtype)).item()
    return run
