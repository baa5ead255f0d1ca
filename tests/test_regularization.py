"""Jacobian regularization and the phantom gradient."""

import pytest
import torch

import deqkit
from deqkit.problems import tanh_problem


def test_penalty_of_a_linear_map_averages_to_the_frobenius_norm():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    w = 0.6 * w / torch.linalg.matrix_norm(w, 2)
    deq = deqkit.DEQ(lambda z, x: z @ w.T + x, solver="anderson", abstol=1e-12, reltol=0)
    deq(torch.randn(16, 8, generator=gen, dtype=torch.float64))
    draws = torch.stack([deqkit.jacobian_penalty(deq, generator=gen).detach() for _ in range(400)])
    exact = (w.pow(2).sum() / 8).item()
    assert draws.mean().item() == pytest.approx(exact, rel=0.05)


def test_penalty_gradient_matches_finite_differences_in_float64():
    # The penalty is a function of f's parameters at the equilibrium the forward pass found (z* held fixed, as in
    # Bai et al.); with the same random vectors, its gradient must match central differences of that function.
    block, x = tanh_problem(5, 0.7, batch=3, dtype=torch.float64)
    deq = deqkit.DEQ(block, solver="anderson", abstol=1e-13, reltol=0, max_steps=500)
    deq(x)
    z_star = deq.last_equilibrium[0].detach()
    value = deqkit.jacobian_penalty(deq, samples=4, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(value, [block.weight, block.bias])

    def penalty_at_z_star(weight, bias):
        z = z_star.clone().requires_grad_()
        fz = torch.tanh(z @ weight.T + x + bias)
        gen, total = torch.Generator().manual_seed(3), 0
        for _ in range(4):
            (vj,) = torch.autograd.grad(fz, z, torch.randn(fz.shape, generator=gen, dtype=fz.dtype), retain_graph=True)
            total = total + vj.pow(2).sum(1)
        return (total / (4 * 5)).mean().item()

    w, b = block.weight.detach(), block.bias.detach()
    eps = 1e-6
    for k, (param, grad) in enumerate(zip((w, b), grads)):
        direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        shifted = [(w + s * eps * direction, b) if k == 0 else (w, b + s * eps * direction) for s in (1, -1)]
        fd = (penalty_at_z_star(*shifted[0]) - penalty_at_z_star(*shifted[1])) / (2 * eps)
        assert (grad * direction).sum().item() == pytest.approx(fd, rel=1e-6, abs=1e-10)


def test_penalty_needs_a_graph():
    block, x = tanh_problem(4, 0.5, batch=2)
    deq = deqkit.DEQ(block)
    with pytest.raises(ValueError, match="call it in grad mode first"):
        deqkit.jacobian_penalty(deq)
    with torch.no_grad():
        deq(x)
    with pytest.raises(ValueError, match="call it in grad mode first"):
        deqkit.jacobian_penalty(deq)
    with pytest.raises(ValueError, match="needs a deqkit.DEQ"):
        deqkit.jacobian_penalty(torch.nn.Linear(2, 2))


def test_penalty_names_the_cause_of_a_bad_call():
    block, x = tanh_problem(4, 0.5, batch=2)
    deq = deqkit.DEQ(block)
    deq(x).sum().backward()  # frees the graph the penalty needs
    with pytest.raises(RuntimeError, match="take the penalty before loss.backward"):
        deqkit.jacobian_penalty(deq)
    with pytest.raises(TypeError, match="needs the model"):
        deqkit.jacobian_penalty(None)
    deq(x)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        deqkit.jacobian_penalty(deq, generator=42)
    blind = deqkit.DEQ(lambda z, x: block(z.detach(), x))  # ∂f/∂z = 0 in the graph: said, not hidden
    blind(x)
    with pytest.warns(UserWarning, match="does not depend on z"):
        assert deqkit.jacobian_penalty(blind).item() == 0.0


def test_penalty_costs_no_extra_forward_evaluation():
    block, x = tanh_problem(8, 0.5, batch=4)
    calls = []
    deq = deqkit.DEQ(lambda z, x: calls.append(1) or block(z, x), solver="anderson")
    deq(x)
    before = len(calls)
    deqkit.jacobian_penalty(deq, samples=3)
    assert len(calls) == before


def test_phantom_with_30_undamped_steps_is_close_to_implicit():
    block, x = tanh_problem(16, 0.9, batch=8, dtype=torch.float64)
    grads = {}
    for name, backward in [("implicit", deqkit.Implicit(reltol=1e-10)), ("phantom", deqkit.Phantom(30, 1.0))]:
        deq = deqkit.DEQ(block, solver="anderson", backward=backward, abstol=1e-12, reltol=0, max_nfe=None)
        grads[name] = torch.cat(
            [g.flatten() for g in torch.autograd.grad(deq(x).pow(2).sum(), list(block.parameters()))]
        )
    cosine = torch.nn.functional.cosine_similarity(grads["implicit"], grads["phantom"], dim=0).item()
    assert cosine >= 0.99


def test_one_step_is_phantom_with_one_undamped_step():
    block, x = tanh_problem(8, 0.7, batch=4, dtype=torch.float64)
    outs = {}
    for backward in (deqkit.OneStep(), deqkit.Phantom(1, 1.0)):
        deq = deqkit.DEQ(block, solver="anderson", backward=backward, abstol=1e-12, reltol=0, max_nfe=None)
        out = deq(x)
        outs[backward.name] = (out.detach(), torch.autograd.grad(out.pow(2).sum(), list(block.parameters())))
    assert torch.equal(outs["one_step"][0], outs["phantom"][0])
    for a, b in zip(outs["one_step"][1], outs["phantom"][1]):
        assert torch.equal(a, b)


def test_phantom_settings_are_checked():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        deqkit.Phantom(steps=0)
    with pytest.raises(ValueError, match=r"damping must be in \(0, 1\]"):
        deqkit.Phantom(damping=0)
    assert repr(deqkit.DEQ(lambda z, x: z, backward="phantom").backward) == "Phantom(steps=5, damping=0.5)"
