"""Forward solves of z = tanh(W z + x): deqkit's solvers against TorchDEQ's on the same map.

Cases: d = 64, 256, 512, batch 32, float32; W = s·Q with Q a random orthogonal matrix, so that ‖W‖₂ = s for
s = 0.5, 0.9, 0.99 (every singular value is s: the hardest W of that norm), x ~ N(0, 1); and the non-contractive
case W = −1.5·P/‖P‖₂ (P = AAᵀ, PSD), x ~ 0.1·N(0, 1), where plain iteration oscillates and never converges.

Stopping rule. deqkit: its own rule with ``abstol=0, reltol=1e-4`` (per sample, ‖f(z) − z‖∞ ≤ 1e-4·‖f(z)‖∞).
TorchDEQ 0.1.0 offers ``stop_mode='rel'``: stop when max over the batch of ‖f(z) − z‖₂ / (‖f(z)‖₂ + 1e-9) < tol,
run with ``tol=1e-4`` ("native"). The two rules differ (∞-norm per sample vs 2-norm), so three further columns
make the comparison exact:

* ``TorchDEQ NFE at deqkit's rule``: every call of the map is traced (a separate, untimed run with a 100× tighter
  tolerance; the iterates do not depend on the tolerance): the number of evaluations after which every sample
  has met deqkit's rule at some evaluation.
* ``TorchDEQ ms at deqkit's rule``: a timed run whose map wrapper stops TorchDEQ (by an exception) as soon as
  every sample has met deqkit's rule (TorchDEQ's own test is switched off with ``tol=0``). The wrapper's check
  is one residual norm and one host sync per call, the work deqkit's monitor does.
* the final relative residual of every returned answer, recomputed here in both norms.

NFE is counted by wrapping the map with a counter (both libraries). Wall times are medians over interleaved
repeats (the order of the solvers rotates every repeat) with a fixed number of torch threads, under
``torch.no_grad()``. Each figure is also given as a ratio against the baseline — TorchDEQ's Anderson when
TorchDEQ is installed, else deqkit's Anderson — measured in the same process.

    python -m benchmarks forward [--dims 64 256 512] [--norms 0.5 0.9 0.99] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import deqkit
from deqkit.problems import tanh_weight

RELTOL = 1e-4
DEQKIT_METHODS = ("picard", "anderson", "broyden", "dynamic_ss")
TORCHDEQ_METHODS = ("anderson", "broyden")
PSD = "psd"  # the non-contractive case's "norm" label

# --------------------------------------------------------------------------------------------------------------
# Shared by every benchmark module


def environment(threads: int) -> str:
    """One line that goes with every table: versions, threads, load average."""
    return f"torch {torch.__version__}, {threads} torch thread(s), {os.cpu_count()} CPU cores, load average {load()}"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def torchdeq_available() -> bool:
    try:
        import torchdeq  # noqa: F401
    except ImportError:
        return False
    return True


def tanh_case(
    d: int, norm: float | str, batch: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, x)`` of one case: ``W = norm·Q`` (Q orthogonal), or ``−1.5·P/‖P‖₂`` (P PSD) for ``norm='psd'``."""
    gen = torch.Generator().manual_seed(seed)
    if norm == PSD:
        w = tanh_weight(d, 1.5, "psd", generator=gen)
        x = 0.1 * torch.randn(batch, d, generator=gen, dtype=torch.float64)
    else:
        w = tanh_weight(d, float(norm), "orthogonal", generator=gen)
        x = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    return w.to(dtype), x.to(dtype)


class Counted:
    """``f`` with a call counter; optionally a trace of per-sample relative residuals of every call."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], trace: bool = False):
        self.f, self.trace, self.calls = f, trace, 0
        self.rel_inf: list[torch.Tensor] = []
        self.rel_2: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        fz = self.f(z)
        if self.trace:
            r, fl = (fz - z).flatten(1), fz.flatten(1)
            self.rel_inf.append(r.abs().amax(1) / fl.abs().amax(1).clamp_min(1e-30))
            self.rel_2.append(r.norm(dim=1) / fl.norm(dim=1).clamp_min(1e-30))
        return fz

    def calls_to(self, norm: str, tol: float) -> int | None:
        """Calls after which every sample has had a relative residual ≤ tol (None: some never did)."""
        rel = torch.stack(self.rel_inf if norm == "inf" else self.rel_2)  # (calls, batch)
        met = rel <= tol
        if not bool(met.any(0).all()):
            return None
        return int(met.float().argmax(0).max()) + 1


class _Stop(Exception):
    pass


class StopAtRule(Counted):
    """Counts calls and raises :class:`_Stop` once every sample has met deqkit's rule (reltol, abstol = 0)."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], reltol: float):
        super().__init__(f)
        self.reltol, self.met = reltol, None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        fz = super().__call__(z)
        r, fl = (fz - z).flatten(1), fz.flatten(1)
        meets = r.abs().amax(1) <= self.reltol * fl.abs().amax(1)
        self.met = meets if self.met is None else self.met | meets
        if bool(self.met.all()):
            raise _Stop
        return fz


def relative_residuals(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[float, float]:
    """Largest per-sample ``‖f(z) − z‖/‖f(z)‖`` over the batch, in the ∞-norm and the 2-norm."""
    fz = f(z)
    r, fl = (fz - z).flatten(1), fz.flatten(1)
    return (float((r.abs().amax(1) / fl.abs().amax(1)).max()), float((r.norm(dim=1) / fl.norm(dim=1)).max()))


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time (s) of each callable; all are run once per repeat, in an order rotated every repeat."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(warmup + repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name]()
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
    return {n: statistics.median(t) for n, t in times.items()}


def fmt_ratio(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}×"


def short(case: str) -> str:
    """A two-line tick label for a case: ``d`` over ``‖W‖₂`` (or ``PSD``)."""
    d, _, w = case.partition(", ")
    return d.removeprefix("d=") + "\n" + ("PSD" if "PSD" in w else w.removeprefix("‖W‖₂="))


def save(fig, path: str | os.PathLike | None) -> str | None:
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# The forward benchmark


@dataclass
class Result:
    """One solver on one case."""

    case: str
    solver: str  # e.g. "deqkit anderson", "TorchDEQ anderson"
    nfe: int
    converged: bool
    seconds: float
    rel_inf: float
    rel_2: float
    nfe_at_deqkit_rule: int | None = None  # TorchDEQ only
    seconds_at_deqkit_rule: float | None = None  # TorchDEQ only
    extra: dict = field(default_factory=dict)


def _deqkit_run(method: str, f, x: torch.Tensor, reltol: float, max_steps: int):
    def go():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", deqkit.ConvergenceWarning)
            z, stats = deqkit.solve(
                f, torch.zeros_like(x), solver=method, abstol=0.0, reltol=reltol, max_steps=max_steps
            )
        return z, stats.all_converged and not caught

    return go


def _torchdeq_run(method: str, f, x: torch.Tensor, tol: float, max_iter: int):
    from torchdeq.solver import get_solver

    solver = get_solver(method)

    def go():
        z, _, info = solver(f, torch.zeros_like(x), max_iter=max_iter, tol=tol, stop_mode="rel")
        return z, bool((info["rel_lowest"] < tol).all()) if tol > 0 else True

    return go


def run_case(
    d: int,
    norm: float | str,
    *,
    batch: int = 32,
    repeats: int = 15,
    reltol: float = RELTOL,
    max_steps: int = 500,
    torchdeq_max_iter: int = 100,
    use_torchdeq: bool = True,
    methods: Sequence[str] = DEQKIT_METHODS,
) -> list[Result]:
    """Every solver on one case: NFE, convergence, median wall time, final residuals (see the module doc)."""
    w, x = tanh_case(d, norm, batch)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ w.T + x)

    case = f"d={d}, " + ("W=−1.5·PSD" if norm == PSD else f"‖W‖₂={norm}")
    counters: dict[str, Counted] = {}
    runs: dict[str, Callable[[], object]] = {}
    outcome: dict[str, tuple[torch.Tensor, bool]] = {}
    for m in methods:
        c = counters[f"deqkit {m}"] = Counted(f)
        runs[f"deqkit {m}"] = _deqkit_run(m, c, x, reltol, max_steps)
    tdq = use_torchdeq and torchdeq_available()
    if tdq:
        for m in TORCHDEQ_METHODS:
            c = counters[f"TorchDEQ {m}"] = Counted(f)
            runs[f"TorchDEQ {m}"] = _torchdeq_run(m, c, x, reltol, torchdeq_max_iter)
            stopper = counters[f"TorchDEQ {m} @deqkit rule"] = StopAtRule(f, reltol)
            run = _torchdeq_run(m, stopper, x, 0.0, torchdeq_max_iter)

            def matched(run=run, stopper=stopper):
                stopper.met = None
                try:
                    run()
                except _Stop:
                    pass

            runs[f"TorchDEQ {m} @deqkit rule"] = matched

    with torch.no_grad():
        for name, run in runs.items():  # one untimed run each: NFE, answer, convergence
            counters[name].calls = 0
            out = run()
            if out is not None:
                outcome[name] = out
            counters[name].nfe = counters[name].calls
        medians = interleaved_medians(runs, repeats)
        results = []
        for name, (z, ok) in outcome.items():
            rel_inf, rel_2 = relative_residuals(f, z)
            results.append(Result(case, name, counters[name].nfe, ok, medians[name], rel_inf, rel_2))
        # The exact comparison: traced calls (untimed runs, 100x tighter tolerance) give every solver whose calls
        # are all iterates its NFE under either rule with the same per-sample meaning.
        for r in results:
            lib, method = r.solver.split()
            if method == "dynamic_ss":  # its calls include Runge-Kutta stages, which are not iterates
                continue
            tracer = Counted(f, trace=True)
            if lib == "deqkit":
                _deqkit_run(method, tracer, x, reltol / 100, max_steps)()
            else:
                _torchdeq_run(method, tracer, x, reltol / 100, torchdeq_max_iter)()
            r.nfe_at_deqkit_rule = tracer.calls_to("inf", reltol)
            r.extra["nfe_at_torchdeq_rule"] = tracer.calls_to("2", reltol)
            if lib == "TorchDEQ":
                stopped = counters[f"{r.solver} @deqkit rule"]
                r.seconds_at_deqkit_rule = medians[f"{r.solver} @deqkit rule"] if bool(stopped.met.all()) else None
    return results


def baseline_of(results: list[Result]) -> Result:
    by = {r.solver: r for r in results}
    return by.get("TorchDEQ anderson") or by["deqkit anderson"]


def print_tables(all_results: list[list[Result]], threads: int) -> None:
    print(f"\n### Forward solves to relative residual {RELTOL:g}  ({environment(threads)})\n")
    base_name = baseline_of(all_results[0]).solver
    print(f"Ratios are against **{base_name}** on the same case, measured in the same process.\n")
    print("| case | solver | NFE | NFE ratio | median ms | time ratio | converged | final rel. res. ∞ / 2 |")
    print("|---|---|---:|---:|---:|---:|:-:|---|")
    for results in all_results:
        base = baseline_of(results)
        for r in results:
            print(
                f"| {r.case} | {r.solver} | {r.nfe} | {fmt_ratio(r.nfe / base.nfe)} | {r.seconds * 1e3:.2f} | "
                f"{fmt_ratio(r.seconds / base.seconds)} | {'yes' if r.converged else '**no**'} | "
                f"{r.rel_inf:.2e} / {r.rel_2:.2e} |"
            )
    for method in TORCHDEQ_METHODS:
        by_case = [{r.solver: r for r in rs} for rs in all_results]
        pairs = [(by.get(f"deqkit {method}"), by.get(f"TorchDEQ {method}")) for by in by_case]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if not pairs:
            continue
        print(
            f"\n**deqkit {method} vs TorchDEQ {method}** under each library's rule. NFE columns at a rule come "
            "from traced calls: evaluations until every sample has met the rule (∞: deqkit's "
            "‖f(z) − z‖∞ ≤ 1e-4·‖f(z)‖∞; 2: TorchDEQ's ‖f(z) − z‖₂ ≤ 1e-4·‖f(z)‖₂, per sample). 'its rule' times: "
            "each stopping by its own test; 'at ∞ rule': TorchDEQ stopped by its map wrapper at deqkit's rule.\n"
        )
        print(
            "| case | NFE deqkit / TorchDEQ (own stop) | NFE at ∞ rule: deqkit / TorchDEQ | ratio | NFE at 2 rule: "
            "deqkit / TorchDEQ | ratio | ms deqkit / TorchDEQ (own stop) | ratio | TorchDEQ ms at ∞ rule | ratio |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def n(v):
            return "never" if v is None else str(v)

        def div(a, b):
            return None if a is None or b is None else a / b

        for ours, theirs in pairs:
            a_inf, t_inf = ours.nfe_at_deqkit_rule, theirs.nfe_at_deqkit_rule
            a_2, t_2 = ours.extra.get("nfe_at_torchdeq_rule"), theirs.extra.get("nfe_at_torchdeq_rule")
            t_rule = theirs.seconds_at_deqkit_rule
            print(
                f"| {ours.case} | {ours.nfe} / {theirs.nfe} | {n(a_inf)} / {n(t_inf)} | "
                f"{fmt_ratio(div(a_inf, t_inf))} "
                f"| {n(a_2)} / {n(t_2)} | {fmt_ratio(div(a_2, t_2))} | {ours.seconds * 1e3:.2f} / "
                f"{theirs.seconds * 1e3:.2f} | {fmt_ratio(ours.seconds / theirs.seconds)} | "
                f"{'—' if t_rule is None else f'{t_rule * 1e3:.2f}'} | {fmt_ratio(div(ours.seconds, t_rule))} |"
            )
    print(
        "\n**The ODE route against Anderson** (deqkit dynamic_ss: Tsit5 until each sample's residual halved, then "
        "Anderson polishing)\n"
    )
    print("| case | dynamic_ss NFE | anderson NFE | NFE ratio | picard converged | dynamic_ss converged |")
    print("|---|---:|---:|---:|:-:|:-:|")
    for results in all_results:
        by = {r.solver: r for r in results}
        ode, aa, pic = by.get("deqkit dynamic_ss"), by.get("deqkit anderson"), by.get("deqkit picard")
        if ode and aa:
            print(
                f"| {ode.case} | {ode.nfe} | {aa.nfe} | {fmt_ratio(ode.nfe / aa.nfe)} | "
                f"{'—' if pic is None else ('yes' if pic.converged else '**no**')} | "
                f"{'yes' if ode.converged else '**no**'} |"
            )


def plot(all_results: list[list[Result]], path: str | None) -> str | None:
    from matplotlib.figure import Figure

    if not path:
        return None
    cases = [rs[0].case for rs in all_results]
    solvers = [r.solver for r in all_results[0] if "@" not in r.solver]
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / len(solvers)
    for i, s in enumerate(solvers):
        nfe, sec = [], []
        for rs in all_results:
            by, base = {r.solver: r for r in rs}, baseline_of(rs)
            nfe.append(by[s].nfe / base.nfe if s in by else float("nan"))
            sec.append(by[s].seconds / base.seconds if s in by else float("nan"))
        pos = [c + (i - (len(solvers) - 1) / 2) * width for c in range(len(cases))]
        axes[0].bar(pos, nfe, width, label=s)
        axes[1].bar(pos, sec, width, label=s)
    base = baseline_of(all_results[0]).solver
    for ax, what in zip(axes, ("NFE", "median wall time")):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(cases)), [short(c) for c in cases], fontsize=8)
        ax.set(
            xlabel="d / ‖W‖₂ (PSD: W = −1.5·PSD)",
            ylabel=f"{what} / {base}",
            yscale="log",
            title=f"{what} to relative residual {RELTOL:g}",
        )
    axes[0].legend(fontsize=7)
    return save(fig, path)


def main(argv: list[str] | None = None) -> list[list[Result]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks forward", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--norms", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--no-psd", action="store_true", help="skip the non-contractive W = −1.5·PSD cases")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-torchdeq", action="store_true", help="deqkit only (also automatic without TorchDEQ)")
    parser.add_argument("--plot", default="docs/img/forward.png", help="PNG path ('' for none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.no_torchdeq and not torchdeq_available():
        print("TorchDEQ is not installed (pip install torchdeq==0.1.0): deqkit solvers only.")
    norms: list[float | str] = list(args.norms) + ([] if args.no_psd else [PSD])
    all_results = [
        run_case(d, n, batch=args.batch, repeats=args.repeats, use_torchdeq=not args.no_torchdeq)
        for d in args.dims
        for n in norms
    ]
    print_tables(all_results, args.threads)
    saved = plot(all_results, args.plot)
    if saved:
        print(f"\nplot: {saved}")
    print(f"load average at the end: {load()}")
    return all_results


if __name__ == "__main__":
    main()
