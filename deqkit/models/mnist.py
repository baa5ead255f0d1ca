"""MNIST classifiers built around one DEQ layer: the seed blog's MLP, a fixed variant, a wider MLP, a conv DEQ.

Every model is an :class:`MNISTDEQ`: ``logits = head(deq(encoder(images)))``, where ``deq`` is a
:class:`~deqkit.DEQ` whose ``last_stats`` hold the forward and backward solver statistics of the last call.

* ``"seed"`` — the blog's network exactly: ``encoder = Dense(784→200, tanh) → Dense(200→20, tanh)``,
  ``f(z, x) = block(z + x)`` with ``block = Dense(20→10, tanh) → Dense(10→10, tanh) → Dense(10→20, tanh)``,
  started from ``z0 = block(x)`` and solved by ``DynamicSS(Tsit5())`` (pure ODE, no polishing) with
  tolerances 1e-2, ``head = Dense(20→15, tanh) → Dense(15→10, tanh)``. Flux's initialisation (Glorot-uniform
  weights, zero biases).
* ``"seed-linear"`` — the same network with a linear last layer: the logits are no longer squashed into
  ``[−1, 1]`` by tanh (see notebook 04 for why that one change matters).
* ``"wide"`` — a 128-wide MLP-DEQ in the protocol of Pal et al.'s MNIST-Dense experiments:
  ``Dense(784→128, relu)``, ``f(z, x) = relu(W₁z + b₁) + relu(W₂x + b₂)``, ``Dense(128→10)``.
* ``"conv"`` — a small convolutional DEQ in the spirit of the implicit-layers tutorial and MDEQ: a conv stem
  down to 7×7, a residual block with group normalisation as ``f`` (solved by Anderson), a linear head.
* ``"mdeq"`` — MDEQ-style (:mod:`deqkit.models.mdeq`): a 14×14 and a 7×7 state coupled by strided and upsampling
  convolutions, solved as one tuple state.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..adjoint import Implicit
from ..problems import MLPFamily
from ..settings import check_int
from .base import MNISTDEQ, WEIGHT_NORMS, _deq, normalize_weight
from .mdeq import mdeq

__all__ = [
    "MNIST_MODELS",
    "WEIGHT_NORMS",
    "ConvBlock",
    "MLPBlock",
    "MNISTDEQ",
    "SeedMNISTBlock",
    "WideBlock",
    "conv_deq",
    "mlp_deq",
    "mnist_model",
    "normalize_weight",
    "seed_mnist_model",
    "wide_mlp_deq",
]

#: The seed blog's solver settings: ``DynamicSS(Tsit5())``, abstol = reltol = 1e-2, no polishing.
SEED_SOLVER: dict[str, Any] = {
    "solver": "dynamic_ss",
    "ode_method": "tsit5",
    "polish": None,
    "abstol": 1e-2,
    "reltol": 1e-2,
    "z0": "f0",
    # The blog's SteadyStateAdjoint solves the linear system exactly; GMRES in 20
    # dimensions gets there. The tolerance must be relative: the gradient of a
    # batch-mean loss is ~1/batch per sample, below any fixed abstol like 1e-2.
    "backward": Implicit("gmres", abstol=1e-12, reltol=1e-4),
    "max_nfe": None,
    "eval_max_nfe": None,
}  # the blog's solver has no budget


def _flux_dense(n_in: int, n_out: int) -> nn.Linear:
    """``Flux.Dense`` as the blog used it: Glorot-uniform weights, zero bias."""
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(sizes: list[int], final_tanh: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(_flux_dense(a, b))
        if final_tanh or i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class SeedMNISTBlock(nn.Module):
    """The blog's DEQ block: ``f(z, x) = block(z + x)``, ``block = Dense(20→10→10→20)`` with tanh after each.

    Parameters
    ----------
    width : int
        Size of ``z`` and ``x``.
    hidden : int
        Size of the two inner layers.
    """

    def __init__(self, width: int = 20, hidden: int = 10) -> None:
        super().__init__()
        self.block = _mlp([width, hidden, hidden, width])

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``block(z + x)``; ``z`` and ``x`` have shape ``(batch, width)``."""
        return self.block(z + x)


class WideBlock(nn.Module):
    """``f(z, u) = relu(W₁z + b₁) + u`` where the model passes the injection ``u = relu(W₂x + b₂)``.

    The injection does not depend on ``z``, so the model computes it once per input instead of once per solver
    evaluation; the DEQ still returns gradients to it (and so to ``W₂``).

    Parameters
    ----------
    width : int
        Size of ``z``, ``x`` and ``u``.
    init_scale : float
        Spectral norm ``‖W₁‖₂`` at initialisation.
    """

    def __init__(self, width: int = 128, init_scale: float = 0.5) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        # Start as a contraction (‖W₁‖₂ = init_scale < 1): plain iteration and the ODE both converge at first.
        with torch.no_grad():
            self.linear.weight.mul_(init_scale / torch.linalg.matrix_norm(self.linear.weight, 2))
        self.inject = nn.Linear(width, width)

    def injection(self, x: torch.Tensor) -> torch.Tensor:
        """Return the injection ``u = relu(W₂x + b₂)``, the DEQ's input; ``x`` has shape ``(batch, width)``."""
        return torch.relu(self.inject(x))

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Return ``relu(W₁z + b₁) + u``; ``u`` is :meth:`injection`'s output, not the raw ``x``."""
        return torch.relu(self.linear(z)) + u


class ConvBlock(nn.Module):
    """A residual conv block with group normalisation (the implicit-layers tutorial's ``ResNetLayer``).

    ``f(z, x) = GN₃(relu(z + GN₂(x + conv₂(GN₁(relu(conv₁(z)))))))``. The normalisations keep ``f`` bounded
    whatever the weights, and the small initial weights make it start close to a contraction.

    Parameters
    ----------
    channels : int
        Channels of ``z`` and ``x``.
    hidden : int
        Channels between the two convolutions.
    groups : int
        Groups of each ``GroupNorm``; must divide ``channels`` and ``hidden`` (``nn.GroupNorm`` raises
        ``ValueError`` otherwise).
    kernel : int
        Kernel size of both convolutions; odd (``padding = kernel // 2`` keeps the spatial size only then).
    init_std : float
        Standard deviation of the convolutions' initial weights (they have no bias).
    weight_norm : {None, "weight", "spectral"}
        Reparametrization of both convolutions' weights (see :func:`normalize_weight`).
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        groups: int = 8,
        kernel: int = 3,
        init_std: float = 0.01,
        weight_norm: str | None = None,
    ):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd size >= 1 (the block keeps the image size), got {kernel}")
        self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2, bias=False)
        self.conv2 = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2, bias=False)
        self.norm1 = nn.GroupNorm(groups, hidden)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.norm3 = nn.GroupNorm(groups, channels)
        for conv in (self.conv1, self.conv2):  # one after the other: spectral norm draws its start vectors here
            nn.init.normal_(conv.weight, 0.0, init_std)
            normalize_weight(conv, weight_norm)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``f(z, x)``; ``z`` and ``x`` have shape ``(batch, channels, height, width)``."""
        y = self.norm1(torch.relu(self.conv1(z)))
        return self.norm3(torch.relu(z + self.norm2(x + self.conv2(y))))


class MLPBlock(MLPFamily):
    """``f(z, x) = norm(tanh(W z + x))``: the MLP-DEQ block practitioners train, with or without LayerNorm.

    Parameters
    ----------
    width : int
        Size of ``z`` and ``x``.
    norm : {"layer", None}
        ``"layer"``: ``nn.LayerNorm(width)`` after the tanh (bounded output whatever ``W``); None: no normalization.
    weight_norm : {None, "weight", "spectral"}
        Reparametrization of ``W`` (see :func:`normalize_weight`).
    """

    def __init__(self, width: int = 128, norm: str | None = "layer", weight_norm: str | None = None):
        if norm not in ("layer", None):
            raise ValueError(f"norm must be 'layer' or None, got {norm!r}")
        super().__init__(check_int("width", width, 1), norm=norm == "layer")  # the block family of deqkit.problems
        normalize_weight(self, weight_norm)


def seed_mnist_model(*, linear_logits: bool = False, seed: int | None = None, **deq_options: Any) -> MNISTDEQ:
    """The seed blog's MNIST DEQ (``"seed"``), or with a linear last layer (``"seed-linear"``).

    Parameters
    ----------
    linear_logits : bool
        Drop the tanh after the last layer, so the logits are not confined to ``[−1, 1]``.
    seed : int, optional
        Seed ``torch``'s global generator before initialising (reproducible weights).
    **deq_options
        Override the blog's solver settings :data:`SEED_SOLVER` (e.g. ``solver="anderson"``,
        ``polish="anderson"``, ``abstol=1e-4``); any :class:`~deqkit.DEQ` keyword. With a ``solver`` other than
        ``"dynamic_ss"``, the blog's ``ode_method`` and ``polish`` are dropped unless given here.

    Returns
    -------
    MNISTDEQ
        Named ``"seed"``, or ``"seed-linear"`` with ``linear_logits``.
    """
    if seed is not None:
        torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Flatten(), *_mlp([784, 200, 20]))
    deq = _deq(SeedMNISTBlock(), SEED_SOLVER, deq_options)
    head = _mlp([20, 15, 10], final_tanh=not linear_logits)
    return MNISTDEQ(encoder, deq, head, name="seed-linear" if linear_logits else "seed")


def wide_mlp_deq(*, width: int = 128, seed: int | None = None, **deq_options: Any) -> MNISTDEQ:
    """The wide MLP-DEQ (``"wide"``): ``Dense(784→w, relu)``, ``f = relu(W₁z + b₁) + relu(W₂x + b₂)``, ``Dense(w→10)``.

    Solved by default with ``dynamic_ss`` (Tsit5, polished by Anderson) from ``z0 = 0``, tolerances 1e-3,
    at most 60 steps; ``deq_options`` override any of these.

    Parameters
    ----------
    width : int
        ``w``: width of the encoder output, of ``z`` and of the injection.
    seed : int, optional
        Seed ``torch``'s global generator before initialising (reproducible weights).
    **deq_options
        Any :class:`~deqkit.DEQ` keyword. The backward pass defaults to
        ``Implicit("gmres", abstol=1e-12, reltol=1e-3, max_steps=60)``.

    Returns
    -------
    MNISTDEQ
        Named ``"wide"``; the :class:`WideBlock`'s ``injection`` is applied to the encoder output.
    """
    width = check_int("width", width, 1)  # else a traceback from deep inside nn.Linear
    if seed is not None:
        torch.manual_seed(seed)
    block = WideBlock(width)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU())
    defaults = {
        "solver": "dynamic_ss",
        "abstol": 1e-3,
        "reltol": 1e-3,
        "max_steps": 60,
        "max_nfe": None,
        "eval_max_nfe": None,
        "backward": Implicit("gmres", abstol=1e-12, reltol=1e-3, max_steps=60),
    }
    deq = _deq(block, defaults, deq_options)
    return MNISTDEQ(encoder, deq, nn.Linear(width, 10), name="wide", injection=block.injection)


def conv_deq(
    *,
    channels: int = 32,
    hidden: int = 64,
    stem: int = 16,
    weight_norm: str | None = None,
    seed: int | None = None,
    **deq_options: Any,
) -> MNISTDEQ:
    """A convolutional DEQ (``"conv"``) sized for a small CPU.

    ``encoder``: conv 3×3 (1→``stem``) + GroupNorm + ReLU + max-pool (14×14), conv 3×3 (``stem``→``channels``)
    + GroupNorm + ReLU + max-pool (7×7), conv 3×3 + GroupNorm: the injection ``x``. ``f``: :class:`ConvBlock`
    (``channels`` → ``hidden`` → ``channels``) at 7×7, where each evaluation is cheap. ``head``: flatten and
    one linear layer. Solved by default with Anderson from ``z0 = 0`` to tolerances 1e-2 in at most 20
    iterations, forward and backward (``Implicit("gmres", abstol=1e-12, reltol=1e-2, max_steps=20)``): the usual
    DEQ training settings.

    Parameters
    ----------
    channels : int
        Channels of ``x`` and ``z``.
    hidden : int
        Inner channels of :class:`ConvBlock`.
    stem : int
        Channels of the encoder's first convolution.
    weight_norm : {None, "weight", "spectral"}
        Reparametrization of the block's convolutions (see :func:`normalize_weight`).
    seed : int, optional
        Seed ``torch``'s global generator before initialising (reproducible weights).
    **deq_options
        Any :class:`~deqkit.DEQ` keyword (e.g. ``solver="dynamic_ss"``, ``max_steps=40``).

    Returns
    -------
    MNISTDEQ
        Named ``"conv"``.
    """
    channels, hidden, stem = (
        check_int(k, v, 1) for k, v in (("channels", channels), ("hidden", hidden), ("stem", stem))
    )
    if seed is not None:
        torch.manual_seed(seed)

    def norm(c: int) -> nn.GroupNorm:
        return nn.GroupNorm(math.gcd(8, c), c)

    encoder = nn.Sequential(
        nn.Conv2d(1, stem, 3, padding=1, bias=False),
        norm(stem),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(stem, channels, 3, padding=1, bias=False),
        norm(channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        norm(channels),
    )
    block = ConvBlock(channels, hidden, groups=math.gcd(8, math.gcd(channels, hidden)), weight_norm=weight_norm)
    defaults = {
        "solver": "anderson",
        "abstol": 1e-2,
        "reltol": 1e-2,
        "max_steps": 20,
        "max_nfe": None,
        "eval_max_nfe": None,
        "backward": Implicit("gmres", abstol=1e-12, reltol=1e-2, max_steps=20),
    }
    deq = _deq(block, defaults, deq_options)
    head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 49, 10))
    return MNISTDEQ(encoder, deq, head, name="conv")


def mlp_deq(
    *,
    width: int = 128,
    norm: str | None = "layer",
    weight_norm: str | None = None,
    seed: int | None = None,
    **deq_options: Any,
) -> MNISTDEQ:
    """The MLP-DEQ practitioners train (``"mlp-ln"``, or ``"mlp"`` without LayerNorm).

    ``Linear(784→w)`` gives the injection ``x``; ``f = LayerNorm(tanh(W z + b + x))`` (:class:`MLPBlock`);
    ``Linear(w→10)`` reads the logits off ``z*``. Solved by default with the DEQ's defaults (``dynamic_ss``, its
    evaluation budgets) to tolerances 1e-4 relative, with the implicit gradient (GMRES) to 1e-4 relative.

    Parameters
    ----------
    width : int
        ``w``.
    norm : {"layer", None}
        See :class:`MLPBlock`.
    weight_norm : {None, "weight", "spectral"}
        See :func:`normalize_weight`.
    seed : int, optional
        Seed ``torch``'s global generator before initialising (reproducible weights).
    **deq_options
        Any :class:`~deqkit.DEQ` keyword.

    Returns
    -------
    MNISTDEQ
        Named ``"mlp-ln"`` with LayerNorm, else ``"mlp"``.
    """
    if seed is not None:
        torch.manual_seed(seed)
    block = MLPBlock(width, norm, weight_norm)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, width))
    defaults = {"abstol": 0.0, "reltol": 1e-4, "backward": Implicit("gmres", abstol=0.0, reltol=1e-4)}
    deq = _deq(block, defaults, deq_options)
    return MNISTDEQ(encoder, deq, nn.Linear(width, 10), name="mlp-ln" if norm == "layer" else "mlp")


#: Model name -> constructor (keyword arguments: ``seed`` and :class:`~deqkit.DEQ` overrides).
def _no_override(options: dict[str, Any], key: str, name: str, instead: str) -> dict[str, Any]:
    if key in options:
        raise TypeError(f"the {name!r} model fixes {key}; do not pass it ({instead})")
    return options


MNIST_MODELS: dict[str, Callable[..., MNISTDEQ]] = {
    "seed": seed_mnist_model,
    "seed-linear": lambda **kw: seed_mnist_model(
        **_no_override(kw, "linear_logits", "seed-linear", "use 'seed' with linear_logits=... instead"),
        linear_logits=True,
    ),
    "wide": wide_mlp_deq,
    "conv": conv_deq,
    "mlp": lambda **kw: mlp_deq(**_no_override(kw, "norm", "mlp", "'mlp-ln' is the LayerNorm one"), norm=None),
    "mlp-ln": lambda **kw: mlp_deq(**_no_override(kw, "norm", "mlp-ln", "'mlp' has no normalization"), norm="layer"),
    "mdeq": mdeq,
}


def mnist_model(name: str, **options: Any) -> MNISTDEQ:
    """Build the MNIST model ``name`` (one of :data:`MNIST_MODELS`) with keyword ``options``.

    Parameters
    ----------
    name : {"seed", "seed-linear", "wide", "conv", "mlp", "mlp-ln", "mdeq"}
    **options
        Keyword arguments of the constructor: ``seed``, its size arguments (see :func:`seed_mnist_model`,
        :func:`wide_mlp_deq`, :func:`conv_deq`, :func:`mlp_deq`, :func:`deqkit.models.mdeq`) and any
        :class:`~deqkit.DEQ` keyword.

    Returns
    -------
    MNISTDEQ

    Raises
    ------
    ValueError
        If ``name`` is unknown, or a DEQ option has an invalid value (e.g. an unknown ``solver``).
    TypeError
        If an option is not accepted by the constructor, the DEQ or its solver.
    """
    if name not in MNIST_MODELS:
        raise ValueError(f"unknown MNIST model {name!r}; choose one of {sorted(MNIST_MODELS)}")
    _refuse_other_models_options(name, options)
    return MNIST_MODELS[name](**options)


def _refuse_other_models_options(name: str, options: dict[str, Any]) -> None:
    """An option another model's constructor takes (``weight_norm`` for ``seed``) named as such: it would
    otherwise reach the DEQ and be reported as an unknown option of its solver."""
    builders = {
        "seed": seed_mnist_model,
        "seed-linear": seed_mnist_model,
        "wide": wide_mlp_deq,
        "conv": conv_deq,
        "mlp": mlp_deq,
        "mlp-ln": mlp_deq,
        "mdeq": mdeq,
    }
    takes = {m: set(inspect.signature(make).parameters) - {"deq_options"} for m, make in builders.items()}
    for key in options:
        takers = [m for m in MNIST_MODELS if key in takes[m]]
        if key not in takes[name] and takers:
            raise TypeError(f"the {name!r} model takes no {key!r}; the models that do: {takers}")
