"""deqkit.normalize: torch's weight or spectral normalization on a block's linear and conv layers, in one call."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import deqkit
from deqkit.models.mnist import ConvBlock, MLPBlock


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.GroupNorm(1, 3)
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        self.head = nn.Linear(4, 4)

    def forward(self, z, x):
        return self.inner(self.norm(self.conv(z))) + x


def _normalized(block):
    return {name for name, m in block.named_modules() if parametrize.is_parametrized(m, "weight")}


def test_weight_norm_keeps_the_function_and_learns_direction_and_norm_apart():
    torch.manual_seed(0)
    block = Block()
    z, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    before = block(z, x)
    assert deqkit.normalize(block, "weight", exclude=["head"]) is block
    assert _normalized(block) == {"conv", "inner.0", "inner.2"}
    assert torch.allclose(block(z, x), before, atol=1e-6)  # weight norm starts at the same weights
    block(z, x).sum().backward()
    assert block.conv.parametrizations.weight.original0.grad is not None  # g, the norm, is a parameter


def test_spectral_norm_bounds_each_layer_and_exclusions_by_class_and_object():
    torch.manual_seed(0)
    block = Block()
    with torch.no_grad():
        block.inner[0].weight.mul_(10)
    deqkit.normalize(block, "spectral", exclude=[nn.Conv2d, block.head], n_power_iterations=20)
    assert _normalized(block) == {"inner.0", "inner.2"}
    assert float(torch.linalg.matrix_norm(block.inner[0].weight.detach(), 2)) == pytest.approx(1.0, abs=1e-3)


def test_remove_normalization_keeps_the_outputs_and_plain_weights():
    torch.manual_seed(0)
    block = deqkit.normalize(Block(), "spectral")
    z, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    block.eval()  # spectral norm's power iteration updates in training mode
    before = block(z, x)
    assert deqkit.normalize(block, None) is block and not _normalized(block)
    assert torch.allclose(block(z, x), before, atol=1e-6)
    assert isinstance(block.conv.weight, nn.Parameter)
    deqkit.normalize(block, "weight")  # normalizable again
    deqkit.remove_normalization(block, exclude=["inner"])
    assert _normalized(block) == {"inner.0", "inner.2"}


def test_a_normalized_block_in_a_deq_trains_and_deep_copies():
    torch.manual_seed(0)
    block = deqkit.normalize(MLPBlock(8, norm=None), "spectral")
    deq = deqkit.DEQ(block, solver="anderson")
    x = torch.randn(4, 8)
    deq(x).pow(2).sum().backward()
    assert block.linear.parametrizations.weight.original.grad.abs().sum() > 0
    twin = copy.deepcopy(deq)
    twin.eval(), deq.eval()
    with torch.no_grad():
        assert torch.equal(twin(x), deq(x))


def test_the_models_weight_norm_option_is_normalize():
    assert _normalized(ConvBlock(8, 8, weight_norm="weight")) == {"conv1", "conv2"}
    assert _normalized(MLPBlock(8, weight_norm="spectral")) == {"linear"}
    assert not _normalized(MLPBlock(8))


@pytest.mark.parametrize(
    "call, exception, message",
    [
        (lambda: deqkit.normalize(Block(), "batch"), ValueError, "kind must be 'weight', 'spectral' or None"),
        (lambda: deqkit.normalize(Block(), exclude=["hed"]), ValueError, "exclude names 'hed'.*submodules include"),
        (
            lambda: deqkit.normalize(deqkit.normalize(Block()), "spectral"),
            ValueError,
            "'conv' is normalized already: call deqkit.remove_normalization",
        ),
        (lambda: deqkit.normalize(nn.Tanh()), ValueError, "no layer to normalize in Tanh"),
        (lambda: deqkit.normalize(Block(), exclude=[nn.Linear, nn.Conv2d]), ValueError, "no layer to normalize"),
        (lambda: deqkit.remove_normalization(Block()), ValueError, "no normalized layer in Block"),
        (lambda: deqkit.normalize(lambda z: z), TypeError, "needs an nn.Module"),
        (lambda: deqkit.normalize(Block(), "spectral", power=3), TypeError, "options of torch.nn.utils"),
    ],
)
def test_bad_normalize_calls_name_the_cause(call, exception, message):
    with pytest.raises(exception, match=message):
        call()
