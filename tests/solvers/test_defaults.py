"""The default DEQ at its budget: as accurate as Anderson with the same evaluations, per sample, stable answers only.

Issue: "The default DEQ is right at its budget". References are converged float64 solves (Anderson to 1e-12 and an
implicit backward to 1e-13), on the block families of :func:`deqkit.problems.block_problem`, in training mode.
"""

import warnings

import pytest
import torch

import deqkit
from deqkit.layer import TRAIN_NFE
from deqkit.problems import FAMILIES, block_problem, system_map, tanh_problem


def _output_and_gradient(block, x, **deq):
    """The layer's output and the gradient of a fixed linear functional of it to every parameter of the block."""
    block.zero_grad()
    layer = deqkit.DEQ(block, **deq).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)  # the budget is the point here; counted below
        out = layer(x)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward()
    grad = torch.cat([p.grad.flatten() for p in block.parameters()])
    return out.detach(), grad, layer.last_stats


def _reference(block, x):
    return _output_and_gradient(
        block,
        x,
        solver=deqkit.Anderson(),
        abstol=1e-12,
        reltol=0,
        max_steps=3000,
        max_nfe=None,
        backward=deqkit.Implicit(abstol=1e-13, reltol=0, max_steps=3000),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_the_default_is_as_accurate_as_anderson_at_the_same_budget(family):
    block, x = block_problem(family, batch=8, size=32 if family in ("mlp", "layernorm") else 16)
    ref_out, ref_grad, ref_stats = _reference(block, x)
    assert ref_stats.forward.all_converged and ref_stats.backward.all_converged
    scores = {}
    for name, solver in (("default", "dynamic_ss"), ("anderson", "anderson")):
        out, grad, stats = _output_and_gradient(block, x, solver=solver)
        assert stats.forward.nfe <= TRAIN_NFE
        error = float((out - ref_out).norm() / ref_out.norm())
        scores[name] = error, float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))
    (err, cos), (err_a, cos_a) = scores["default"], scores["anderson"]
    assert err <= 1.1 * err_a and cos >= cos_a - 0.005, scores


def test_a_tight_tolerance_costs_no_more_than_twice_anderson():
    block, x = block_problem("layernorm", batch=16, size=32)
    nfe = {}
    with torch.no_grad():
        for solver in ("dynamic_ss", "anderson"):
            _, stats = deqkit.solve(
                lambda z: block(z, x), torch.zeros_like(x), solver=solver, abstol=1e-10, reltol=1e-10, max_steps=20_000
            )
            assert stats.all_converged
            nfe[solver] = stats.nfe
    assert nfe["dynamic_ss"] <= 2 * nfe["anderson"], nfe


def _side(z):
    """0 at the saddle (the origin), else the sign of the first coordinate (the two stable equilibria)."""
    return torch.where(z.norm(dim=1) < 1e-2, 0, torch.sign(z[:, 0]).long())


def test_the_pitchfork_gives_each_start_the_same_stable_equilibrium_alone_or_in_a_batch():
    f = system_map("pitchfork", 1.2)
    starts = torch.rand(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4 - 2
    # next to the saddle's stable manifold: the starts the old default left at the saddle
    starts = torch.cat([torch.tensor([[0.5, -0.49], [1.0, -0.9], [1.5, -1.4]], dtype=torch.float64), starts])
    together, stats = deqkit.solve(f, starts, abstol=1e-6, reltol=1e-6)
    alone = [deqkit.solve(f, s[None], abstol=1e-6, reltol=1e-6) for s in starts]
    assert stats.all_converged and all(st.all_converged for _, st in alone)
    alone_z = torch.cat([z for z, _ in alone])
    assert (_side(together) != 0).all() and torch.equal(_side(together), _side(alone_z))
    assert torch.allclose(together, alone_z, atol=1e-5)


def test_a_polished_saddle_is_rejected_and_left_along_its_unstable_direction():
    f = system_map("pitchfork", 1.2)
    z, stats = deqkit.solve(f, torch.tensor([[0.5, -0.49]], dtype=torch.float64), abstol=1e-8, reltol=1e-8)
    assert stats.all_converged and _side(z).item() == 1  # the side of the stable manifold the start was on
    assert torch.isnan(torch.tensor(stats.times)).any() and not torch.isnan(torch.tensor(stats.times)).all()


def test_each_sample_records_when_it_converged():
    block, x = block_problem("mlp", batch=6, size=16)
    with torch.no_grad():
        _, stats = deqkit.solve(lambda z: block(z, x), torch.zeros_like(x), abstol=1e-8, reltol=0)
        assert stats.all_converged and (stats.converged_nfe >= 2).all() and (stats.converged_step >= 1).all()
        assert int(stats.converged_nfe.max()) == stats.nfe
        for i in range(6):  # alone, a sample converges at the same step with the same evaluations
            _, one = deqkit.solve(
                lambda z, i=i: block(z, x[i : i + 1]), torch.zeros_like(x[i : i + 1]), abstol=1e-8, reltol=0
            )
            assert one.converged_nfe.item() == stats.converged_nfe[i].item() == one.nfe


def test_an_unconverged_sample_records_no_step():
    with pytest.warns(deqkit.ConvergenceWarning):
        _, stats = deqkit.solve(lambda z: z + 1, torch.zeros(2, 3, dtype=torch.float64), solver="anderson", max_steps=5)
    assert (stats.converged_step == -1).all() and (stats.converged_nfe == -1).all()


def test_a_training_loop_over_budget_warns_a_handful_of_times_with_the_counts():
    block, x = block_problem("conv_gn", batch=4, size=16, dtype=torch.float32)
    layer = deqkit.DEQ(block)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(200):
            layer(x).sum().backward()
    mine = [w for w in caught if issubclass(w.category, deqkit.ConvergenceWarning)]
    assert 1 <= len(mine) <= 5 and all(w.filename == __file__ for w in mine)
    assert "did not converge within max_steps=500 / max_nfe=30" in str(mine[0].message)
    assert "9 of this layer's last 9 forward solves left samples unconverged: 36 of 36 samples" in str(mine[1].message)
    assert "raise the budget (DEQ(max_nfe=...)" in str(mine[1].message)


def test_warning_filters_still_apply_to_the_layer():
    block, x = block_problem("conv_gn", batch=2, size=16, dtype=torch.float32)
    layer = deqkit.DEQ(block)
    with warnings.catch_warnings():
        warnings.simplefilter("error", deqkit.ConvergenceWarning)
        with pytest.raises(deqkit.ConvergenceWarning, match="did not converge"):
            layer(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        for _ in range(20):
            layer(x)
    assert not caught
    with pytest.raises(deqkit.ConvergenceError):
        deqkit.DEQ(block, strict=True)(x)


@pytest.mark.parametrize("a", [1.0, 1.2, 2.5])
def test_a_start_next_to_the_saddle_leaves_it_to_the_side_it_came_from(a):
    # pushed off a rejected saddle toward the start's side, the default lands where the flow alone lands, however
    # small the start's offset (it was sent the other way for offsets below the tolerance)
    f = system_map("pitchfork", a)
    for offset in (1e-9, 1e-7, -1e-6, 1e-5, -1e-4, 1e-2):
        z0 = torch.tensor([[offset, offset]], dtype=torch.float64)
        z, stats = deqkit.solve(f, z0)
        flow, _ = deqkit.solve(f, z0, solver=deqkit.DynamicSS(polish=None))
        assert stats.all_converged and _side(z).item() == _side(flow).item() != 0, (a, offset)


def test_more_secant_pairs_than_dimensions_add_no_spurious_growth_rate():
    # A stable linear flow in 4 dimensions seen through 6 difference pairs: ΔZ has rank 4 at most. Before, the
    # regularised normal equations gave a spurious positive Ritz value, and the default rejected a converged
    # sample as "unstable", kicked it off and spent its whole budget (an implicit backward in float32).
    from deqkit.solvers.anderson import growth_rates

    gen = torch.Generator().manual_seed(0)
    j = 0.5 * torch.randn(4, 4, generator=gen, dtype=torch.float64) / 2  # ρ(J) < 1: J − I is stable
    dz = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64)
    dg = dz @ (j - torch.eye(4, dtype=torch.float64)).T
    rates, _ = growth_rates(dz, dg, above=-10.0)
    exact = torch.linalg.eigvals(j - torch.eye(4, dtype=torch.float64)).real.max()
    assert torch.allclose(rates, exact.expand(3), atol=1e-8)

    block, x = tanh_problem(4, 0.5, batch=2, dtype=torch.float32)
    layer = deqkit.DEQ(block, backward=deqkit.Implicit(solver="dynamic_ss"))
    xg = x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", deqkit.ConvergenceWarning)
        (layer(xg).sum() * 1.4).backward()
    assert layer.last_stats.backward.all_converged and layer.last_stats.backward.nfe <= 10


@pytest.mark.parametrize(
    ("case", "dtype", "scale"),
    [
        ("bfloat16", torch.bfloat16, 1.0),  # before: 1e3·eps > 1 dropped every direction, rate -inf ("no pairs")
        ("squares underflow", torch.float32, 1e-30),  # before: pairs of 1e-30 read as zero padding, rate -inf
        ("non-finite pair", torch.float32, 1.0),  # before: eigh raised "failed to converge" on the NaN sample
    ],
)
def test_growth_rates_see_an_unstable_flow_at_any_scale_and_precision(case, dtype, scale):
    from deqkit.solvers.anderson import growth_rates

    gen = torch.Generator().manual_seed(0)
    j = 0.3 * torch.randn(6, 6, generator=gen) + 1.5 * torch.eye(6)  # J − I has a positive eigenvalue
    dz = torch.randn(3, 4, 6, generator=gen)
    dg = dz @ (j - torch.eye(6)).T
    if case == "non-finite pair":
        dz[0, 1] = float("nan")
    rates, _ = growth_rates((dz * scale).to(dtype), (dg * scale).to(dtype))
    reference, _ = growth_rates(dz[1:].double(), dg[1:].double())
    assert (reference > 0.5).all()
    assert torch.allclose(rates[-2:].double(), reference, atol=0.05), (rates, reference)
    assert rates[0] > 0.5 if case != "non-finite pair" else rates[0] == -torch.inf  # a NaN pair says nothing


def test_growth_rates_bound_is_never_below_the_exact_rate():
    # Stage one answers "at most `above`" from the numerical abscissa of the projected matrix. On non-normal maps
    # (where the abscissa exceeds the largest real part) the answer must still agree with the exact Ritz values,
    # also with zero padding pairs, and the rates it reports must never lie below the exact ones.
    from deqkit.solvers.anderson import growth_rates

    gen = torch.Generator().manual_seed(1)
    n, k, dim = 64, 5, 12
    j = 0.6 * torch.randn(n, dim, dim, generator=gen, dtype=torch.float64) / dim**0.5
    j = j + torch.triu(torch.randn(n, dim, dim, generator=gen, dtype=torch.float64), 1) * 0.4  # non-normal
    dz = torch.randn(n, k, dim, generator=gen, dtype=torch.float64)
    dz[::4, -1] = 0  # padding
    dg = dz @ (j - torch.eye(dim, dtype=torch.float64)).transpose(1, 2)
    for above in (-0.5, 0.0, 0.05, 0.3):
        rates, _ = growth_rates(dz, dg, above=above)
        galerkin = []
        for i in range(n):
            kept = dz[i].abs().amax(1) > 0
            qi, _ = torch.linalg.qr(dz[i, kept].T)
            galerkin.append(torch.linalg.eigvals(qi.T @ (j[i] - torch.eye(dim, dtype=torch.float64)) @ qi).real.max())
        exact = torch.stack(galerkin)
        assert torch.equal(rates > above, exact > above), above
        assert (rates >= torch.minimum(exact, torch.tensor(above, dtype=torch.float64)) - 1e-9).all()
        assert torch.allclose(rates[exact > above], exact[exact > above], atol=1e-8)
