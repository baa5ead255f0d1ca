"""Jacobian regularization in training (``--jac-reg``), and the CLI's normalized models (``--model mlp-ln``,
``--deq weight_norm=...``)."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

import deqkit
from deqkit.models import mnist_model
from deqkit.train import METRIC_FIELDS, RunOptions, StepLog, TrainConfig, train
from deqkit.train.__main__ import _check_arguments, build_parser, main
from deqkit.train.loop import _epoch_order

from .tiny import mnist_dir, synthetic, tensorboard_scalars

# a small, cheap LayerNorm MLP-DEQ whose solves converge within their budgets
MLP = {"width": 16, "solver": "anderson", "max_nfe": None, "eval_max_nfe": None}


def config(jac_reg, epochs=2, **kw):
    return TrainConfig(
        model="mlp-ln", epochs=epochs, batch_size=32, lr=1e-3, seed=0, jac_reg=jac_reg, model_options=MLP, **kw
    )


def run(data, cfg, out=None, *, callback=None, **options):
    model = mnist_model(cfg.model, seed=cfg.seed, **cfg.model_options)
    return train(model, *data, cfg, RunOptions(out, progress=False, **options), callback=callback)


def test_the_penalty_is_added_to_the_loss_exactly():
    """One step of a run with jac_reg = γ equals one Adam step on cross-entropy + γ · jacobian_penalty, done by
    hand from the same weights, batch and random vectors."""
    data = synthetic(32, 3), synthetic(10, 4)  # one step of 32
    gamma = 0.7
    trained = run(data, config(gamma, epochs=1)).model
    model = mnist_model("mlp-ln", seed=0, **MLP)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)  # what the loop does before its first step; the penalty's vectors come from this RNG
    images, labels = data[0].tensors
    batch = _epoch_order(32, 0, 0)
    loss = F.cross_entropy(model(images[batch]), labels[batch])
    (loss + gamma * deqkit.jacobian_penalty(model)).backward()
    optimizer.step()
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    unregularized = run(data, config(0.0, epochs=1)).model
    assert not torch.allclose(unregularized.deq.f.linear.weight, trained.deq.f.linear.weight)


def test_the_penalty_is_logged_with_the_other_metrics(tmp_path):
    data = synthetic(64, 1), synthetic(20, 2)
    log = StepLog()
    result = run(data, config(1.0), tmp_path, callback=log, tensorboard=True)
    assert all(p is not None and p > 0 for p in log.jac_penalty) and len(log.jac_penalty) == 4
    for epoch, steps in zip(result.history, (log.jac_penalty[:2], log.jac_penalty[2:])):
        assert epoch["jac_penalty"] == pytest.approx(sum(steps) / 2)
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert header.split(",") == list(METRIC_FIELDS) and "jac_penalty" in METRIC_FIELDS
    assert float(rows[-1].split(",")[METRIC_FIELDS.index("jac_penalty")]) == pytest.approx(result.final["jac_penalty"])
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["jac_reg"] == 1.0
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert [v for _, v in scalars["step/jac_penalty"]] == pytest.approx(log.jac_penalty, rel=1e-6)
    assert [v for _, v in scalars["epoch/jac_penalty"]] == pytest.approx(
        [r["jac_penalty"] for r in result.history], rel=1e-6
    )


def test_without_jac_reg_nothing_is_computed_or_logged(tmp_path):
    data = synthetic(64, 1), synthetic(20, 2)
    log = StepLog()
    result = run(data, config(0.0), tmp_path, callback=log, tensorboard=True)
    assert log.jac_penalty == [None] * 4 and all(r["jac_penalty"] is None for r in result.history)
    header, *rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[header.split(",").index("jac_penalty")] == ""  # an empty cell, not a fake 0
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert "step/jac_penalty" not in scalars and "epoch/jac_penalty" not in scalars


def test_resume_refuses_another_jac_reg_and_accepts_checkpoints_older_than_the_setting(tmp_path):
    from deqkit.train import CheckpointError, load_checkpoint, save_checkpoint

    data = synthetic(64, 1), synthetic(20, 2)
    run(data, config(0.5, epochs=1), tmp_path)
    with pytest.raises(CheckpointError, match="jac_reg: checkpoint 0.5 vs now 2.0"):
        run(data, config(2.0, epochs=2), tmp_path, start="resume")
    # a checkpoint written before jac_reg existed had no penalty: it resumes as jac_reg = 0
    plain = tmp_path / "plain"
    run(data, config(0.0, epochs=1), plain)
    state = load_checkpoint(plain / "checkpoint.pt")
    del state["config"]["jac_reg"]
    save_checkpoint(state, plain / "checkpoint.pt")
    assert len(run(data, config(0.0, epochs=2), plain, start="resume").history) == 2


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "1"])
def test_bad_jac_reg_is_refused(value):
    with pytest.raises(ValueError, match="jac_reg must be a finite number >= 0"):
        TrainConfig(jac_reg=value)


def test_cli_bad_jac_reg_is_a_usage_error(capsys):
    for text in ("-1", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["mnist", "--model", "mlp-ln", "--jac-reg", text])
        assert exc.value.code == 2 and "jac_reg must be a finite number >= 0" in capsys.readouterr().err


def test_cli_selects_normalized_models_and_the_penalty():
    parser = build_parser()
    args = parser.parse_args(["mnist", "--model", "mlp-ln", "--deq", "weight_norm=spectral", "--jac-reg", "0.5"])
    cfg, model = _check_arguments(parser, args)
    assert cfg.jac_reg == 0.5 and cfg.model_options == {"weight_norm": "spectral"}
    assert isinstance(model.deq.f.norm, torch.nn.LayerNorm)
    assert parametrize.is_parametrized(model.deq.f.linear, "weight")
    assert type(model.deq.f.linear.parametrizations.weight[0]).__name__ == "_SpectralNorm"
    cfg, model = _check_arguments(parser, parser.parse_args(["mnist", "--model", "mlp", "--deq", "weight_norm=weight"]))
    assert isinstance(model.deq.f.norm, torch.nn.Identity) and cfg.jac_reg == 0.0
    assert type(model.deq.f.linear.parametrizations.weight[0]).__name__ == "_WeightNorm"
    _, conv = _check_arguments(parser, parser.parse_args(["mnist", "--model", "conv", "--deq", "weight_norm=spectral"]))
    assert parametrize.is_parametrized(conv.deq.f.conv1, "weight")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "mlp-ln", "--deq", "weight_norm=batch"], "weight_norm must be one of"),
        (["--model", "seed", "--deq", "weight_norm=spectral"], "weight_norm"),
        (["--model", "mlp-ln", "--deq", "norm=None"], "the 'mlp-ln' model fixes norm"),
    ],
)
def test_cli_refuses_normalizations_a_model_does_not_take(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["mnist", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_trains_the_regularized_layernorm_model_on_mnist(tmp_path, capsys):
    root = mnist_dir()
    out = tmp_path / "run"
    code = main(
        [
            "mnist",
            "--model",
            "mlp-ln",
            "--deq",
            "weight_norm=spectral",
            "--deq",
            "width=32",
            "--deq",
            "solver=anderson",
            "--deq",
            "max_nfe=None",
            "--deq",
            "max_steps=1000",
            "--jac-reg",
            "1",
            "--data",
            root,
            "--subset",
            "256",
            "--batch-size",
            "64",
            "--epochs",
            "1",
            "--lr",
            "1e-3",
            "--eval-batch-size",
            "500",
            "--threads",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["jac_reg"] == 1.0 and doc["config"]["model_options"]["weight_norm"] == "spectral"
    assert doc["epochs"][0]["jac_penalty"] > 0
