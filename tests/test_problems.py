"""The shared test problems: the spectral norms they promise, reproducibility, the planar systems."""

import pytest
import torch

from deqkit import problems


@pytest.mark.parametrize("kind", problems.KINDS)
def test_tanh_weight_has_the_spectral_norm_asked_for(kind):
    gen = torch.Generator().manual_seed(3)
    w = problems.tanh_weight(12, 0.7, kind, generator=gen)
    assert torch.linalg.matrix_norm(w, 2).item() == pytest.approx(0.7, rel=1e-12)
    if kind == "orthogonal":
        assert torch.allclose(torch.linalg.svdvals(w), torch.full((12,), 0.7, dtype=torch.float64))
    if kind == "psd":
        assert torch.linalg.eigvalsh(w).max() <= 1e-12  # eigenvalues in [−0.7, 0]
    if kind == "symmetric":
        assert torch.allclose(w, w.T) and torch.linalg.eigvalsh(w).min().item() == pytest.approx(-0.7)


def test_tanh_problem_is_reproducible_and_typed():
    (a, xa), (b, xb) = (
        problems.tanh_problem(8, seed=5, dtype=torch.float64),
        problems.tanh_problem(8, seed=5, dtype=torch.float64),
    )
    assert torch.equal(a.weight, b.weight) and torch.equal(xa, xb) and xa.dtype == torch.float64
    z = torch.zeros_like(xa)
    assert torch.allclose(a(z, xa), torch.tanh(xa + a.bias))
    with pytest.raises(ValueError, match="kind must be one of"):
        problems.TanhBlock(4, 0.5, kind="random")


def test_linear_problem_gradient_in_closed_form():
    a, x, w = problems.linear_problem(d=4, norm=0.6)
    assert torch.linalg.matrix_norm(a, 2).item() == pytest.approx(0.6)
    z_star = torch.linalg.solve(torch.eye(4, dtype=torch.float64) - a, x[0])
    assert torch.allclose(z_star, a @ z_star + x[0])


def test_pitchfork_and_spiral_maps():
    f = problems.system_map("pitchfork", 1.2)
    z = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    assert torch.allclose(f(z), torch.tanh(1.2 * z @ torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64).T))
    spiral = problems.system_matrix("spiral", 2.0)
    assert torch.allclose(torch.linalg.matrix_norm(spiral, 2), torch.tensor(2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown system"):
        problems.system_matrix("saddle", 1.0)


@pytest.mark.parametrize("family", problems.FAMILIES)
def test_block_families_are_seeded_maps_of_their_input_shape(family):
    block, x = problems.block_problem(family, batch=3, size=16, seed=4)
    again, x2 = problems.block_problem(family, batch=3, size=16, seed=4)
    z = torch.randn_like(x)
    assert torch.equal(x, x2) and x.dtype == torch.float64 and block(z, x).shape == x.shape
    assert torch.equal(block(z, x), again(z, x))
    assert x.dim() == (2 if family in ("mlp", "layernorm") else 4)


def test_block_problem_names_its_mistakes():
    with pytest.raises(ValueError, match="unknown block family 'resnet'"):
        problems.block_problem("resnet")
    with pytest.raises(ValueError, match="size must be a multiple of 8, got 12"):
        problems.block_problem("mdeq", size=12)
    for bad, match in (
        (dict(batch=0), "batch must be an integer >= 1, got 0"),
        (dict(batch=2.5), "batch must be an integer >= 1, got 2.5"),
        (dict(batch=True), "batch must be an integer >= 1, got True"),
        (dict(size=8.0), "size must be an integer >= 1, got 8.0"),
        (dict(dtype=torch.int32), "dtype must be a floating-point torch.dtype"),
    ):
        with pytest.raises(ValueError, match=match):
            problems.block_problem("mlp", **bad)
