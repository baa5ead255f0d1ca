"""The settings of a training run: everything that determines its numbers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SCHEDULES", "TrainConfig"]

SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything that determines a training run's numbers (a resumed run must use the same values).

    Parameters
    ----------
    model : str
        A name in :data:`deqkit.models.MNIST_MODELS` (``"seed"``, ``"seed-linear"``, ``"wide"``, ``"conv"``,
        ``"mdeq"``, ...); used by :func:`train_mnist` and recorded with the metrics.
    epochs : int
        Passes over the training set.
    batch_size : int
        Samples per optimiser step, over all processes together (each of ``world_size`` processes takes its
        share of every batch, so a ``torchrun`` run takes the same steps as a single process).
    lr : float
        Adam's learning rate (the seed's 3e-4 by default).
    weight_decay : float
        Adam's L2 penalty (the seed's λ = 0 by default).
    schedule : {"constant", "cosine"}
        ``"cosine"`` anneals the learning rate to 0 over all steps of all epochs.
    seed : int
        Seeds the weights (in :func:`train_mnist`), torch's generator, and the shuffling: epoch ``e`` visits the
        samples in an order drawn from a generator seeded with ``(seed, e)``, independent of anything else.
    subset : int, optional
        Train on this many samples (and test on ``min(max(subset // 6, 1000), 10000)``), drawn with seed 0;
        see :func:`deqkit.data.mnist_datasets`.
    data_dir : str, optional
        MNIST folder (default: ``$DEQKIT_MNIST_DIR`` or the cache; see :func:`deqkit.data.mnist_dir`).
    model_options : dict
        Keyword arguments of the model constructor: :class:`~deqkit.DEQ` settings such as
        ``{"solver": "anderson", "max_steps": 30}``.
    eval_batch_size : int
        Batch size of the test-set evaluation after each epoch.
    jac_reg : float
        Weight γ of the Jacobian penalty: each step minimises ``loss + γ · deqkit.jacobian_penalty(model)``
        (Bai, Koltun & Kolter, 2021), which keeps ∂f/∂z at the equilibrium small and the solves cheap. 0 (the
        default) adds nothing and computes nothing.
    """

    model: str = "seed"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.0
    schedule: str = "constant"
    seed: int = 0
    subset: int | None = None
    data_dir: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1000
    jac_reg: float = 0.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.subset is not None and (
            isinstance(self.subset, bool) or not isinstance(self.subset, int) or self.subset < 1
        ):
            raise ValueError(f"subset must be a positive integer or None, got {self.subset!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (
            isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0 and math.isfinite(self.weight_decay)
        ):
            raise ValueError(f"weight_decay must be a finite non-negative number, got {self.weight_decay!r}")
        if (
            isinstance(self.jac_reg, bool)
            or not isinstance(self.jac_reg, (int, float))
            or self.jac_reg < 0
            or not math.isfinite(self.jac_reg)
        ):
            raise ValueError(
                f"jac_reg must be a finite number >= 0 (the weight of the Jacobian penalty; 0: none), "
                f"got {self.jac_reg!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(
                f"seed must be an integer in [0, 2**63) (torch's generators take 64-bit seeds), got {self.seed!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.model_options, dict):
            raise TypeError(f"model_options must be a dict of keyword arguments, got {type(self.model_options)}")
        if "seed" in self.model_options:
            raise ValueError(
                "model_options must not set the seed: training sets the model's seed from "
                "TrainConfig.seed (--seed on the command line)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
