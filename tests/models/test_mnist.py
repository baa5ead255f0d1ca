"""The MNIST DEQ models: the seed's architecture exactly, the variants, and their solver settings."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import deqkit
from deqkit.models import MNIST_MODELS, MNISTDEQ, conv_deq, mnist_model, seed_mnist_model, wide_mlp_deq
from deqkit.models.mnist import ConvBlock


def _linears(seq: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in seq if isinstance(m, nn.Linear)]


def _images(batch=6, seed=0):
    return torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_seed_model_is_the_blogs_network():
    model = seed_mnist_model(seed=0)
    assert model.name == "seed"
    assert _linears(model.encoder) == [(784, 200), (200, 20)]
    assert _linears(model.deq.f.block) == [(20, 10), (10, 10), (10, 20)]
    assert _linears(model.head) == [(20, 15), (15, 10)]
    # tanh after every Dense, the logits included
    for seq in (model.encoder, model.deq.f.block, model.head):
        assert isinstance(seq[-1], nn.Tanh)
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.Linear))  # Flux init
    deq = model.deq
    assert (deq.solver.name, deq.abstol, deq.reltol, deq.z0) == ("dynamic_ss", 1e-2, 1e-2, "f0")
    assert deq.solver.ode_method == "tsit5" and deq.solver.polish is None
    assert deq.solver.label == "dynamic_ss(tsit5)"


def test_seed_fixed_point_is_block_of_z_plus_x():
    model = seed_mnist_model(seed=1)
    x = model.features(_images())
    block = model.deq.f.block
    z = torch.randn(6, 20)
    assert torch.equal(model.deq.f(z, x), block(z + x))
    assert torch.equal(model.deq.initial_state(x), block(x))  # z0 = block(x), as in the blog
    with torch.no_grad():
        out = model.deq(x)
    stats = model.deq.last_stats.forward
    assert stats.all_converged and stats.method == "dynamic_ss(tsit5)"
    with torch.no_grad():
        residual = (model.deq.f(out, x) - out).abs().amax(1)
    # one more application of f moves the returned point by about the tolerance at most
    assert float(residual.max()) < 5e-2


def test_seed_linear_drops_only_the_last_tanh():
    a, b = seed_mnist_model(seed=3), mnist_model("seed-linear", seed=3)
    assert b.name == "seed-linear" and not isinstance(b.head[-1], nn.Tanh)
    assert _linears(a.head) == _linears(b.head)
    # same seed: same weights, so the logits differ exactly by the final tanh
    x = _images(4)
    with torch.no_grad():
        assert torch.allclose(a(x), torch.tanh(b(x)), atol=1e-6)
        assert b(x).abs().max() > 0


def test_wide_model_matches_its_formula():
    model = wide_mlp_deq(seed=0)
    x = _images()
    e = model.encoder(x)
    assert e.shape == (6, 128) and bool((e >= 0).all())  # Dense(784→128, relu)
    f = model.deq.f
    z = torch.randn(6, 128)
    expected = torch.relu(f.linear(z)) + torch.relu(f.inject(e))
    assert torch.allclose(f(z, model.features(x)), expected)
    assert float(torch.linalg.matrix_norm(f.linear.weight.detach(), 2)) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize("name", sorted(MNIST_MODELS))
def test_every_model_trains_one_step(name):
    torch.manual_seed(0)
    # the MLP-DEQs use the DEQ's training budget, which may stop short of the tolerance (by design); not here
    model = mnist_model(name, seed=0, **({"max_nfe": None} if name.startswith("mlp") else {}))
    assert isinstance(model, MNISTDEQ) and model.name == name
    x, y = _images(8), torch.arange(8) % 10
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    stats = model.deq.last_stats
    assert stats.forward.nfe > 0 and stats.backward is not None and stats.backward.nfe > 0
    assert stats.forward.all_converged and stats.backward.all_converged
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_backward_solve_is_not_skipped_by_an_absolute_tolerance():
    # The gradient of a batch-mean loss is ~1/batch per sample; a backward abstol of 1e-2 (the forward one)
    # would accept u = g at once. The models use a relative backward tolerance instead.
    model = seed_mnist_model(seed=0)
    x, y = _images(64), torch.arange(64) % 10
    nn.functional.cross_entropy(model(x), y).backward()
    assert model.deq.last_stats.backward.nfe > 2


def test_conv_model_shapes_and_convergence():
    model = conv_deq(seed=0)
    x = _images(4)
    assert model.features(x).shape == (4, 32, 7, 7)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (4, 10) and model.deq.last_stats.forward.all_converged


def test_deq_options_override_the_defaults():
    model = seed_mnist_model(seed=0, solver="anderson", abstol=1e-4, reltol=1e-4)
    assert model.deq.solver.name == "anderson" and model.deq.abstol == 1e-4
    assert model.deq.z0 == "f0"  # the rest of the seed's settings stay
    polished = seed_mnist_model(seed=0, polish="anderson")
    assert polished.deq.solver.label == "dynamic_ss(tsit5+anderson)"


def test_seeded_construction_is_reproducible():
    a, b = mnist_model("wide", seed=5), mnist_model("wide", seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = mnist_model("wide", seed=6)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_bad_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="unknown MNIST model 'mlp-bn'.*seed-linear"):
        mnist_model("mlp-bn")
    with pytest.raises(TypeError, match="unknown option"):
        mnist_model("seed", not_an_option=3)
    with pytest.raises(ValueError, match=r"\(batch, 1, 28, 28\).*reshape"):
        seed_mnist_model(seed=0)(torch.randn(3, 784))


def test_non_convergence_warns_outside_training():
    model = seed_mnist_model(seed=0, max_steps=1)
    with pytest.warns(deqkit.ConvergenceWarning, match="did not converge"):
        model(_images(4))


def test_model_settings_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="kernel must be an odd size"):
        ConvBlock(8, 16, kernel=4)
    with pytest.raises(TypeError, match="'seed-linear' model fixes linear_logits"):
        mnist_model("seed-linear", linear_logits=False)


@pytest.mark.parametrize("weight_norm", [None, "weight", "spectral"])
def test_mlp_deq_normalizations_are_torchs_own(weight_norm):
    from torch.nn.utils import parametrize

    model = mnist_model("mlp-ln", seed=0, weight_norm=weight_norm, width=16)
    block = model.deq.f
    assert isinstance(block.norm, nn.LayerNorm) and isinstance(mnist_model("mlp", width=16).deq.f.norm, nn.Identity)
    assert parametrize.is_parametrized(block.linear, "weight") == (weight_norm is not None)
    if weight_norm == "spectral":
        with torch.no_grad():
            model(_images(4))  # a few power iterations in training mode
        assert float(torch.linalg.matrix_norm(block.linear.weight.detach(), 2)) == pytest.approx(1.0, rel=0.05)
    conv = mnist_model("conv", seed=0, weight_norm=weight_norm)
    assert parametrize.is_parametrized(conv.deq.f.conv1, "weight") == (weight_norm is not None)
    with pytest.raises(ValueError, match="weight_norm must be one of"):
        mnist_model("mlp-ln", weight_norm="batch")


def test_a_parametrized_weight_is_computed_once_per_call():
    model = mnist_model("mlp-ln", seed=0, weight_norm="spectral", width=16, solver="anderson", eval_max_nfe=None)
    model.eval()
    calls = []
    model.deq.f.linear.parametrizations.weight[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(_images(4))
    assert model.deq.last_stats.forward.nfe > 5 and len(calls) == 1  # the map does not change during the solve


@pytest.mark.parametrize("model_name", ["mlp-ln", "conv"])
@pytest.mark.parametrize("weight_norm", ["weight", "spectral"])
@pytest.mark.parametrize("backward", ["implicit", "phantom", "one_step"])
def test_a_parametrized_weight_trains(model_name, weight_norm, backward):
    # the solve runs without a graph: the cached reparametrized weight must still carry the gradient to the
    # parameters behind it (a regression: it once reached only the biases), for every gradient method
    options = {"width": 16} if model_name == "mlp-ln" else {}
    model = mnist_model(model_name, seed=0, weight_norm=weight_norm, backward=backward, **options)
    layer = model.deq.f.linear if model_name == "mlp-ln" else model.deq.f.conv1
    behind = dict(layer.parametrizations.weight.named_parameters())
    before = {n: p.detach().clone() for n, p in behind.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", deqkit.ConvergenceWarning)
        F.cross_entropy(model(_images(8)), torch.arange(8) % 10).backward()
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in behind.values())
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in behind.items())


@pytest.mark.parametrize("norm", ["weight", "spectral"])
def test_the_implicit_gradient_of_a_parametrized_weight_is_the_unrolled_one(norm):
    # float64, eval mode (spectral norm then keeps its power-iteration vectors): implicit against unrolled backprop
    grads = {}
    for backward in (deqkit.Implicit(reltol=1e-12, max_nfe=None), "unrolled"):
        model = (
            mnist_model(
                "mlp-ln",
                seed=0,
                weight_norm=norm,
                width=16,
                backward=backward,
                solver="anderson",
                reltol=1e-12,
                max_nfe=None,
                eval_max_nfe=None,
                max_steps=500,
            )
            .double()
            .eval()
        )
        with torch.no_grad():
            model.train()(_images(4).double())  # a few power iterations, then frozen in eval mode
        model.eval()
        loss = F.cross_entropy(model(_images(4).double()), torch.arange(4))
        params = dict(model.deq.f.linear.parametrizations.weight.named_parameters())
        grads[str(backward)] = torch.autograd.grad(loss, list(params.values()))
    (implicit, unrolled) = grads.values()
    for a, b in zip(implicit, unrolled):
        assert float(a.abs().max()) > 0 and torch.allclose(a, b, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("width", [0, -3, 2.5])
def test_a_bad_width_is_refused(width):
    with pytest.raises((TypeError, ValueError), match="width must be an integer >= 1"):
        mnist_model("mlp-ln", width=width)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("seed", {"weight_norm": "spectral"}, r"the 'seed' model takes no 'weight_norm'; the models that do: \['conv'"),
        ("wide", {"channels": 8}, r"the 'wide' model takes no 'channels'; the models that do: \['conv', 'mdeq'\]"),
        ("mlp", {"norm": "layer"}, "the 'mlp' model fixes norm; do not pass it \\('mlp-ln' is the LayerNorm one\\)"),
    ],
)
def test_another_models_option_is_named_as_such(name, options, message):
    with pytest.raises(TypeError, match=message):
        mnist_model(name, **options)
