"""benchmarks/gpu_check.py: the comparison logic, run CPU against CPU (the CUDA run needs a GPU)."""

import pytest
import torch

from benchmarks import gpu_check


def test_gpu_check_cpu_against_cpu(capsys):
    assert gpu_check.main(["--device", "cpu", "--d", "16", "--batch", "4", "--mnist-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "all results match the CPU" in out
    assert out.count("| tanh DEQ") == 12 and out.count("| MNIST") == 4
    assert out.count("anderson(sync_every=8) |") == 2 and out.count("picard(sync_every=8) |") == 2


def test_gpu_check_without_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_compare_detects_a_mismatch():
    class Noisy(torch.nn.Module):  # a different result on every call: CPU and "device" disagree
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w + torch.randn(())

    ok, row = gpu_check.compare("noisy", Noisy(), torch.ones(2, 3), torch.device("cpu"))
    assert not ok and "noisy" in row
