"""Helpers shared by the training tests: tiny synthetic data, a short run, and bitwise comparisons."""

import os
import pathlib
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from deqkit.models import mnist_model
from deqkit.train import RunOptions, TrainConfig, train

REPO = pathlib.Path(__file__).resolve().parents[2]
# Timing-dependent columns: everything else must match bit for bit between runs.
TIMING = {"seconds", "eval_seconds", "loadavg"}


def synthetic(n, seed):
    """Ten noisy class templates: learnable in a few steps, no files needed."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(99))
    y = torch.arange(n) % 10
    x = templates[y] + 0.5 * torch.randn(n, 1, 28, 28, generator=gen)
    return TensorDataset(x, y)


def run(data, out=None, *, config=None, callback=None, **options):
    """Train the seed model 2 epochs of 3 steps (96 samples, batch 32) unless ``config`` says otherwise;
    ``options`` are fields of :class:`RunOptions` (``start="resume"``, ...), without progress bars."""
    config = config or TrainConfig(model="seed", epochs=2, batch_size=32, lr=3e-3, seed=0)
    model = mnist_model(config.model, seed=config.seed, **config.model_options)
    return train(model, *data, config, RunOptions(out, **{"progress": False} | options), callback=callback)


def same_numbers(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == {k: v for k, v in rb.items() if k not in TIMING}


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Interrupt(Exception):
    pass


def stop_at(global_step):
    """A callback that interrupts the run during ``global_step`` (after its optimiser step)."""

    def stop(info):
        if info["global_step"] == global_step:
            raise Interrupt

    return stop


def tensorboard_scalars(folder):
    """{tag: [(step, value), ...]} of every event file in ``folder``, as TensorBoard's own loader reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mnist_dir():
    folder = os.environ.get("DEQKIT_MNIST_DIR")
    if not folder or not (pathlib.Path(folder) / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files to run this test")
    return folder


def env():
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


CLI = [
    sys.executable,
    "-m",
    "deqkit.train",
    "mnist",
    "--threads",
    "1",
    "--subset",
    "640",
    "--batch-size",
    "64",
    "--eval-batch-size",
    "500",
]
