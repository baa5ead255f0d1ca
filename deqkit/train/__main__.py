"""Command line: ``python -m deqkit.train mnist --model seed|seed-linear|wide|conv [options]``.

Examples
--------
The seed blog's run (batch 8, 10 epochs), then the fixed model, then resuming an interrupted run::

    python -m deqkit.train mnist --model seed --batch-size 8 --epochs 10
    python -m deqkit.train mnist --model seed-linear --epochs 10 --out runs/linear
    python -m deqkit.train mnist --model seed-linear --epochs 10 --out runs/linear --resume

Two CPU processes with DistributedDataParallel (gloo)::

    torchrun --nproc_per_node 2 -m deqkit.train mnist --model seed --subset 2000 --epochs 1
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import sys
from typing import Any

import torch

from ..data import MNISTError, mnist_datasets
from ..models.mnist import MNIST_MODELS, mnist_model
from .checkpoint import CheckpointError
from .config import SCHEDULES, TrainConfig
from .loop import train


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE a Python literal (``30``, ``1e-3``, ``None``, ``'anderson'``) or a bare word."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. solver=anderson or max_steps=30), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser: the ``mnist`` task and its options, defaults taken from :class:`TrainConfig`."""
    parser = argparse.ArgumentParser(prog="python -m deqkit.train", allow_abbrev=False,
                                     description="Train deqkit's DEQ models, with progress bars, metrics and "
                                                 "checkpoints; under torchrun, with DistributedDataParallel.")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = tasks.add_parser("mnist", allow_abbrev=False, help="an MNIST classifier with a DEQ layer",
                         description="Train an MNIST DEQ classifier (deqkit.models.MNIST_MODELS).")
    d = TrainConfig()
    p.add_argument("--model", choices=sorted(MNIST_MODELS), default=d.model,
                   help="seed: the blog's network exactly; seed-linear: with linear logits; wide: 128-d MLP-DEQ; "
                        "conv: convolutional DEQ (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="samples per step over all processes (the blog used 8; default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="weights, shuffling, RNG (default: %(default)s)")
    p.add_argument("--subset", type=int, default=None, help="train on this many samples (default: all 60,000)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="MNIST folder (default: $DEQKIT_MNIST_DIR, else ~/.cache/deqkit/mnist, downloaded once)")
    p.add_argument("--deq", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="model/DEQ option, repeatable: e.g. --deq solver=anderson --deq max_steps=30 "
                        "--deq polish=None")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="default: %(default)s")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder for checkpoint.pt, metrics.csv, metrics.json "
                        "(default: runs/mnist-MODEL-seedSEED)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps within an epoch (default: only after each epoch)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line: train (or resume) an MNIST model and print where its metrics are.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success; 1, with a message on stderr, when MNIST cannot be loaded, the checkpoint is missing
        (``--resume``), unreadable or already there (without ``--resume`` or ``--overwrite``).

    Raises
    ------
    SystemExit
        With status 2 (argparse's usage error) for invalid arguments, training settings or model options,
        ``--threads < 1``, or ``--resume`` with ``--overwrite``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    options = dict(args.deq)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
                             subset=args.subset, data_dir=args.data, model_options=options,
                             eval_batch_size=args.eval_batch_size)
        model = mnist_model(config.model, seed=config.seed, **options)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    out = args.out or f"runs/mnist-{args.model}-seed{args.seed}"
    ckpt = pathlib.Path(out) / "checkpoint.pt"
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other: choose one")
    if args.resume and not ckpt.is_file():  # say so before spending time on loading the data
        print(f"error: --resume: no checkpoint at {ckpt}; run without --resume to start this run", file=sys.stderr)
        return 1
    if ckpt.exists() and not (args.resume or args.overwrite):
        print(f"error: {ckpt} exists: add --resume to continue that run, --overwrite to start afresh, or choose "
              "another --out", file=sys.stderr)
        return 1
    try:
        train_set, test_set = mnist_datasets(config.data_dir, subset=config.subset, seed=0)
        result = train(model, train_set, test_set, config, out=out, resume=args.resume, overwrite=args.overwrite,
                       device=args.device, checkpoint_every=args.checkpoint_every, progress=not args.no_progress)
    except (MNISTError, CheckpointError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.history and os.environ.get("RANK", "0") == "0":
        last = result.final
        print(f"{args.model}: test accuracy {last['test_acc']:.2f}% after {last['epoch']} epochs; "
              f"metrics in {out}/metrics.csv, checkpoint in {out}/checkpoint.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
