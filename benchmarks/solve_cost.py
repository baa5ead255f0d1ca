"""Where a training step's time goes: milliseconds per forward solve, per implicit backward solve and per monitor
check, on the MNIST MLP-DEQ of ``peer_training``.

The model (``mlp-ln`` by default, batch 128) is first trained for ``--warmup`` steps (Adam 1e-3; the equilibria of a
model at initialisation are not those of training), then ``--steps`` more training steps are timed piece by piece:
the forward pass (``model(images)``: solve and re-attached evaluation) and ``loss.backward()`` (the implicit backward
solve and the backpropagation through the encoder and head), with the evaluations and products each one took.
A Monitor check is timed alone, on random ``(batch, dim)`` tensors, averaged over ``--checks`` calls. No baseline
runs in the same process; the module is meant for before/after comparisons of deqkit's own code on one machine
(e.g. run it in a checkout of an older commit with this file copied in).

    python -m benchmarks solve_cost [--block mlp-ln] [--solver anderson] [--warmup 30] [--steps 40] [--fast]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.nn import functional as F

import deqkit
from deqkit.data import mnist_datasets
from deqkit.models import mnist_model
from deqkit.solvers.monitor import Monitor, Tolerances

from .forward import environment


def time_steps(
    block: str, solver: str, warmup: int, steps: int, batch: int, subset: int | None = None
) -> dict[str, float]:
    """Train ``warmup`` steps, then time ``steps`` more: forward and backward per solve, evaluations, products."""
    images, labels = mnist_datasets(subset=subset, seed=0)[0].tensors
    model = mnist_model(block, seed=0, **({} if solver == "default" else {"solver": solver}))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)  # counted in the statistics instead
        for i in range(warmup + steps):
            x, y = images[i * batch : (i + 1) * batch], labels[i * batch : (i + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            mid = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            optimizer.step()
            stats = model.deq.last_stats
            rows.append((mid - start, end - mid, stats.forward.nfe, stats.backward.nfe))
    timed = rows[warmup:]
    fwd, bwd, nfe, products = (statistics.fmean(col) for col in zip(*timed))
    return {
        "forward ms": 1e3 * fwd,
        "evaluations": nfe,
        "ms per evaluation": 1e3 * fwd / nfe,
        "backward ms": 1e3 * bwd,
        "products": products,
        "ms per product": 1e3 * bwd / products,
    }


def time_check(batch: int, dim: int, calls: int) -> float:
    """Microseconds per ``Monitor.check`` on a batch that is not converging (the common case mid-solve)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, dim, generator=gen)
    monitor = Monitor("check", z, Tolerances(0.0, 1e-4, calls + 2), strict=False, record=False)
    residuals = [1e-2 * torch.rand(batch, dim, generator=gen) for _ in range(2)]
    monitor.check(0, z, residuals[0], z + residuals[0], 1)
    start = time.perf_counter()
    for k in range(calls):
        r = residuals[k % 2]
        monitor.check(k + 1, z, r, z + r, k + 2)
    return 1e6 * (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks solve_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--block", choices=("mlp-ln", "mlp"), default="mlp-ln")
    parser.add_argument("--solver", default="anderson", help="forward solver, or 'default' for the model's own")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fast", action="store_true", help="2 warm-up and 3 timed steps, 50 checks")
    args = parser.parse_args(argv)
    if args.fast:
        args.warmup, args.steps, args.checks = 2, 3, 50
    torch.set_num_threads(args.threads)
    subset = (args.warmup + args.steps) * args.batch if args.fast else None
    result = time_steps(args.block, args.solver, args.warmup, args.steps, args.batch, subset)
    result["check us"] = time_check(args.batch, 128, args.checks)
    print(
        f"### Solve cost: {args.block}, forward {args.solver}, batch {args.batch}, {args.steps} steps after "
        f"{args.warmup}  ({environment(args.threads)})\n"
    )
    print("| forward ms | evaluations | ms / evaluation | backward ms | products | ms / product | check µs |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    r = result
    print(
        f"| {r['forward ms']:.1f} | {r['evaluations']:.1f} | {r['ms per evaluation']:.3f} | {r['backward ms']:.1f} "
        f"| {r['products']:.1f} | {r['ms per product']:.3f} | {r['check us']:.0f} |"
    )
    return result


if __name__ == "__main__":
    main()
