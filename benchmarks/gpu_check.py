"""Forward + implicit backward on a CUDA GPU, compared with the CPU, with timings.

    python -m benchmarks.gpu_check [--d 512 --batch 256]

Exits with status 0 and a message when no CUDA device is present; with status 1 if a result differs.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import deqkit


class TanhBlock(nn.Module):
    def __init__(self, d: int, norm: float = 0.9):
        super().__init__()
        w = torch.randn(d, d)
        self.weight = nn.Parameter(w * norm / torch.linalg.matrix_norm(w, 2))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.weight.T + x)


def _step(layer: deqkit.DEQ, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xg = x.clone().requires_grad_()
    out = layer(xg)
    grads = torch.autograd.grad(out.pow(2).sum(), [xg, *layer.parameters()])
    return out.detach(), list(grads)


def _time(fn, device: str, repeats: int = 5) -> float:
    fn()  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to check")
        return 0
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    torch.manual_seed(0)
    block = TanhBlock(args.d).double()
    x = torch.randn(args.batch, args.d, dtype=torch.float64)
    ok = True
    print("| solver | dtype | max |out| diff | max |grad| diff | CPU s/step | GPU s/step | GPU speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for solver in ["dynamic_ss", "anderson", "broyden", "picard"]:
        for dtype in [torch.float64, torch.float32]:
            tol = 1e-10 if dtype == torch.float64 else 1e-5
            results, times = {}, {}
            for device in ["cpu", "cuda"]:
                layer = deqkit.DEQ(block.to(device=device, dtype=dtype), solver=solver, abstol=tol, reltol=tol)
                xd = x.to(device=device, dtype=dtype)
                results[device] = _step(layer, xd)
                times[device] = _time(lambda layer=layer, xd=xd: _step(layer, xd), device)
            out_diff = (results["cpu"][0] - results["cuda"][0].cpu()).abs().max().item()
            grad_diff = max((a - b.cpu()).abs().max().item() for a, b in zip(results["cpu"][1], results["cuda"][1]))
            bound = 1e-8 if dtype == torch.float64 else 1e-3
            ok &= out_diff < bound and grad_diff < bound * 10
            print(f"| {solver} | {str(dtype)[6:]} | {out_diff:.1e} | {grad_diff:.1e} | {times['cpu']:.4f} | "
                  f"{times['cuda']:.4f} | {times['cpu'] / times['cuda']:.1f}x |")
    print("all results match the CPU" if ok else "MISMATCH between CPU and GPU results")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
