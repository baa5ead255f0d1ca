"""Measuring a training step: peak memory (through the profiler's event tree) and the step cost."""

import pytest
import torch

from deqkit import measure


def test_peak_memory_sees_a_known_allocation():
    def allocate():
        a = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB
        b = torch.empty(500_000, dtype=torch.float32)  # 2 MB more, both live
        return a.numel() + b.numel()

    result, peak = measure.peak_memory(allocate)
    assert result == 1_500_000
    assert 6_000_000 <= peak < 6_100_000


def test_peak_memory_of_nothing_is_zero():
    assert measure.peak_memory(lambda: 3) == (3, 0)


def test_unrolled_memory_grows_with_iterations_implicit_does_not():
    costs = {(mode, n): measure.measure_step(mode, n, d=16, batch=4, repeats=1)
             for mode in ("implicit", "unrolled") for n in (5, 80)}
    assert all(c.steps == n for (_, n), c in costs.items())
    assert costs["unrolled", 80].peak_bytes > 3 * costs["unrolled", 5].peak_bytes
    assert costs["implicit", 80].peak_bytes <= 1.05 * costs["implicit", 5].peak_bytes
    assert costs["implicit", 5].mode == "implicit"


def test_repeats_are_checked():
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        measure.measure_step("implicit", 5, d=4, batch=2, repeats=0)
