"""The training loop and CLI: metrics, checkpoints, exact resume (also after a kill), DDP with gloo."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import TensorDataset

import deqkit
from deqkit.models import mnist_model
from deqkit.train import (
    METRIC_FIELDS,
    CheckpointError,
    TrainConfig,
    evaluate,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    train,
    train_mnist,
)
from deqkit.train.__main__ import main

REPO = pathlib.Path(__file__).resolve().parent.parent
# Timing-dependent columns: everything else must match bit for bit between runs.
TIMING = {"seconds", "eval_seconds", "loadavg"}


def _synthetic(n, seed):
    """Ten noisy class templates: learnable in a few steps, no files needed."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(99))
    y = torch.arange(n) % 10
    x = templates[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=gen)
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def data():
    return _synthetic(96, 1), _synthetic(40, 2)


def _run(data, out=None, *, config=None, **kwargs):
    config = config or TrainConfig(model="seed", epochs=2, batch_size=32, lr=3e-3, seed=0)
    model = mnist_model(config.model, seed=config.seed, **config.model_options)
    return train(model, *data, config, out=out, progress=False, **kwargs)


def _same_numbers(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_metrics_files_and_checkpoint(data, tmp_path):
    result = _run(data, tmp_path)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert set(result.final) == set(METRIC_FIELDS)
    last = result.final
    assert last["samples"] == 96 and 0 <= last["test_acc"] <= 100 and last["fwd_nfe_mean"] > 0
    assert last["bwd_nfe_mean"] > 0 and last["fwd_nfe_max"] >= last["fwd_nfe_mean"] and last["seconds"] > 0
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]  # it learns
    csv_rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_rows[0].split(",") == list(METRIC_FIELDS) and len(csv_rows) == 3
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["config"]["model"] == "seed" and doc["epochs"] == result.history
    assert doc["environment"]["world_size"] == 1
    # the checkpoint is plain data: torch.load with weights_only=True reads it
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0 and state["metrics"] == result.history
    assert {"model", "optimizer", "rng", "config"} <= set(state)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_matches_a_direct_computation(data):
    model = mnist_model("seed", seed=0)
    res = evaluate(model, data[1], batch_size=16)
    x, y = data[1].tensors
    with torch.no_grad():
        logits = model(x)
    assert res["acc"] == pytest.approx(100 * float((logits.argmax(1) == y).float().mean()))
    assert res["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-2)
    assert res["samples"] == 40 and res["nfe_mean"] > 0 and res["unconverged"] == 0


def test_deterministic_with_seed(data):
    a, b = _run(data), _run(data)
    _same_numbers(a.history, b.history)
    _same_weights(a.model, b.model)
    c = _run(data, config=TrainConfig(model="seed", epochs=2, batch_size=32, lr=3e-3, seed=1))
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(("stop_at", "restart"), [(2, (0, 2)), (3, (1, 0)), (5, (1, 2))],
                         ids=["mid-first-epoch", "between-epochs", "mid-second-epoch"])
def test_resume_after_interrupt_matches_uninterrupted(data, tmp_path, stop_at, restart):
    # 96 samples, batch 32: 3 steps per epoch, global steps 0-5. Checkpoints after every 2 steps within an epoch
    # and after each epoch; the run is interrupted during global step ``stop_at`` and restarts at
    # (epoch, step) ``restart``, the last checkpoint before it.
    reference = _run(data, tmp_path / "ref", checkpoint_every=2)

    def stop(info):
        if info["global_step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(data, tmp_path / "run", checkpoint_every=2, callback=stop)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == restart
    resumed = _run(data, tmp_path / "run", checkpoint_every=2, resume=True)
    _same_numbers(resumed.history, reference.history)
    _same_weights(resumed.model, reference.model)
    # the epoch's tallies survived the interruption: the resumed epoch counts all its samples
    assert resumed.history[-1]["samples"] == 96


def test_resume_refuses_other_settings_and_missing_checkpoints(data, tmp_path):
    _run(data, tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        _run(data, tmp_path)
    other = TrainConfig(model="seed", epochs=2, batch_size=16, lr=3e-3, seed=0)
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 32 vs now 16"):
        _run(data, tmp_path, config=other, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _run(data, tmp_path / "empty", resume=True)
    # more epochs with a constant learning rate: allowed, continues from epoch 2
    more = _run(data, tmp_path, config=TrainConfig(model="seed", epochs=3, batch_size=32, lr=3e-3, seed=0),
                resume=True)
    assert [r["epoch"] for r in more.history] == [1, 2, 3]
    # overwrite starts afresh
    fresh = _run(data, tmp_path, overwrite=True)
    assert len(fresh.history) == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


class NotPlainData:
    pass


def test_load_checkpoint_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="not a readable deqkit checkpoint"):
        load_checkpoint(path)
    torch.save({"format": 99}, path)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)


def test_unconverged_solves_are_counted_and_reported_once_per_epoch(data):
    config = TrainConfig(model="seed", epochs=2, batch_size=32, seed=0, model_options={"max_steps": 2})
    with pytest.warns(deqkit.ConvergenceWarning, match="did not reach the solver tolerance") as caught:
        result = _run(data, config=config)
    assert len([w for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)]) == 2
    assert all(r["fwd_unconverged"] > 0 and r["test_unconverged"] > 0 for r in result.history)


def test_cosine_schedule_and_callback(data):
    seen = []
    config = TrainConfig(model="seed", epochs=2, batch_size=32, lr=1e-2, seed=0, schedule="cosine")
    result = _run(data, config=config, callback=seen.append)
    assert [s["global_step"] for s in seen] == list(range(6))
    assert {"loss", "acc", "fwd_nfe", "bwd_nfe", "unconverged"} <= set(seen[0])
    # the rate used by each epoch's last step (global steps 2 and 5 of 6): 1e-2 · (1 + cos(π s / 6)) / 2
    assert [r["lr"] for r in result.history] == pytest.approx([1e-2 * (1 + math.cos(math.pi * s / 6)) / 2
                                                               for s in (2, 5)])


@pytest.mark.parametrize("stop_at", [1, 4], ids=["mid-first-epoch", "mid-second-epoch"])
def test_cosine_schedule_resumes_exactly(data, tmp_path, stop_at):
    config = TrainConfig(model="seed", epochs=2, batch_size=32, lr=1e-2, seed=0, schedule="cosine")
    reference = _run(data, tmp_path / "ref", config=config, checkpoint_every=1)

    def stop(info):
        if info["global_step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(data, tmp_path / "run", config=config, checkpoint_every=1, callback=stop)
    resumed = _run(data, tmp_path / "run", config=config, checkpoint_every=1, resume=True)
    _same_numbers(resumed.history, reference.history)
    _same_weights(resumed.model, reference.model)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="linear")
    with pytest.raises(TypeError, match="unknown setting.*'epoch'"):
        train_mnist(epoch=3)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="use device='cpu' or 'auto'"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cli_rejects_unknown_and_bad_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mnist", "--epochz", "3"])
    assert exc.value.code == 2 and "--epochz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mnist", "--model", "resnet"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mnist", "--deq", "max_steps"])
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mnist", "--deq", "bogus=1"])
    assert "unknown option(s) 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mnist", "--batch-size", "0"])
    assert "batch_size must be a positive integer" in capsys.readouterr().err


# ---- the command line on real MNIST: killed and resumed, and two processes with gloo ----

def _mnist_dir():
    folder = os.environ.get("DEQKIT_MNIST_DIR")
    if not folder or not (pathlib.Path(folder) / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files to run this test")
    return folder


def _env():
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


CLI = [sys.executable, "-m", "deqkit.train", "mnist", "--threads", "1", "--subset", "640", "--batch-size", "64",
       "--eval-batch-size", "500"]


@pytest.mark.slow  # three interpreters start torch and read MNIST: ~10 s however small the run
def test_cli_killed_mid_run_resumes_to_the_same_result(tmp_path):
    root = _mnist_dir()
    out = tmp_path / "run"
    args = [*CLI, "--data", root, "--epochs", "2", "--checkpoint-every", "3", "--out", str(out)]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # it was still training when killed
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["epoch"] * 10 + saved["step"] < 20  # interrupted before the end (10 steps per epoch)

    done = subprocess.run([*args, "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr + done.stdout

    reference = train_mnist(model="seed", epochs=2, batch_size=64, subset=640, data_dir=root, eval_batch_size=500,
                            progress=False)
    resumed = load_checkpoint(out / "checkpoint.pt")
    _same_numbers(resumed["metrics"], reference.history)
    ref_state = reference.model.state_dict()
    assert all(torch.equal(resumed["model"][k], ref_state[k]) for k in ref_state)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == resumed["metrics"]


def test_cli_run_folder_errors_are_clear(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["mnist", "--out", str(out), "--resume"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err and not out.exists()
    save_checkpoint({"epoch": 1}, out / "checkpoint.pt")
    assert main(["mnist", "--out", str(out)]) == 1
    assert "add --resume to continue that run, --overwrite to start afresh" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mnist", "--out", str(out), "--resume", "--overwrite"])
    assert "contradict" in capsys.readouterr().err


@pytest.mark.slow  # torchrun and two workers start torch and read MNIST: ~12 s however small the run
def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    root = _mnist_dir()
    # The wide model with Anderson: every sample is solved independently (and converges: f starts as a
    # contraction), so splitting a batch over processes changes only the order of floating-point sums.
    # dynamic_ss shares its step size over a batch and would differ by about the tolerance.
    options = {"solver": "anderson", "abstol": 1e-5, "reltol": 1e-5, "max_steps": 60}
    opts = [a for k, v in options.items() for a in ("--deq", f"{k}={v!r}")]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *CLI[1:], "--model", "wide", "--lr", "1e-3", "--data", root, "--epochs", "1", "--out", str(out),
           "--no-progress", *opts]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ConvergenceWarning" not in done.stderr
    ddp = load_checkpoint(out / "checkpoint.pt")
    assert ddp["environment"]["world_size"] == 2

    single = train_mnist(model="wide", lr=1e-3, epochs=1, batch_size=64, subset=640, data_dir=root,
                         eval_batch_size=500, progress=False, model_options=options)
    a, b = ddp["metrics"][0], single.final
    assert a["samples"] == b["samples"] == 640
    for key in ("train_loss", "test_loss"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    for key in ("train_acc", "test_acc"):
        assert abs(a[key] - b[key]) <= 0.25, key  # at most a sample or two flips
    state = single.model.state_dict()
    for k in state:
        assert torch.allclose(ddp["model"][k], state[k], atol=1e-4, rtol=1e-3), k
    # and they did train: the weights moved away from the shared initialisation
    init = mnist_model("wide", seed=0).state_dict()
    assert not torch.allclose(ddp["model"]["encoder.1.weight"], init["encoder.1.weight"], atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_cpu(data):
    config = TrainConfig(model="wide", epochs=1, batch_size=32, lr=1e-3, seed=0,
                         model_options={"solver": "anderson", "abstol": 1e-6, "reltol": 1e-6, "max_steps": 60})
    cpu = _run(data, config=config, device="cpu")
    gpu = _run(data, config=config, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    for key in ("train_loss", "test_loss"):
        assert gpu.final[key] == pytest.approx(cpu.final[key], rel=1e-3), key
