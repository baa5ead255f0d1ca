"""The MDEQ-style model: a two-resolution tuple state whose gradients match finite differences (and TorchDEQ's),
and that trains on MNIST through the CLI."""

import importlib.util
import json
import subprocess

import pytest
import torch

import deqkit
from deqkit.models import MNIST_MODELS, mdeq
from deqkit.models.mdeq import MultiscaleBlock

from ..train.tiny import CLI, env, mnist_dir

TIGHT = {"abstol": 1e-13, "reltol": 0, "max_steps": 500, "max_nfe": None}


def _problem(resolutions=2, channels=4, size=8):
    torch.manual_seed(0)
    block = MultiscaleBlock(channels, 4, resolutions, init_std=0.05).double()
    x = torch.randn(2, channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return block, x


def test_the_block_is_the_documented_formula():
    block, x = _problem(resolutions=1)
    z = torch.randn_like(x)
    with torch.no_grad():
        inner = block.hi.conv2(block.hi.norm(torch.relu(block.hi.conv1(z))))
        assert torch.allclose(block(z, x), block.norm_hi(torch.relu(x + inner)))
    two, x = _problem()
    hi, lo = two.initial_state(x)
    assert hi.shape == (2, 4, 8, 8) and lo.shape == (2, 8, 4, 4) and not hi.any() and not lo.any()


@pytest.mark.parametrize("resolutions", [1, 2])
def test_gradients_match_finite_differences_in_float64(resolutions):
    block, x = _problem(resolutions)
    deq = deqkit.DEQ(
        block,
        solver="anderson",
        z0=block.initial_state,
        backward=deqkit.Implicit(abstol=1e-14, reltol=0, max_steps=500),
        **TIGHT,
    )
    report = deqkit.compare_gradients(deq, x, modes=("implicit", "unrolled"), directions=6, eps=1e-6)
    for mode in ("implicit", "unrolled"):
        assert report.relative_error(mode) < 1e-6, str(report)
    assert deq.last_stats.forward.all_converged


@pytest.mark.skipif(importlib.util.find_spec("torchdeq") is None, reason="TorchDEQ is not installed here")
def test_gradients_match_torchdeqs_on_the_same_block():
    from torchdeq import get_deq

    block, x = _problem()
    gen = torch.Generator().manual_seed(2)
    weights = [
        torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=gen),
        torch.randn(2, 8, 4, 4, dtype=torch.float64, generator=gen),
    ]

    def loss(hi, lo):
        return (hi * weights[0]).sum() + (lo * weights[1]).sum()

    deq = deqkit.DEQ(
        block,
        solver="anderson",
        z0=block.initial_state,
        backward=deqkit.Implicit(abstol=1e-14, reltol=0, max_steps=500),
        **TIGHT,
    )
    ours = torch.autograd.grad(loss(*deq(x)), list(block.parameters()))
    theirs_deq = get_deq(
        core="indexing",
        ift=True,
        f_solver="broyden",
        b_solver="broyden",
        f_max_iter=500,
        b_max_iter=500,
        f_tol=1e-12,
        b_tol=1e-12,
    )
    z_out, _ = theirs_deq(lambda hi, lo: block((hi, lo), x), list(block.initial_state(x)))
    theirs = torch.autograd.grad(loss(*z_out[-1]), list(block.parameters()))
    assert max(float(g.abs().max()) for g in ours) > 1  # a gradient worth comparing
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-8, rtol=0), float((a - b).abs().max())


def test_the_model_is_registered_and_solves_a_tuple_state():
    assert MNIST_MODELS["mdeq"] is mdeq
    model = mdeq(channels=4, hidden=8, seed=0)
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        hi, lo = model.deq(model.features(images))
        assert hi.shape == (3, 4, 14, 14) and lo.shape == (3, 8, 7, 7)
        assert model(images).shape == (3, 10) and model.deq.last_stats.forward.all_converged
    single = mdeq(channels=4, hidden=8, resolutions=1, seed=0, weight_norm="weight")
    assert single(images).shape == (3, 10)
    with pytest.raises(ValueError, match="resolutions must be 1 or 2"):
        mdeq(resolutions=3)


def test_mdeq_trains_on_mnist_through_the_cli(tmp_path):
    root = mnist_dir()
    out = tmp_path / "mdeq"
    cmd = [
        *CLI,
        "--model",
        "mdeq",
        "--deq",
        "channels=8",
        "--deq",
        "hidden=16",
        "--data",
        root,
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ConvergenceWarning" not in done.stderr, done.stderr
    row = json.loads((out / "metrics.json").read_text())["epochs"][-1]
    # 640 training digits, 10 steps: far from converged training, but well above chance (10 %)
    assert row["test_acc"] > 30 and row["train_loss"] < 2.2, row
