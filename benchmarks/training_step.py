"""A training step of the tanh DEQ: peak memory and time, implicit vs unrolled, against the forward iterations;
and the implicit backward's wall time against the forward's, for every forward and backward solver.

Model: z = tanh(W z + x + b), W = 0.9·Q (Q orthogonal), float32, loss = mean squared output; a step is the
forward pass, the loss and ``loss.backward()``.

Part 1 (memory and time against iterations): the forward is Picard with an unreachable tolerance, so it runs
exactly N = 10 … 200 iterations; the implicit backward is GMRES to relative residual 1e-4. Peak memory is the
peak of tensor memory allocated during the step above what was live at its start, measured with
``torch.profiler`` (``profile_memory=True``): every allocation and free made through PyTorch's CPU allocator
is recorded with the allocator's running total, whose maximum during the step is the peak
(:func:`deqkit.measure.peak_memory`). Times are medians over repeats (no profiler attached). Ratios are
against the implicit step with N = 10, measured in the same process.

Part 2 (backward vs forward): forward and backward to relative residual 1e-4 (abstol 0), median wall time of
each over repeats, for each forward solver with the default GMRES backward, and for each backward solver with
the default dynamic_ss forward.

    python -m benchmarks training_step [--dim 256] [--batch 32] [--iterations 10 25 50 100 150 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

import deqkit
from deqkit.errors import ConvergenceWarning
from deqkit.measure import measure_step
from deqkit.problems import tanh_problem

from .forward import environment, fmt_ratio, load, save

FORWARD_SOLVERS = ("picard", "anderson", "broyden", "dynamic_ss")
BACKWARD_SOLVERS = ("gmres", "anderson", "picard", "broyden", "dynamic_ss")


@dataclass
class Split:
    forward_solver: str
    backward_solver: str
    forward_seconds: float
    backward_seconds: float
    forward_nfe: int
    backward_nfe: int
    converged: bool


def forward_backward(
    forward_solver: str, backward_solver: str, *, d: int, batch: int, norm: float, repeats: int, reltol: float = 1e-4
) -> Split:
    """Median forward and backward wall time of a training step with these solvers (implicit backward)."""
    block, x = tanh_problem(d, norm, batch=batch)
    model = deqkit.DEQ(
        block,
        solver=forward_solver,
        abstol=0.0,
        reltol=reltol,
        max_steps=500,
        backward=deqkit.Implicit(backward_solver, max_steps=500),
    )
    target = torch.zeros_like(x)
    fwd, bwd = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = (model(x) - target).pow(2).mean()
            mid = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            fwd.append(mid - start)
            bwd.append(end - mid)
    st = model.last_stats
    ok = not caught and st.forward.all_converged and st.backward.all_converged
    return Split(
        forward_solver,
        backward_solver,
        statistics.median(fwd[1:]),
        statistics.median(bwd[1:]),
        st.forward.nfe,
        st.backward.nfe,
        ok,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks training_step", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--norm", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, nargs="+", default=[10, 25, 50, 100, 150, 200])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default="docs/img/training_step.png", help="PNG path ('' for none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = {"d": args.dim, "batch": args.batch, "norm": args.norm}

    # Part 1 -------------------------------------------------------------------------------------------------
    costs = {}
    for n in args.iterations:
        for mode in ("implicit", "unrolled"):
            costs[mode, n] = measure_step(mode, n, repeats=args.repeats, **size)
    base = costs["implicit", args.iterations[0]]
    print(f"\n### Training step against forward iterations  ({environment(args.threads)})\n")
    print(
        f"d = {args.dim}, batch {args.batch}, ‖W‖₂ = {args.norm}, float32, Picard forward with exactly N iterations, "
        f"GMRES backward to 1e-4. Ratios against the implicit step at N = {args.iterations[0]} "
        f"({base.peak_bytes / 2**20:.3f} MiB, {base.seconds * 1e3:.2f} ms), same process.\n"
    )
    print("| N | mode | iterations taken | peak tensor memory (MiB) | memory ratio | median ms | time ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in args.iterations:
        for mode in ("implicit", "unrolled"):
            c = costs[mode, n]
            print(
                f"| {n} | {mode} | {c.steps} | {c.peak_bytes / 2**20:.3f} | "
                f"{fmt_ratio(c.peak_bytes / base.peak_bytes)} "
                f"| {c.seconds * 1e3:.2f} | {fmt_ratio(c.seconds / base.seconds)} |"
            )
    imp = [costs["implicit", n].peak_bytes for n in args.iterations]
    unr = [costs["unrolled", n].peak_bytes for n in args.iterations]
    spread = (max(imp) - min(imp)) / min(imp)
    print(
        f"\nimplicit peak memory spread over N = {args.iterations[0]}..{args.iterations[-1]}: {spread * 100:.2f} % "
        f"(max − min over min); unrolled grows {unr[-1] / unr[0]:.1f}× from N = {args.iterations[0]} to "
        f"{args.iterations[-1]}."
    )

    # Part 2 -------------------------------------------------------------------------------------------------
    splits = [
        forward_backward(s, "gmres", d=args.dim, batch=args.batch, norm=args.norm, repeats=args.repeats)
        for s in FORWARD_SOLVERS
    ]
    splits += [
        forward_backward("dynamic_ss", s, d=args.dim, batch=args.batch, norm=args.norm, repeats=args.repeats)
        for s in BACKWARD_SOLVERS
        if s != "gmres"
    ]
    print(f"\n### Implicit backward against forward wall time  ({environment(args.threads)})\n")
    print(
        f"d = {args.dim}, batch {args.batch}, ‖W‖₂ = {args.norm}, float32, forward and backward to relative residual "
        "1e-4; the ratio is backward / forward wall time of the same step (medians).\n"
    )
    print(
        "| forward solver | backward solver | forward NFE | backward products | forward ms | backward ms | "
        "backward / forward | converged |"
    )
    print("|---|---|---:|---:|---:|---:|---:|:-:|")
    for s in splits:
        print(
            f"| {s.forward_solver} | {s.backward_solver} | {s.forward_nfe} | {s.backward_nfe} | "
            f"{s.forward_seconds * 1e3:.2f} | {s.backward_seconds * 1e3:.2f} | "
            f"{fmt_ratio(s.backward_seconds / s.forward_seconds)} | {'yes' if s.converged else '**no**'} |"
        )

    saved = plot(args.iterations, costs, splits, args.plot)
    if saved:
        print(f"\nplot: {saved}")
    print(f"load average at the end: {load()}")
    return {"costs": costs, "splits": splits, "implicit_spread": spread}


def plot(iterations, costs, splits, path):
    from matplotlib.figure import Figure

    if not path:
        return None
    base = costs["implicit", iterations[0]]
    fig = Figure(figsize=(14, 4.4), layout="constrained")
    ax, ax2, ax3 = fig.subplots(1, 3)
    for mode, color in (("implicit", "tab:blue"), ("unrolled", "tab:orange")):
        ax.plot(
            iterations, [costs[mode, n].peak_bytes / base.peak_bytes for n in iterations], "o-", color=color, label=mode
        )
        ax2.plot(iterations, [costs[mode, n].seconds / base.seconds for n in iterations], "o-", color=color, label=mode)
    ax.set(
        xlabel="forward iterations N",
        ylabel=f"peak memory / implicit at N = {iterations[0]}",
        title="peak tensor memory of a training step",
        ylim=(0, None),
    )
    ax2.set(
        xlabel="forward iterations N",
        ylabel=f"wall time / implicit at N = {iterations[0]}",
        title="wall time of a training step",
        ylim=(0, None),
    )
    ax.legend()
    labels = [f"{s.forward_solver} →\n{s.backward_solver}" for s in splits]
    ax3.bar(
        range(len(splits)),
        [s.backward_seconds / s.forward_seconds for s in splits],
        color=["tab:blue" if s.backward_solver == "gmres" else "tab:gray" for s in splits],
    )
    ax3.axhline(1.0, color="k", lw=0.8)
    ax3.set_xticks(range(len(splits)), labels, fontsize=7, rotation=60, ha="right", rotation_mode="anchor")
    ax3.set(ylabel="backward / forward wall time", yscale="log", title="implicit backward / forward time")
    return save(fig, path)


if __name__ == "__main__":
    main()
