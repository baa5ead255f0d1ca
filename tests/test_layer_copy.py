"""A used DEQ (called in grad mode, graph still held) deep-copies, pickles and round-trips its state_dict; its repr
shows the settings that matter, its statistics summarise rather than dump their histories."""

import copy
import io
import pickle

import torch

import deqkit
from deqkit.models.mnist import conv_deq


def _used_model(weight_norm="weight"):
    model = conv_deq(channels=8, hidden=8, stem=8, seed=0, weight_norm=weight_norm)
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model(images).sum().backward()  # graph of the last call kept in deq.last_equilibrium; stats in last_stats
    return model, images


def _logits(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def test_deepcopy_of_a_used_model_keeps_weights_and_statistics_not_the_graph():
    model, images = _used_model()
    assert model.deq.last_equilibrium is not None
    twin = copy.deepcopy(model)  # "keep the best model"
    assert twin.deq.last_equilibrium is None and twin.deq.last_stats.forward.nfe == model.deq.last_stats.forward.nfe
    assert model.deq.last_equilibrium is not None  # the original keeps its graph
    assert torch.equal(_logits(twin, images), _logits(model, images))


def test_pickle_and_torch_save_of_a_used_model_round_trip():
    # torch pickles parametrized modules (weight_norm=...) only through state_dict(): see the next test
    model, images = _used_model(weight_norm=None)
    again = pickle.loads(pickle.dumps(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (again, loaded):
        assert other.deq.last_equilibrium is None
        assert torch.equal(_logits(other, images), _logits(model, images))


def test_state_dict_of_a_used_model_loads_into_a_fresh_one():
    model, images = _used_model()
    fresh = conv_deq(channels=8, hidden=8, stem=8, seed=1, weight_norm="weight")
    assert not torch.equal(_logits(fresh, images), _logits(model, images))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(_logits(fresh, images), _logits(model, images))


def test_repr_shows_the_budgets_and_statistics_summarise():
    deq = deqkit.DEQ(
        lambda z, x: 0.5 * torch.tanh(z) + x, solver="anderson", max_steps=40, max_nfe=25, eval_max_nfe=None
    )
    assert "max_steps=40, max_nfe=25, eval_max_nfe=None" in repr(deq)
    x = torch.randn(3, 5)
    deq(x, z0=None).sum().backward()
    shown = repr(deq.last_stats)
    forward = deq.last_stats.forward
    assert f"converged=3/3, nfe={forward.nfe}" in shown and f"history=[{len(forward.history)} entries]" in shown
    assert "backward=SolverStats(method='gmres(20)'" in shown and "[0." not in shown and "tensor(" not in shown
