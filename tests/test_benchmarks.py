"""Smoke tests: every benchmark runs on a tiny case, prints its markdown table and writes its plot."""

import json
import shutil

import pytest
import torch

from benchmarks import __main__ as dispatcher
from benchmarks import forward, jacobian_reg, ode_baseline, peer_training, solve_cost, training_step

pytestmark = pytest.mark.slow  # each benchmark runs on a tiny case: 1-5 s


def test_dispatcher_lists_and_refuses(capsys):
    assert dispatcher.main([]) == 0
    out = capsys.readouterr().out
    for name in ("forward", "ode_baseline", "training_step", "seed_regression", "peer_training", "jacobian_reg"):
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
    pytest.importorskip(
        "torchdeq", reason="TorchDEQ is an optional benchmark-only dependency (pip install torchdeq==0.1.0)"
    )
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
    out = training_step.main(
        ["--dim", "16", "--batch", "4", "--iterations", "10", "40", "--repeats", "1", "--plot", str(png)]
    )
    text = capsys.readouterr().out
    assert "| 40 | unrolled | 40 |" in text and "backward / forward" in text and png.stat().st_size > 0
    costs = out["costs"]
    assert costs["unrolled", 40].peak_bytes > costs["unrolled", 10].peak_bytes
    assert out["implicit_spread"] <= 0.05
    assert {(s.forward_solver, s.backward_solver) for s in out["splits"]} >= {("dynamic_ss", "gmres")}


def test_seed_regression_through_the_dispatcher(capsys):
    assert dispatcher.main(["seed_regression", "--epochs", "1"]) == 0
    assert "| deqkit defaults" in capsys.readouterr().out


def _mnist_or_skip():
    import os
    import pathlib

    folder = os.environ.get("DEQKIT_MNIST_DIR")
    if not folder or not (pathlib.Path(folder) / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files to run this benchmark")


def test_peer_training_fast_deqkit_runs(tmp_path, capsys, monkeypatch):
    """deqkit's runs in --fast mode, also where TorchDEQ is installed (its rows are tested below)."""
    _mnist_or_skip()
    monkeypatch.setattr(peer_training, "torchdeq_available", lambda: False)
    png = tmp_path / "peer.png"
    results = peer_training.main(["--fast", "--blocks", "mlp-ln", "--plot", str(png), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "TorchDEQ is not installed" in out and "ratios against deqkit anderson + implicit" in out
    assert "### LayerNorm block (mlp-ln): 8 training steps (--fast)  (CPU; torch " in out and png.stat().st_size > 0
    by = results[0].by_name()
    assert set(by) == set(peer_training.DEQKIT_RUNS)
    for t in by.values():
        assert len(t.seconds) == 8 and all(s > 0 for s in t.seconds) and 0 <= t.test_acc <= 100
        assert min(t.forward_calls) >= 2 and t.test_calls > 0
    # the budgets hold: the solver's evaluations plus the re-attached one (and 4 more phantom steps)
    budget = by["deqkit defaults"].model.deq.max_nfe
    assert max(by["deqkit defaults"].forward_calls) <= budget + 1
    assert max(by["deqkit phantom"].forward_calls) <= budget + 5
    assert min(by["deqkit defaults"].products) > 0 and max(by["deqkit phantom"].products) == 0


def test_peer_training_runs_start_from_the_same_weights():
    from deqkit.models import mnist_model

    reference = mnist_model("mlp-ln", seed=3)
    names = [n for n in peer_training.RUNS if forward.torchdeq_available() or n in peer_training.DEQKIT_RUNS]
    for name in names:
        model = peer_training.build(name, "mlp-ln", reference).model
        parts = (
            (model.encoder, reference.encoder),
            (model.head, reference.head),
            (getattr(model, "block", None) or model.deq.f, reference.deq.f),
        )
        for mine, theirs in parts:
            a, b = mine.state_dict(), theirs.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
            assert all(p.data_ptr() != q.data_ptr() for p, q in zip(mine.parameters(), theirs.parameters()))


def test_peer_training_fast_against_torchdeq(capsys):
    pytest.importorskip(
        "torchdeq", reason="TorchDEQ is an optional benchmark-only dependency (pip install torchdeq==0.1.0)"
    )
    _mnist_or_skip()
    results = peer_training.main(
        ["--fast", "--blocks", "mlp", "--runs", "TorchDEQ anderson + phantom", "deqkit defaults", "--plot", ""]
    )
    out = capsys.readouterr().out
    assert "Ratios against **TorchDEQ anderson + IFT**" in out
    by = results[0].by_name()
    assert list(by) == [peer_training.BASELINE, "TorchDEQ anderson + phantom", "deqkit defaults"]
    ift, phantom = by[peer_training.BASELINE], by["TorchDEQ anderson + phantom"]
    # TorchDEQ's Anderson evaluates f at most 30 times, plus once for IFT's own step or 5 times for phantom;
    # its IFT backward re-evaluates f once and takes at most 30 products
    assert max(ift.forward_calls) <= 31 and ift.backward_calls == [1] * 8 and 0 < max(ift.products) <= 30
    assert max(phantom.forward_calls) <= 35 and max(phantom.products) == 0


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:99", "this torch sees"),  # an absent card, also on a machine with a GPU
        ("meta", "this benchmark runs on cpu or cuda"),
        ("gpu0", "is not a torch device"),
        ("cpu:1", "this benchmark runs on cpu or cuda"),
    ],
)
def test_peer_training_refuses_a_device_it_cannot_use(device, message, capsys):
    with pytest.raises(SystemExit):
        peer_training.main(["--device", device])
    assert message in capsys.readouterr().err


def test_peer_training_fast_keeps_the_committed_plot(capsys, monkeypatch):
    _mnist_or_skip()
    monkeypatch.setattr(peer_training, "torchdeq_available", lambda: False)
    monkeypatch.setattr(peer_training, "save", lambda fig, path: pytest.fail(f"--fast wrote {path}"))
    peer_training.main(["--fast", "--blocks", "mlp", "--runs", "deqkit anderson + implicit", "--steps", "1"])
    assert "plot:" not in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--blocks", "mlp", "mlp"], ["--runs", "deqkit defaults", "deqkit defaults"]])
def test_peer_training_refuses_a_value_named_twice(argv, capsys):
    with pytest.raises(SystemExit):
        peer_training.main(argv)
    assert "names a value twice" in capsys.readouterr().err


def test_peer_training_refuses_unknown_runs(capsys):
    with pytest.raises(SystemExit):
        peer_training.main(["--runs", "deqkit magic"])
    assert "unknown run(s) 'deqkit magic'" in capsys.readouterr().err


def test_jacobian_reg_fast_trains_saves_and_merges(tmp_path, capsys):
    _mnist_or_skip()
    out, png = tmp_path / "runs.json", tmp_path / "jr.png"
    doc = jacobian_reg.main(["--fast", "--out", str(out), "--plot", str(png)])
    text = capsys.readouterr().out
    assert [r["name"] for r in doc["runs"]] == ["LayerNorm, γ = 0", "LayerNorm, γ = 1"]
    assert "| LayerNorm, γ = 1 |" in text and "γ runs with ≤ 0.7×" in text and png.stat().st_size > 0
    saved = json.loads(out.read_text())
    assert saved["runs"] == doc["runs"] and saved["settings"]["epochs"] == 1
    # two files trained apart merge into one, in the order of deqkit.teach.stable.RUNS
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(saved | {"runs": saved["runs"][1:]}))
    second.write_text(json.dumps(saved | {"runs": saved["runs"][:1]}))
    merged = jacobian_reg.main(["--from", str(first), str(second), "--out", "", "--plot", ""])
    assert [r["name"] for r in merged["runs"]] == ["LayerNorm, γ = 0", "LayerNorm, γ = 1"]
    other = tmp_path / "c.json"
    other.write_text(json.dumps(saved | {"settings": saved["settings"] | {"epochs": 3}}))
    with pytest.raises(SystemExit, match="different settings"):
        jacobian_reg.main(["--from", str(first), str(other), "--out", "", "--plot", ""])


def test_jacobian_reg_refuses_unknown_runs(capsys):
    with pytest.raises(SystemExit):
        jacobian_reg.main(["--only", "γ = 42"])
    assert "unknown run(s)" in capsys.readouterr().err


def test_solve_cost_fast(capsys):
    _mnist_or_skip()
    result = solve_cost.main(["--fast", "--solver", "default"])
    out = capsys.readouterr().out
    assert "### Solve cost: mlp-ln, forward default, batch 128, 3 steps after 2" in out and "| check µs |" in out
    assert 2 <= result["evaluations"] <= 30 and 2 <= result["products"] <= 30  # the training budget of 30
    assert all(result[k] > 0 for k in ("forward ms", "backward ms", "check us"))


def test_overhead_tiny(capsys, tmp_path):
    from benchmarks import overhead

    rows = overhead.main(["--cases", "16x4", "--repeats", "1", "--plot", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert "| d=16, batch=4 | deqkit dynamic_ss |" in out and "implicit backward, GMRES" in out
    assert all(r["nfe"] >= 2 and r["ratio"] > 0 for r in rows)
    assert (tmp_path / "o.png").stat().st_size > 10_000 and f"plot: {tmp_path / 'o.png'}" in out
    with pytest.raises(SystemExit):
        overhead.main(["--cases", "big"])
    with pytest.raises(SystemExit):  # not silently ignored
        overhead.main(["--ops", "--plot", str(tmp_path / "p.png")])
    assert "--plot draws the table" in capsys.readouterr().err


def test_overhead_ops_counts_operations_not_their_callees(capsys):
    from benchmarks import overhead

    x = torch.ones(3, 2)
    assert overhead.top_level_ops(lambda: torch.tanh(x + 1).sum()) == 3  # add, tanh, sum: not their kernels
    assert overhead.top_level_ops(lambda: x @ x.T) == 2  # the transpose and matmul (mm inside it not counted)
    rows = overhead.main(["--ops", "--cases", "16x4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| d=16, batch=4 | deqkit picard |" in out and "µs per operation" in out
    assert {r["solver"] for r in rows} == {f"deqkit {s}" for s in overhead.SOLVERS}
    # a step costs at least the residual, its two norms, the rule and the counts read to the host
    assert all(r["ops_per_eval"] >= 8 for r in rows)


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on CPU needs a C++ compiler"
)
def test_overhead_compile_study_tiny(capsys):
    from benchmarks import overhead

    rows = overhead.main(["--compile", "--cases", "8x2"])
    out = capsys.readouterr().out
    assert "| d=8, batch=2 |" in out and "compiled step" in out and "compiled loop" in out
    assert all(r["eager"] > 0 and r["compiled"] > 0 and r["compile_s"] > 0 for r in rows)
    # the whole-solve loop applies the same rule: the same evaluations, give or take the fused f's rounding
    assert all(abs(r["nfe"][0] - r["nfe"][1]) <= 1 and r["solve_ratio"] > 0 and r["loop_ratio"] > 0 for r in rows)


def test_gradient_quality_scores_every_configuration_against_the_reference(capsys):
    from benchmarks import gradient_quality

    result = gradient_quality.main(["--families", "mlp", "--train-steps", "2"])
    rows = result["blocks"]
    assert {r["stage"] for r in rows} == {"init", "after 2 steps"}
    assert {"deqkit defaults", "deqkit anderson", "deqkit broyden"} <= {r["config"] for r in rows}
    assert all(r["error"] < 1e-3 and r["cosine"] > 0.999 for r in rows)  # a tanh MLP converges within 30
    assert "| mlp | init | deqkit defaults |" in capsys.readouterr().out
