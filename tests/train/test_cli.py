"""The command line (python -m deqkit.train): usage errors, run-folder errors, kill -9 and resume, torchrun."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from deqkit.models import mnist_model
from deqkit.train import RunOptions, load_checkpoint, save_checkpoint, train_mnist
from deqkit.train.__main__ import main

from .tiny import CLI, env, mnist_dir, same_numbers, tensorboard_scalars


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


@pytest.mark.slow  # three interpreters start torch and read MNIST: ~10 s however small the run
def test_cli_killed_mid_run_resumes_to_the_same_result(tmp_path):
    root = mnist_dir()
    out = tmp_path / "run"
    args = [*CLI, "--data", root, "--epochs", "2", "--checkpoint-every", "3", "--out", str(out), "--tensorboard"]
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # it was still training when killed
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["epoch"] * 10 + saved["step"] < 20  # interrupted before the end (10 steps per epoch)

    done = subprocess.run([*args, "--resume"], env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr + done.stdout

    reference = train_mnist(
        model="seed",
        epochs=2,
        batch_size=64,
        subset=640,
        data_dir=root,
        eval_batch_size=500,
        options=RunOptions(progress=False),
    )
    resumed = load_checkpoint(out / "checkpoint.pt")
    same_numbers(resumed["metrics"], reference.history)
    ref_state = reference.model.state_dict()
    assert all(torch.equal(resumed["model"][k], ref_state[k]) for k in ref_state)
    assert json.loads((out / "metrics.json").read_text())["epochs"] == resumed["metrics"]
    # TensorBoard: both runs' event files, each step shown once (what the killed run logged after its
    # checkpoint is purged), the epochs at 10 and 20 steps
    scalars = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["step/loss"]] == list(range(1, 21))
    assert [v for _, v in scalars["epoch/test_acc"]] == pytest.approx([r["test_acc"] for r in resumed["metrics"]])


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
    root = mnist_dir()
    # The wide model with Anderson: every sample is solved independently (and converges: f starts as a
    # contraction), so splitting a batch over processes changes only the order of floating-point sums.
    # dynamic_ss shares its step size over a batch and would differ by about the tolerance.
    options = {"solver": "anderson", "abstol": 1e-5, "reltol": 1e-5, "max_steps": 60}
    opts = [a for k, v in options.items() for a in ("--deq", f"{k}={v!r}")]
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *CLI[1:],
        "--model",
        "wide",
        "--lr",
        "1e-3",
        "--data",
        root,
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
        *opts,
    ]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ConvergenceWarning" not in done.stderr
    ddp = load_checkpoint(out / "checkpoint.pt")
    assert ddp["environment"]["world_size"] == 2

    single = train_mnist(
        model="wide",
        lr=1e-3,
        epochs=1,
        batch_size=64,
        subset=640,
        data_dir=root,
        eval_batch_size=500,
        options=RunOptions(progress=False),
        model_options=options,
    )
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
