"""Training callbacks: StepLog, and the TensorBoard log read back from its event files."""

import sys
import time

import pytest

from deqkit.train import METRIC_FIELDS, StepLog, TrainConfig
from deqkit.train.__main__ import main
from deqkit.train.callbacks import TensorBoardLog, check_tensorboard

from .tiny import Interrupt, run, stop_at, tensorboard_scalars

STEP_TAGS = {f"step/{k}" for k in ("loss", "acc", "fwd_nfe", "bwd_nfe", "unconverged", "lr")}
# jac_penalty is logged only by runs with jac_reg (tests/train/test_jac_reg.py)
EPOCH_TAGS = {f"epoch/{f}" for f in METRIC_FIELDS if f not in ("epoch", "jac_penalty")}


def test_step_log_records_every_step(data):
    log = StepLog()
    run(data, callback=log)
    assert len(log.loss) == len(log.acc) == len(log.fwd_nfe) == len(log.bwd_nfe) == 6
    assert all(n > 0 for n in log.fwd_nfe) and log.unconverged == 0


def test_tensorboard_logs_every_step_and_epoch(data, tmp_path):
    seen = []
    result = run(data, tmp_path, tensorboard=True, callback=seen.append)
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == STEP_TAGS | EPOCH_TAGS
    for tag in STEP_TAGS:  # 2 epochs of 3 steps; x = optimiser steps done
        assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4, 5, 6], tag
    for tag in EPOCH_TAGS:
        assert [s for s, _ in scalars[tag]] == [3, 6], tag
    # the values are the run's own (TensorBoard stores float32)
    assert [v for _, v in scalars["step/loss"]] == pytest.approx([s["loss"] for s in seen], rel=1e-6)
    assert [v for _, v in scalars["step/lr"]] == pytest.approx([3e-3] * 6)
    for field in ("test_acc", "train_loss", "fwd_nfe_mean", "bwd_nfe_mean", "fwd_unconverged", "lr"):
        assert [v for _, v in scalars[f"epoch/{field}"]] == pytest.approx(
            [r[field] for r in result.history], rel=1e-6
        ), field


def test_tensorboard_after_resume_shows_each_step_once(data, tmp_path):
    config = TrainConfig(model="seed", epochs=2, batch_size=32, lr=3e-3, seed=0)
    with pytest.raises(Interrupt):  # logs steps 1-4; its last checkpoint is after epoch 1 (3 steps)
        run(data, tmp_path, config=config, tensorboard=True, callback=stop_at(4))
    # TensorBoard orders event files by name, whose first key is the start time in whole seconds: a real
    # resume starts seconds later; here, wait for the next second so that the files sort in run order
    time.sleep(1.05 - time.time() % 1)
    run(data, tmp_path, config=config, tensorboard=True, start="resume")
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    for tag in STEP_TAGS:  # step 4 was logged by both runs: the resumed run's purge hides the first
        assert [s for s, _ in scalars[tag]] == [1, 2, 3, 4, 5, 6], tag
    assert [s for s, _ in scalars["epoch/test_acc"]] == [3, 6]
    # a fresh run (--overwrite) replaces the old event files
    run(data, tmp_path, config=config, tensorboard=True, start="overwrite")
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_tensorboard_missing_says_what_to_install(data, tmp_path, monkeypatch, capsys):
    # hide the package (and torch's module that imports it) as if it were not installed
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r'pip install "deqkit\[tensorboard\]"'):
        check_tensorboard()
    with pytest.raises(ImportError, match="deqkit"):
        TensorBoardLog(tmp_path)
    with pytest.raises(ImportError, match="deqkit"):  # before any training
        run(data, tmp_path / "r", tensorboard=True, callback=stop_at(0))
    with pytest.raises(SystemExit) as exc:
        main(["mnist", "--tensorboard", "--out", str(tmp_path / "cli")])
    assert exc.value.code == 2 and 'pip install "deqkit[tensorboard]"' in capsys.readouterr().err


def test_tensorboard_needs_a_run_folder(data):
    with pytest.raises(ValueError, match=r"RunOptions\(tensorboard=True\) needs out="):
        run(data, None, tensorboard=True)
