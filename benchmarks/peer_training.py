"""One MNIST epoch of the same DEQ trained with TorchDEQ 0.1.0 and with deqkit: wall time, evaluations per step,
test accuracy, as ratios against TorchDEQ's anderson + IFT in the same process.

Models: ``Linear(784→128)`` gives ``x``; ``f(z, x) = norm(tanh(W z + b + x))`` with ``norm`` LayerNorm
(``mlp-ln``) or nothing (``mlp``); ``Linear(128→10)`` reads the logits off ``z*``: :func:`deqkit.models.mlp_deq`.
``mdeq``: a conv stem to 7×7 gives ``x``, ``f`` is the MDEQ-style conv + GroupNorm block (:func:`mdeq_model`), a
linear head reads the logits. Every run starts from the same weights (one deqkit model's ``state_dict``, copied into
each run, TorchDEQ's included) and sees the same batches (one seeded permutation of the 60,000 training images,
batch 128, Adam 1e-3, cross-entropy).

Runs (per block):

* ``TorchDEQ anderson + IFT`` — ``torchdeq.get_deq(f_solver='anderson', f_max_iter=30, f_tol=1e-4,
  f_stop_mode='rel', b_solver='anderson', b_max_iter=30, b_tol=1e-4, b_stop_mode='rel', ift=True)``: the baseline;
* ``TorchDEQ anderson + phantom`` — the same forward, ``grad=5, tau=0.5`` (5 damped steps from z*), no IFT;
* ``deqkit defaults`` — ``mlp_deq``'s defaults: ``dynamic_ss`` (Tsit5, Anderson polishing), reltol 1e-4, the DEQ's
  training and evaluation budgets, the implicit gradient (GMRES to reltol 1e-4);
* ``deqkit anderson + implicit`` — ``solver="anderson"``, everything else the defaults;
* ``deqkit phantom`` — the default forward, ``backward=deqkit.Phantom(steps=5, damping=0.5)``.

Training steps are interleaved: every batch is given to every run, in an order rotated each step, so that other
work on the machine slows all runs alike; a run's wall time is the sum of its step times (zero_grad, forward, loss,
backward, Adam step; the batch itself is prepared once, untimed). Evaluations of ``f`` are counted by a forward
pre-hook on the block (both libraries): "forward" counts every call during the forward pass (the solver's, the
re-attached one, phantom steps), "backward f" the calls made during ``loss.backward()`` (TorchDEQ re-evaluates f
once there). "Backward products" are the vector–Jacobian products of the implicit backward solve (deqkit's
``last_stats.backward.nfe``; TorchDEQ's by a counting wrapper around its registered backward solver); the phantom
gradient has no solve (its backward runs through its 5 steps). Test accuracy is each library's ``eval()`` mode on the
10,000 test images (batches of 1000): TorchDEQ with its evaluation budget ``f_max_iter · eval_factor`` (= 30),
deqkit with ``eval_max_nfe``.

    python -m benchmarks peer_training [--blocks mlp-ln mlp mdeq] [--threads 1] [--fast] [--runs ...] [--device cuda]

On a CUDA device every model and the data live there and each timed interval ends with
``torch.cuda.synchronize()``, so the times are those of the finished kernels.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import deqkit
from deqkit.data import mnist_datasets
from deqkit.models import MNISTDEQ, mnist_model
from deqkit.problems import MDEQFamily

from .forward import environment, fmt_ratio, load, save, torchdeq_available

BASELINE = "TorchDEQ anderson + IFT"
TORCHDEQ_RUNS = {
    BASELINE: {"ift": True},
    "TorchDEQ anderson + phantom": {"grad": 5, "tau": 0.5},
}
TORCHDEQ_COMMON = {
    "f_solver": "anderson",
    "f_max_iter": 30,
    "f_tol": 1e-4,
    "f_stop_mode": "rel",
    "b_max_iter": 30,
    "b_tol": 1e-4,
    "b_stop_mode": "rel",
}
DEQKIT_RUNS: dict[str, Callable[[], dict[str, Any]]] = {
    "deqkit defaults": dict,
    "deqkit anderson + implicit": lambda: {"solver": "anderson"},
    "deqkit phantom": lambda: {"backward": deqkit.Phantom(steps=5, damping=0.5)},
}
RUNS = (*TORCHDEQ_RUNS, *DEQKIT_RUNS)
BLOCKS = ("mlp-ln", "mlp", "mdeq")
CPU = torch.device("cpu")


class Tally:
    """Calls of the block during the forward and the backward pass, and backward vector–Jacobian products."""

    def __init__(self) -> None:
        self.phase = "forward"
        self.calls = {"forward": 0, "backward": 0, "eval": 0}
        self.products = 0
        self.backward_unconverged = 0  # TorchDEQ's backward solve, reported by its backward_writer

    def hook(self, module: nn.Module, args: tuple) -> None:
        self.calls[self.phase] += 1

    def reset(self, phase: str) -> None:
        self.phase, self.products, self.backward_unconverged = phase, 0, 0
        self.calls = dict.fromkeys(self.calls, 0)


class TorchDEQMLP(nn.Module):
    """``head(z*)`` with ``z* = block(z*, encoder(images))`` solved and differentiated by a TorchDEQ core."""

    def __init__(self, encoder: nn.Module, block: nn.Module, head: nn.Module, tally: Tally, **config: Any):
        super().__init__()
        from torchdeq import get_deq
        from torchdeq.solver import get_solver, register_solver

        self.encoder, self.block, self.head = encoder, block, head
        # the backward solver, wrapped to count its vector–Jacobian products (one registered name per model)
        anderson = get_solver("anderson")

        def counted(func, x0, **kwargs):
            def product(y):
                tally.products += 1
                return func(y)

            return anderson(product, x0, **kwargs)

        name = f"anderson-counted-{id(self)}"
        register_solver(name, counted)
        self.deq = get_deq(b_solver=name, **config)
        self.tol, self.b_tol, self.tally = config["f_tol"], config["b_tol"], tally
        self.unconverged = 0

    def _backward_info(self, info: dict) -> None:
        self.tally.backward_unconverged = int((info["rel_lowest"] > self.b_tol).sum())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(images)
        z_out, info = self.deq(lambda z: self.block(z, x), torch.zeros_like(x), backward_writer=self._backward_info)
        self.unconverged = int((info["rel_lowest"] > self.tol).sum())
        return self.head(z_out[-1])


@dataclass
class Trainee:
    """One run: its model, optimizer, counters and per-step records."""

    name: str
    model: nn.Module
    tally: Tally
    device: torch.device = CPU
    optimizer: torch.optim.Optimizer = field(init=False)
    seconds: list[float] = field(default_factory=list)
    forward_seconds: list[float] = field(default_factory=list)
    forward_calls: list[int] = field(default_factory=list)
    backward_calls: list[int] = field(default_factory=list)
    products: list[int] = field(default_factory=list)
    unconverged: list[int] = field(default_factory=list)
    backward_unconverged: list[int] = field(default_factory=list)
    warned: int = 0
    test_acc: float = float("nan")
    test_calls: float = float("nan")
    test_seconds: float = float("nan")
    test_unconverged: int = 0

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One timed training step, counted."""
        self.tally.reset("forward")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", deqkit.ConvergenceWarning)
            start = self._clock()
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(images), labels)
            mid = self._clock()
            self.tally.phase = "backward"
            loss.backward()
            self.optimizer.step()
            end = self._clock()
        self.warned += sum(issubclass(w.category, deqkit.ConvergenceWarning) for w in caught)
        self.seconds.append(end - start)
        self.forward_seconds.append(mid - start)
        self.forward_calls.append(self.tally.calls["forward"])
        self.backward_calls.append(self.tally.calls["backward"])
        deq_stats = getattr(getattr(self.model, "deq", None), "last_stats", None)
        backward = getattr(deq_stats, "backward", None)
        self.products.append(backward.nfe if backward is not None else self.tally.products)
        self.unconverged.append(self._unconverged())
        self.backward_unconverged.append(
            int((~backward.converged).sum()) if backward is not None else self.tally.backward_unconverged
        )

    def _clock(self) -> float:
        """``time.perf_counter()`` once the device has finished the work queued so far."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _unconverged(self) -> int:
        """Samples whose last forward solve did not meet its library's own tolerance."""
        if isinstance(self.model, TorchDEQMLP):
            return self.model.unconverged
        return int((~self.model.deq.last_stats.forward.converged).sum())

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> None:
        """Test accuracy in eval() mode, evaluations of f per test batch, and the time it took."""
        self.model.eval()
        self.tally.reset("eval")
        correct, batches = 0, 0
        start = self._clock()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", deqkit.ConvergenceWarning)
            for i in range(0, len(labels), batch):
                correct += int((self.model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
                self.test_unconverged += self._unconverged()
                batches += 1
        self.test_seconds = self._clock() - start
        self.test_acc = 100.0 * correct / len(labels)
        self.test_calls = self.tally.calls["eval"] / batches
        self.model.train()


def mdeq_model(seed: int | None = None, **deq_options: Any) -> MNISTDEQ:
    """The conv + GroupNorm block (``"mdeq"``): a conv stem to 7×7 with 16 channels gives ``x``; ``f`` is
    :class:`deqkit.problems.MDEQFamily` ``GN(relu(x + conv₂(GN(relu(conv₁ z)))))`` (16 → 32 → 16 channels); a linear
    head. The DEQ's defaults, with reltol 1e-4 forward and backward as in ``mlp_deq``."""
    if seed is not None:
        torch.manual_seed(seed)
    stem = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    options = {"abstol": 0.0, "reltol": 1e-4, "backward": deqkit.Implicit("gmres", abstol=0.0, reltol=1e-4)}
    deq = deqkit.DEQ(MDEQFamily(16, 32, 8), **(options | deq_options))
    return MNISTDEQ(stem, deq, nn.Sequential(nn.Flatten(), nn.Linear(16 * 49, 10)), name="mdeq")


def make_model(block: str, **options: Any) -> nn.Module:
    return mdeq_model(**options) if block == "mdeq" else mnist_model(block, **options)


def build(name: str, block: str, reference: nn.Module, device: torch.device = CPU) -> Trainee:
    """The run ``name`` on ``block``, starting from ``reference``'s weights, on ``device``."""
    tally = Tally()
    if name in TORCHDEQ_RUNS:
        model = TorchDEQMLP(
            copy.deepcopy(reference.encoder),
            copy.deepcopy(reference.deq.f),
            copy.deepcopy(reference.head),
            tally,
            **TORCHDEQ_COMMON,
            **TORCHDEQ_RUNS[name],
        )
        hooked = model.block
    else:
        model = make_model(block, **DEQKIT_RUNS[name]())
        model.load_state_dict(reference.state_dict())
        hooked = model.deq.f
    hooked.register_forward_pre_hook(tally.hook)
    return Trainee(name, model.to(device), tally, device)  # moved before Adam takes the parameters


def train_epoch(
    trainees: list[Trainee],
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    batch: int,
    steps: int | None,
) -> None:
    """Every run on the same batches; the runs' order rotates every step."""
    starts = list(range(0, len(order), batch))[:steps]
    for k, i in enumerate(starts):
        idx = order[i : i + batch]
        x, y = images[idx], labels[idx]
        shift = k % len(trainees)
        for t in trainees[shift:] + trainees[:shift]:
            t.step(x, y)


@dataclass
class BlockResult:
    block: str
    trainees: list[Trainee]
    steps: int

    def by_name(self) -> dict[str, Trainee]:
        return {t.name: t for t in self.trainees}

    def baseline(self) -> Trainee:
        by = self.by_name()
        return by.get(BASELINE) or by["deqkit anderson + implicit"]


def run_block(
    block: str,
    runs: list[str],
    train_set,
    test_set,
    *,
    seed: int,
    batch: int,
    steps: int | None,
    device: torch.device = CPU,
) -> BlockResult:
    torch.manual_seed(seed)
    reference = make_model(block, seed=seed)  # on the CPU, so every device starts from the same weights
    trainees = [build(name, block, reference, device) for name in runs]
    images, labels = (t.to(device) for t in train_set.tensors)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(device)
    train_epoch(trainees, images, labels, order, batch, steps)
    test_images, test_labels = (t.to(device) for t in test_set.tensors)
    for t in trainees:
        t.evaluate(test_images, test_labels)
    return BlockResult(block, trainees, len(trainees[0].seconds))


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, else "CPU"."""
    return f"{torch.cuda.get_device_name(device)} ({device})" if device.type == "cuda" else "CPU"


def print_table(result: BlockResult, threads: int, fast: bool, device: torch.device = CPU) -> None:
    base = result.baseline()
    title = {"mlp-ln": "LayerNorm block (mlp-ln)", "mlp": "plain block (mlp)", "mdeq": "conv + GroupNorm block (mdeq)"}[
        result.block
    ]
    print(
        f"\n### {title}: {result.steps} training steps{' (--fast)' if fast else ''}  "
        f"({device_name(device)}; {environment(threads)})\n"
    )
    print(f"Ratios against **{base.name}** on the same batches, same process (steps interleaved).\n")
    print(
        "| run | train s | time ratio | fwd s | bwd + Adam s | fwd evals/step (mean; last 10 % of steps) "
        "| bwd products/step | bwd f evals/step | samples not converged: fwd / bwd (all steps) | test acc. % "
        "| Δ acc. (points) | test evals/batch | test samples not converged | test s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tail = max(1, result.steps // 10)
    for t in result.trainees:
        total, fwd = sum(t.seconds), sum(t.forward_seconds)
        print(
            f"| {t.name} | {total:.1f} | {fmt_ratio(total / sum(base.seconds))} | {fwd:.1f} | {total - fwd:.1f} "
            f"| {mean(t.forward_calls):.1f}; {mean(t.forward_calls[-tail:]):.1f} | {mean(t.products):.1f} "
            f"| {mean(t.backward_calls):.1f} | {sum(t.unconverged)} / {sum(t.backward_unconverged)} "
            f"| {t.test_acc:.2f} | {t.test_acc - base.test_acc:+.2f} | {t.test_calls:.1f} | {t.test_unconverged} "
            f"| {t.test_seconds:.1f} |"
        )


def plot(results: list[BlockResult], path: str | None) -> str | None:
    from matplotlib.figure import Figure

    if not path:
        return None
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    bars, *curves = fig.subplots(1, 1 + len(results))
    names = [t.name for t in results[0].trainees]
    width = 0.8 / len(results)
    for j, res in enumerate(results):
        base = sum(res.baseline().seconds)
        by = res.by_name()
        pos = [i + (j - (len(results) - 1) / 2) * width for i in range(len(names))]
        bars.bar(pos, [sum(by[n].seconds) / base for n in names], width, label=res.block)
    bars.axhline(1.0, color="k", lw=0.8)
    bars.set_xticks(range(len(names)), names, fontsize=7, rotation=30, ha="right", rotation_mode="anchor")
    bars.set(ylabel="epoch wall time / TorchDEQ anderson + IFT", title="one epoch: wall time")
    bars.legend()
    for ax, res in zip(curves, results):
        window = max(1, res.steps // 25)
        for t in res.trainees:
            smooth = [mean(t.forward_calls[max(0, i - window + 1) : i + 1]) for i in range(res.steps)]
            ax.plot(range(1, res.steps + 1), smooth, label=t.name)
        ax.set(
            xlabel="training step",
            ylabel=f"forward evaluations of f (mean of {window} steps)",
            title=f"{res.block}: forward cost over the epoch",
            ylim=(0, None),
        )
        ax.legend(fontsize=7)
    return save(fig, path)


def parse_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """``--device`` as a torch device: a usage error for a malformed name, another device type or an absent GPU."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        parser.error(f"--device {name!r} is not a torch device ({err}); use cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        parser.error(f"--device {name!r}: this benchmark runs on cpu or cuda")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            parser.error(
                f"--device {name!r}: this torch sees {count} CUDA device(s) "
                f"(CUDA build: {torch.version.cuda or 'no, a CPU-only wheel'}); run on cpu or install a "
                "CUDA build of torch"
            )
    return device


def main(argv: list[str] | None = None) -> list[BlockResult]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks peer_training", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--blocks", nargs="+", choices=BLOCKS, default=list(BLOCKS))
    parser.add_argument(
        "--runs",
        nargs="+",
        default=list(RUNS),
        metavar="RUN",
        help=f"runs to compare (default: all): {', '.join(map(repr, RUNS))}",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="stop the epoch after this many steps")
    parser.add_argument(
        "--fast", action="store_true", help="8 steps on a subset of 8 batches; the plot only where --plot names a path"
    )
    parser.add_argument(
        "--plot", default=None, help="PNG path ('' for none; default docs/img/peer_training.png, none with --fast)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to train on: cpu (default), cuda or cuda:N")
    args = parser.parse_args(argv)
    device = parse_device(parser, args.device)
    if args.plot is None:  # a --fast run must not overwrite the committed figure of the full epoch
        args.plot = "" if args.fast else "docs/img/peer_training.png"
    for option, values in (("--blocks", args.blocks), ("--runs", args.runs)):
        if len(set(values)) < len(values):
            parser.error(f"{option} names a value twice: {values}")
    if args.threads < 1 or args.batch < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--threads, --batch and --steps must be >= 1")
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(map(repr, unknown))}; choose from {', '.join(map(repr, RUNS))}")
    torch.set_num_threads(args.threads)
    runs = list(args.runs)
    if not torchdeq_available():
        print(
            "TorchDEQ is not installed (pip install torchdeq==0.1.0): deqkit runs only, ratios against deqkit "
            "anderson + implicit."
        )
        runs = [r for r in runs if r not in TORCHDEQ_RUNS]
        if "deqkit anderson + implicit" not in runs:
            runs.insert(0, "deqkit anderson + implicit")
    elif BASELINE not in runs:
        runs.insert(0, BASELINE)
    train_set, test_set = mnist_datasets(subset=8 * args.batch if args.fast else None, seed=args.seed)
    start = time.perf_counter()
    results = [
        run_block(b, runs, train_set, test_set, seed=args.seed, batch=args.batch, steps=args.steps, device=device)
        for b in args.blocks
    ]
    for res in results:
        print_table(res, args.threads, args.fast, device)
    saved = plot(results, args.plot)
    if saved:
        print(f"\nplot: {saved}")
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end: {load()}")
    return results


if __name__ == "__main__":
    main()
