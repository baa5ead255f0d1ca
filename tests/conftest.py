import pytest
import torch
from torch import nn

torch.set_num_threads(1)  # also for module- and session-scoped fixtures, which run before the one below


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one torch thread and gets it back afterwards.

    The tests' tensors are tiny: intra-op threads only add overhead, and on a busy 2-core machine (the browser
    test runs JupyterLab, a kernel and Chromium beside pytest) they oversubscribe the cores and slow ops 10x.
    Bitwise comparisons with the training CLI's ``--threads 1`` also need the same reduction order. Benchmarks
    and the CLI set their own thread count when called in-process; this undoes it.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


class TanhBlock(nn.Module):
    """f(z, x) = tanh(W z + x) with ‖W‖₂ set to ``norm`` (or W = −norm · PSD with ‖W‖₂ = norm)."""

    def __init__(self, d: int, norm: float, *, psd: bool = False, seed: int = 0, dtype=torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(d, d, generator=gen, dtype=dtype)
        if psd:
            w = -(w @ w.T)
        w = w * (norm / torch.linalg.matrix_norm(w, 2))
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(0.1 * torch.randn(d, generator=gen, dtype=dtype))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.weight.T + x + self.bias)


@pytest.fixture
def tanh_problem():
    def make(d=64, batch=32, norm=0.9, psd=False, seed=0, x_scale=1.0, dtype=torch.float64):
        block = TanhBlock(d, norm, psd=psd, seed=seed, dtype=dtype)
        gen = torch.Generator().manual_seed(seed + 1)
        x = x_scale * torch.randn(batch, d, generator=gen, dtype=dtype)
        return block, x

    return make
