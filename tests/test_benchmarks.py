"""Smoke tests: every benchmark runs on a tiny case, prints its markdown table and writes its plot."""

import pytest
import torch

from benchmarks import __main__ as dispatcher
from benchmarks import forward, ode_baseline, training_step


def test_dispatcher_lists_and_refuses(capsys):
    assert dispatcher.main([]) == 0
    out = capsys.readouterr().out
    for name in ("forward", "ode_baseline", "training_step", "seed_regression"):
        assert name in out
    assert dispatcher.main(["nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_counter_and_stop_rule():
    w, x = forward.tanh_case(6, 0.5, batch=3)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    traced = forward.Counted(f, trace=True)
    z = torch.zeros_like(x)
    for _ in range(40):
        z = traced(z)
    assert traced.calls == 40 and len(traced.rel_inf) == 40
    n = traced.calls_to("inf", 1e-4)
    assert n is not None and 1 < n < 40
    assert traced.calls_to("inf", 0.0) is None  # never exactly zero in 40 plain steps
    stop = forward.StopAtRule(f, 1e-4)
    z = torch.zeros_like(x)
    with pytest.raises(forward._Stop):
        for _ in range(40):
            z = stop(z)
    assert stop.calls == n  # stops at the first call after which every sample has met the rule


def test_forward_deqkit_only(tmp_path, capsys):
    png = tmp_path / "forward.png"
    results = forward.main(["--dims", "8", "--norms", "0.9", "--repeats", "1", "--no-torchdeq", "--plot", str(png)])
    out = capsys.readouterr().out
    assert "| d=8, ‖W‖₂=0.9 | deqkit anderson |" in out and "The ODE route against Anderson" in out
    assert "load average" in out and png.stat().st_size > 0
    by = {r.solver: r for r in results[0]}
    assert set(by) == {f"deqkit {m}" for m in forward.DEQKIT_METHODS}
    for r in by.values():
        assert r.converged and r.rel_inf <= 1e-4 and r.nfe > 0 and r.seconds > 0
    assert by["deqkit anderson"].nfe_at_deqkit_rule == by["deqkit anderson"].nfe  # the traced count agrees
    psd = {r.solver: r for r in results[1]}  # W = −1.5·PSD: plain iteration oscillates, the others converge
    assert psd["deqkit dynamic_ss"].converged and psd["deqkit anderson"].converged


def test_forward_against_torchdeq(tmp_path, capsys):
    pytest.importorskip("torchdeq", reason="TorchDEQ is an optional benchmark-only dependency "
                                           "(pip install torchdeq==0.1.0)")
    results = forward.main(["--dims", "8", "--norms", "0.5", "--no-psd", "--repeats", "1", "--plot", ""])
    out = capsys.readouterr().out
    assert "Ratios are against **TorchDEQ anderson**" in out and "deqkit anderson vs TorchDEQ anderson" in out
    theirs = {r.solver: r for r in results[0]}["TorchDEQ anderson"]
    assert theirs.nfe > 0 and theirs.nfe_at_deqkit_rule is not None and theirs.seconds_at_deqkit_rule is not None


def test_ode_baseline_tiny(tmp_path, capsys):
    png = tmp_path / "ode.png"
    rows = ode_baseline.main(["--dims", "8", "--norms", "0.9", "--no-psd", "--repeats", "1", "--plot", str(png)])
    out = capsys.readouterr().out
    assert "| d=8, ‖W‖₂=0.9 | odeint dopri5, oracle T |" in out and png.stat().st_size > 0
    by = {r.run: r for r in rows[0]}
    assert "dynamic_ss tsit5 + Anderson polish" in by and "odeint dopri5, oracle T" in by
    assert all(r.converged and r.rel_inf <= 1e-4 for r in by.values())


def test_training_step_tiny(tmp_path, capsys):
    png = tmp_path / "step.png"
    out = training_step.main(["--dim", "16", "--batch", "4", "--iterations", "10", "40", "--repeats", "1",
                              "--plot", str(png)])
    text = capsys.readouterr().out
    assert "| 40 | unrolled | 40 |" in text and "backward / forward" in text and png.stat().st_size > 0
    costs = out["costs"]
    assert costs["unrolled", 40].peak_bytes > costs["unrolled", 10].peak_bytes
    assert out["implicit_spread"] <= 0.05
    assert {(s.forward_solver, s.backward_solver) for s in out["splits"]} >= {("dynamic_ss", "gmres")}


def test_seed_regression_through_the_dispatcher(capsys):
    assert dispatcher.main(["seed_regression", "--epochs", "1"]) == 0
    assert "| deqkit defaults" in capsys.readouterr().out
