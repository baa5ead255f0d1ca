"""Notebook 04's widget callbacks and helpers: every control over its range, and the numbers they show."""

import math
import os
import pathlib
import re
import warnings

import ipywidgets as widgets
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import deqkit
from deqkit.models import seed_mnist_model
from deqkit.teach.digits import (
    SOLVERS,
    WHICH,
    StepLog,
    check_cap,
    class_panel,
    digit_effort,
    digit_panel,
    effort_panel,
    gallery_panel,
    logit_diagnostics,
    nonconverged_counts,
    notebook_data,
    ranked,
    stall_panel,
    tanh_logit_floor,
    training_panel,
)
from deqkit.teach.widgets import LiveFigure, Panel, static
from deqkit.train import RunOptions, TrainConfig, train
from tests.teach.harness import sweep


@pytest.fixture(scope="module")
def models():
    return seed_mnist_model(seed=0), seed_mnist_model(linear_logits=True, seed=0)


@pytest.fixture(scope="module")
def digits():
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(40, 1, 28, 28, generator=gen), torch.arange(40) % 10)


def _titles(panel):
    return [ax.get_title() for ax in panel.figure.axes if ax.get_title()]


def test_tanh_logit_floor_is_the_best_possible_loss():
    perfect = -torch.ones(1, 10)
    perfect[0, 3] = 1.0
    assert tanh_logit_floor() == pytest.approx(float(F.cross_entropy(perfect, torch.tensor([3]))))
    assert tanh_logit_floor() == pytest.approx(0.7966, abs=1e-4)
    # any other logits in [-1, 1] do worse
    other = torch.rand(200, 10) * 2 - 1
    assert float(F.cross_entropy(other, torch.full((200,), 3), reduction="none").min()) > tanh_logit_floor()


def test_logit_diagnostics_match_autograd(models, digits):
    x, y = digits.tensors
    for model in models:
        d = logit_diagnostics(model, digits)
        tanh_logits = isinstance(model.head[-1], torch.nn.Tanh)
        assert d["tanh_logits"] == float(tanh_logits)
        # the gradient norms it reports are those autograd gives for each sample's loss
        with torch.no_grad():
            z = model.deq(model.features(x))
        a = (model.head[:-1] if tanh_logits else model.head)(z).requires_grad_()
        logits = torch.tanh(a) if tanh_logits else a
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), a)
        wrong = logits.argmax(1) != y
        assert d["grad_correct"] == pytest.approx(float(g.norm(dim=1)[~wrong].mean()), rel=1e-4)
        assert d["grad_wrong"] == pytest.approx(float(g.norm(dim=1)[wrong].mean()), rel=1e-4)
        assert d["acc"] == pytest.approx(100 * float((~wrong).float().mean()))
        assert d["loss"] == pytest.approx(float(F.cross_entropy(logits.detach(), y)), rel=1e-5)
        if tanh_logits:
            assert d["max_prob"] <= math.e / (math.e + 9 / math.e) + 1e-6
        else:
            assert d["saturated"] == 0.0
        top2 = logits.detach().topk(2, dim=1).values
        assert d["tied"] == pytest.approx(float((top2[:, 0] - top2[:, 1] < 0.01).float().mean()))


def test_class_panel_recall_and_lost_classes(models, digits):
    x, y = digits.tensors
    panel = class_panel({"tanh": models[0], "linear": models[1]}, digits)
    ax = panel.figure.axes[0]
    for model, bars in zip(models, [ax.containers[0], ax.containers[1]]):
        with torch.no_grad():
            pred = model(x).argmax(1)
        recall = [float((pred[y == c] == c).float().mean()) for c in range(10)]
        assert [b.get_height() for b in bars] == pytest.approx(recall)
    with torch.no_grad():
        pred = models[0](x).argmax(1)
    lost = [c for c in range(10) if float((pred[y == c] == c).float().mean()) < 0.5]
    first_row = panel.text.split("<br>")[0]
    for c in lost:  # an untrained model loses classes; each is named with where its digits go
        assert f"{c} (its digits predicted as {int(torch.mode(pred[y == c]).values)})" in first_row
    assert lost, "the untrained model was expected to miss some classes"


@pytest.mark.parametrize("solver", [s for s in SOLVERS if not s.startswith("dynamic_ss")])
def test_digit_effort_equals_solving_each_digit_alone(models, digits, solver):
    # Anderson, Broyden and Picard treat every sample independently: a digit's NFE in the batch is its NFE alone.
    model = models[1]
    x = digits.tensors[0][:12]
    effort = digit_effort(model, x, solver, 1e-4)
    for i in range(12):
        xi = model.features(x[i : i + 1])
        with torch.no_grad():
            _, stats = deqkit.solve(
                lambda z, xi=xi: model.deq.f(z, xi),
                model.deq.initial_state(xi),
                solver=SOLVERS[solver],
                abstol=1e-4,
                reltol=1e-4,
                max_steps=300,
            )
        assert int(effort.nfe[i]) == stats.nfe, i
    assert bool(effort.converged.all()) and int(effort.nfe.max()) == effort.total_nfe


def test_digit_effort_for_the_ode_shares_steps_over_the_batch(models, digits):
    effort = digit_effort(models[0], digits.tensors[0], next(iter(SOLVERS)), 1e-2)
    assert effort.method == "dynamic_ss(tsit5)"
    assert bool(effort.converged.all()) and 0 < int(effort.nfe.min()) <= int(effort.nfe.max()) == effort.total_nfe
    with torch.no_grad():
        assert torch.equal(effort.predicted, models[0](digits.tensors[0]).argmax(1))


def test_digit_effort_flags_digits_that_never_converge(models, digits):
    effort = digit_effort(models[0], digits.tensors[0][:8], "picard", 1e-12, max_steps=3)
    assert not bool(effort.converged.any()) and bool((effort.nfe == effort.total_nfe).all())


def test_digit_panel_shows_the_solve(models, digits):
    panel = digit_panel(models[1], digits, index=7, solver="anderson", tol=1e-6)
    assert isinstance(panel, Panel) and len(panel.figure.axes) == 3
    label = int(digits.tensors[1][7])
    assert f"label {label}" in _titles(panel)[0] and "anderson" in _titles(panel)[2]
    with torch.no_grad():
        pred = int(models[1](digits.tensors[0][7:8]).argmax())
    assert f"predicted <b>{pred}</b>" in panel.text and "converged after" in panel.text
    # the curve reaches the tolerance
    ydata = panel.figure.axes[2].lines[0].get_ydata()
    assert ydata[-1] <= 1e-6 < ydata[0]


def test_digit_panel_lets_a_failing_solver_warn(models, digits):
    with pytest.warns(deqkit.ConvergenceWarning):
        panel = digit_panel(models[0], digits, index=0, solver="picard", tol=1e-30)
    assert "did NOT converge" in panel.text


def test_gallery_orders_and_filters(models, digits):
    model = models[0]
    nfe_of = re.compile(r"#(\d+): (\d)→(\d)\n(\d+) NFE")
    parsed = {}
    for which in WHICH[:3]:
        titles = [nfe_of.match(t) for t in _titles(gallery_panel(model, digits, which, "anderson", count=12))]
        parsed[which] = [(int(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in titles if m]
    most, least = [p[3] for p in parsed["most effortful"]], [p[3] for p in parsed["least effortful"]]
    assert most == sorted(most, reverse=True) and least == sorted(least) and most[0] >= least[-1]
    assert len(most) == 12
    assert parsed["misclassified"] and all(label != pred for _, label, pred, _ in parsed["misclassified"])
    effort = digit_effort(model, digits.tensors[0], "anderson", 1e-2)
    assert max(most) == int(effort.nfe.max()) and min(least) == int(effort.nfe.min())
    panel = gallery_panel(model, digits, "not converged", "anderson")
    assert "showing 0 of the 0 not converged" in panel.text


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_ranked_breaks_nfe_ties_by_the_residual_before(models, digits, solver):
    labels = digits.tensors[1]
    effort = digit_effort(models[1], digits.tensors[0], solver, 1e-3)
    keys = [(int(effort.nfe[i]), float(effort.residual_before[i])) for i in range(len(labels))]
    most = ranked(effort, "most effortful", labels)
    assert sorted(most) == list(range(len(labels)))
    assert [keys[i] for i in most] == sorted(keys, reverse=True)
    assert [keys[i] for i in ranked(effort, "least effortful", labels)] == sorted(keys)
    # the residual one step before meeting the tolerance is above it (else the digit would have met it then)
    before = effort.residual_before[effort.nfe > int(effort.nfe.min())]
    assert bool((before > 1e-3 * 0.999).all()) or solver.startswith("dynamic_ss")
    if solver.startswith("dynamic_ss"):  # the batch shares its steps: few NFE values, ties broken by the residual
        assert len(torch.unique(effort.nfe)) < len(labels) / 4
        assert most != sorted(most), "ties must not fall back to index order"
    wrong = ranked(effort, "misclassified", labels)
    assert set(wrong) == set(torch.nonzero(effort.predicted != labels).flatten().tolist())
    assert ranked(effort, "not converged", labels) == []
    with pytest.raises(ValueError, match="which must be one of"):
        ranked(effort, "hardest", labels)


def test_nonconverged_counts(models, digits):
    counts = nonconverged_counts(models[1], digits, (1e-2, 1e-12), ("anderson", "picard"), max_steps=3)
    assert counts["picard"] == [
        int((~digit_effort(models[1], digits.tensors[0], "picard", t, max_steps=3).converged).sum())
        for t in (1e-2, 1e-12)
    ]
    assert counts["picard"][1] == len(digits)  # 1e-12 in three steps: none
    titles = _titles(gallery_panel(models[1], digits, "not converged", "picard", 1e-12, max_steps=3))
    assert titles and all(t.endswith("not conv.") for t in titles[1:])


def test_exercise_check_cap():
    p = math.e**2 / (math.e**2 + 9 * math.e**-2)
    assert check_cap(p, -math.log(p)) is None
    assert check_cap(0.86, 0.15) is None  # correctly rounded to two decimals
    assert "not the softmax" in check_cap(0.87, 0.14)
    assert abs(-math.log(p) - tanh_logit_floor(10, 2.0)) < 1e-12
    assert "[−1, 1]" in check_cap(math.exp(-tanh_logit_floor()), tanh_logit_floor())
    assert "not the softmax" in check_cap(math.e**2 / (math.e**2 + 9 * math.e**-1), 0.3)
    assert "−log p_max" in check_cap(p, 0.5)
    assert "numbers" in check_cap("high", 0.5)


def test_effort_panel_text_matches_the_measurement(models, digits):
    panel = effort_panel(models[1], digits, "broyden", 1e-3)
    effort = digit_effort(models[1], digits.tensors[0], "broyden", 1e-3)
    assert effort.converged.all()
    assert f"mean {effort.nfe.float().mean():.1f}" in panel.text and f"max {int(effort.nfe.max())}" in panel.text
    assert "Not converged within the step limit: 0." in panel.text


def test_digits_that_never_converge_are_not_reported_as_converged(models, digits):
    effort = digit_effort(models[1], digits.tensors[0], "picard", 1e-6, max_steps=2)
    assert not effort.converged.any()
    panel = effort_panel(models[1], digits, "picard", 1e-6, max_steps=2)
    assert f"Not converged within the step limit: {len(digits)} (hatched" in panel.text
    assert "NFE per converged digit: mean n/a" in panel.text
    titles = _titles(gallery_panel(models[1], digits, "most effortful", "picard", 1e-6, max_steps=2))
    assert titles and all(t.endswith("not conv.") for t in titles if t)


@pytest.mark.slow  # every control of a notebook-04 panel across its range: 3-5 s each
@pytest.mark.parametrize("make", ["digit", "effort", "gallery"])
def test_widgets_sweep_every_control(models, digits, make):
    names = list(SOLVERS)
    model = models[1]
    if make == "digit":
        app = LiveFigure(
            lambda **kw: digit_panel(model, digits, **kw),
            {
                "index": widgets.IntSlider(value=0, min=0, max=len(digits) - 1),
                "solver": widgets.Dropdown(options=names, value=names[0]),
                "tol": widgets.FloatLogSlider(value=1e-2, base=10, min=-6, max=-1),
            },
            primary="index",
        )
    elif make == "effort":
        app = LiveFigure(
            lambda **kw: effort_panel(model, digits, **kw),
            {
                "solver": widgets.Dropdown(options=names, value=names[0]),
                "tol": widgets.FloatLogSlider(value=1e-2, base=10, min=-6, max=-1),
            },
        )
    else:
        app = LiveFigure(
            lambda **kw: gallery_panel(model, digits, **kw),
            {
                "which": widgets.Dropdown(options=list(WHICH), value=WHICH[0]),
                "solver": widgets.Dropdown(options=names, value=names[0]),
                "count": widgets.IntSlider(value=12, min=6, max=24, step=6),
            },
        )
    seen = sweep(app)
    assert all(v > 1 for v in seen.values()) and app.last_error is None


def test_bad_widget_values_are_refused(models, digits):
    with pytest.raises(IndexError, match="outside the 40 digits"):
        digit_panel(models[0], digits, index=40)
    with pytest.raises(ValueError, match="unknown solver 'newton'"):
        effort_panel(models[0], digits, solver="newton")
    with pytest.raises(ValueError, match="which must be one of"):
        gallery_panel(models[0], digits, which="hardest")


def test_step_log_training_and_stall_panels(digits):
    model = seed_mnist_model(seed=1)
    log = StepLog()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(
            model,
            digits,
            digits,
            TrainConfig(model="seed", epochs=2, batch_size=10, lr=3e-3),
            RunOptions(progress=False),
            callback=log,
        )
    assert len(log.loss) == len(log.acc) == len(log.fwd_nfe) == len(log.bwd_nfe) == 8
    assert min(log.fwd_nfe) > 0 and min(log.bwd_nfe) > 0 and log.unconverged == 0
    panel = training_panel({"seed": log, "again": log})
    assert len(panel.figure.axes) == 3 and panel.text.count("8 steps") == 2
    with pytest.raises(ValueError, match="StepLog"):
        training_panel({"empty": StepLog()})
    stall = stall_panel({"a": model, "b": seed_mnist_model(linear_logits=True, seed=1)}, digits)
    assert "0.797" in stall.text and stall.text.count("accuracy") == 2
    shown = static(stall).data
    assert shown.startswith('<img src="data:image/png;base64,') and "0.797" in shown


def test_notebook_data_fast_mode():
    folder = os.environ.get("DEQKIT_MNIST_DIR")
    if not folder or not (pathlib.Path(folder) / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files to run this test")
    train_set, test_set, shown = notebook_data(True)
    assert (len(train_set), len(test_set), len(shown)) == (12000, 2000, 500)
    assert torch.equal(shown.tensors[0], test_set.tensors[0][:500])
