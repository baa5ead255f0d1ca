"""Command line: ``python -m deqkit.train mnist --model seed|seed-linear|wide|conv|mlp|mlp-ln|mdeq [options]``.

Examples
--------
The seed blog's run (batch 8, 10 epochs), then the fixed model, then resuming an interrupted run::

    python -m deqkit.train mnist --model seed --batch-size 8 --epochs 10
    python -m deqkit.train mnist --model seed-linear --epochs 10 --out runs/linear
    python -m deqkit.train mnist --model seed-linear --epochs 10 --out runs/linear --resume

The LayerNorm MLP-DEQ with spectral normalization of W and Jacobian regularization (γ = 1)::

    python -m deqkit.train mnist --model mlp-ln --deq weight_norm=spectral --jac-reg 1 --lr 1e-3

The same with TensorBoard logs (``pip install "deqkit[tensorboard]"``), then viewed::

    python -m deqkit.train mnist --model seed-linear --epochs 10 --out runs/linear --tensorboard
    tensorboard --logdir runs/linear/tensorboard

Two CPU processes with DistributedDataParallel (gloo)::

    torchrun --nproc_per_node 2 -m deqkit.train mnist --model seed --subset 2000 --epochs 1
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import re
import sys
from typing import Any

import torch
from torch import nn

from ..data import mnist_datasets
from ..errors import CheckpointError, MNISTError
from ..models.mnist import MNIST_MODELS, mnist_model
from .callbacks import check_tensorboard
from .checkpoint import check_writable, load_checkpoint
from .config import DEVICES, SCHEDULES, RunOptions, TrainConfig
from .distributed import resolve_device
from .loop import check_run_folder, train


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``30``, ``1e-3``, ``None``, ``'anderson'``) or a bare word."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. solver=anderson or max_steps=30), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (0: only after each epoch), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reads ``-1e-3`` as a value, not as an unknown option.

    argparse takes a leading ``-`` for an option unless the text matches its negative-number pattern, which
    leaves out exponents in some Python versions (3.11: ``--lr -1e-3`` gives "expected one argument"). With
    the value read, a negative setting is refused by :class:`TrainConfig` with a message that says why.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser: the ``mnist`` task and its options, defaults taken from :class:`TrainConfig`."""
    parser = _Parser(
        prog="python -m deqkit.train",
        allow_abbrev=False,
        description="Train deqkit's DEQ models, with progress bars, metrics and checkpoints; under "
        "torchrun, with DistributedDataParallel.",
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = tasks.add_parser(
        "mnist",
        allow_abbrev=False,
        help="an MNIST classifier with a DEQ layer",
        description="Train an MNIST DEQ classifier (deqkit.models.MNIST_MODELS).",
    )
    d = TrainConfig()
    _add_training_arguments(p, d)
    _add_model_arguments(p, d)
    _add_run_arguments(p)
    return parser


def _add_training_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The model, the optimisation, the seed and the data."""
    p.add_argument(
        "--model",
        choices=sorted(MNIST_MODELS),
        default=d.model,
        help="seed: the blog's network exactly; seed-linear: with linear logits; wide: 128-d MLP-DEQ; "
        "conv: convolutional DEQ; mlp, mlp-ln: the MLP-DEQ tanh(Wz + x), without or with LayerNorm; "
        "mdeq: MDEQ-style, a 14x14 and a 7x7 state solved together (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="samples per step over all processes (the blog used 8; default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="weights, shuffling, RNG (default: %(default)s)")
    p.add_argument("--subset", type=int, default=None, help="train on this many samples (default: all 60,000)")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="MNIST folder (default: $DEQKIT_MNIST_DIR, else ~/.cache/deqkit/mnist, downloaded once)",
    )


def _add_model_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The model/DEQ options, the Jacobian penalty and the evaluation batch."""
    p.add_argument(
        "--deq",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model/DEQ option, repeatable: e.g. --deq solver=anderson --deq max_steps=30 "
        "--deq polish=None --deq weight_norm=spectral (mlp, mlp-ln, conv, mdeq) "
        "--deq resolutions=1 (mdeq)",
    )
    p.add_argument(
        "--jac-reg",
        type=float,
        default=d.jac_reg,
        metavar="GAMMA",
        help="add GAMMA * deqkit.jacobian_penalty(model) to the loss (Jacobian regularization: keeps the "
        "equilibrium cheap to solve; logged as jac_penalty; default: %(default)s, none)",
    )
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: %(default)s")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The run folder, checkpoints, device, threads and logging."""
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder for checkpoint.pt, metrics.csv, metrics.json (default: runs/mnist-MODEL-seedSEED)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument(
        "--checkpoint-every",
        type=_non_negative_int,
        default=0,
        metavar="STEPS",
        help="also checkpoint every STEPS steps within an epoch (default: only after each epoch)",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log every step and epoch to TensorBoard in OUT/tensorboard (needs: pip install "
        '"deqkit[tensorboard]"); view with: tensorboard --logdir OUT/tensorboard',
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line: train (or resume) an MNIST model and print where its metrics are.

    Everything that can be checked without the data is checked first (arguments, settings, the model, the
    run folder), so that a mistake costs no loading and no training.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 1, with a message on stderr, when MNIST cannot be loaded, the run folder cannot be
        written, or the checkpoint is missing (``--resume``), unreadable, damaged or already there (without
        ``--resume`` or ``--overwrite``).

    Raises
    ------
    SystemExit
        With status 2 (argparse's usage error) for invalid arguments, training settings or model options,
        ``--threads < 1``, ``--device cuda`` without CUDA, ``--tensorboard`` without the tensorboard package,
        or ``--resume`` with ``--overwrite``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    config, model = _check_arguments(parser, args)
    # the run folder as RunOptions reads it ("~" expanded, "" refused), for the checks below and the summary
    options = _run_options(parser, args, f"runs/mnist-{args.model}-seed{args.seed}" if args.out is None else args.out)
    assert options.out is not None  # a folder was given
    out = pathlib.Path(options.out)
    try:
        _check_run_folder(options, out)
        train_set, test_set = mnist_datasets(config.data_dir, subset=config.subset, seed=0)
        result = train(model, train_set, test_set, config, options)
    except (MNISTError, CheckpointError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.final
        print(
            f"{args.model}: test accuracy {last['test_acc']:.2f}% after {last['epoch']} epochs; "
            f"metrics in {out}/metrics.csv, checkpoint in {out}/checkpoint.pt"
        )
    return 0


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[TrainConfig, nn.Module]:
    """Usage errors (exit 2) found from the arguments alone; return the run's settings and its model."""
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        resolve_device(args.device)
    except RuntimeError:
        parser.error(
            "--device cuda: CUDA is not available here (no GPU, or a CPU-only torch build); "
            "use --device cpu or --device auto"
        )
    if args.tensorboard:
        try:
            check_tensorboard()
        except ImportError as err:
            parser.error(f"--tensorboard: {err}")
    options = dict(args.deq)
    try:
        config = TrainConfig(
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            seed=args.seed,
            subset=args.subset,
            data_dir=args.data,
            model_options=options,
            eval_batch_size=args.eval_batch_size,
            jac_reg=args.jac_reg,
        )
        model = mnist_model(config.model, seed=config.seed, **options)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    return config, model


def _run_options(parser: argparse.ArgumentParser, args: argparse.Namespace, out: str | pathlib.Path) -> RunOptions:
    """The run options of the flags, the run folder ``out`` (--out or its default) included."""
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other: choose one")
    try:
        return RunOptions(
            out=out,
            start="resume" if args.resume else "overwrite" if args.overwrite else "new",
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
            tensorboard=args.tensorboard,
        )
    except (ValueError, TypeError) as err:  # the flags' own checks come first; this names anything they missed
        parser.error(str(err))


def _check_run_folder(options: RunOptions, out: pathlib.Path) -> None:
    """The run folder: an intact checkpoint to resume, none to overwrite by accident, and writable (rank 0)."""
    resume = options.start == "resume"
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not ckpt.is_file():
        raise FileExistsError(
            f"{ckpt} exists but is not a file (a folder?): neither --resume nor --overwrite can "
            "use it; move or delete it, or choose another --out"
        )
    if resume and not ckpt.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {ckpt}; run without --resume to start this run")
    if resume:
        load_checkpoint(ckpt)  # a damaged file fails its checksum now; the run's checks follow in train()
    if ckpt.exists() and options.start == "new":
        raise FileExistsError(
            f"{ckpt} exists: add --resume to continue that run, --overwrite to start afresh, or choose another --out"
        )
    # metrics files or TensorBoard logs of another run, without its checkpoint: not to be replaced silently
    check_run_folder(out, start=options.start, tensorboard=options.tensorboard)
    if os.environ.get("RANK", "0") == "0":
        check_writable(out)


if __name__ == "__main__":
    sys.exit(main())
