"""The solvers evaluate f on the samples still moving alone (``DEQ(per_sample=True)``, the default): the same
per-sample results as evaluating the whole batch, for fewer rows of work; never where f cannot be per sample."""

import warnings

import pytest
import torch
from torch import nn

import deqkit
from deqkit.problems import tanh_problem

SOLVERS = ["dynamic_ss", "anderson", "broyden", "picard"]


class Rows(nn.Module):
    """``block`` counting the rows it is called on, and the calls."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block, self.rows, self.calls = block, 0, 0

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.rows, self.calls = self.rows + z.shape[0], self.calls + 1
        return self.block(z, x)


def _problem():
    block, x = tanh_problem(16, 0.9, batch=24, dtype=torch.float64)
    # samples of very different difficulty: they converge at different steps
    return block, x * torch.logspace(-2, 0.7, 24, dtype=torch.float64)[:, None]


def _solve(solver: str, per_sample: bool):
    block, x = _problem()
    counted = Rows(block)
    deq = deqkit.DEQ(
        counted,
        solver=solver,
        per_sample=per_sample,
        abstol=1e-10,
        reltol=1e-10,
        max_steps=2000,
        max_nfe=None,
        eval_max_nfe=None,
    ).eval()
    with torch.no_grad():
        out = deq(x)
    return out, deq.last_stats.forward, counted


@pytest.mark.parametrize("solver", SOLVERS)
def test_each_sample_gets_the_same_result_for_less_work(solver):
    out, stats, counted = _solve(solver, True)
    ref, ref_stats, whole = _solve(solver, False)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert torch.equal(stats.converged, ref_stats.converged) and stats.all_converged
    assert torch.equal(stats.converged_nfe, ref_stats.converged_nfe)
    assert torch.equal(stats.converged_step, ref_stats.converged_step)
    assert (stats.nfe, stats.steps) == (ref_stats.nfe, ref_stats.steps)
    assert (
        counted.calls == whole.calls
    )  # every evaluation is still one call; the mixing check adds a sample, not a call
    assert whole.rows == 24 * whole.calls
    assert counted.rows < 0.9 * whole.rows, (counted.rows, whole.rows)  # converged samples were skipped


def test_a_batch_norm_in_training_mode_sees_the_whole_batch_every_time():
    block, x = _problem()

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.norm = block, nn.BatchNorm1d(16)

        def forward(self, z, x):
            return self.block(self.norm(z), x)

    counted = Rows(Normed().double())
    deq = deqkit.DEQ(counted, solver="anderson", max_nfe=40)
    with pytest.warns(deqkit.ConvergenceWarning):  # the batch statistics move under the solver: it does not settle
        deq(x)
    assert counted.rows == 24 * counted.calls
    counted.rows = counted.calls = 0
    deq.eval()  # running statistics: per sample again
    with torch.no_grad():
        deq(x)
    assert counted.rows < 24 * counted.calls


def test_a_captured_batch_shaped_tensor_is_named_with_the_fix():
    block, x = _problem()
    mask = torch.ones(24, 16, dtype=torch.float64)
    deq = deqkit.DEQ(
        lambda z, x: block(z, x) * mask, solver="anderson", abstol=1e-8, reltol=1e-8, max_steps=2000, eval_max_nfe=None
    ).eval()
    with pytest.raises(ValueError, match=r"(?s)samples still moving.*captures.*per_sample=False"):
        deq(x)
    deq.per_sample = False
    out = deq(x)
    assert deq.last_stats.forward.all_converged and out.shape == x.shape


def test_per_sample_must_be_a_bool():
    block, _ = _problem()
    with pytest.raises(TypeError, match="per_sample must be True or False"):
        deqkit.DEQ(block, per_sample="yes")
    deq = deqkit.DEQ(block)
    with pytest.raises(TypeError, match="per_sample must be True or False"):  # refused when set (was: at the call)
        deq.per_sample = 1
    assert "per_sample=False" in repr(deqkit.DEQ(block, per_sample=False))


@pytest.mark.parametrize(
    "mix",
    [
        lambda z, x: 0.3 * z.mean(0),  # batch statistics over the state
        lambda z, x: x.sort(0).values,  # an op over the batch of x
        lambda z, x: 0.1 * torch.softmax(z, 0),  # normalised over the batch
        lambda z, x: 0.1 * x[:, 1:2].amax(0),  # an order statistic: unseen until the sample holding it rests
    ],
    ids=["z.mean(0)", "x.sort(0)", "softmax(dim=0)", "x.amax(0)"],
)
def test_a_map_that_mixes_samples_is_named_not_solved_differently(mix):
    """Before: each gave a per-sample result other than per_sample=False's (by up to 0.4), without a word."""
    block, x = _problem()

    class Mixed(nn.Module):
        def forward(self, z, x):
            return block(z, x) + mix(z, x)

    deq = deqkit.DEQ(
        Mixed(),
        solver="anderson",
        abstol=1e-8,
        reltol=1e-8,
        max_steps=2000,
        eval_max_nfe=None,
    ).eval()
    named = r"(?s)gives that one another value than it had.*mixes samples"
    with torch.no_grad(), pytest.raises(ValueError, match=named):
        deq(x)
    with torch.no_grad(), pytest.raises(ValueError, match="mixes samples"):  # refused again, not only once
        deq(x)
    deq.per_sample = False
    with torch.no_grad():
        deq(x)
    assert deq.last_stats.forward.all_converged
    deq.per_sample, mixing, deq.f = True, deq.f, block  # a per-sample f passes the check ...
    with torch.no_grad():
        deq(x)
    deq.f = mixing  # ... and a mixing f assigned after it is checked again
    with torch.no_grad(), pytest.raises(ValueError, match="mixes samples"):
        deq(x)


def test_a_map_of_another_dtype_on_a_subset_is_named_with_the_fix():
    """Before: torch's raw ``index_copy_(): self and source expected to have the same dtype``."""
    block, x = _problem()

    def f(z, x):  # float32 once fewer than the whole batch is evaluated
        return block(z, x) if z.shape[0] == 24 else block(z, x).float()

    deq = deqkit.DEQ(f, solver="anderson", abstol=1e-10, reltol=1e-10, max_steps=2000, eval_max_nfe=None).eval()
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match=r"(?s)returned torch.float32 on cpu, not torch.float64.*per_sample=False"),
    ):
        deq(x)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_training_step_keeps_its_budget_with_the_mixing_check(solver):
    # The first subset evaluation is compared with the whole batch's on a held-still sample, inside that same call:
    # a training step calls f at most max_nfe times in the solve plus once re-attached (before: one call more)
    block, x = _problem()
    counted = Rows(block)
    deq = deqkit.DEQ(counted, solver=solver, max_nfe=20, reltol=1e-4, abstol=1e-4)
    with pytest.warns(deqkit.ConvergenceWarning):  # 20 evaluations do not converge every sample
        deq(x.requires_grad_()).sum().backward()
    assert counted.rows < 24 * counted.calls  # some evaluations ran on the moving samples alone
    assert counted.calls <= 20 + 1  # the backward's products do not call f: they use the re-attached graph


def test_mixing_that_appears_only_after_the_first_subset_evaluation_is_caught():
    # The order statistic x.amax(0) over the batch changes only once the sample holding the maximum rests. A check
    # of the first subset evaluation alone passed here, and per_sample=True then differed from per_sample=False by
    # up to 3.7 with every sample reported converged; every subset evaluation is compared now.
    class Mixed(nn.Module):
        def forward(self, z, x):
            return x[:, :1] * torch.tanh(z) + x + 0.1 * x[:, 1:2].amax(0)

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, :1] = 0.9 * x[:, :1].abs()
    deq = deqkit.DEQ(Mixed(), solver="anderson", abstol=1e-10, reltol=1e-10, max_nfe=None, eval_max_nfe=None).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="mixes samples"):
        deq(x)


def test_a_second_polish_after_the_flow_holds_consistent_pairs():
    # Six easy samples converge in the first polish, six stiff ones go to the flow and come back to a second polish.
    # The flow held the converged ones frozen where the leg began, with f(z) read as z; the second polish kept that
    # pair for them, and comparing a held-still sample with a fresh evaluation raised "f mixes samples" for this
    # per-sample f (found in peer_training's test evaluation). Now they carry their answer and its f(z).
    d = 16
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    psd = a @ a.T / d

    class Stiff(nn.Module):
        def forward(self, z, x):
            return torch.tanh(-x[:, :1] * (z @ psd) + x[:, 1:])  # x[:, 0]: the sample's own stiffness

    x = torch.randn(12, d + 1, generator=gen, dtype=torch.float64)
    x[:, 0] = torch.tensor([0.1] * 6 + [20.0] * 6, dtype=torch.float64)
    results = []
    for per_sample in (True, False):
        deq = deqkit.DEQ(
            Stiff(),
            z0=lambda x: torch.zeros(x.shape[0], d, dtype=x.dtype),
            abstol=1e-8,
            reltol=1e-8,
            max_nfe=None,
            eval_max_nfe=None,
            per_sample=per_sample,
        ).eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", deqkit.ConvergenceWarning)  # one stiff sample stays out of reach
            results.append((deq(x), deq.last_stats.forward))
    (out, stats), (ref, ref_stats) = results
    assert torch.equal(out, ref) and torch.equal(stats.converged, ref_stats.converged)
    assert torch.equal(stats.converged_nfe, ref_stats.converged_nfe) and int(stats.converged.sum()) >= 6


@pytest.mark.parametrize(
    "solver",
    [
        deqkit.Picard(),
        deqkit.Picard(damping=0.8),
        deqkit.Anderson(),
        deqkit.Anderson(sync_every=3),
        deqkit.Broyden(),
        deqkit.DynamicSS(),
    ],
    ids=lambda s: s.label,
)
def test_a_map_that_mixes_samples_returns_the_f_its_residual_was_judged_on(solver):
    """``solve`` evaluates a plain map on the whole batch, so a map that mixes samples (here through the batch mean)
    gives a converged, held sample a new f(z) at later steps. Before, Picard, Anderson and Broyden took that new
    value as its answer: ``|fz − z|∞`` of the returned pair was up to 1.5 times the residual reported as converged
    (Picard: 1.24e-3 against 8.45e-4 and a tolerance of 1e-3). Each sample's returned pair is now the one its
    residual was measured on."""
    from deqkit.solvers import Tolerances, run

    x = torch.tensor([[0.3], [-0.2], [0.05]], dtype=torch.float64)
    z0 = torch.tensor([[0.5], [-0.4], [0.1]], dtype=torch.float64)
    if isinstance(solver, deqkit.DynamicSS):  # a flow with unstable equilibria, as the polish's checks see them
        f = lambda z: z + (z - z**3) + 0.2 * z.mean(0, keepdim=True) + x  # noqa: E731
    else:
        f = lambda z: torch.tanh(0.5 * z + 0.3 * z.mean(0, keepdim=True) + x)  # noqa: E731
    sol = run(solver, f, z0, Tolerances(1e-3, 0.0, 200))
    assert bool(sol.stats.converged.all())
    assert torch.equal((sol.fz - sol.z).abs().amax(1), sol.stats.residual)
