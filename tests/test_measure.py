"""Measuring a training step: peak memory (through the profiler's event tree) and the step cost."""

import os

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
    costs = {
        (mode, n): measure.measure_step(mode, n, d=16, batch=4, repeats=1)
        for mode in ("implicit", "unrolled")
        for n in (5, 80)
    }
    assert all(c.steps == n for (_, n), c in costs.items())
    assert costs["unrolled", 80].peak_bytes > 3 * costs["unrolled", 5].peak_bytes
    assert costs["implicit", 80].peak_bytes <= 1.05 * costs["implicit", 5].peak_bytes
    assert costs["implicit", 5].mode == "implicit"


def test_repeats_are_checked():
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        measure.measure_step("implicit", 5, d=4, batch=2, repeats=0)


def test_peak_memory_sees_one_allocation_and_reuse():
    n = 1_000_000
    _, one = measure.peak_memory(lambda: torch.ones(n).sum())
    assert 4 * n <= one < 4 * n + 64 * 1024

    def two_at_once():
        a, b = torch.ones(n), torch.ones(n)
        return (a + b).sum()  # a, b and a + b live together: three blocks

    def one_after_another():
        for _ in range(3):
            torch.ones(n).sum()  # each freed before the next: one block at a time

    _, three = measure.peak_memory(two_at_once)
    _, sequential = measure.peak_memory(one_after_another)
    assert 12 * n <= three < 12 * n + 64 * 1024
    assert 4 * n <= sequential < 4 * n + 64 * 1024


def test_peak_memory_returns_the_result():
    result, peak = measure.peak_memory(lambda: 42)
    assert result == 42 and peak == 0


def test_profiler_chatter_is_dropped_and_other_stderr_kept(capfd):
    with measure._profiler_chatter_dropped():
        os.write(2, b"USDT:2026 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"[W1201 CPUAllocator.cpp:245] Memory block of unknown size was allocated before\n")
        os.write(2, b"something else went wrong\n")
    err = capfd.readouterr().err
    assert "something else went wrong" in err and "USDT" not in err and "CPUAllocator" not in err
    measure.peak_memory(lambda: torch.ones(10).sum())
    assert "profiler_start" not in capfd.readouterr().err
