"""MNIST: full training runs of every model, measured on this machine, as a markdown table.

Runs (each a normal ``deqkit.train`` run with its own folder under ``--out``, so an interrupted benchmark
continues with ``--resume``):

* ``seed``         the blog's network exactly (tanh logits, DynamicSS(Tsit5()), tolerances 1e-2), Adam 3e-4,
                   batch 128, 10 epochs;
* ``seed-b8``      the same with the blog's batch size 8 (``--batch8-epochs``, default 1: its time per epoch);
* ``seed-linear``  the same network with linear logits, same recipe;
* ``wide``         the 128-wide MLP-DEQ, Adam 1e-3 with cosine decay, batch 128, 10 epochs;
* ``conv``         the convolutional DEQ, Adam 1e-3 with cosine decay, batch 128, 5 epochs.

Seconds per epoch are training time (without the test-set evaluation), with ``--threads`` torch threads; the
1-minute load average is recorded after every epoch, because other work on the machine slows a run down.

    python -m benchmarks.mnist [--only seed,conv] [--threads 2] [--out runs/bench] [--resume]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from deqkit.data import mnist_datasets
from deqkit.train import RunOptions, TrainConfig, train_mnist


@dataclass
class Run:
    name: str
    config: TrainConfig
    note: str
    cli: list[str] = field(default_factory=list)


def runs(batch8_epochs: int) -> list[Run]:
    seed = TrainConfig(model="seed", epochs=10, batch_size=128, lr=3e-4)
    return [
        Run("seed", seed, "the blog's network and solver exactly (tanh logits)"),
        Run(
            "seed-b8",
            TrainConfig(model="seed", epochs=batch8_epochs, batch_size=8, lr=3e-4),
            "the same, with the blog's batch size 8",
            ["--batch-size", "8", "--epochs", str(batch8_epochs)],
        ),
        Run(
            "seed-linear",
            TrainConfig(model="seed-linear", epochs=10, batch_size=128, lr=3e-4),
            "the blog's network with linear logits (the fix)",
        ),
        Run(
            "wide",
            TrainConfig(model="wide", epochs=10, batch_size=128, lr=1e-3, schedule="cosine"),
            "128-wide MLP-DEQ (Pal et al.'s MNIST-Dense protocol)",
            ["--lr", "1e-3", "--schedule", "cosine"],
        ),
        Run(
            "conv",
            TrainConfig(model="conv", epochs=5, batch_size=128, lr=1e-3, schedule="cosine"),
            "convolutional DEQ (residual block, GroupNorm, 7x7)",
            ["--lr", "1e-3", "--schedule", "cosine"],
        ),
    ]


def command(run: Run, threads: int) -> str:
    cfg = run.config
    args = ["python -m deqkit.train mnist", "--model", cfg.model]
    if "--epochs" not in run.cli:
        args += ["--epochs", str(cfg.epochs)]
    return " ".join(args + run.cli + ["--threads", str(threads)])


def row(run: Run, history: list[dict[str, Any]], threads: int) -> str:
    last = history[-1]
    secs = [h["seconds"] for h in history]
    loads = [h["loadavg"] for h in history]
    best = max(history, key=lambda h: h["test_acc"])
    unconverged = sum(h["fwd_unconverged"] + h["bwd_unconverged"] for h in history)
    return (
        f"| `{run.name}` | {run.note} | {run.config.batch_size} | {last['epoch']} | **{last['test_acc']:.2f}** "
        f"| {best['test_acc']:.2f} (ep. {best['epoch']}) | {statistics.mean(secs):.1f} ({min(secs):.1f}–"
        f"{max(secs):.1f}) | {last['fwd_nfe_mean']:.1f} / {last['fwd_nfe_max']:.0f} | {last['bwd_nfe_mean']:.1f} "
        f"| {last['test_nfe_mean']:.1f} | {unconverged} | {min(loads):.1f}–{max(loads):.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks mnist", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated runs (default: all): " + ", ".join(r.name for r in runs(1))
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--batch8-epochs", type=int, default=1, help="epochs of the batch-8 run (default: 1)")
    parser.add_argument("--out", default="runs/bench", help="folder of the runs and mnist.md")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs, keep finished ones")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    todo = runs(args.batch8_epochs)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {r.name for r in todo})
        if unknown:
            parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(r.name for r in todo)}")
        todo = [r for r in todo if r.name in wanted]
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out).expanduser()
    train_set, test_set = mnist_datasets()
    rows = []
    for run in todo:
        folder = out / run.name
        resume = args.resume and (folder / "checkpoint.pt").exists()
        start = time.perf_counter()
        options = RunOptions(
            folder, start="resume" if resume else "overwrite", device="cpu", progress=not args.no_progress
        )
        result = train_mnist(run.config, options=options, train_set=train_set, test_set=test_set)
        print(
            f"[{run.name}] {time.perf_counter() - start:.0f} s wall, test accuracy {result.final['test_acc']:.2f}%",
            file=sys.stderr,
        )
        rows.append(row(run, result.history, args.threads))

    header = [
        f"MNIST, full 60,000/10,000 split; torch {torch.__version__}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}); measured {time.strftime('%Y-%m-%d')}.",
        "",
        "| run | model | batch | epochs | test acc. % (last epoch) | best epoch | s/epoch mean (min–max) "
        "| fwd NFE mean / max per step (last epoch) | bwd NFE | test fwd NFE per batch of 1000 "
        "| samples not converged, fwd + bwd (all epochs) | load avg (1 min) after each epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    commands = ["", "Each row is also one command:", "", "```bash"]
    commands += [command(r, args.threads) for r in todo] + ["```"]
    text = "\n".join(header + rows + commands) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mnist.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
