"""The seed blog's y = 2x example, trained as in the blog."""

import pytest
import torch

import deqkit
from deqkit.models import fit_regression, seed_regression_model


def test_seed_regression_predicts_minus_ten():
    model = seed_regression_model(seed=0)
    assert isinstance(model, deqkit.DEQ) and model.z0 == "f0" and model.abstol == 1e-5
    run = fit_regression(model, epochs=100, lr=0.05, seed=0)
    assert abs(run.prediction + 10) <= 0.05, run.prediction
    assert run.losses[-1] < run.losses[0] / 100
    a, b = model.f.affine()
    assert abs(a - 2 / 3) < 0.01 and abs(b) < 0.05
    # the closed form of the fixed point matches the solver
    x = torch.tensor([[-5.0], [3.0]])
    with torch.no_grad():
        assert torch.allclose(model(x), model.f.closed_form(x), atol=1e-3)
    assert run.forward_nfe[-1] > 0 and run.backward_nfe[-1] > 0


def test_seed_block_matches_blog_architecture():
    block = seed_regression_model(seed=1).f
    l1, l2 = block.net
    assert (l1.in_features, l1.out_features, l2.in_features, l2.out_features) == (1, 2, 2, 1)
    assert torch.all(l1.bias == 0) and torch.all(l2.bias == 0)  # Flux's Dense starts with zero bias
    # f(z, x) = net(z + x)
    z, x = torch.tensor([[0.2]]), torch.tensor([[0.7]])
    assert torch.allclose(block(z, x), block.net(z + x))


def test_fit_regression_refuses_a_model_without_parameters():
    with pytest.raises(ValueError, match="needs a model with parameters"):
        fit_regression(torch.nn.Identity(), epochs=1)
