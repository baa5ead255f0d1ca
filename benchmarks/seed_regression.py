"""The seed's y = 2x regression: deqkit's defaults vs the literal translation of the Julia code.

Literal translation: torchdiffeq's dopri5 integrates dz/dt = net(z + x) − z over tspan = (0, 1) again and
again (restarting each time) until |dz/dt| meets the tolerance, and training backpropagates through every
solver step. deqkit: one continuous Tsit5 integration stopped by the steady-state rule, implicit gradient.
Both use the same model, initial weights, data order, tolerances (1e-5) and optimiser.

    python -m benchmarks.seed_regression [--epochs 100]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torchdiffeq import odeint

from deqkit.models import fit_regression, seed_regression_model
from deqkit.models.regression import SeedBlock


class LiteralSteadyState(nn.Module):
    """``solve(SteadyStateProblem(...), DynamicSS(Tsit5()))`` written the obvious way with torchdiffeq."""

    def __init__(self, block: SeedBlock, tol: float = 1e-5, max_chunks: int = 10_000):
        super().__init__()
        self.block, self.tol, self.max_chunks = block, tol, max_chunks
        self.chunks = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def rhs(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return self.block(u, x) - u

        z = self.block(torch.zeros_like(x), x)
        span = torch.tensor([0.0, 1.0], dtype=x.dtype)
        for chunk in range(1, self.max_chunks + 1):
            self.chunks = chunk
            z = odeint(rhs, z, span, method="dopri5", rtol=self.tol, atol=self.tol)[-1]
            du = rhs(span[0], z).detach()
            if bool(((du.abs() <= self.tol) | (du.abs() <= self.tol * (du + z).abs())).all()):
                return z
        raise RuntimeError("literal translation did not reach steady state")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead; same setting for both

    deq = seed_regression_model(args.seed)
    literal = LiteralSteadyState(seed_regression_model(args.seed).f)  # identical initial weights
    assert all(torch.equal(p, q) for p, q in zip(deq.parameters(), literal.parameters()))

    base = fit_regression(literal, epochs=args.epochs, seed=args.seed)
    ours = fit_regression(deq, epochs=args.epochs, seed=args.seed)

    print(f"seed regression y = 2x, {args.epochs} epochs x 10 steps, torch {torch.__version__}, 1 thread\n")
    print("| run | seconds | speed-up | prediction at x = -5 | final loss |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| literal translation (dopri5 in tspan=1 chunks, backprop through solver) | {base.seconds:.1f} | 1.0x "
        f"| {base.prediction:.4f} | {base.losses[-1]:.2e} |"
    )
    print(
        f"| deqkit defaults (dynamic_ss tsit5, implicit backward, gmres) | {ours.seconds:.1f} | "
        f"{base.seconds / ours.seconds:.1f}x | {ours.prediction:.4f} | {ours.losses[-1]:.2e} |"
    )
    print(
        f"\ndeqkit mean forward evaluations per step (last epoch): {ours.forward_nfe[-1]:.1f}; "
        f"backward vector-Jacobian products: {ours.backward_nfe[-1]:.1f}"
    )


if __name__ == "__main__":
    main()
