"""The Jacobian penalty over 10 epochs of the LayerNorm MLP-DEQ: forward evaluations per step, test accuracy and
ρ(∂f/∂z) at z*, unregularized against a sweep of γ, with spectral normalization, without LayerNorm, and with the
phantom and one-step gradients.

Every run: :func:`deqkit.models.mlp_deq` (``mlp-ln``, or ``mlp`` without LayerNorm) with the DEQ's defaults
(``dynamic_ss``, the training and evaluation budgets, the implicit gradient), same initial weights and data order,
Adam 1e-3, batch 128, ``--epochs`` epochs of the 60,000 training images; ``--jac-reg γ`` adds
``γ · deqkit.jacobian_penalty(model)`` to the loss. After every epoch a fixed probe batch (the first 256 test
images) measures ρ(∂f/∂z) at z* (``deqkit.spectral_radius``), ‖∂f/∂z‖²_F / d, the evaluations Anderson needs there
without a budget, and the cosine of the run's gradient with the implicit one (:func:`deqkit.teach.stable_runs.probe`).
The runs are saved as JSON (``--out``; notebook 06 reads
``deqkit/teach/results/jacobian_reg.json``, package data) and plotted.

    python -m benchmarks jacobian_reg [--epochs 10] [--only NAME ...] [--threads 1] [--out FILE] [--plot FILE]
    python -m benchmarks jacobian_reg --from a.json b.json     # merge runs trained in separate processes
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch

from deqkit.teach import stable_runs as stable

from .forward import environment, fmt_ratio, load, save


def merge(paths: list[str]) -> dict:
    """One document from several (runs in :data:`~deqkit.teach.stable_runs.RUNS` order; settings must agree)."""
    docs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    settings = {json.dumps(d["settings"], sort_keys=True) for d in docs}
    if len(settings) > 1:
        raise SystemExit(f"the files were made with different settings: {sorted(settings)}")
    runs = {r["name"]: r for d in docs for r in d["runs"]}
    order = [s.name for s in stable.RUNS if s.name in runs] + [n for n in runs if n not in stable.RUN_NAMES]
    return {
        "settings": docs[0]["settings"],
        "environment": [d["environment"] for d in docs],
        "runs": [runs[n] for n in order],
    }


def print_table(doc: dict, threads: int) -> None:
    s = stable.summary(doc)
    by = {r["name"]: r for r in doc["runs"]}
    epochs = doc["settings"]["epochs"]
    print(
        f"\n### Jacobian penalty, normalization and gradient methods: {epochs} epochs of the MLP-DEQ  "
        f"({environment(threads)})\n"
    )
    print(f"Last epoch of each run; ratios against **{stable.BASELINE}** (same weights, data order and settings).\n")
    print(
        "| run | fwd evals/step | ratio | fwd not converged (samples) | Anderson evals on the probe, no budget "
        "| ρ(∂f/∂z) mean / max | ‖∂f/∂z‖²_F / d | gradient cosine | test acc. % | Δ acc. (points) | s / epoch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in by.items():
        last, row = run["epochs"][-1], s[name]
        secs = sum(r["seconds"] for r in run["epochs"] if r["epoch"] > 0) / epochs
        print(
            f"| {name} | {last['fwd_nfe_mean']:.1f} | {fmt_ratio(row['nfe_ratio'])} | {last['fwd_unconverged']} "
            f"| {last['probe_nfe']} | {last['rho_mean']:.3f} / {last['rho_max']:.3f} | {last['frobenius']:.3f} "
            f"| {last['grad_cos']:.4f} | {last['test_acc']:.2f} | {0.0 - row['acc_drop']:+.2f} | {secs:.1f} |"
        )
    print("\nOver the epochs (forward evaluations per step / ρ mean at z* / test accuracy %):\n")
    print("| run | " + " | ".join(f"epoch {e}" for e in range(epochs + 1)) + " |")
    print("|---|" + "---:|" * (epochs + 1))
    for name, run in by.items():
        cells = [
            f"— / {r['rho_mean']:.3f} / —"
            if r["epoch"] == 0
            else f"{r['fwd_nfe_mean']:.1f} / {r['rho_mean']:.3f} / {r['test_acc']:.2f}"
            for r in run["epochs"]
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    inside = [
        n
        for n in stable.GAMMA_RUNS
        if n in s and n != stable.BASELINE and s[n]["nfe_ratio"] <= 0.7 and s[n]["acc_drop"] <= 0.3
    ]
    print(
        f"\nγ runs with ≤ 0.7× the unregularized run's forward evaluations per step at ≤ 0.3 points of accuracy "
        f"(last epoch): {', '.join(inside) if inside else 'none'}."
    )


def plot(doc: dict, path: str | None) -> str | None:
    """The curves notebook 06 draws (forward evaluations, probe cost, ρ, accuracy, gradient cosine) for every run,
    and the trade-off."""
    if not path:
        return None
    from matplotlib.figure import Figure

    by = {r["name"]: r for r in doc["runs"]}
    fig = Figure(figsize=(15, 7.5), layout="constrained")
    axes = fig.subplots(2, 3)
    keys = (
        ("fwd_nfe_mean", "forward evaluations / training step", True),
        ("probe_nfe", "Anderson evaluations to 1e-4 on the probe (no budget)", False),
        ("rho_mean", "ρ(∂f/∂z) at z* (mean over the probe)", False),
        ("test_acc", "test accuracy (%)", True),
        ("grad_cos", "gradient cosine with the implicit one", False),
    )
    for ax, (key, title, trained) in zip(axes.flat, keys):
        for name, run in by.items():
            rows = [r for r in run["epochs"] if key in r and (r["epoch"] > 0 or not trained)]
            style = {"color": "k", "lw": 2} if name == stable.BASELINE else {"lw": 1.2}
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], ".-", label=name, **style)
        ax.set(xlabel="epoch", title=title)
    axes[0, 0].legend(fontsize=7)
    s = stable.summary(doc)
    ax = axes[1, 2]
    ax.axvspan(0, 0.7, ymax=1, color="tab:green", alpha=0.1)
    ax.axhline(0.3, color="tab:green", lw=0.8, ls="--")
    for name in by:
        if name != stable.BASELINE:
            ax.plot(s[name]["nfe_ratio"], s[name]["acc_drop"], "o")
            ax.annotate(
                name.replace("LayerNorm, ", ""),
                (s[name]["nfe_ratio"], s[name]["acc_drop"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set(
        xlabel="forward evaluations / step, ratio to unregularized",
        ylabel="test accuracy drop (points)",
        title="last epoch: target ≤ 0.7× at ≤ 0.3 points (green)",
    )
    return save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks jacobian_reg", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=int, default=None, help="train on this many images (default: all)")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"runs to train (default: all): {', '.join(map(repr, stable.RUN_NAMES))}",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="deqkit/teach/results/jacobian_reg.json", help="JSON file ('' for none)")
    parser.add_argument("--plot", default="docs/img/jacobian_reg.png", help="PNG path ('' for none)")
    parser.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        default=None,
        metavar="FILE",
        help="merge these JSON files instead of training",
    )
    parser.add_argument("--fast", action="store_true", help="1 epoch on 512 images, baseline and γ = 1 only")
    parser.add_argument("--progress", action="store_true", help="show the training progress bars")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.epochs < 1:
        parser.error("--threads and --epochs must be >= 1")
    unknown = sorted(set(args.only or ()) - set(stable.RUN_NAMES))
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {list(stable.RUN_NAMES)}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.sources:
        doc = merge(args.sources)
    else:
        epochs, subset, only = (
            (1, 512, [stable.BASELINE, "LayerNorm, γ = 1"]) if args.fast else (args.epochs, args.subset, args.only)
        )
        doc = stable.regenerate(epochs=epochs, subset=subset, only=only, progress=args.progress)
    if args.out:
        path = pathlib.Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"runs: {path}")
    if stable.BASELINE in {r["name"] for r in doc["runs"]}:
        print_table(doc, args.threads)
    saved = plot(doc, args.plot)
    if saved:
        print(f"\nplot: {saved}")
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end: {load()}")
    return doc


if __name__ == "__main__":
    main()
