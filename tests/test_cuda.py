"""The same layer on a CUDA GPU (skipped without one)."""

import pytest
import torch

import deqkit

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("solver", ["dynamic_ss", "anderson", "broyden", "picard"])
def test_forward_backward_on_cuda_match_cpu(tanh_problem, solver):
    block, x = tanh_problem(d=32, batch=8, norm=0.8)
    results = {}
    for device in ["cpu", "cuda"]:
        b = block.to(device)
        deq = deqkit.DEQ(b, solver=solver, abstol=1e-10, reltol=1e-10)
        xd = x.to(device).requires_grad_()
        out = deq(xd)
        grads = torch.autograd.grad(out.pow(2).sum(), [xd, *b.parameters()])
        assert out.device.type == device and deq.last_stats.forward.converged.device.type == device
        results[device] = [out.detach().cpu()] + [g.cpu() for g in grads]
    for c, g in zip(results["cpu"], results["cuda"]):
        assert torch.allclose(c, g, atol=1e-7)
