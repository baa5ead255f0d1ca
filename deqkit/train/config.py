"""The settings of a training run: :class:`TrainConfig`, everything that determines its numbers, and
:class:`RunOptions`, how it is run (run folder, start, device, checkpoints, progress, TensorBoard)."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEVICES", "SCHEDULES", "STARTS", "RunOptions", "TrainConfig"]

SCHEDULES = ("constant", "cosine")
#: How a run starts (:attr:`RunOptions.start`).
STARTS = ("new", "resume", "overwrite")
#: Where a run computes (:attr:`RunOptions.device`).
DEVICES = ("auto", "cpu", "cuda")


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


@dataclass(frozen=True)
class RunOptions:
    """How a training run is carried out: where it writes, how it starts, where it computes, what it shows.

    :class:`TrainConfig` holds what determines the run's numbers (and a resumed run must repeat it); these
    options are the rest. Every value is checked here, when the options are made; what needs the file system or
    an import (the run folder, the ``tensorboard`` package, a CUDA device) is checked when
    :func:`~deqkit.train.train` starts. Frozen: make a new one to change a field
    (``dataclasses.replace(options, start="resume")``).

    Parameters
    ----------
    out : str or os.PathLike, optional
        Run folder: ``checkpoint.pt`` (after every epoch, and every ``checkpoint_every`` steps), ``metrics.csv``
        and ``metrics.json``. Without it nothing is written. Kept as a :class:`pathlib.Path` (``~`` expanded).
    start : {"new", "resume", "overwrite"}
        ``"new"`` (default): a fresh run; ``out`` must not hold another run's files (a checkpoint, metrics
        files, or with ``tensorboard`` TensorBoard event files). ``"resume"``: continue from
        ``out/checkpoint.pt`` exactly where it stopped (weights, optimiser, epoch and step, partial epoch
        tallies, RNG state); the result equals that of an uninterrupted run. ``"overwrite"``: a fresh run that
        replaces the files of a run already in ``out``. ``"resume"`` and ``"overwrite"`` need ``out``.
    device : {"auto", "cpu", "cuda"}
        ``"auto"``: CUDA when available, else the CPU.
    checkpoint_every : int
        Also checkpoint every this many steps within an epoch (0, the default: only after each epoch; more
        than 0 needs ``out``).
    progress : bool
        Show the progress bars and a one-line summary per epoch.
    tensorboard : bool
        Also log every step and every epoch to TensorBoard, in ``out/tensorboard`` (needs ``out`` and the
        ``tensorboard`` package: ``pip install "deqkit[tensorboard]"``); see
        :class:`~deqkit.train.callbacks.TensorBoardLog`.

    Raises
    ------
    ValueError
        For a value outside its choices or range, or a choice that needs ``out`` without it; the message names
        the setting and the fix.
    TypeError
        For a value of the wrong type (``progress="yes"``, ``out=3``).

    Examples
    --------
    Continue the run in ``runs/wide``, checkpointing every 100 steps, without progress bars::

        train(model, train_set, test_set, config, RunOptions("runs/wide", start="resume", checkpoint_every=100,
              progress=False))
    """

    out: str | os.PathLike[str] | None = None
    start: str = "new"
    device: str = "auto"
    checkpoint_every: int = 0
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        self._check_out()
        if not isinstance(self.start, str) or self.start not in STARTS:
            raise ValueError(
                f"RunOptions.start must be one of {', '.join(map(repr, STARTS))} (a fresh run; continue "
                f"out/checkpoint.pt; a fresh run replacing out's files), got {self.start!r}"
            )
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise ValueError(
                f"RunOptions.device must be one of {', '.join(map(repr, DEVICES))} (auto: CUDA when available), "
                f"got {self.device!r}"
            )
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 0:
            raise ValueError(
                "RunOptions.checkpoint_every must be an integer >= 0 (steps between checkpoints within an epoch; "
                f"0: only after each epoch), got {every!r}"
            )
        object.__setattr__(self, "checkpoint_every", int(every))  # a NumPy integer is kept as an int
        for name in ("progress", "tensorboard"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"RunOptions.{name} must be True or False, got {value!r}")
        self._check_needs_out()

    def _check_out(self) -> None:
        """``out`` is a path (kept as a ``pathlib.Path``) or None."""
        out = self.out
        if out is None:
            return
        if not isinstance(out, str | os.PathLike):
            raise TypeError(
                f"RunOptions.out must be a run folder's path (a str or pathlib.Path) or None (nothing written), "
                f"got {out!r}"
            )
        if out == "":
            raise ValueError("RunOptions.out is '': give the run folder's path, or None to write nothing")
        object.__setattr__(self, "out", pathlib.Path(out).expanduser())  # frozen: set once, here; "~": the home

    def _check_needs_out(self) -> None:
        """The choices that read or write the run folder need one."""
        if self.out is not None:
            return
        needs = [
            (self.start == "resume", "start='resume'", "the run folder that holds checkpoint.pt", ""),
            (self.start == "overwrite", "start='overwrite'", "the run folder whose files it replaces", "start='new'"),
            (
                self.checkpoint_every > 0,
                f"checkpoint_every={self.checkpoint_every}",
                "the run folder the checkpoints go to",
                "checkpoint_every=0",
            ),
            (
                self.tensorboard,
                "tensorboard=True",
                "the run folder (the logs go to out/tensorboard)",
                "tensorboard=False",
            ),
        ]
        for given, setting, folder, default in needs:
            if given:
                fix = "give out=FOLDER" + (f", or set {default} (the default)" if default else "")
                raise ValueError(f"RunOptions({setting}) needs out=, {folder}: {fix}")
