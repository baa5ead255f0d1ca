"""The training loop: progress bars, per-epoch metrics, atomic checkpoints, exact resume, DDP under torchrun."""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
import math
import os
import pathlib
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..errors import ConvergenceWarning
from ..layer import DEQ
from .checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from .distributed import DistContext, setup

__all__ = ["METRIC_FIELDS", "TrainConfig", "TrainResult", "evaluate", "load_model", "train", "train_mnist"]

SCHEDULES = ("constant", "cosine")
CHECKPOINT_NAME = "checkpoint.pt"

#: Columns of ``metrics.csv``, one row per epoch.
METRIC_FIELDS = (
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc",
    "fwd_nfe_mean", "fwd_nfe_max", "bwd_nfe_mean", "bwd_nfe_max", "fwd_unconverged", "bwd_unconverged",
    "test_nfe_mean", "test_nfe_max", "test_unconverged", "seconds", "eval_seconds", "lr", "samples", "loadavg",
)


@dataclass
class TrainConfig:
    """Everything that determines a training run's numbers (a resumed run must use the same values).

    Parameters
    ----------
    model : str
        A name in :data:`deqkit.models.MNIST_MODELS` (``"seed"``, ``"seed-linear"``, ``"wide"``, ``"conv"``);
        used by :func:`train_mnist` and recorded with the metrics.
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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.subset is not None and (isinstance(self.subset, bool) or not isinstance(self.subset, int)
                                        or self.subset < 1):
            raise ValueError(f"subset must be a positive integer or None, got {self.subset!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {self.weight_decay!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.model_options, dict):
            raise TypeError(f"model_options must be a dict of keyword arguments, got {type(self.model_options)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : nn.Module
        The trained model (unwrapped from DDP), on the training device.
    history : list of dict
        One dict of metrics per epoch, keys :data:`METRIC_FIELDS`.
    config : TrainConfig
    out : pathlib.Path or None
        The run folder (``checkpoint.pt``, ``metrics.csv``, ``metrics.json``), when one was given.
    """

    model: nn.Module
    history: list[dict[str, float]]
    config: TrainConfig
    out: pathlib.Path | None = None

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics."""
        if not self.history:
            raise ValueError("no epoch has finished yet")
        return self.history[-1]


def _deqs(model: nn.Module) -> list[DEQ]:
    return [m for m in model.modules() if isinstance(m, DEQ)]


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


class _Tally:
    """Sums over one epoch's steps (this process's share); reduced over processes at the end."""

    SUMS = ("loss", "correct", "count", "steps", "fwd_nfe", "bwd_nfe", "fwd_unconverged", "bwd_unconverged")
    MAXES = ("fwd_nfe_max", "bwd_nfe_max", "seconds")

    def __init__(self, saved: dict[str, float] | None = None):
        self.values = dict.fromkeys(self.SUMS + self.MAXES, 0.0)
        if saved:
            self.values.update(saved)

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.values[key] += value

    def top(self, **values: float) -> None:
        for key, value in values.items():
            self.values[key] = max(self.values[key], value)

    def reduced(self, ctx: DistContext) -> dict[str, float]:
        sums = dict(zip(self.SUMS, ctx.sum([self.values[k] for k in self.SUMS])))
        maxes = dict(zip(self.MAXES, ctx.max([self.values[k] for k in self.MAXES])))
        return sums | maxes


def _solver_counts(model: nn.Module) -> tuple[int, int, int, int]:
    """(forward NFE, backward NFE, forward and backward non-converged samples) of the last call, over all DEQs."""
    fnfe = bnfe = fbad = bbad = 0
    for deq in _deqs(model):
        stats = deq.last_stats
        if stats is None:
            continue
        fnfe += stats.forward.nfe
        fbad += int((~stats.forward.converged).sum())
        if stats.backward is not None:
            bnfe += stats.backward.nfe
            bbad += int((~stats.backward.converged).sum())
    return fnfe, bnfe, fbad, bbad


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset, *, batch_size: int = 1000,
             device: torch.device | str | None = None, ctx: DistContext | None = None) -> dict[str, float]:
    """Mean cross-entropy, accuracy (%) and forward-solver cost of ``model`` on ``dataset``.

    Non-converged samples do not warn here: they are counted in ``unconverged`` (the caller reports them).

    Parameters
    ----------
    model : nn.Module
        Maps images to logits; the statistics of every :class:`~deqkit.DEQ` inside are collected.
    dataset : TensorDataset
        ``(images, labels)``.
    batch_size : int
    device : torch.device or str, optional
        Default: the device of the model's parameters.
    ctx : DistContext, optional
        Under ``torchrun``, each process evaluates its share and the results are summed.

    Returns
    -------
    dict
        ``loss``, ``acc``, ``nfe_mean`` and ``nfe_max`` (forward evaluations per batch), ``unconverged``,
        ``samples``.
    """
    ctx = ctx or DistContext()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    images, labels = dataset.tensors
    mine = torch.arange(len(labels)).tensor_split(ctx.world_size)[ctx.rank]
    loss = correct = nfe = batches = bad = 0.0
    nfe_max = 0.0
    try:
        for chunk in mine.split(batch_size):
            x, y = images[chunk].to(device), labels[chunk].to(device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # counted below
                logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            fnfe, _, fbad, _ = _solver_counts(model)
            nfe, batches, bad, nfe_max = nfe + fnfe, batches + 1, bad + fbad, max(nfe_max, fnfe)
    finally:
        model.train(was_training)
    loss, correct, nfe, batches, bad = ctx.sum([loss, correct, nfe, batches, bad])
    (nfe_max,) = ctx.max([nfe_max])
    n = len(labels)
    return {"loss": loss / n, "acc": 100.0 * correct / n, "nfe_mean": nfe / max(batches, 1), "nfe_max": nfe_max,
            "unconverged": bad, "samples": n}


def _write_text(path: pathlib.Path, text: str) -> None:
    atomic_write(path, "w", lambda f: f.write(text))


def _write_metrics(out: pathlib.Path, history: list[dict[str, float]], config: TrainConfig,
                   environment: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(history)
    _write_text(out / "metrics.csv", buf.getvalue())
    doc = {"config": config.to_dict(), "environment": environment, "epochs": history}
    _write_text(out / "metrics.json", json.dumps(doc, indent=2) + "\n")


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: pathlib.Path) -> None:
    """Refuse to resume a run with settings that would change its numbers (more epochs are allowed)."""
    old = saved.get("config", {})
    new = config.to_dict()
    ignore = {"epochs", "data_dir"} if config.schedule == "constant" else {"data_dir"}
    differ = [k for k in new if k not in ignore and old.get(k) != new[k]]
    if differ:
        pairs = ", ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new[k]!r}" for k in differ)
        raise CheckpointError(f"cannot resume from {path}: the run's settings differ ({pairs}). Resume with the "
                              "same settings, or start a new run in another folder.")


def train(model: nn.Module, train_set: TensorDataset, test_set: TensorDataset, config: TrainConfig, *,
          out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
          device: str = "auto", checkpoint_every: int = 0, progress: bool = True,
          callback: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``model`` with Adam and cross-entropy; evaluate, record and checkpoint after every epoch.

    Every step shows a ``tqdm.auto`` bar with the running loss and accuracy, the last forward and backward
    NFE and the samples whose solve did not converge so far. After each epoch: the metrics of
    :data:`METRIC_FIELDS` (train loss and accuracy, test loss and accuracy, mean and max forward NFE per step,
    backward NFE, seconds, ...). Solves that miss their tolerance do not warn batch by batch: they are counted
    (``fwd_unconverged``, ``bwd_unconverged``, ``test_unconverged``), shown in the bar, and summarised by one
    :class:`~deqkit.ConvergenceWarning` per epoch in which any occurred.

    Under ``torchrun`` (several processes) the model is wrapped in ``DistributedDataParallel`` (gloo on CPU,
    nccl on CUDA); each process takes its share of every batch and the loss is scaled so that the averaged
    gradient is that of the whole batch. Rank 0 writes checkpoints and metrics.

    Parameters
    ----------
    model : nn.Module
        Maps images to logits (e.g. a :class:`~deqkit.models.MNISTDEQ`); already initialised.
    train_set, test_set : TensorDataset
        ``(images, labels)``, e.g. from :func:`deqkit.data.mnist_datasets`.
    config : TrainConfig
    out : str or os.PathLike, optional
        Run folder: ``checkpoint.pt`` (after every epoch, and every ``checkpoint_every`` steps), ``metrics.csv``
        and ``metrics.json``. Without it nothing is written.
    resume : bool
        Continue from ``out/checkpoint.pt`` exactly where it stopped (weights, optimiser, epoch and step,
        partial epoch tallies, RNG state); the result equals that of an uninterrupted run.
    overwrite : bool
        Start afresh even if ``out`` already holds a checkpoint (otherwise that is an error).
    device : {"auto", "cpu", "cuda"}
    checkpoint_every : int
        Also checkpoint every this many steps within an epoch (0: only at the end of each epoch).
    progress : bool
        Show the progress bars and a one-line summary per epoch.
    callback : callable, optional
        Called after every optimiser step with a dict: ``epoch``, ``step`` (within the epoch, from 0),
        ``global_step``, and this process's batch ``loss``, ``acc`` (%), ``fwd_nfe``, ``bwd_nfe``,
        ``unconverged``.

    Returns
    -------
    TrainResult
    """
    if resume and out is None:
        raise ValueError("resume=True needs out=, the run folder that holds checkpoint.pt")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other: choose one")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an integer >= 0, got {checkpoint_every!r}")
    out_dir = pathlib.Path(out) if out is not None else None
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not (resume or overwrite):
        raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) to continue that run, "
                              "overwrite=True (--overwrite) to start afresh, or choose another out folder")

    ctx = setup(device)
    finished = False
    try:
        result = _train(model, train_set, test_set, config, ctx, out_dir, ckpt_path, resume, checkpoint_every,
                        progress, callback)
        finished = True
        return result
    finally:
        if ctx.distributed:
            gc.collect()  # free the DDP wrapper (it holds reference cycles) before its process group goes
        # after an error the other processes may be stuck in a collective: do not wait for them
        ctx.close(wait=finished)


def _train(model: nn.Module, train_set: TensorDataset, test_set: TensorDataset, config: TrainConfig,
           ctx: DistContext, out_dir: pathlib.Path | None, ckpt_path: pathlib.Path | None, resume: bool,
           checkpoint_every: int, progress: bool, callback: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    dev = ctx.device
    if dev.type == "cuda":  # deterministic kernels where cuDNN offers a choice
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    model = model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images, labels = train_set.tensors
    if dev.type == "cuda":  # one copy to the GPU instead of one per batch
        images, labels = images.to(dev), labels.to(dev)
    n = len(labels)
    steps_per_epoch = math.ceil(n / config.batch_size)
    if n % config.batch_size and n % config.batch_size < ctx.world_size:
        steps_per_epoch -= 1  # a last batch smaller than the number of processes is dropped
    if steps_per_epoch < 1:
        raise ValueError(f"the training set has {n} samples, fewer than the {ctx.world_size} processes")
    total_steps = steps_per_epoch * config.epochs
    # stepped once per batch; its state is checkpointed with the optimiser's, so a resumed run continues exactly
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                 if config.schedule == "cosine" else None)

    start_epoch, start_step, history, saved_tally = 0, 0, [], None
    if resume:
        assert ckpt_path is not None
        state = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(state, config, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state.get("scheduler") is None:
                raise CheckpointError(f"cannot resume from {ckpt_path}: it holds no learning-rate scheduler state "
                                      "for the cosine schedule; start a new run in another folder")
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if dev.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], dev)
        start_epoch, start_step, history = state["epoch"], state["step"], list(state["metrics"])
        saved_tally = state["tally"] if ctx.main else None  # rank 0 holds the reduced partial tallies
        if progress and ctx.main:
            tqdm.write(f"resuming {ckpt_path} at epoch {start_epoch + 1}, step {start_step} "
                       f"({len(history)} epochs done)")
    else:
        torch.manual_seed(config.seed)

    net: nn.Module = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    environment = {"torch": str(torch.__version__), "device": str(dev), "world_size": ctx.world_size,
                   "threads": torch.get_num_threads(), "python": platform.python_version(),
                   "cpu_count": os.cpu_count()}

    def checkpoint(epoch: int, step: int, tally: _Tally | None) -> None:
        reduced = tally.reduced(ctx) if tally is not None else None  # collective: every rank calls it
        if ckpt_path is None or not ctx.main:
            return
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
        save_checkpoint({"config": config.to_dict(), "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict() if scheduler is not None else None,
                         "epoch": epoch, "step": step, "rng": rng,
                         "metrics": history, "tally": reduced, "environment": environment}, ckpt_path)

    show = progress and ctx.main
    for epoch in range(start_epoch, config.epochs):
        order = _epoch_order(n, config.seed, epoch)
        first = start_step if epoch == start_epoch else 0
        tally = _Tally(saved_tally if epoch == start_epoch else None)
        model.train()
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not show, dynamic_ncols=True)
        for step in range(first, steps_per_epoch):
            t0 = time.perf_counter()
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            mine = batch.tensor_split(ctx.world_size)[ctx.rank]
            x, y = images[mine].to(dev), labels[mine].to(dev)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # counted and reported per epoch
                logits = net(x)
                loss_sum = F.cross_entropy(logits, y, reduction="sum")
                # DDP averages gradients over processes: scale so that the result is the whole batch's mean
                optimizer.zero_grad(set_to_none=True)
                (loss_sum * (ctx.world_size / len(batch))).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            fnfe, bnfe, fbad, bbad = _solver_counts(model)
            batch_loss, batch_correct = float(loss_sum.detach()), int((logits.argmax(1) == y).sum())
            tally.add(loss=batch_loss, correct=batch_correct, count=len(mine), steps=1, fwd_nfe=fnfe, bwd_nfe=bnfe,
                      fwd_unconverged=fbad, bwd_unconverged=bbad, seconds=time.perf_counter() - t0)
            tally.top(fwd_nfe_max=fnfe, bwd_nfe_max=bnfe)
            bar.update(1)
            if show:
                bar.set_postfix(loss=f"{tally['loss'] / tally['count']:.4f}",
                                acc=f"{100 * tally['correct'] / tally['count']:.2f}", nfe=fnfe, bnfe=bnfe,
                                unconv=int(tally["fwd_unconverged"] + tally["bwd_unconverged"]), refresh=False)
            if callback is not None:
                callback({"epoch": epoch, "step": step, "global_step": epoch * steps_per_epoch + step,
                          "loss": batch_loss / len(mine), "acc": 100.0 * batch_correct / len(mine),
                          "fwd_nfe": fnfe, "bwd_nfe": bnfe, "unconverged": fbad + bbad})
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps_per_epoch:
                checkpoint(epoch, step + 1, tally)
        bar.close()

        t0 = time.perf_counter()
        test = evaluate(model, test_set, batch_size=config.eval_batch_size, device=dev, ctx=ctx)
        eval_seconds = time.perf_counter() - t0
        tot = tally.reduced(ctx)
        row = {
            "epoch": epoch + 1, "train_loss": tot["loss"] / tot["count"],
            "train_acc": 100.0 * tot["correct"] / tot["count"], "test_loss": test["loss"], "test_acc": test["acc"],
            "fwd_nfe_mean": tot["fwd_nfe"] / tot["steps"], "fwd_nfe_max": tot["fwd_nfe_max"],
            "bwd_nfe_mean": tot["bwd_nfe"] / tot["steps"], "bwd_nfe_max": tot["bwd_nfe_max"],
            "fwd_unconverged": int(tot["fwd_unconverged"]), "bwd_unconverged": int(tot["bwd_unconverged"]),
            "test_nfe_mean": test["nfe_mean"], "test_nfe_max": test["nfe_max"],
            "test_unconverged": int(test["unconverged"]), "seconds": tot["seconds"], "eval_seconds": eval_seconds,
            "lr": lr, "samples": int(tot["count"]), "loadavg": os.getloadavg()[0],
        }
        history.append(row)
        if ctx.main and out_dir is not None:  # metrics first: a kill in between only repeats this epoch
            _write_metrics(out_dir, history, config, environment)
        checkpoint(epoch + 1, 0, None)
        if ctx.main:
            if show:
                tqdm.write(
                    f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | test loss "
                    f"{row['test_loss']:.4f} acc {row['test_acc']:.2f}% | NFE fwd {row['fwd_nfe_mean']:.1f} (max "
                    f"{row['fwd_nfe_max']:.0f}) bwd {row['bwd_nfe_mean']:.1f} | {row['seconds']:.1f} s")
            bad = row["fwd_unconverged"] + row["bwd_unconverged"] + row["test_unconverged"]
            if bad:
                warnings.warn(
                    f"epoch {epoch + 1}: {row['fwd_unconverged']} training samples (forward), "
                    f"{row['bwd_unconverged']} (backward) and {row['test_unconverged']} test samples did not reach "
                    "the solver tolerance; their best iterates were used. Raise max_steps or loosen the "
                    "tolerances (model_options), or lower the learning rate if the count grows.",
                    ConvergenceWarning, stacklevel=3)
        ctx.barrier()
    return TrainResult(model, history, config, out_dir)


def train_mnist(config: TrainConfig | None = None, *, train_set: TensorDataset | None = None,
                test_set: TensorDataset | None = None, out: str | os.PathLike | None = None, resume: bool = False,
                overwrite: bool = False, device: str = "auto", checkpoint_every: int = 0, progress: bool = True,
                callback: Callable[[dict[str, Any]], None] | None = None, **settings: Any) -> TrainResult:
    """Build the MNIST model ``config.model`` (seeded with ``config.seed``), load the data, and :func:`train` it.

    Parameters
    ----------
    config : TrainConfig, optional
        Or give its fields as keywords: ``train_mnist(model="seed", epochs=1, subset=2000)``.
    train_set, test_set : TensorDataset, optional
        Data already loaded (e.g. in a notebook); default :func:`deqkit.data.mnist_datasets` with
        ``config.data_dir`` and ``config.subset``.
    out, resume, overwrite, device, checkpoint_every, progress, callback
        As for :func:`train`.
    **settings
        Fields of :class:`TrainConfig` (only when ``config`` is not given); any other keyword is an error.

    Returns
    -------
    TrainResult
    """
    from ..data import mnist_datasets
    from ..models.mnist import mnist_model

    if config is None:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(map(repr, unknown))}; TrainConfig has: "
                            f"{', '.join(sorted(known))}")
        config = TrainConfig(**settings)
    elif settings:
        raise TypeError(f"give either config or settings ({', '.join(settings)}), not both")
    if (train_set is None) != (test_set is None):
        raise ValueError("give both train_set and test_set, or neither (then MNIST is loaded)")
    if train_set is None:
        train_set, test_set = mnist_datasets(config.data_dir, subset=config.subset, seed=0)
    assert test_set is not None
    model = mnist_model(config.model, seed=config.seed, **config.model_options)
    return train(model, train_set, test_set, config, out=out, resume=resume, overwrite=overwrite, device=device,
                 checkpoint_every=checkpoint_every, progress=progress, callback=callback)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The MNIST model saved in a checkpoint written by :func:`train_mnist` or the command line.

    The model is rebuilt from the checkpoint's ``config`` (name and ``model_options``) and its weights loaded
    with ``weights_only=True``; it is returned in ``eval()`` mode. The epoch metrics are in
    ``load_checkpoint(path)["metrics"]``.
    """
    from ..models.mnist import mnist_model

    state = load_checkpoint(path, map_location=map_location)
    config = state.get("config", {})
    if "model" not in config:
        raise CheckpointError(f"{path} does not say which model it holds (no config['model'])")
    model = mnist_model(config["model"], **config.get("model_options", {}))
    model.load_state_dict(state["model"])
    return model.to(map_location).eval()
