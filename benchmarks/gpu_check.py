"""Forward + implicit backward on a CUDA GPU, compared with the CPU, with timings.

    python -m benchmarks.gpu_check                    # the tanh DEQ with every solver, and the four MNIST models
    python -m benchmarks.gpu_check --device cpu       # the same comparison CPU against CPU (checks the script)

The same weights and inputs run on the CPU and on the device: outputs and every gradient must agree (float64:
1e-8; float32: 1e-3 relative to the largest entry), and each solve must converge on both. Prints a markdown table
with seconds per training step on each and the speed-up. Exits with 0 and a message when no CUDA device is
present, with 1 if any result differs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import deqkit
from deqkit.models import mnist_model
from deqkit.problems import tanh_problem


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward, loss, implicit backward: the output and the gradients (input first, then parameters)."""
    xg = x.clone().requires_grad_()
    out = model(xg)
    grads = torch.autograd.grad(out.pow(2).mean(), [xg, *model.parameters()])
    return out.detach(), list(grads)


def _time(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    fn()  # warm-up: kernels, allocator, lazy imports
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def _deqs(model: nn.Module) -> list[deqkit.DEQ]:
    return [m for m in model.modules() if isinstance(m, deqkit.DEQ)]


def compare(name: str, model: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[bool, str]:
    """Run ``model`` on the CPU and on ``device`` from the same weights; return (ok, markdown row)."""
    results, times, converged = [], [], []  # [CPU, device]: a list, since ``device`` may be the CPU too
    for where in (torch.device("cpu"), device):
        m = copy.deepcopy(model).to(where)
        xd = x.to(where)
        results.append(_step(m, xd))
        stats = [d.last_stats for d in _deqs(m)]
        converged.append(all(s.forward.all_converged and s.backward.all_converged for s in stats))
        times.append(_time(lambda m=m, xd=xd: _step(m, xd), where))
    (out_a, grads_a), (out_b, grads_b) = results
    scale = lambda t: t.abs().max().clamp_min(1e-30)  # noqa: E731
    out_err = float((out_a - out_b.cpu()).abs().max() / scale(out_a))
    grad_err = max(float((a - b.cpu()).abs().max() / scale(a)) for a, b in zip(grads_a, grads_b))
    bound = 1e-8 if x.dtype == torch.float64 else 1e-3
    ok = out_err < bound and grad_err < bound and all(converged)
    t_cpu, t_dev = times
    row = (
        f"| {name} | {str(x.dtype)[6:]} | {out_err:.1e} | {grad_err:.1e} | "
        f"{'yes' if all(converged) else '**no**'} | {t_cpu:.4f} | {t_dev:.4f} | {t_cpu / t_dev:.1f}x |"
    )
    return ok, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--device", default="cuda", help="device to compare with the CPU (default cuda)")
    parser.add_argument("--d", type=int, default=512, help="width of the tanh DEQ")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--mnist-batch", type=int, default=128)
    parser.add_argument("--no-mnist", action="store_true", help="skip the MNIST models")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check (use --device cpu to exercise the script)")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name} | torch {torch.__version__}\n")
    print(
        "| model | dtype | output rel. diff | gradient rel. diff | converged | CPU s/step | device s/step | speed-up |"
    )
    print("|---|---|---:|---:|:-:|---:|---:|---:|")
    ok = True
    torch.manual_seed(0)
    block, x = tanh_problem(args.d, 0.9, batch=args.batch, kind="gaussian", bias_scale=0.0, dtype=torch.float64)
    # sync_every=8: the host reads the monitor every 8 steps (the GPU path); its rows time what that saves
    solvers = [
        "dynamic_ss",
        "anderson",
        deqkit.Anderson(sync_every=8),
        "broyden",
        "picard",
        deqkit.Picard(sync_every=8),
    ]
    for solver in solvers:
        for dtype in (torch.float64, torch.float32):
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            layer = deqkit.DEQ(copy.deepcopy(block).to(dtype), solver=solver, abstol=tol, reltol=tol)
            label = solver if isinstance(solver, str) else solver.label
            good, row = compare(f"tanh DEQ d={args.d}, {label}", layer, x.to(dtype), device)
            ok &= good
            print(row, flush=True)
    if not args.no_mnist:
        images = torch.randn(args.mnist_batch, 1, 28, 28)
        for model_name in ("seed", "seed-linear", "wide", "conv"):
            good, row = compare(f"MNIST {model_name}", mnist_model(model_name, seed=0), images, device)
            ok &= good
            print(row, flush=True)
    print("\nall results match the CPU" if ok else "\nMISMATCH between CPU and device results (or a solve failed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
