"""Accuracy at the training budget: output error and gradient cosine of each forward solver against a converged
float64 reference, on the block families people train, at initialisation, after training, and on an MDEQ-style
conv DEQ trained on MNIST.

Part 1, blocks (``deqkit.problems.block_problem``: plain tanh MLP, LayerNorm MLP, conv + GroupNorm, MDEQ-style
residual conv), float64, training mode, budget 30 evaluations forward and 30 products backward:

* ``deqkit defaults`` — ``DEQ(block)``: ``dynamic_ss`` (Anderson first, the flow as fallback), implicit GMRES;
* ``deqkit anderson`` / ``deqkit broyden`` — ``DEQ(block, solver=...)``, everything else the defaults;
* ``TorchDEQ anderson + IFT`` — ``get_deq(f_solver="anderson", f_max_iter=30, b_solver="anderson",
  b_max_iter=30, f_tol=b_tol=1e-5, ift=True)`` (only when TorchDEQ 0.1.0 is installed).

Each is scored against a reference solve (Anderson to ``‖f(z) − z‖∞ ≤ 1e-12``, implicit backward to 1e-13):
``error = ‖out − out_ref‖ / ‖out_ref‖`` and the cosine between the gradients, with respect to every parameter of
the block, of the loss ``Σ wᵢ outᵢ`` (fixed weights ``w``). "After training" is after ``--train-steps`` Adam steps
(lr 1e-2, float32, defaults) fitting ``tanh`` of a random projection of ``x``, which makes each block harder to solve.

Part 2, MNIST (``--mnist``): the MDEQ-style block as the DEQ of an MNIST classifier (conv stem to 7×7, 16 channels,
``MDEQFamily(16, 32, 8)``, linear head), trained ``--epochs`` epochs (Adam 1e-3, batch 128) once with each
configuration from the same initial weights and batch order; then, on 128 training digits, each trained model's
gradient (float64) against its own converged gradient, and the mean training loss of the last epoch.

    python -m benchmarks gradient_quality [--families ...] [--train-steps 100] [--mnist] [--epochs 3] [--subset N]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import deqkit
from deqkit.problems import FAMILIES, MDEQFamily, block_problem

from .forward import torchdeq_available

BUDGET = 30
CONFIGS: dict[str, dict[str, Any]] = {
    "deqkit defaults": {},
    "deqkit anderson": {"solver": "anderson"},
    "deqkit broyden": {"solver": "broyden"},
}
TORCHDEQ = "TorchDEQ anderson + IFT"
TORCHDEQ_CONFIG = {
    "f_solver": "anderson",
    "f_max_iter": BUDGET,
    "f_tol": 1e-5,
    "f_stop_mode": "rel",
    "b_solver": "anderson",
    "b_max_iter": BUDGET,
    "b_tol": 1e-5,
    "b_stop_mode": "rel",
    "ift": True,
}
DATA = Path(__file__).resolve().parents[1] / "docs" / "data" / "gradient_quality.json"


class TorchDEQLayer(nn.Module):
    """``z* = block(z*, x)`` solved and differentiated by TorchDEQ, returning ``z*`` (deqkit returns ``f(z*)``)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        from torchdeq import get_deq

        self.f, self.deq = block, get_deq(**TORCHDEQ_CONFIG)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, _ = self.deq(lambda z: self.f(z, x), torch.zeros_like(x))
        return z[-1]


def layer(config: str, block: nn.Module) -> nn.Module:
    """The layer of one configuration around ``block`` (shared, not copied)."""
    if config == TORCHDEQ:
        return TorchDEQLayer(block)
    if config == "reference":
        return deqkit.DEQ(
            block,
            solver=deqkit.Anderson(),
            abstol=1e-12,
            reltol=0,
            max_steps=5000,
            max_nfe=None,
            backward=deqkit.Implicit(abstol=1e-13, reltol=0, max_steps=5000),
        )
    return deqkit.DEQ(block, max_nfe=BUDGET, **CONFIGS[config])


SELECTED: list[str] | None = None  # --configs


def configs() -> list[str]:
    every = [*CONFIGS, *([TORCHDEQ] if torchdeq_available() else [])]
    return [c for c in every if SELECTED is None or c in SELECTED]


def output_and_gradient(
    model: nn.Module, params: list[nn.Parameter], inputs: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's output and the gradient of ``loss(output)`` to ``params``, in training mode."""
    model.train()
    for p in params:
        p.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)  # at the budget, by design; scored instead
        out = model(inputs)
        loss(out).backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in params])


def score(out: torch.Tensor, grad: torch.Tensor, ref_out: torch.Tensor, ref_grad: torch.Tensor) -> dict[str, float]:
    return {
        "error": float((out - ref_out).norm() / ref_out.norm()),
        "cosine": float(F.cosine_similarity(grad, ref_grad, dim=0)),
    }


def weighted_sum(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


def measure_block(block: nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Every configuration against the reference, on ``block`` and ``x`` in float64."""
    block, x = copy.deepcopy(block).double(), x.double()
    params = list(block.parameters())
    ref_out, ref_grad = output_and_gradient(layer("reference", block), params, x, weighted_sum)
    return {
        name: score(*output_and_gradient(layer(name, block), params, x, weighted_sum), ref_out, ref_grad)
        for name in configs()
    }


def train_block(block: nn.Module, x: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """``steps`` Adam steps of the defaults fitting ``tanh(P x)``, in float32; returns the trained copy."""
    block = copy.deepcopy(block).float()
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    target = torch.tanh(flat @ torch.randn(flat.shape[1], flat.shape[1], generator=gen) / flat.shape[1] ** 0.5)
    deq, opt = deqkit.DEQ(block), torch.optim.Adam(block.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(deq(x).flatten(1), target).backward()
            opt.step()
    return block


def blocks_part(families: list[str], train_steps: int) -> list[dict[str, Any]]:
    rows = []
    for family in families:
        block, x = block_problem(family, batch=8, size=32 if family in ("mlp", "layernorm") else 16)
        for stage, b in (("init", block), (f"after {train_steps} steps", train_block(block, x, train_steps, 0))):
            start = time.perf_counter()
            for config, s in measure_block(b, x).items():
                rows.append({"family": family, "stage": stage, "config": config, **s})
            print(f"  {family}, {stage}: {time.perf_counter() - start:.1f} s", flush=True)
    return rows


class MDEQClassifier(nn.Module):
    """Conv stem to 7×7 (16 channels), the MDEQ-style block as the DEQ, a linear head."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.GroupNorm(4, channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(4, channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.block = MDEQFamily(channels, 2 * channels, 8)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 49, 10))
        self.deq: nn.Module = nn.Identity()

    def use(self, config: str) -> MDEQClassifier:
        self.deq = layer(config, self.block)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.deq(self.stem(images)))


def mnist_part(epochs: int, subset: int | None, seed: int) -> list[dict[str, Any]]:
    from deqkit.data import mnist_datasets

    train_set, _ = mnist_datasets(subset=subset)
    images, labels = train_set.tensors
    torch.manual_seed(seed)
    initial = MDEQClassifier()
    probe = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))[:128]
    rows = []
    for config in configs():
        model = copy.deepcopy(initial).use(config)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        start, losses = time.perf_counter(), []
        for epoch in range(epochs):
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 100 + epoch))
            losses = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
                for i in range(0, len(order), 128):
                    idx = order[i : i + 128]
                    opt.zero_grad()
                    loss = F.cross_entropy(model(images[idx]), labels[idx])
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
            print(
                f"  {config}: epoch {epoch + 1}, loss {sum(losses) / len(losses):.4f}, "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        trained = MDEQClassifier()
        trained.load_state_dict(model.state_dict(), strict=False)  # the trained weights, without the layer's caches
        trained.double()
        params = list(trained.parameters())

        def ce(logits: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, labels[probe])

        x = images[probe].double()
        ref = output_and_gradient(trained.use("reference"), params, x, ce)
        got = output_and_gradient(trained.use(config), params, x, ce)
        rows.append(
            {
                "config": config,
                "epochs": epochs,
                "train_loss": sum(losses) / len(losses),
                "seconds": time.perf_counter() - start,
                **score(*got, *ref),
            }
        )
    return rows


def print_blocks(rows: list[dict[str, Any]]) -> None:
    print("\n| family | stage | configuration | output error | gradient cosine |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['family']} | {r['stage']} | {r['config']} | {r['error']:.2e} | {r['cosine']:.4f} |")


def print_mnist(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| configuration | epochs | last-epoch training loss | gradient cosine (128 digits) | output error | "
        "seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['epochs']} | {r['train_loss']:.4f} | {r['cosine']:.4f} | {r['error']:.2e} | "
            f"{r['seconds']:.0f} |"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks gradient_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--mnist", action="store_true", help="also train the MDEQ-style classifier on MNIST")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=None, help="train on this many MNIST digits (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=[*CONFIGS, TORCHDEQ],
        default=None,
        help="measure only these configurations (default: all)",
    )
    parser.add_argument("--save", action="store_true", help=f"write the results to {DATA.relative_to(DATA.parents[2])}")
    args = parser.parse_args(argv)
    if args.train_steps < 1 or args.epochs < 1:
        parser.error("--train-steps and --epochs must be at least 1")
    torch.set_num_threads(args.threads)
    global SELECTED
    SELECTED = args.configs
    print(
        f"gradient_quality: torch {torch.__version__}, {args.threads} thread(s), budget {BUDGET}; configurations: "
        f"{', '.join(configs())}",
        flush=True,
    )
    result: dict[str, Any] = {"blocks": blocks_part(args.families, args.train_steps)}
    print_blocks(result["blocks"])
    if args.mnist:
        result["mnist"] = mnist_part(args.epochs, args.subset, args.seed)
        print_mnist(result["mnist"])
    if args.save:
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
