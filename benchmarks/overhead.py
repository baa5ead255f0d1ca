"""The cost of a solve against its floor: (evaluations of f) × (time of one evaluation), per solver and size.

Map ``z = tanh(W z + x + b)`` (``deqkit.problems.tanh_problem``, ‖W‖₂ = 0.9), float32, relative residual 1e-4
(``abstol=0``), one torch thread. For each case: the median time of one evaluation of ``f`` (over 200 calls), then for
each forward solver the median wall time of ``--repeats`` solves (runs interleaved), its evaluations, the floor
``nfe × t_f`` and the ratio ``wall / floor``; TorchDEQ 0.1.0's Anderson and Broyden side by side (where installed,
``stop_mode='rel'``, ``tol=1e-4``). The backward rows time the implicit backward's linear solve alone (``u = g + u J``
at a converged ``z*``, GMRES and Anderson, relative tolerance 1e-4) against its floor: products × the time of one
vector–Jacobian product.

    python -m benchmarks overhead [--cases 128x128 512x32 32x8] [--repeats 15] [--layernorm]   # → docs/img/overhead.png
    python -m benchmarks overhead --compile   # a Picard step and its bookkeeping, eager against torch.compile
    python -m benchmarks overhead --ops       # tensor operations per step beyond f, and their time per operation
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

import deqkit
from deqkit.problems import tanh_problem
from deqkit.solvers import GMRES, AffineMap, Tolerances, monitor, run

from .forward import load, save, torchdeq_available

SOLVERS = ("picard", "anderson", "broyden", "dynamic_ss")
#: The issue's targets for wall / floor, by (d, batch) and row (drawn on the plot)
TARGETS = {
    (128, 128): {
        "deqkit picard": 1.5,
        "deqkit anderson": 2.5,
        "deqkit dynamic_ss": 3.0,
        "implicit backward, GMRES": 2.5,
    },
    (512, 32): {"deqkit picard": 1.3, "deqkit anderson": 1.8, "deqkit dynamic_ss": 2.0},
}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def case(d: int, batch: int, layernorm: bool) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    block, x = tanh_problem(d, 0.9, batch=batch, dtype=torch.float32)
    w, b = block.weight.detach(), block.bias.detach()
    if layernorm:
        return lambda z: torch.nn.functional.layer_norm(torch.tanh(z @ w.T + x + b), (d,)), x
    return lambda z: torch.tanh(z @ w.T + x + b), x


def forward_rows(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> list[dict]:
    z0 = torch.zeros_like(x)
    t_f = median_time(lambda: f(z0), 200)
    runs: dict[str, Callable[[], int]] = {}
    converged: dict[str, bool] = {}  # deqkit's own verdict (TorchDEQ's runs: not recorded)
    for name in SOLVERS:

        def go(name: str = name) -> int:
            _, stats = deqkit.solve(f, z0, solver=name, abstol=0.0, reltol=1e-4, max_steps=500)
            converged[f"deqkit {name}"] = stats.all_converged
            return stats.nfe

        runs[f"deqkit {name}"] = go
    if torchdeq_available():
        from torchdeq.solver import get_solver

        for name in ("anderson", "broyden"):
            solver = get_solver(name)

            def peer(solver: Callable = solver) -> int:
                calls = []

                def counted(z: torch.Tensor) -> torch.Tensor:
                    calls.append(1)
                    return f(z)

                solver(counted, z0, max_iter=500, tol=1e-4, stop_mode="rel")
                return len(calls)

            runs[f"TorchDEQ {name}"] = peer
    times: dict[str, list[float]] = {k: [] for k in runs}
    nfe = {k: fn() for k, fn in runs.items()}  # warm-up, and the (deterministic) evaluation counts
    for _ in range(repeats):  # interleaved: other load slows every run alike
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    rows = []
    for k in runs:
        wall = statistics.median(times[k])
        rows.append(
            {
                "solver": k,
                "nfe": nfe[k],
                "t_f": t_f,
                "wall": wall,
                "ratio": wall / (nfe[k] * t_f),
                "converged": converged.get(k),
            }
        )
    return rows


def backward_rows(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> list[dict]:
    with torch.no_grad():
        z_star, _ = deqkit.solve(f, torch.zeros_like(x), solver="anderson", abstol=0.0, reltol=1e-6)
    z = z_star.clone().requires_grad_()
    fz = f(z)
    g = torch.randn_like(x, generator=torch.Generator().manual_seed(0))

    def linear(u: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(fz, z, u, retain_graph=True)[0]

    vjp = AffineMap(g, linear)  # u ↦ g + uJ, as the implicit backward hands it to the solvers
    t_p = median_time(lambda: vjp(g), 200)
    rows = []
    for name, solver in (("GMRES", GMRES()), ("anderson", deqkit.Anderson())):

        def go(solver: deqkit.Solver = solver) -> int:
            return run(solver, vjp, g, Tolerances(0.0, 1e-4, 500)).stats.nfe

        nfe = go()
        wall = median_time(go, repeats)
        rows.append(
            {
                "solver": f"implicit backward, {name}",
                "nfe": nfe,
                "t_f": t_p,
                "wall": wall,
                "ratio": wall / (nfe * t_p),
                "converged": None,
            }
        )
    return rows


def top_level_ops(fn: Callable[[], object]) -> int:
    """The tensor operations ``fn`` dispatches (aten operators called from Python, not those they call in turn),
    counted with torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def ops_rows(d: int, batch: int, repeats: int) -> list[dict]:
    """Per forward solver: the tensor operations per step beyond those of ``f``, and the wall time per step beyond
    ``f`` divided by them (what one operation costs in that solver, dispatch included).

    The monitor keeps its per-sample records as tensors here, as on a GPU (each operation a kernel launch): on the
    CPU it keeps them as numpy arrays, whose operations torch.profiler does not see."""
    saved, monitor.HOST_ARRAYS = monitor.HOST_ARRAYS, False
    try:
        return _ops_rows(d, batch, repeats)
    finally:
        monitor.HOST_ARRAYS = saved


def _ops_rows(d: int, batch: int, repeats: int) -> list[dict]:
    f, x = case(d, batch, False)
    z0 = torch.zeros_like(x)
    f_ops, t_f = top_level_ops(lambda: f(z0)), median_time(lambda: f(z0), 200)
    rows = []
    for name in SOLVERS:

        def go(name: str = name) -> deqkit.SolverStats:
            return deqkit.solve(f, z0, solver=name, abstol=0.0, reltol=1e-4, max_steps=500)[1]

        stats = go()
        ops = top_level_ops(go) - f_ops * stats.nfe
        wall = median_time(go, repeats)
        rows.append(
            {
                "case": f"d={d}, batch={batch}",
                "solver": f"deqkit {name}",
                "nfe": stats.nfe,
                "ops_per_eval": ops / stats.nfe,
                "us_per_op": (wall - stats.nfe * t_f) / ops * 1e6,
            }
        )
    return rows


def compile_rows(d: int, batch: int, repeats: int) -> dict:
    """One Picard step with the monitor's per-sample arithmetic (residual, norms, rule, best residual, counts, frozen
    copy; no host read), eager and under ``torch.compile``: does fusing the bookkeeping with ``f`` pay on CPU? And a
    whole solve of such compiled steps (a host read of the counts after each, nothing else: a lower bound for a
    compiled solver) against deqkit's eager Picard, each over its own evaluations."""
    f, x = case(d, batch, False)

    def step(z: torch.Tensor, residual: torch.Tensor, converged: torch.Tensor, reltol: float) -> tuple:
        fz = f(z)
        r = fz - z
        res, scale = r.abs().amax(1), fz.abs().amax(1)
        running = ~converged
        meets = running & (res <= reltol * scale)
        better = running & ((res < residual) | meets)
        worst = torch.where(running, res, residual).amax()
        converged = converged | meets
        counts = torch.stack([converged, better]).sum(1)
        return torch.where(converged[:, None], z, fz), torch.where(better, res, residual), converged, worst, counts

    z, residual = torch.zeros_like(x), torch.full((batch,), float("inf"))
    converged = torch.zeros(batch, dtype=torch.bool)
    t_f = median_time(lambda: f(z), 200)
    eager = median_time(lambda: step(z, residual, converged, 1e-4), 200)
    start = time.perf_counter()
    compiled = torch.compile(step, dynamic=False)
    compiled(z, residual, converged, 1e-4)
    compile_s = time.perf_counter() - start
    fused = median_time(lambda: compiled(z, residual, converged, 1e-4), 200)

    def loop() -> int:  # a whole Picard solve of compiled steps, with a host read of the counts after each
        state = (torch.zeros_like(x), torch.full((batch,), float("inf")), torch.zeros(batch, dtype=torch.bool))
        for nfe in range(1, 501):
            *state, _, counts = compiled(*state, 1e-4)
            if int(counts[0]) == batch:
                return nfe
        return 500

    deqkit_nfe = deqkit.solve(f, z, solver="picard", abstol=0.0, reltol=1e-4, max_steps=500)[1].nfe
    solve_eager = median_time(lambda: deqkit.solve(f, z, solver="picard", abstol=0.0, reltol=1e-4, max_steps=500), 30)
    loop_nfe, solve_loop = loop(), median_time(loop, 30)
    return {
        "case": f"d={d}, batch={batch}",
        "t_f": t_f,
        "eager": eager,
        "compiled": fused,
        "compile_s": compile_s,
        "solve_ratio": solve_eager / (deqkit_nfe * t_f),
        "loop_ratio": solve_loop / (loop_nfe * t_f),
        "nfe": (deqkit_nfe, loop_nfe),
    }


def plot(rows: list[dict], path: str | None) -> str | None:
    """Wall / floor per row, one panel per case (a row of panels per size), with the targets where the issue sets
    them (short black bars)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    if not path:
        return None
    cases = list(dict.fromkeys(r["case"] for r in rows))
    ncols = min(2, len(cases))
    nrows = -(-len(cases) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, label in zip(axes, cases):
        mine = [r for r in rows if r["case"] == label]
        names = [r["solver"].replace("implicit backward, ", "backward ") for r in mine]
        colors = ["tab:orange" if r["solver"].startswith("TorchDEQ") else "tab:blue" for r in mine]
        ax.bar(range(len(mine)), [r["ratio"] for r in mine], color=colors)
        for i, r in enumerate(mine):
            if r.get("target") is not None:
                ax.hlines(r["target"], i - 0.4, i + 0.4, color="k", lw=2)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xticks(range(len(mine)), names, rotation=35, ha="right", fontsize=8)
        ax.set(title=label, ylabel="wall / floor", yscale="log")
        top = max(r["ratio"] for r in mine)
        ticks = [t for t in (1, 1.5, 2, 3, 5, 10, 20, 40, 100) if t <= 1.2 * top]
        ax.set_yticks(ticks, [f"{t:g}×" for t in ticks], fontsize=8)
        ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[len(cases) :]:
        ax.set_visible(False)
    fig.suptitle(
        "Wall time of a solve / (evaluations × time of one f); blue: deqkit, orange: TorchDEQ, black bars: targets"
    )
    return save(fig, path)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["128x128", "512x32", "32x8"], help="d x batch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--layernorm", action="store_true", help="also f = LayerNorm(tanh(W z + x + b))")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--plot", default=None, help="PNG path of the table's plot (default docs/img/overhead.png; '' for none)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="instead: one Picard step with its bookkeeping, eager against torch.compile",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="instead: tensor operations per evaluation beyond f's own, and the time per operation (the monitor's "
        "per-sample records as tensors, as on a GPU)",
    )
    args = parser.parse_args(argv)
    if args.plot is not None and (args.ops or args.compile):
        parser.error("--plot draws the table; --ops and --compile print tables of their own, without a plot")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    try:
        sizes = [tuple(int(v) for v in c.lower().split("x")) for c in args.cases]
    except ValueError:
        parser.error(f"--cases takes d x batch, e.g. 128x128; got {args.cases}")
    torch.set_num_threads(args.threads)
    if args.ops:
        print(
            f"overhead --ops: torch {torch.__version__}, {args.threads} thread(s); the monitor's records as tensors "
            f"(a GPU's way); load average {load()}\n"
        )
        print("| case | solver | evaluations | operations per evaluation beyond f | µs per operation |")
        print("|---|---|---:|---:|---:|")
        rows = [r for d, batch in sizes for r in ops_rows(d, batch, args.repeats)]
        for r in rows:
            print(f"| {r['case']} | {r['solver']} | {r['nfe']} | {r['ops_per_eval']:.0f} | {r['us_per_op']:.2f} |")
        return rows
    if args.compile:
        print(f"overhead --compile: torch {torch.__version__}, {args.threads} thread(s); load average {load()}\n")
        print(
            "| case | time of f (µs) | eager step (µs) | compiled step (µs) | eager / f | compiled / f | compile (s) "
            "| evaluations: deqkit picard / compiled loop | solve / floor: deqkit picard | compiled loop |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        rows = [compile_rows(d, batch, args.repeats) for d, batch in sizes]
        for r in rows:
            print(
                f"| {r['case']} | {r['t_f'] * 1e6:.0f} | {r['eager'] * 1e6:.0f} | {r['compiled'] * 1e6:.0f} | "
                f"{r['eager'] / r['t_f']:.2f}× | {r['compiled'] / r['t_f']:.2f}× | {r['compile_s']:.1f} | "
                f"{r['nfe'][0]} / {r['nfe'][1]} | {r['solve_ratio']:.2f}× | {r['loop_ratio']:.2f}× |"
            )
        return rows
    print(
        f"overhead: torch {torch.__version__}, {args.threads} thread(s), {args.repeats} interleaved repeats; "
        f"load average {load()}\n"
    )
    print("| case | solver | evaluations | time of f (µs) | wall (ms) | floor (ms) | wall / floor | converged |")
    print("|---|---|---:|---:|---:|---:|---:|:-:|")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)  # shown in the table's last column instead
        for d, batch in sizes:
            for norm in (False, True) if args.layernorm else (False,):
                f, x = case(d, batch, norm)
                label = f"d={d}, batch={batch}" + (", LayerNorm" if norm else "")
                for r in forward_rows(f, x, args.repeats) + backward_rows(f, x, args.repeats):
                    r["case"] = label
                    r["target"] = None if norm else TARGETS.get((d, batch), {}).get(r["solver"])
                    rows.append(r)
                    print(
                        f"| {label} | {r['solver']} | {r['nfe']} | {r['t_f'] * 1e6:.0f} | {r['wall'] * 1e3:.2f} | "
                        f"{r['nfe'] * r['t_f'] * 1e3:.2f} | {r['ratio']:.1f}× | "
                        f"{ {True: 'yes', False: '**no**', None: '—'}[r.get('converged')] } |",
                        flush=True,
                    )
    saved = plot(rows, "docs/img/overhead.png" if args.plot is None else args.plot)
    if saved:
        print(f"\nplot: {saved}")
    print(f"\nload average at the end: {load()}")
    return rows


if __name__ == "__main__":
    main()
