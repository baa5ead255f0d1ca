"""Notebook 04: the seed blog's MNIST DEQ — why it stalls, what fixes it, and digits converging one by one.

Pure functions ``(model, data, widget values) -> Panel`` and the small helpers the notebook calls; the notebook
only wires them to widgets. Non-converged solves inside these functions are counted and shown in the panel
text, not raised as warnings, except in :func:`digit_panel`, which lets the learner see the solver's own warning.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..data import MNIST_MEAN, MNIST_STD, mnist_datasets
from ..errors import ConvergenceWarning
from ..models import MNISTDEQ
from ..settings import check_int
from ..solvers import SOLVERS as REGISTRY
from ..solvers import DynamicSS, Solver, solve
from ..train.callbacks import StepLog
from . import fast_mode
from .menus import solver_menu
from .widgets import Panel, figure

__all__ = [
    "SOLVERS",
    "WHICH",
    "DigitEffort",
    "StepLog",
    "check_cap",
    "class_panel",
    "digit_effort",
    "digit_panel",
    "effort_panel",
    "gallery_panel",
    "logit_diagnostics",
    "nonconverged_counts",
    "notebook_data",
    "ranked",
    "stall_panel",
    "tanh_logit_floor",
    "training_panel",
]

#: Forward solvers a learner can pick: the blog's ``DynamicSS(Tsit5())`` (``dynamic_ss(tsit5)``, no polish), then
#: every registered solver with its defaults (``dynamic_ss`` is deqkit's, polished by Anderson).
SOLVERS: dict[str, Solver] = solver_menu(DynamicSS(polish=None), *REGISTRY)
#: Gallery choices.
WHICH = ("most effortful", "least effortful", "misclassified", "not converged")


def notebook_data(
    fast: bool | None = None, *, widget_digits: int | None = None
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """MNIST for notebook 04: ``(train, test, digits)``; ``digits`` are the first test images the widgets show.

    Fast mode (:func:`deqkit.teach.fast_mode`): 12,000 training and 2,000 test samples, 500 widget digits.
    Full mode: all 60,000 / 10,000, and 2,000 widget digits.

    Parameters
    ----------
    fast : bool, optional
        Default: :func:`deqkit.teach.fast_mode`.
    widget_digits : int, optional
        How many test images ``digits`` holds, instead of the mode's default.

    Returns
    -------
    train, test, digits : TensorDataset
        As from :func:`deqkit.data.mnist_datasets` (the data folder and download as it resolves them).

    Raises
    ------
    deqkit.data.MNISTError
        If the files are missing and cannot be downloaded, or are corrupt.
    """
    fast = fast_mode() if fast is None else fast
    train, test = mnist_datasets(subset=12000 if fast else None, seed=0)
    n = (500 if fast else 2000) if widget_digits is None else widget_digits
    x, y = test.tensors
    return train, test, TensorDataset(x[:n], y[:n])


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window or window < 2:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def training_panel(logs: dict[str, StepLog], window: int = 10) -> Panel:
    """Loss, batch accuracy and forward/backward NFE per training step, one line per run (moving average).

    Parameters
    ----------
    logs : dict of str to StepLog
        Run name -> its log.
    window : int
        Moving-average width, capped at a fifth of each run's steps.

    Returns
    -------
    Panel
        The text gives each run's recent loss and accuracy, mean NFE and non-converged solves.

    Raises
    ------
    ValueError
        If ``logs`` is empty or a log recorded no steps.
    """
    if not logs or not all(log.loss for log in logs.values()):
        raise ValueError("training_panel needs at least one StepLog that recorded steps (pass it as callback=)")
    fig, (ax1, ax2, ax3) = figure(3, width=3.8)
    lines = []
    for name, log in logs.items():
        w = min(window, max(1, len(log.loss) // 5))
        steps = np.arange(len(_smooth(log.loss, w))) + w - 1
        (line,) = ax1.plot(steps, _smooth(log.loss, w), label=name)
        ax2.plot(steps, _smooth(log.acc, w), color=line.get_color())
        ax3.plot(steps, _smooth(log.fwd_nfe, w), color=line.get_color(), label=f"{name}: forward")
        ax3.plot(steps, _smooth(log.bwd_nfe, w), color=line.get_color(), ls="--", label=f"{name}: backward")
        lines.append(
            f"<b>{html.escape(name)}</b>: {len(log.loss)} steps, last-{w} mean loss "
            f"{np.mean(log.loss[-w:]):.3f}, batch accuracy {np.mean(log.acc[-w:]):.1f}%, forward NFE "
            f"{np.mean(log.fwd_nfe):.1f}, backward NFE {np.mean(log.bwd_nfe):.1f}, "
            f"non-converged solves {log.unconverged}"
        )
    ax1.axhline(tanh_logit_floor(), color="gray", ls=":", lw=1, label="floor with tanh logits")
    ax1.set(xlabel="step", ylabel="cross-entropy", title="training loss")
    ax1.legend(fontsize=7)
    ax2.set(xlabel="step", ylabel="%", title="batch accuracy")
    ax3.set(xlabel="step", ylabel="evaluations of f", title="solver cost per step")
    ax3.legend(fontsize=6)
    return Panel(fig, "<br>".join(lines))


def tanh_logit_floor(classes: int = 10, cap: float = 1.0) -> float:
    """The smallest cross-entropy possible when every logit lies in ``[−cap, cap]``: right class +cap, the rest −cap.

    Parameters
    ----------
    classes : int
        Number of classes.
    cap : float
        Largest logit magnitude (1 for a head that ends in tanh).

    Returns
    -------
    float
        ``−log(e^cap / (e^cap + (classes − 1) e^−cap))``, about 0.80 for 10 classes and ``cap = 1``.

    Raises
    ------
    ValueError
        If ``classes < 2`` or ``cap`` is not a finite number >= 0 (the formula would give a negative or NaN loss).
    """
    check_int("classes", classes, 2)
    if not 0 <= cap < math.inf:
        raise ValueError(f"cap must be in [0, inf), got {cap!r}: it is the largest logit magnitude (1 for tanh)")
    return math.log1p((classes - 1) * math.exp(-2 * cap))  # the same, without e^cap overflowing for a large cap


ROUNDED = 0.0051  # the check accepts answers rounded to two decimals (half a unit of the last digit, and a little)


def check_cap(p_max: Any, loss_floor: Any) -> str | None:
    """The check of notebook 04's exercise: the top probability and the loss floor when logits lie in [−2, 2].

    Parameters
    ----------
    p_max : float
        The learner's largest softmax probability of the right class.
    loss_floor : float
        The learner's smallest cross-entropy.

    Returns
    -------
    str or None
        None when both are right to two decimals (within :data:`ROUNDED`: 0.86 and 0.15 pass, as do the exact
        values); else what is wrong and what to look at.
    """
    try:
        p, floor = float(p_max), float(loss_floor)
    except (TypeError, ValueError):
        return "p_max and loss_floor must be numbers."
    right = math.exp(-tanh_logit_floor(10, 2.0))
    if abs(p - math.exp(-tanh_logit_floor(10, 1.0))) < ROUNDED:
        return "that is the cap for logits in [−1, 1]; with 2·tanh the right class reaches +2 and the nine others −2."
    if abs(p - right) > ROUNDED:
        return (
            f"p_max = {p:.4f} is not the softmax of the best logits the head can reach: the right class at "
            "+2, the nine others at −2."
        )
    if abs(floor + math.log(right)) > ROUNDED:
        return f"p_max is right; the cross-entropy of the right class is −log p_max, not {floor:.4f}."
    return None


def logit_diagnostics(model: MNISTDEQ, dataset: TensorDataset, *, limit: int = 10_000) -> dict[str, float]:
    """What limits a classifier whose head ends in tanh: confidence cap, saturation and where the gradient goes.

    For the first ``limit`` samples: accuracy (%), loss, the largest softmax probability, the fraction of the
    last layer's pre-activations in tanh's flat tails (``|a| > 2``, where ``tanh′ < 0.071``), and the mean
    per-sample norm of ``∂loss/∂a`` (the gradient that reaches every layer below) for correctly and wrongly
    classified samples. For a head without a final tanh, ``a`` is the logits themselves.

    Parameters
    ----------
    model : MNISTDEQ
        Its ``head`` is a ``Sequential`` whose last module is either ``Tanh`` or the final ``Linear``.
    dataset : TensorDataset
        ``(images, labels)``, e.g. from :func:`notebook_data`.
    limit : int
        How many samples (from the start) to use, in one batch.

    Returns
    -------
    dict
        ``acc``, ``loss``, ``max_prob``, ``max_prob_mean``, ``saturated``, ``grad_correct``, ``grad_wrong``,
        ``grad_share_wrong``, ``tied`` (fraction of samples whose two largest logits differ by less than 0.01),
        ``unconverged``, ``tanh_logits`` (1.0 or 0.0). ``grad_correct`` / ``grad_wrong`` are NaN when no sample
        is classified right / wrong.
    """
    return _diagnose(model, dataset, limit)[0]


def _unconverged(model: MNISTDEQ) -> int:
    """Samples of the model's last forward solve that missed its tolerance."""
    if model.deq.last_stats is None:
        raise RuntimeError(f"model {model.name!r} has not been run yet")
    return int((~model.deq.last_stats.forward.converged).sum())


@torch.no_grad()
def _diagnose(model: MNISTDEQ, dataset: TensorDataset, limit: int) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`logit_diagnostics` and each sample's top softmax probability, from one solve."""
    if not isinstance(model.head, torch.nn.Sequential):
        raise TypeError(
            f"logit_diagnostics needs a head that is a Sequential ending in Tanh or Linear; model "
            f"{model.name!r} has a {type(model.head).__name__} (the 'seed', 'seed-linear' and 'conv' "
            "models have one)"
        )
    x, y = dataset.tensors
    x, y = x[:limit], y[:limit]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted below
        z = model.deq(model.features(x))
    unconverged = _unconverged(model)
    head = list(model.head)
    tanh_logits = isinstance(head[-1], torch.nn.Tanh)
    a = torch.nn.Sequential(*head[:-1])(z) if tanh_logits else model.head(z)
    logits = torch.tanh(a) if tanh_logits else a
    p = logits.softmax(1)
    g = p - F.one_hot(y, logits.shape[1]).to(p.dtype)  # ∂(cross-entropy)/∂logits, per sample
    g_pre = g * (1 - logits**2) if tanh_logits else g
    norms = g_pre.norm(dim=1)
    wrong = logits.argmax(1) != y
    top2 = logits.topk(2, dim=1).values
    top_prob = p.max(1).values
    return {
        "acc": 100.0 * float((~wrong).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
        "max_prob": float(top_prob.max()),
        "max_prob_mean": float(top_prob.mean()),
        "saturated": float((a.abs() > 2).float().mean()) if tanh_logits else 0.0,
        "grad_correct": float(norms[~wrong].mean()) if (~wrong).any() else float("nan"),
        "grad_wrong": float(norms[wrong].mean()) if wrong.any() else float("nan"),
        "grad_share_wrong": float(norms[wrong].sum() / norms.sum().clamp_min(1e-30)),
        "tied": float((top2[:, 0] - top2[:, 1] < 0.01).float().mean()),
        "unconverged": unconverged,
        "tanh_logits": float(tanh_logits),
    }, top_prob


def _num(v: float) -> str:
    return "n/a (no such digits)" if math.isnan(v) else f"{v:.4f}"


def stall_panel(models: dict[str, MNISTDEQ], dataset: TensorDataset, *, limit: int = 2000) -> Panel:
    """Why tanh logits stall: each model's confidence and the gradient that its right and wrong digits send back.

    Parameters
    ----------
    models : dict of str to MNISTDEQ
        Name -> trained model (see :func:`logit_diagnostics` for what its head must be).
    dataset : TensorDataset
        ``(images, labels)``.
    limit : int
        How many samples (from the start) to use.

    Returns
    -------
    Panel
        The text gives each model's :func:`logit_diagnostics` and the loss floor with tanh logits.
    """
    fig, (ax1, ax2) = figure(2, width=4.6)
    names, rows = list(models), []
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        model = models[name]
        d, probs = _diagnose(model, dataset, limit)
        ax1.hist(probs.numpy(), bins=np.linspace(0, 1, 41), alpha=0.6, label=name)
        ax2.bar(np.array([0, 1]) + i * width, [d["grad_correct"], d["grad_wrong"]], width, label=name)
        rows.append(
            f"<b>{html.escape(name)}</b>: accuracy on the first {min(limit, len(dataset))} test digits "
            f"{d['acc']:.2f}%, loss {d['loss']:.3f}, top probability "
            f"≤ {d['max_prob']:.3f}, last-layer units in tanh's flat tails {100 * d['saturated']:.1f}%, "
            f"gradient per digit right {_num(d['grad_correct'])} / wrong {_num(d['grad_wrong'])}, share of the "
            f"gradient from wrong digits {100 * d['grad_share_wrong']:.1f}%, top two logits tied "
            f"(within 0.01) for {100 * d['tied']:.1f}% of digits"
            + (f", {d['unconverged']} solves not converged" if d["unconverged"] else "")
        )
    bound = math.e / (math.e + 9 / math.e)
    ax1.axvline(bound, color="k", ls=":", lw=1, label=f"cap with tanh logits ({bound:.3f})")
    ax1.set(xlabel="top softmax probability", ylabel="digits", title="how confident can it get?")
    ax1.legend(fontsize=7)
    ax2.set_xticks(np.array([0, 1]) + width * (len(names) - 1) / 2, ["classified right", "classified wrong"])
    ax2.set_yscale("log")
    ax2.set(ylabel="mean ‖∂loss/∂(last pre-activation)‖", title="learning signal that reaches the network")
    ax2.legend(fontsize=7)
    floor = f"Loss floor with tanh logits: {tanh_logit_floor():.3f} (all digits right, fully saturated)."
    return Panel(fig, "<br>".join(rows + [floor]))


@torch.no_grad()
def class_panel(models: dict[str, MNISTDEQ], dataset: TensorDataset, *, limit: int = 10_000) -> Panel:
    """Recall of every class for each model: a class whose digits all go elsewhere is a plateau of the loss.

    The text names, per model, each class recalled below 50% and the class its digits are predicted as.

    Parameters
    ----------
    models : dict of str to MNISTDEQ
        Name -> trained model.
    dataset : TensorDataset
        ``(images, labels)``.
    limit : int
        How many samples (from the start) to use, in one batch.

    Returns
    -------
    Panel
    """
    x, y = dataset.tensors
    x, y = x[:limit], y[:limit]
    fig, ax = figure(1, width=7.0, height=3.0)
    width = 0.8 / max(len(models), 1)
    rows = []
    for i, (name, model) in enumerate(models.items()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # counted and shown below
            pred = model(x).argmax(1)
        unconverged = _unconverged(model)
        recall = torch.stack(
            [(pred[y == c] == c).float().mean() if (y == c).any() else torch.tensor(float("nan")) for c in range(10)]
        )
        ax.bar(np.arange(10) + i * width, recall.numpy(), width, label=name)
        lost = [
            f"{c} (its digits predicted as {int(torch.mode(pred[y == c]).values)})"
            for c in range(10)
            if float(recall[c]) < 0.5
        ]
        rows.append(
            f"<b>{html.escape(name)}</b>: accuracy on {len(y)} test digits "
            f"{100 * float((pred == y).float().mean()):.2f}%; "
            + (f"classes almost never predicted right: {', '.join(lost)}" if lost else "every class recalled")
            + (f"; {unconverged} solves not converged" if unconverged else "")
        )
    ax.set_xticks(np.arange(10) + width * (len(models) - 1) / 2, [str(c) for c in range(10)])
    ax.set(xlabel="digit", ylabel="recall", ylim=(0, 1.05), title="how often each digit is recognised")
    ax.legend(fontsize=8, loc="lower right")
    return Panel(fig, "<br>".join(rows))


@dataclass
class DigitEffort:
    """Per-digit cost of one batched forward solve.

    Attributes
    ----------
    nfe : torch.Tensor
        int64, ``(n,)``: evaluations of ``f`` spent when the digit first met the tolerance (the batch's count:
        every evaluation covers all digits still running); for a digit that never did, the total.
    converged : torch.Tensor
        bool, ``(n,)``.
    predicted : torch.Tensor
        int64, ``(n,)``: the class the model predicts from the solver's ``z*``.
    total_nfe : int
    method : str
        The solver's label, e.g. ``"dynamic_ss(tsit5)"``.
    residual_before : torch.Tensor
        ``(n,)``: ``‖f(z) − z‖∞`` at the recorded iterate just before the one that met the tolerance (0 when the
        start already met it); for a digit that never met it, its final residual. It breaks ties of ``nfe``:
        of two digits done at the same evaluation, the one still farther from done a step earlier worked harder.
    """

    nfe: torch.Tensor
    converged: torch.Tensor
    predicted: torch.Tensor
    total_nfe: int
    method: str
    residual_before: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


def _solver(solver: str) -> Solver:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    return SOLVERS[solver]


@torch.no_grad()
def digit_effort(
    model: MNISTDEQ, images: torch.Tensor, solver: str, tol: float, *, max_steps: int = 300
) -> DigitEffort:
    """Solve the DEQ for a batch of images with ``solver`` and measure each digit's NFE.

    The solver records its iterates; each digit's residual ``‖f(z) − z‖∞`` is recomputed at every recorded
    iterate and the digit's NFE is the evaluation count at the first one that meets the termination rule
    (``≤ tol`` or ``≤ tol · ‖f(z)‖∞``). Digits that do not converge within ``max_steps`` are flagged in
    ``converged``, not warned about.

    Parameters
    ----------
    model : MNISTDEQ
    images : torch.Tensor
        Shape ``(n, 1, 28, 28)``, solved as one batch from ``model.deq``'s starting point.
    solver : str
        A label of :data:`SOLVERS`.
    tol : float
        abstol = reltol.
    max_steps : int
        Step limit of the solve.

    Returns
    -------
    DigitEffort

    Raises
    ------
    ValueError
        If ``solver`` is not a label of :data:`SOLVERS`, or ``images`` is not shaped ``(n, 1, 28, 28)``.
    """
    spec = _solver(solver)
    x = model.features(images)
    deq = model.deq

    def f(z: torch.Tensor) -> torch.Tensor:
        return deq.f(z, x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported through ``converged``
        z, stats = solve(f, deq.initial_state(x), solver=spec, abstol=tol, reltol=tol, max_steps=max_steps, record=True)
    res, meets = map(torch.stack, zip(*(_meets(f, zk, tol) for zk in stats.trajectory)))  # (records, batch)
    hit = meets.any(0)
    first = meets.to(torch.int8).argmax(0)
    nfe_at = torch.tensor(stats.nfe_history, dtype=torch.long)
    # A digit the solver reports as not converged gets the whole solve's count (a lower bound), even if one
    # recorded iterate met the rule on recomputation: the plots must not contradict ``converged``.
    done = hit & stats.converged
    nfe = torch.where(done, nfe_at[first], torch.full_like(first, stats.nfe, dtype=torch.long))
    cols = torch.arange(len(first))
    before = torch.where(first > 0, res[(first - 1).clamp_min(0), cols], torch.zeros_like(res[0]))
    before = torch.where(done, before, res[-1])
    predicted = model.head(f(z)).argmax(1)
    return DigitEffort(nfe, stats.converged.clone(), predicted, stats.nfe, stats.method, before)


def _meets(f: Any, z: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's residual ``‖f(z) − z‖∞`` at ``z`` and whether it meets the termination rule."""
    fz = f(z)
    res = (fz - z).flatten(1).abs().amax(1)
    return res, (res <= tol) | (res <= tol * fz.flatten(1).abs().amax(1))


def ranked(effort: DigitEffort, which: str, labels: torch.Tensor) -> list[int]:
    """Digit indices in the gallery's order for ``which`` (one of :data:`WHICH`).

    Effort is ``nfe``, ties broken by ``residual_before`` (see :class:`DigitEffort`); only digits tied on both
    keep their index order. "most effortful" and "misclassified" (the wrong digits only) go from most to least
    effort, "least effortful" the other way, "not converged" lists the digits that never met the tolerance, most
    effortful first.

    Parameters
    ----------
    effort : DigitEffort
    which : str
    labels : torch.Tensor
        The digits' true classes.

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        If ``which`` is not one of :data:`WHICH`.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    # lexsort sorts by the last key first and is stable: digits tied on both keys stay in index order
    nfe, res = effort.nfe.numpy(), effort.residual_before.double().numpy()
    sign = 1 if which == "least effortful" else -1
    order = np.lexsort((sign * res, sign * nfe))
    keep = {"misclassified": (effort.predicted != labels).numpy(), "not converged": (~effort.converged).numpy()}
    if which in keep:
        order = order[keep[which][order]]
    return [int(i) for i in order]


def _show_digit(ax: Any, image: torch.Tensor, title: str, color: str = "black") -> None:
    ax.imshow((image[0] * MNIST_STD + MNIST_MEAN).clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8, color=color)
    ax.set_xticks([])
    ax.set_yticks([])


def _check_index(index: int, n: int) -> None:
    check_int("index", index, 0)
    if not 0 <= index < n:
        raise IndexError(f"digit index {index} is outside the {n} digits shown (0 to {n - 1})")


@torch.no_grad()
def digit_panel(
    model: MNISTDEQ, digits: TensorDataset, index: int = 0, solver: str = next(iter(SOLVERS)), tol: float = 1e-2
) -> Panel:
    """One test digit: the image, the predicted class probabilities, and ``‖f(z) − z‖∞`` per evaluation.

    The digit is solved alone (batch of one) with ``solver`` to tolerance ``tol`` (abstol = reltol, the blog
    used 1e-2), at most 300 steps; a non-converged solve warns, as it would for a user.

    Parameters
    ----------
    model : MNISTDEQ
    digits : TensorDataset
        ``(images, labels)``, e.g. the third set of :func:`notebook_data`.
    index : int
        Which digit, ``0 ≤ index < len(digits)``.
    solver : str
        A label of :data:`SOLVERS`.
    tol : float
        abstol = reltol.

    Returns
    -------
    Panel

    Raises
    ------
    IndexError
        If ``index`` is outside the digits.
    ValueError
        If ``solver`` is not a label of :data:`SOLVERS`.

    Warns
    -----
    deqkit.ConvergenceWarning
        When the solve does not converge within 300 steps.
    """
    images, labels = digits.tensors
    _check_index(index, len(labels))
    image, label = images[index : index + 1], int(labels[index])
    spec = _solver(solver)
    x = model.features(image)
    z, stats = solve(
        lambda z: model.deq.f(z, x), model.deq.initial_state(x), solver=spec, abstol=tol, reltol=tol, max_steps=300
    )
    probs = model.head(model.deq.f(z, x)).softmax(1)[0]
    pred = int(probs.argmax())
    fig, (ax1, ax2, ax3) = figure(3, width=3.3, height=3.0)
    _show_digit(ax1, image[0], f"test digit #{index}: label {label}")
    colors = ["tab:green" if c == label else ("tab:red" if c == pred else "tab:gray") for c in range(10)]
    ax2.bar(range(10), probs.numpy(), color=colors)
    ax2.set(
        xticks=range(10),
        ylim=(0, 1),
        xlabel="class",
        ylabel="probability",
        title=f"predicted {pred} ({'right' if pred == label else 'wrong'})",
    )
    ax3.semilogy(stats.nfe_history, stats.history, marker=".", ms=3)
    ax3.axhline(tol, color="gray", ls="--", lw=0.8, label=f"tolerance {tol:.0e}")
    ax3.set(xlabel="evaluations of f", ylabel="‖f(z) − z‖∞", title=stats.method)
    ax3.legend(fontsize=7)
    state = "converged" if stats.all_converged else "did NOT converge"
    text = (
        f"Digit #{index} (label {label}) → predicted <b>{pred}</b> with probability {float(probs[pred]):.3f}; "
        f"{stats.method} {state} after {stats.nfe} evaluations of f ({stats.steps} steps), final residual "
        f"{float(stats.residual.max()):.2e}."
    )
    return Panel(fig, text)


def effort_panel(
    model: MNISTDEQ,
    digits: TensorDataset,
    solver: str = next(iter(SOLVERS)),
    tol: float = 1e-2,
    *,
    max_steps: int = 300,
) -> Panel:
    """Histogram of per-digit NFE for ``solver`` and ``tol``, split by right and wrong predictions.

    All digits are solved as one batch by :func:`digit_effort`; digits that did not converge are drawn hatched,
    at the whole solve's NFE.

    Parameters
    ----------
    model : MNISTDEQ
    digits : TensorDataset
        ``(images, labels)``.
    solver, tol, max_steps
        As for :func:`digit_effort`.

    Returns
    -------
    Panel
        The text gives the mean, median and largest NFE of the converged digits, right and wrong.

    Raises
    ------
    ValueError
        If ``solver`` is not a label of :data:`SOLVERS`.
    """
    effort = digit_effort(model, digits.tensors[0], solver, tol, max_steps=max_steps)
    right = (effort.predicted == digits.tensors[1]).numpy()
    nfe, done = effort.nfe.numpy(), effort.converged.numpy()
    fig, ax = figure(1, width=6.0, height=3.2)
    bins = np.arange(0, max(int(nfe.max()), 1) + 2) - 0.5 if nfe.max() <= 60 else 40
    # A digit that never met the tolerance has no "NFE until converged": it is drawn apart, at the whole
    # solve's count (a lower bound), hatched.
    ax.hist(
        [nfe[right & done], nfe[~right & done], nfe[~done]],
        bins=bins,
        stacked=True,
        label=["classified right", "classified wrong", "not converged (≥ this many)"],
        color=["tab:blue", "tab:red", "white"],
        edgecolor="k",
        linewidth=0.3,
        hatch=[None, None, "///"],
    )
    ax.set(
        xlabel="evaluations of f until the digit met the tolerance",
        ylabel="digits",
        title=f"{effort.method}, tolerance {tol:.0e}, {len(nfe)} digits in one batch",
    )
    ax.legend(fontsize=8)

    def mean(mask: np.ndarray) -> str:
        return f"{nfe[mask].mean():.1f}" if mask.any() else "n/a"

    text = (
        f"NFE per converged digit: mean {mean(done)}, median "
        f"{f'{np.median(nfe[done]):.0f}' if done.any() else 'n/a'}, max {nfe[done].max() if done.any() else 'n/a'} "
        f"(the whole batch took {effort.total_nfe}). Right digits {mean(right & done)} on average, wrong ones "
        f"{mean(~right & done)}. {len(np.unique(nfe))} distinct NFE values. Not converged within the step limit: "
        f"{int((~done).sum())}" + (" (hatched; counted at the whole solve's NFE)." if (~done).any() else ".")
    )
    return Panel(fig, text)


def gallery_panel(
    model: MNISTDEQ,
    digits: TensorDataset,
    which: str = WHICH[0],
    solver: str = next(iter(SOLVERS)),
    tol: float = 1e-2,
    count: int = 12,
    *,
    max_steps: int = 300,
) -> Panel:
    """A grid of digits: the most or least effortful for ``solver``, the misclassified or the non-converged ones.

    The order is :func:`ranked`'s: by NFE, ties broken by the residual one recorded step before the digit met the
    tolerance. The text says how many distinct NFE values occurred (few for ``dynamic_ss``, whose batch shares its
    steps), so a learner knows how much of the order the tie-break decides.

    Parameters
    ----------
    model : MNISTDEQ
    digits : TensorDataset
        ``(images, labels)``, solved as one batch by :func:`digit_effort`.
    which : str
        One of :data:`WHICH`.
    solver, tol, max_steps
        As for :func:`digit_effort`.
    count : int
        Most digits shown (six per row).

    Returns
    -------
    Panel

    Raises
    ------
    ValueError
        If ``which`` is not one of :data:`WHICH`, or ``solver`` not a label of :data:`SOLVERS`.
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    check_int("count", count, 1)  # a negative count would slice off the last digits instead
    images, labels = digits.tensors
    effort = digit_effort(model, images, solver, tol, max_steps=max_steps)
    matching = ranked(effort, which, labels)
    chosen = matching[:count]
    cols = 6
    fig, axes = figure(cols, max(1, math.ceil(count / cols)), width=1.25, height=1.6)
    for k, ax in enumerate(np.ravel(axes)):
        if k >= len(chosen):
            ax.axis("off")
            continue
        i = chosen[k]
        ok = int(effort.predicted[i]) == int(labels[i])
        cost = f"{int(effort.nfe[i])} NFE" if bool(effort.converged[i]) else f"≥{int(effort.nfe[i])}, not conv."
        _show_digit(
            ax, images[i], f"#{i}: {int(labels[i])}→{int(effort.predicted[i])}\n{cost}", "black" if ok else "tab:red"
        )
    if not chosen:
        fig.text(0.5, 0.5, f"no digit is {which} here", ha="center", va="center")
    fig.suptitle(f"{which} — {effort.method}, tolerance {tol:.0e}", fontsize=9)
    n_wrong, n_failed = int((effort.predicted != labels).sum()), int((~effort.converged).sum())
    distinct = len(torch.unique(effort.nfe))
    text = (
        f"{n_wrong} of {len(labels)} digits misclassified, {n_failed} not converged; showing {len(chosen)} of the "
        f"{len(matching)} {which}. Only {distinct} distinct NFE values occurred: digits with the same NFE are "
        "ordered by their residual ‖f(z) − z‖∞ one recorded step before they met the tolerance (the larger, the "
        "farther they still were). Title: index: label→prediction, evaluations of f until the digit met the "
        'tolerance ("not conv.": it never did within the step limit).'
    )
    return Panel(fig, text)


def nonconverged_counts(
    model: MNISTDEQ,
    digits: TensorDataset,
    tols: tuple[float, ...] = (1e-2, 1e-6),
    solvers: tuple[str, ...] | None = None,
    *,
    max_steps: int = 300,
) -> dict[str, list[int]]:
    """How many digits each solver leaves unconverged at each tolerance (one batched solve per pair).

    Parameters
    ----------
    model : MNISTDEQ
    digits : TensorDataset
        ``(images, labels)``.
    tols : tuple of float
        Tolerances (abstol = reltol).
    solvers : tuple of str, optional
        Labels of :data:`SOLVERS`; default all.
    max_steps : int
        Step limit of each solve.

    Returns
    -------
    dict of str to list of int
        Solver label -> one count per tolerance.
    """
    images = digits.tensors[0]
    return {
        name: [int((~digit_effort(model, images, name, tol, max_steps=max_steps).converged).sum()) for tol in tols]
        for name in (solvers or tuple(SOLVERS))
    }
