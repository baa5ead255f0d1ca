"""The training loop: progress bars, per-epoch metrics, atomic checkpoints, exact resume, DDP under torchrun."""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import math
import os
import pathlib
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConvergenceWarning
from ..regularization import jacobian_penalty
from .callbacks import TensorBoardLog, check_tensorboard
from .checkpoint import check_writable, load_checkpoint, save_checkpoint
from .config import SCHEDULES, RunOptions, TrainConfig
from .distributed import DistContext, setup
from .metrics import METRIC_FIELDS, MetricRow, SolverCalls, Tally, epoch_row, report_epoch, write_metrics
from .resume import check_resumable, load_states, load_weights

__all__ = [
    "METRIC_FIELDS",
    "SCHEDULES",
    "RunOptions",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_model",
    "train",
    "train_mnist",
]

CHECKPOINT_NAME = "checkpoint.pt"

#: train()'s default options (RunOptions is frozen: one instance serves every call).
_DEFAULT_OPTIONS = RunOptions()
_P = ParamSpec("_P")
_R = TypeVar("_R")
#: Keywords that belong in RunOptions: its fields, and the flags that became its ``start`` (train() and
#: train_mnist() took them all as keywords before RunOptions existed).
_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions))
_RUN_KEYWORDS = (*_RUN_FIELDS, "resume", "overwrite")


def _shown(value: Any) -> str:
    """``value`` as it would be written in a call (a path as its string), or ``...`` when it is not short."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return repr(value) if isinstance(value, str | int | float | type(None)) and len(repr(value)) <= 60 else "..."


def _old_keywords_message(name: str, given: dict[str, Any]) -> str:
    """The TypeError's message for ``name()`` called with run options as keywords: the RunOptions to write."""
    fields = {key: _shown(value) for key, value in given.items() if key in _RUN_FIELDS}
    flags = [key for key in ("resume", "overwrite") if key in given]
    if flags:
        fields["start"] = repr("resume" if given.get("resume") else "overwrite" if given.get("overwrite") else "new")
    written = ", ".join(f"{key}={fields[key]}" for key in _RUN_FIELDS if key in fields)
    keywords = ", ".join(f"{key}=" for key in given)
    gone = " (resume=True is start='resume' there, overwrite=True is start='overwrite')" if flags else ""
    return (
        f"{name}() takes its run options as options=RunOptions({written}, ...), not as keywords ({keywords}); "
        f"see deqkit.train.RunOptions{gone}"
    )


def _refuse_old_keywords(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Answer a call with a run option as a keyword (``resume=True``) with the RunOptions to write instead of
    Python's bare "unexpected keyword argument"."""

    positional = sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in inspect.signature(func).parameters.values())

    @functools.wraps(func)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        old = {key: value for key, value in kwargs.items() if key in _RUN_KEYWORDS}
        if old:
            raise TypeError(_old_keywords_message(func.__name__, old))
        if any(isinstance(arg, RunOptions) for arg in args[positional:]):  # train_mnist's options: keyword-only
            raise TypeError(
                f"{func.__name__}() takes its RunOptions as a keyword: {func.__name__}(config, options=RunOptions(...))"
            )
        return func(*args, **kwargs)

    return checked


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
    history: list[MetricRow]
    config: TrainConfig
    out: pathlib.Path | None = None

    @property
    def final(self) -> MetricRow:
        """The last epoch's metrics."""
        if not self.history:
            raise ValueError("no epoch has finished yet")
        return self.history[-1]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    ctx: DistContext | None = None,
) -> dict[str, float]:
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
            with warnings.catch_warnings(), SolverCalls(model) as calls:
                warnings.simplefilter("ignore", ConvergenceWarning)  # counted below
                logits = model(x)
            loss += float(_cross_entropy(logits, y))
            correct += int((logits.argmax(1) == y).sum())
            fnfe, _, fbad, _ = calls.counts()  # every call of every DEQ, not only the last
            nfe, batches, bad, nfe_max = nfe + fnfe, batches + 1, bad + fbad, max(nfe_max, fnfe)
    finally:
        model.train(was_training)
    loss, correct, nfe, batches, bad = ctx.sum([loss, correct, nfe, batches, bad])
    (nfe_max,) = ctx.max([nfe_max])
    n = len(labels)
    return {
        "loss": loss / n,
        "acc": 100.0 * correct / n,
        "nfe_mean": nfe / max(batches, 1),
        "nfe_max": nfe_max,
        "unconverged": bad,
        "samples": n,
    }


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy; labels that are not class indices of the logits are named, not a raw error."""
    try:
        return F.cross_entropy(logits, labels, reduction="sum")
    except (IndexError, RuntimeError) as err:
        classes = logits.shape[-1]
        if (
            labels.is_floating_point()
            or labels.numel() == 0
            or not (0 <= int(labels.min()) and int(labels.max()) < classes)
        ):
            raise ValueError(
                f"the labels must be integer class indices in [0, {classes}) (the model outputs {classes} logits); "
                f"this batch has dtype {labels.dtype}, values {int(labels.min())} to {int(labels.max())}: fix the "
                "dataset's labels, or give the model as many outputs as there are classes"
            ) from err
        raise


@_refuse_old_keywords
def train(
    model: nn.Module,
    train_set: TensorDataset,
    test_set: TensorDataset,
    config: TrainConfig,
    options: RunOptions = _DEFAULT_OPTIONS,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with Adam and cross-entropy (plus ``config.jac_reg`` times the Jacobian penalty of its DEQs,
    :func:`deqkit.jacobian_penalty`, when that is not 0); evaluate, record and checkpoint after every epoch.

    Every step shows a ``tqdm.auto`` bar with the running loss and accuracy, the last forward and backward
    NFE and the samples whose solve did not converge so far. After each epoch: the metrics of
    :data:`METRIC_FIELDS` (train loss and accuracy, test loss and accuracy, mean and max forward NFE per step,
    backward NFE, seconds, the mean Jacobian penalty ``jac_penalty`` when it is computed, ...). Solves that miss
    their tolerance do not warn batch by batch: they are counted (``fwd_unconverged``, ``bwd_unconverged``,
    ``test_unconverged``), shown in the bar, and summarised by one :class:`~deqkit.ConvergenceWarning` per epoch
    in which any occurred.

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
        What determines the run's numbers.
    options : RunOptions
        How it is run: the run folder ``out`` (checked to be writable before training starts), ``start``
        (``"new"``, ``"resume"``: the checkpoint must pass its checksum and agree with itself, with ``config``
        and with the folder's metrics files; ``"overwrite"``), ``device``, ``checkpoint_every``, ``progress``,
        ``tensorboard``. Default: a fresh run that writes nothing, on CUDA when available, with progress bars.
    callback : callable, optional
        Called after every optimiser step with a dict: ``epoch``, ``step`` (within the epoch, from 0),
        ``global_step``, the learning rate ``lr`` of the step, and this process's batch ``loss``, ``acc`` (%),
        ``fwd_nfe``, ``bwd_nfe``, ``unconverged``.

    Returns
    -------
    TrainResult

    Raises
    ------
    TypeError
        If ``options`` is not a :class:`RunOptions`, ``callback`` is not callable, or a run option is given as a
        keyword (``resume=True``): the message gives the ``RunOptions(...)`` to write.
    FileExistsError
        If ``out`` holds a checkpoint, ``metrics.csv``/``metrics.json`` or (with ``tensorboard``) TensorBoard
        event files and ``start`` is ``"new"``; or if its ``checkpoint.pt`` is not a file.
    CheckpointError
        With ``start="resume"``: the checkpoint is missing, unreadable, damaged (checksum), inconsistent, or
        belongs to a run with other settings; the message names the cause.
    ImportError
        With ``tensorboard=True``, if the ``tensorboard`` package is missing.
    RuntimeError
        With ``device="cuda"``, if CUDA is not available.
    RunFolderError
        If ``out`` cannot be written (checked before training), or a write fails later (e.g. a full disk:
        the message names the disk and its free space; the previous files stay intact).
    """
    _check_options(options)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable callback(info) or None, got {_shown(callback)}")
    # what touches the file system or needs an import is checked now (the values were checked by RunOptions)
    if options.tensorboard:
        check_tensorboard()  # a missing package fails now, not after loading and preparing
    if options.out is not None:
        check_run_folder(pathlib.Path(options.out), start=options.start, tensorboard=options.tensorboard)

    ctx = setup(options.device)
    finished = False
    try:
        result = _train(model, train_set, test_set, config, ctx, options, callback)
        finished = True
        return result
    finally:
        if ctx.distributed:
            gc.collect()  # free the DDP wrapper (it holds reference cycles) before its process group goes
        # after an error the other processes may be stuck in a collective: do not wait for them
        ctx.close(wait=finished)


def _check_options(options: Any) -> None:
    """Refuse options that are not a :class:`RunOptions` (a dict, a path), naming the type to give."""
    if not isinstance(options, RunOptions):
        raise TypeError(
            "options must be a deqkit.train.RunOptions (e.g. RunOptions(out='runs/mine', start='resume')), "
            f"got {type(options).__name__} {_shown(options)}"
        )


def check_run_folder(out: pathlib.Path, *, start: str, tensorboard: bool) -> None:
    """Refuse to start a fresh run (``start="new"``) where it would replace or delete files.

    A fresh run writes ``checkpoint.pt``, ``metrics.csv`` and ``metrics.json``, and with ``tensorboard`` removes
    the event files in ``out/tensorboard``: any of them already there belongs to another run (its checkpoint may
    be gone while its metrics remain). Also refuses a ``checkpoint.pt`` that is not a regular file, whatever the
    start, since neither resuming nor overwriting can use it.

    Parameters
    ----------
    out : pathlib.Path
        The run folder.
    start : {"new", "resume", "overwrite"}
        As :attr:`RunOptions.start`.
    tensorboard : bool
        Whether the run logs to ``out/tensorboard``.

    Raises
    ------
    FileExistsError
        Naming the files and the three ways on: resume, overwrite, another folder.
    """
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists() and not ckpt.is_file():
        raise FileExistsError(
            f"{ckpt} exists but is not a file (a folder?): neither resuming nor overwriting can "
            "use it; move or delete it, or choose another out folder"
        )
    if start != "new":
        return
    if ckpt.exists():
        raise FileExistsError(
            f"{ckpt} exists: pass RunOptions(start='resume') (--resume) to continue that run, "
            "start='overwrite' (--overwrite) to start afresh, or choose another out folder"
        )
    found = [out / name for name in ("metrics.csv", "metrics.json") if (out / name).exists()]
    if tensorboard:
        found += sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    if found:
        names = ", ".join(str(p.relative_to(out)) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise FileExistsError(
            f"{out} holds another run's files ({names}) and no checkpoint to resume from: a fresh "
            "run would replace them. Pass RunOptions(start='overwrite') (--overwrite) to replace them, or choose "
            "another out folder"
        )


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same order."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


@dataclass
class _Run:
    """The parts of one training run that its steps share (see :func:`_train`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    config: TrainConfig
    ctx: DistContext
    images: torch.Tensor
    labels: torch.Tensor
    steps_per_epoch: int
    out: pathlib.Path | None  # the run folder
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    history: list[MetricRow] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    board: TensorBoardLog | None = None

    @property
    def ckpt_path(self) -> pathlib.Path | None:
        return None if self.out is None else self.out / CHECKPOINT_NAME


def _steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    steps = math.ceil(n / batch_size)
    if n % batch_size and n % batch_size < world_size:
        steps -= 1  # a last batch smaller than the number of processes is dropped
    if steps < 1:
        raise ValueError(f"the training set has {n} samples, fewer than the {world_size} processes")
    return steps


def _prepare(
    model: nn.Module, train_set: TensorDataset, config: TrainConfig, ctx: DistContext, out: pathlib.Path | None
) -> _Run:
    """Move the model and data to the device; build the optimiser and the learning-rate schedule."""
    dev = ctx.device
    if dev.type == "cuda":  # deterministic kernels where cuDNN offers a choice
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    model = model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    images, labels = train_set.tensors
    if dev.type == "cuda":  # one copy to the GPU instead of one per batch
        images, labels = images.to(dev), labels.to(dev)
    steps = _steps_per_epoch(len(labels), config.batch_size, ctx.world_size)
    # stepped once per batch; its state is checkpointed with the optimiser's, so a resumed run continues exactly
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps * config.epochs)
        if config.schedule == "cosine"
        else None
    )
    return _Run(model, optimizer, scheduler, config, ctx, images, labels, steps, out, net=model)


def _resume(run: _Run, progress: bool) -> tuple[int, int, dict[str, float] | None]:
    """Load weights, optimiser, schedule, RNG and history from the checkpoint; return where to continue.

    Returns ``(epoch, step, tally)``: the epoch (from 0) and step within it to start at, and the partial
    epoch's reduced tallies (on rank 0 only; None at an epoch boundary).
    """
    assert run.ckpt_path is not None
    state = load_checkpoint(run.ckpt_path, map_location="cpu")
    check_resumable(state, run.config, run.ckpt_path, run.steps_per_epoch)
    load_states(state, run.model, run.optimizer, run.scheduler, run.config, run.ctx.device, run.ckpt_path)
    run.history = list(state["metrics"])
    if progress and run.ctx.main:
        tqdm.write(
            f"resuming {run.ckpt_path} at epoch {state['epoch'] + 1}, step {state['step']} "
            f"({len(run.history)} epochs done)"
        )
    return state["epoch"], state["step"], state["tally"] if run.ctx.main else None  # rank 0 holds the tallies


def _checkpoint(run: _Run, epoch: int, step: int, tally: Tally | None) -> None:
    """Save the run at ``step`` of ``epoch`` (step 0: the epoch has not started) with the epoch's tallies."""
    reduced = tally.reduced(run.ctx) if tally is not None else None  # collective: every rank calls it
    if run.ckpt_path is None or not run.ctx.main:
        return
    if run.board is not None:  # what TensorBoard shows up to this checkpoint must survive a kill
        run.board.flush()
    dev = run.ctx.device
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
    save_checkpoint(
        {
            "config": run.config.to_dict(),
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "epoch": epoch,
            "step": step,
            "rng": rng,
            "metrics": run.history,
            "tally": reduced,
            "environment": run.environment,
        },
        run.ckpt_path,
    )


def _train_step(run: _Run, batch: torch.Tensor, tally: Tally) -> dict[str, float | None]:
    """One optimiser step on this process's share of ``batch``; add it to ``tally`` and return its numbers."""
    t0 = time.perf_counter()
    ctx, dev = run.ctx, run.ctx.device
    mine = batch.tensor_split(ctx.world_size)[ctx.rank]
    x, y = run.images[mine].to(dev), run.labels[mine].to(dev)
    with warnings.catch_warnings(), SolverCalls(run.model) as calls:
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted (every call of every DEQ) and reported per epoch
        logits = run.net(x)
        loss_sum = _cross_entropy(logits, y)
        # DDP averages gradients over processes: scale so that the result is the whole batch's mean
        objective = loss_sum * (ctx.world_size / len(batch))
        # the penalty is this process's mean over its share; DDP's average makes it the mean over processes
        penalty = jacobian_penalty(run.model) if run.config.jac_reg else None
        if penalty is not None:
            objective = objective + run.config.jac_reg * penalty
        run.optimizer.zero_grad(set_to_none=True)
        objective.backward()
    run.optimizer.step()
    if run.scheduler is not None:
        run.scheduler.step()
    fnfe, bnfe, fbad, bbad = calls.counts()
    batch_loss, batch_correct = float(loss_sum.detach()), int((logits.argmax(1) == y).sum())
    jac = None if penalty is None else float(penalty.detach())
    tally.add(
        loss=batch_loss,
        correct=batch_correct,
        count=len(mine),
        steps=1,
        fwd_nfe=fnfe,
        bwd_nfe=bnfe,
        fwd_unconverged=fbad,
        bwd_unconverged=bbad,
        seconds=time.perf_counter() - t0,
        jac_penalty=jac or 0.0,
    )
    tally.top(fwd_nfe_max=fnfe, bwd_nfe_max=bnfe)
    return {
        "loss": batch_loss / len(mine),
        "acc": 100.0 * batch_correct / len(mine),
        "fwd_nfe": fnfe,
        "bwd_nfe": bnfe,
        "unconverged": fbad + bbad,
        "jac_penalty": jac,
    }


def _run_epoch(
    run: _Run,
    epoch: int,
    first: int,
    tally: Tally,
    checkpoint_every: int,
    show: bool,
    callbacks: list[Callable[[dict[str, Any]], None]],
) -> float:
    """Steps ``first``, ... of ``epoch`` with a progress bar; return the learning rate of its last step."""
    config, spe = run.config, run.steps_per_epoch
    order = _epoch_order(len(run.labels), config.seed, epoch)
    run.model.train()
    bar = tqdm(
        total=spe, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, dynamic_ncols=True
    )
    lr = run.optimizer.param_groups[0]["lr"]
    for step in range(first, spe):
        lr = run.optimizer.param_groups[0]["lr"]
        info = _train_step(run, order[step * config.batch_size : (step + 1) * config.batch_size], tally)
        bar.update(1)
        if show:
            extra = {} if info["jac_penalty"] is None else {"jac": f"{info['jac_penalty']:.3g}"}
            bar.set_postfix(
                loss=f"{tally['loss'] / tally['count']:.4f}",
                acc=f"{100 * tally['correct'] / tally['count']:.2f}",
                nfe=info["fwd_nfe"],
                bnfe=info["bwd_nfe"],
                unconv=int(tally["fwd_unconverged"] + tally["bwd_unconverged"]),
                **extra,
                refresh=False,
            )
        for callback in callbacks:
            callback({"epoch": epoch, "step": step, "global_step": epoch * spe + step, "lr": lr} | info)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < spe:
            _checkpoint(run, epoch, step + 1, tally)
    bar.close()
    return lr


def _evaluate_epoch(run: _Run, epoch: int, tally: Tally, test_set: TensorDataset, lr: float) -> MetricRow:
    """Evaluate on the test set and return the epoch's row of :data:`METRIC_FIELDS`."""
    t0 = time.perf_counter()
    test = evaluate(run.model, test_set, batch_size=run.config.eval_batch_size, device=run.ctx.device, ctx=run.ctx)
    eval_seconds = time.perf_counter() - t0
    return epoch_row(epoch, tally.reduced(run.ctx), test, eval_seconds, lr, jac_reg=run.config.jac_reg)


def _start(run: _Run, options: RunOptions) -> tuple[int, int, dict[str, float] | None]:
    """Resume from the checkpoint or seed a fresh run; wrap the model for DDP; open the TensorBoard log.

    Returns where to start, as :func:`_resume` does.
    """
    ctx, spe = run.ctx, run.steps_per_epoch
    resume = options.start == "resume"
    if resume:
        start_epoch, start_step, saved_tally = _resume(run, options.progress)
    else:
        torch.manual_seed(run.config.seed)
        start_epoch, start_step, saved_tally = 0, 0, None
    if ctx.distributed:
        run.net = DistributedDataParallel(
            run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    run.environment = {
        "torch": str(torch.__version__),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if options.tensorboard and ctx.main:
        assert run.out is not None  # RunOptions(tensorboard=True) needs out
        run.board = TensorBoardLog(
            run.out / "tensorboard",
            continue_after=start_epoch * spe + start_step if resume else None,
            overwrite=options.start == "overwrite",
        )
    return start_epoch, start_step, saved_tally


def _record_epoch(run: _Run, progress: bool, epoch: int, row: MetricRow) -> None:
    """Metrics files, TensorBoard, then the checkpoint (a kill in between only repeats this epoch); report."""
    run.history.append(row)
    if run.ctx.main and run.out is not None:
        write_metrics(run.out, run.history, run.config, run.environment)
    if run.board is not None:
        run.board.epoch(row, (epoch + 1) * run.steps_per_epoch)
    _checkpoint(run, epoch + 1, 0, None)
    if run.ctx.main:
        # the warning points at train()'s caller: past _record_epoch, _train, train and its keyword check
        report_epoch(row, progress, stacklevel=5)


def _train(
    model: nn.Module,
    train_set: TensorDataset,
    test_set: TensorDataset,
    config: TrainConfig,
    ctx: DistContext,
    options: RunOptions,
    callback: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    """The run, step by step: prepare, start (resume or seed), then per epoch: train, evaluate, record."""
    out = None if options.out is None else pathlib.Path(options.out)
    if ctx.main and out is not None:
        check_writable(out)  # now, not after the first epoch
    run = _prepare(model, train_set, config, ctx, out)
    show = options.progress and ctx.main
    try:
        start_epoch, start_step, saved_tally = _start(run, options)
        callbacks = [c for c in (callback, run.board) if c is not None]
        for epoch in range(start_epoch, config.epochs):
            resumed = epoch == start_epoch
            tally = Tally(saved_tally if resumed else None)
            lr = _run_epoch(run, epoch, start_step if resumed else 0, tally, options.checkpoint_every, show, callbacks)
            _record_epoch(run, options.progress, epoch, _evaluate_epoch(run, epoch, tally, test_set, lr))
            ctx.barrier()
    finally:
        if run.board is not None:
            run.board.close()
    return TrainResult(run.model, run.history, config, out)


@_refuse_old_keywords
def train_mnist(
    config: TrainConfig | None = None,
    *,
    options: RunOptions | None = None,
    train_set: TensorDataset | None = None,
    test_set: TensorDataset | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> TrainResult:
    """Build the MNIST model ``config.model`` (seeded with ``config.seed``), load the data, and :func:`train` it.

    Parameters
    ----------
    config : TrainConfig, optional
        Or give its fields as keywords: ``train_mnist(model="seed", epochs=1, subset=2000)``.
    options : RunOptions, optional
        As for :func:`train` (default ``RunOptions()``: a fresh run that writes nothing).
    train_set, test_set : TensorDataset, optional
        Data already loaded (e.g. in a notebook); default :func:`deqkit.data.mnist_datasets` with
        ``config.data_dir`` and ``config.subset``.
    callback : callable, optional
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
            raise TypeError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; TrainConfig has: {', '.join(sorted(known))}"
            )
        config = TrainConfig(**settings)
    elif settings:
        raise TypeError(f"give either config or settings ({', '.join(settings)}), not both")
    if options is not None:
        _check_options(options)  # before the model is built and the data loaded
    if (train_set is None) != (test_set is None):
        raise ValueError("give both train_set and test_set, or neither (then MNIST is loaded)")
    model = mnist_model(config.model, seed=config.seed, **config.model_options)  # bad options fail before loading
    if train_set is None:
        train_set, test_set = mnist_datasets(config.data_dir, subset=config.subset, seed=0)
    assert test_set is not None
    return train(
        model, train_set, test_set, config, _DEFAULT_OPTIONS if options is None else options, callback=callback
    )


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The MNIST model saved in a checkpoint written by :func:`train_mnist` or the command line.

    The model is rebuilt from the checkpoint's ``config`` (name and ``model_options``) and its weights loaded
    with ``weights_only=True``; it is returned in ``eval()`` mode. The epoch metrics are in
    ``load_checkpoint(path)["metrics"]``.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable or damaged (see :func:`load_checkpoint`), does not name its model,
        or holds weights that are not finite or do not fit that model.
    """
    from ..models.mnist import mnist_model

    state = load_checkpoint(path, map_location=map_location)
    config = state.get("config", {})
    if "model" not in config:
        raise CheckpointError(f"{path} does not say which model it holds (no config['model'])")
    options = config.get("model_options", {})
    model = mnist_model(config["model"], **options)
    load_weights(model, state.get("model", {}), config["model"], options, pathlib.Path(path))
    return model.to(map_location).eval()
