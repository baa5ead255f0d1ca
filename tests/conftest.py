import pytest
import torch

import deqkit
from deqkit import problems

torch.set_num_threads(1)  # also for module- and session-scoped fixtures, which run before the one below


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one torch thread and gets it back afterwards.

    The tests' tensors are tiny: intra-op threads only add overhead, and on a busy 2-core machine (the browser
    test runs JupyterLab, a kernel and Chromium beside pytest) they oversubscribe the cores and slow ops 10x.
    Bitwise comparisons with the training CLI's ``--threads 1`` also need the same reduction order. Benchmarks
    and the CLI set their own thread count when called in-process; this undoes it.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def tanh_problem():
    """``make(...) -> (block, x)``: :func:`deqkit.problems.tanh_problem` with a Gaussian (or PSD) W, in float64."""

    def make(d=64, batch=32, norm=0.9, psd=False, seed=0, x_scale=1.0, dtype=torch.float64):
        return problems.tanh_problem(
            d, norm, batch=batch, kind="psd" if psd else "gaussian", x_scale=x_scale, seed=seed, dtype=dtype
        )

    return make


@pytest.fixture(scope="module")
def small_mlp_deq():
    """A 16-wide LayerNorm MLP-DEQ (no budget, Anderson) and 12 random 'images' with labels."""
    from deqkit.models import mnist_model

    torch.manual_seed(0)
    model = mnist_model("mlp-ln", seed=0, width=16, solver="anderson", max_nfe=None)
    images = torch.randn(12, 1, 28, 28)
    labels = torch.arange(12) % 10
    return model, images, labels


@pytest.fixture
def equilibrium_of():
    """``(model, images) -> (z*, x)``: a model's equilibrium solved with Anderson to its own relative tolerance."""

    def solve(model, images):
        with torch.no_grad():
            x = model.features(images)
            z, _ = deqkit.solve(
                lambda z: model.deq.f(z, x),
                torch.zeros_like(x),
                solver="anderson",
                abstol=0.0,
                reltol=model.deq.reltol,
                max_steps=500,
            )
        return z, x

    return solve
