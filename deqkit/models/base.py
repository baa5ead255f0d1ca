"""What every MNIST model of :mod:`deqkit.models` shares: :class:`MNISTDEQ` (encoder, DEQ, head), the DEQ built
from a model's defaults and the caller's overrides, and weight normalization of a block's layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..layer import DEQ
from ..normalization import normalize

WEIGHT_NORMS = (None, "weight", "spectral")


def normalize_weight(module: nn.Module, kind: str | None) -> nn.Module:
    """Reparametrize the weights of ``module``'s linear and conv layers with torch's own weight or spectral
    normalization (or leave them): :func:`deqkit.normalize` for the models' ``weight_norm=`` option.

    Parameters
    ----------
    module : nn.Module
        A layer (``nn.Linear``, ``nn.Conv2d``, ...) or a block holding such layers.
    kind : {None, "weight", "spectral"}
        ``"weight"``: ``torch.nn.utils.parametrizations.weight_norm`` (direction and norm learned apart);
        ``"spectral"``: ``torch.nn.utils.parametrizations.spectral_norm`` (``‖W‖₂ ≈ 1`` by power iteration).

    Returns
    -------
    nn.Module
        ``module``, reparametrized in place.

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`WEIGHT_NORMS`.
    """
    if kind not in WEIGHT_NORMS:
        raise ValueError(f"weight_norm must be one of {WEIGHT_NORMS}, got {kind!r}")
    return module if kind is None else normalize(module, kind)


class MNISTDEQ(nn.Module):
    """``logits = head(deq(encoder(images)))`` for images of shape ``(batch, 1, 28, 28)``.

    Parameters
    ----------
    encoder : nn.Module
        Images to the DEQ's input ``x``.
    deq : DEQ
        The equilibrium layer; ``deq.last_stats`` holds the solver statistics of the last call.
    head : nn.Module
        The equilibrium ``z*`` to 10 logits.
    name : str
        The model's name in :data:`MNIST_MODELS` (kept in checkpoints and metrics).
    injection : callable, optional
        Applied to the encoder output before the DEQ (see :class:`WideBlock`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        deq: DEQ,
        head: nn.Module,
        *,
        name: str,
        injection: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__()
        self.encoder, self.deq, self.head, self.name = encoder, deq, head, name
        self._injection = injection

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Return the DEQ's input ``x`` for a batch of images (``f(z, x)`` is ``self.deq.f``).

        Parameters
        ----------
        images : torch.Tensor
            Shape ``(batch, 1, 28, 28)``, normalised as by :func:`deqkit.data.mnist_datasets`.

        Returns
        -------
        torch.Tensor
            ``encoder(images)``, passed through ``injection`` if the model has one.

        Raises
        ------
        ValueError
            If ``images`` does not have shape ``(batch, 1, 28, 28)``.
        """
        if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
            raise ValueError(
                f"expected MNIST images of shape (batch, 1, 28, 28), got {tuple(images.shape)}; "
                "use deqkit.data.mnist_datasets, or reshape with x.view(-1, 1, 28, 28)"
            )
        x = self.encoder(images)
        return x if self._injection is None else self._injection(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits ``head(deq(features(images)))``, shape ``(batch, 10)``.

        Raises ``ValueError`` for images not shaped ``(batch, 1, 28, 28)``, and whatever :meth:`DEQ.forward
        <deqkit.DEQ.forward>` raises.
        """
        return self.head(self.deq(self.features(images)))


def _deq(block: nn.Module, defaults: dict[str, Any], overrides: dict[str, Any]) -> DEQ:
    options = defaults | overrides
    if options.get("solver", "dynamic_ss") != "dynamic_ss":
        # dynamic_ss-only options do not apply to the other methods
        for key in ("ode_method", "polish"):
            if key not in overrides:
                options.pop(key, None)
    return DEQ(block, **options)
