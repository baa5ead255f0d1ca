import pytest
import torch

import deqkit


def test_spectral_radius_of_linear_maps_including_complex_pairs():
    # block-diagonal J: a rotation-scaling pair (|λ| = 0.9, complex) and real eigenvalues 0.5, −0.3
    c, s = 0.9 * torch.cos(torch.tensor(1.0)), 0.9 * torch.sin(torch.tensor(1.0))
    a = torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 0.5, 0], [0, 0, 0, -0.3]], dtype=torch.float64)
    b = torch.diag(torch.tensor([1.2, 0.2, -0.1, 0.0], dtype=torch.float64))
    f_a = lambda z, x: z @ a.T + x  # noqa: E731
    f_b = lambda z, x: z @ b.T + x  # noqa: E731
    z = torch.zeros(2, 4, dtype=torch.float64)
    expect = torch.ones(2, dtype=torch.float64)
    assert torch.allclose(deqkit.spectral_radius(f_a, z, z, iters=200), 0.9 * expect, atol=0.01)
    assert torch.allclose(deqkit.spectral_radius(f_b, z, z, iters=100), 1.2 * expect, atol=0.01)


def test_spectral_radius_is_per_sample_and_matches_eigvals(tanh_problem):
    block, x = tanh_problem(d=10, batch=3, norm=0.9)
    with torch.no_grad():
        z, _ = deqkit.solve(lambda z: block(z, x), torch.zeros_like(x), solver="anderson", abstol=1e-10)
    rho = deqkit.spectral_radius(block, z, x, iters=300)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda zi, i=i: block(zi[None], x[i : i + 1])[0], z[i])
        exact = torch.linalg.eigvals(jac).abs().max()
        assert abs(float(rho[i]) - float(exact)) < 0.02 * float(exact)
    with pytest.raises(ValueError, match="iters"):
        deqkit.spectral_radius(block, z, x, iters=1)


def test_compare_gradients_rejects_unknown_modes(tanh_problem):
    block, x = tanh_problem(d=3, batch=2, norm=0.5)
    with pytest.raises(ValueError, match=r"unknown backward mode\(s\) \['implict'\]"):
        deqkit.compare_gradients(deqkit.DEQ(block, solver="anderson"), x, modes=("implict", "one_step"))
