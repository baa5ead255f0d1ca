"""The training loop: metrics, determinism, exact resume after an interruption, schedules, settings."""

import json
import math

import pytest
import torch

import deqkit
from deqkit.models import mnist_model
from deqkit.train import (
    METRIC_FIELDS,
    CheckpointError,
    TrainConfig,
    evaluate,
    load_checkpoint,
    resolve_device,
    train_mnist,
)

from .tiny import Interrupt, run, same_numbers, same_weights


def test_metrics_files_and_checkpoint(data, tmp_path):
    result = run(data, tmp_path)
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
    a, b = run(data), run(data)
    same_numbers(a.history, b.history)
    same_weights(a.model, b.model)
    c = run(data, config=TrainConfig(model="seed", epochs=2, batch_size=32, lr=3e-3, seed=1))
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


@pytest.mark.parametrize(
    ("stop_at", "restart"),
    [(2, (0, 2)), (3, (1, 0)), (5, (1, 2))],
    ids=["mid-first-epoch", "between-epochs", "mid-second-epoch"],
)
def test_resume_after_interrupt_matches_uninterrupted(data, tmp_path, stop_at, restart):
    # 96 samples, batch 32: 3 steps per epoch, global steps 0-5. Checkpoints after every 2 steps within an epoch
    # and after each epoch; the run is interrupted during global step ``stop_at`` and restarts at
    # (epoch, step) ``restart``, the last checkpoint before it.
    reference = run(data, tmp_path / "ref", checkpoint_every=2)

    def stop(info):
        if info["global_step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(data, tmp_path / "run", checkpoint_every=2, callback=stop)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == restart
    resumed = run(data, tmp_path / "run", checkpoint_every=2, start="resume")
    same_numbers(resumed.history, reference.history)
    same_weights(resumed.model, reference.model)
    # the epoch's tallies survived the interruption: the resumed epoch counts all its samples
    assert resumed.history[-1]["samples"] == 96


def test_resume_refuses_other_settings_and_missing_checkpoints(data, tmp_path):
    run(data, tmp_path)
    with pytest.raises(FileExistsError, match="start='resume'"):
        run(data, tmp_path)
    other = TrainConfig(model="seed", epochs=2, batch_size=16, lr=3e-3, seed=0)
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 32 vs now 16"):
        run(data, tmp_path, config=other, start="resume")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(data, tmp_path / "empty", start="resume")
    # more epochs with a constant learning rate: allowed, continues from epoch 2
    more = run(
        data, tmp_path, config=TrainConfig(model="seed", epochs=3, batch_size=32, lr=3e-3, seed=0), start="resume"
    )
    assert [r["epoch"] for r in more.history] == [1, 2, 3]
    # overwrite starts afresh
    fresh = run(data, tmp_path, start="overwrite")
    assert len(fresh.history) == 2


def test_unconverged_solves_are_counted_and_reported_once_per_epoch(data):
    config = TrainConfig(model="seed", epochs=2, batch_size=32, seed=0, model_options={"max_steps": 2})
    with pytest.warns(deqkit.ConvergenceWarning, match="did not reach the solver tolerance") as caught:
        result = run(data, config=config)
    assert len([w for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)]) == 2
    assert all(r["fwd_unconverged"] > 0 and r["test_unconverged"] > 0 for r in result.history)


def test_cosine_schedule_and_callback(data):
    seen = []
    config = TrainConfig(model="seed", epochs=2, batch_size=32, lr=1e-2, seed=0, schedule="cosine")
    result = run(data, config=config, callback=seen.append)
    assert [s["global_step"] for s in seen] == list(range(6))
    assert {"loss", "acc", "fwd_nfe", "bwd_nfe", "unconverged"} <= set(seen[0])
    # the rate used by each epoch's last step (global steps 2 and 5 of 6): 1e-2 · (1 + cos(π s / 6)) / 2
    assert [r["lr"] for r in result.history] == pytest.approx(
        [1e-2 * (1 + math.cos(math.pi * s / 6)) / 2 for s in (2, 5)]
    )


@pytest.mark.parametrize("stop_at", [1, 4], ids=["mid-first-epoch", "mid-second-epoch"])
def test_cosine_schedule_resumes_exactly(data, tmp_path, stop_at):
    config = TrainConfig(model="seed", epochs=2, batch_size=32, lr=1e-2, seed=0, schedule="cosine")
    reference = run(data, tmp_path / "ref", config=config, checkpoint_every=1)

    def stop(info):
        if info["global_step"] == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(data, tmp_path / "run", config=config, checkpoint_every=1, callback=stop)
    resumed = run(data, tmp_path / "run", config=config, checkpoint_every=1, start="resume")
    same_numbers(resumed.history, reference.history)
    same_weights(resumed.model, reference.model)


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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_cpu(data):
    config = TrainConfig(
        model="wide",
        epochs=1,
        batch_size=32,
        lr=1e-3,
        seed=0,
        model_options={"solver": "anderson", "abstol": 1e-6, "reltol": 1e-6, "max_steps": 60},
    )
    cpu = run(data, config=config, device="cpu")
    gpu = run(data, config=config, device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    for key in ("train_loss", "test_loss"):
        assert gpu.final[key] == pytest.approx(cpu.final[key], rel=1e-3), key
