"""Bad arguments to the teaching functions, one row per case: what is called, what must be raised, what the
message must say. Values outside a panel's sliders are refused with the range and the reason, never answered
with a wrong picture, a bare ``KeyError``, "math domain error" or minutes of computation (issue 22)."""

import math

import pytest

from deqkit.teach import build, digits, fixed_point, implicit, implicit_measures, ode, stable, welcome, y2x

NAN = float("nan")


def _mnist(panel, model="seed", **kw):
    """Call a notebook-04 panel on an untrained MNIST model (the seed model by default) and six random digits."""
    import torch
    from torch.utils.data import TensorDataset

    from deqkit.models import mnist_model

    digits = TensorDataset(torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(6))
    return panel(mnist_model(model, seed=0).eval(), digits, **kw)


# (case, call, exception, message fragment)
CASES = [
    # ---- notebook 00
    (
        "welcome_panel(scale=0): was 'math domain error'",
        lambda: welcome.welcome_panel(scale=0.0),
        ValueError,
        r"scale=0.0 is outside \[0.1, 3\]",
    ),
    (
        "predicted_iterations(rho=nan)",
        lambda: welcome.predicted_iterations(NAN, 1.0),
        ValueError,
        "not a spectral radius",
    ),
    (
        "tiny_problem(d=0): was an empty problem",
        lambda: welcome.tiny_problem(d=0),
        ValueError,
        "d must be an integer >= 1",
    ),
    (
        "predicted_iterations(tol=0): was 'math domain error'",
        lambda: welcome.predicted_iterations(0.5, 1.0, tol=0.0),
        ValueError,
        "tol = 0.0 is not a tolerance",
    ),
    (
        "predicted_iterations(r0=-1): was 0 iterations",
        lambda: welcome.predicted_iterations(0.5, -1.0),
        ValueError,
        "r0 = -1.0 is not a residual",
    ),
    (
        "tiny_problem(scale=nan): was a W full of NaN",
        lambda: welcome.tiny_problem(scale=NAN),
        ValueError,
        "scale=nan is outside",
    ),
    # ---- notebook 01
    (
        "cobweb_panel(w=50): named the wrong fixed point",
        lambda: fixed_point.cobweb_panel(w=50.0),
        ValueError,
        r"w=50.0 is outside \[-3, 3\].*could be missed",
    ),
    ("cobweb_panel(x=nan)", lambda: fixed_point.cobweb_panel(x=NAN), ValueError, r"x=nan is outside \[-1, 1\]"),
    (
        "cobweb_panel(method='newton'): was a bare KeyError",
        lambda: fixed_point.cobweb_panel(method="newton"),
        ValueError,
        "unknown method 'newton': choose one of 'picard'",
    ),
    (
        "iteration_panel(methods=('x',)): was a bare KeyError",
        lambda: fixed_point.iteration_panel(methods=("x",)),
        ValueError,
        "unknown method 'x'",
    ),
    (
        "iteration_panel(scale=-1)",
        lambda: fixed_point.iteration_panel(scale=-1.0),
        ValueError,
        r"scale=-1.0 is outside \[0.1, 2.5\]",
    ),
    (
        "random_map(scale=nan): was a W full of NaN",
        lambda: fixed_point.random_map(NAN, 0.5),
        ValueError,
        "scale=nan is outside",
    ),
    (
        "random_map(d=0): was an empty W",
        lambda: fixed_point.random_map(0.9, 0.5, d=0),
        ValueError,
        "d must be an integer >= 1",
    ),
    # ---- notebook 02
    (
        "phase_panel(a=nan): was blamed on f ('f returned NaN')",
        lambda: ode.phase_panel(a=NAN),
        ValueError,
        "a must be a finite number, got nan",
    ),
    (
        "stability_panel(a=inf)",
        lambda: ode.stability_panel(a=float("inf")),
        ValueError,
        "a must be a finite number, got inf",
    ),
    # ---- notebook 03
    (
        "y2x.training_run(solver='x'): was a bare KeyError",
        lambda: y2x.training_run(solver="x"),
        ValueError,
        "unknown solver 'x'",
    ),
    (
        "y2x.training_run(seed=0.7): silently read the grid's seed-0 run",
        lambda: y2x.training_run(seed=0.7),
        TypeError,
        r"seed must be an integer >= 0, got 0.7",
    ),
    (
        "y2x.training_run(backward='x'): was checked only once training began",
        lambda: y2x.training_run(backward="x"),
        ValueError,
        "unknown backward mode 'x'",
    ),
    (
        "y2x training_panel(epochs=0): was an IndexError",
        lambda: y2x.training_panel(epochs=0),
        ValueError,
        "epochs must be an integer >= 1",
    ),
    (
        "y2x.training_run(epochs=10**9): was a run of months, every epoch's weights kept in memory",
        lambda: y2x.training_run(epochs=10**9),
        ValueError,
        r"epochs=1000000000 is more than this teaching function trains \(10000.*fit_regression",
    ),
    ("y2x training_panel(lr=-1)", lambda: y2x.training_panel(lr=-1.0), ValueError, r"lr=-1.0 is outside"),
    # ---- notebook 03b
    ("ift_panel(x=nan): was z* = 1", lambda: build.ift_panel(x=NAN), ValueError, "x must be finite"),
    (
        "ift_panel(theta=2): one of several equilibria, named as the one",
        lambda: build.ift_panel(theta=2.0),
        ValueError,
        r"theta=2.0: .*exactly one equilibrium only for \|θ\| < 1",
    ),
    ("ift_slopes(0, 1): was a slope of 9e15", lambda: build.ift_slopes(0.0, 1.0), ValueError, r"\|θ\| < 1"),
    # ---- notebook 04
    (
        "digit_panel(index=2.5): was 'slice indices must be integers'",
        lambda: _mnist(digits.digit_panel, index=2.5),
        TypeError,
        "index must be an integer >= 0, got 2.5",
    ),
    (
        "gallery_panel(count=-1): was all digits but the last",
        lambda: _mnist(digits.gallery_panel, count=-1),
        ValueError,
        "count must be an integer >= 1, got -1",
    ),
    (
        "logit_diagnostics('mlp' model): was \"'Linear' object is not iterable\"",
        lambda: _mnist(digits.logit_diagnostics, model="mlp"),
        TypeError,
        "needs a head that is a Sequential ending in Tanh or Linear; model 'mlp' has a Linear",
    ),
    (
        "tanh_logit_floor(classes=0): was a negative loss",
        lambda: digits.tanh_logit_floor(classes=0),
        ValueError,
        "classes must be an integer >= 2",
    ),
    (
        "tanh_logit_floor(cap=nan): was nan",
        lambda: digits.tanh_logit_floor(cap=NAN),
        ValueError,
        r"cap must be in \[0, inf\)",
    ),
    # ---- notebook 05
    (
        "accuracy_panel(tol=0): was 'math domain error'",
        lambda: implicit.accuracy_panel(tol=0.0),
        ValueError,
        r"tol=0.0 is outside \[1e-13, 0.1\]",
    ),
    (
        "accuracy_panel(norm=5): ran 12 minutes",
        lambda: implicit.accuracy_panel(norm=5.0),
        ValueError,
        r"norm=5.0 is outside \[0.05, 0.95\].*need a contraction",
    ),
    (
        "gradient_accuracy(tol=0): blamed both tolerances",
        lambda: implicit_measures.gradient_accuracy(0.0),
        ValueError,
        r"tol=0.0 is outside",
    ),
    (
        "backward_panel(solver='bogus'): was a bare KeyError",
        lambda: implicit.backward_panel(solver="bogus"),
        ValueError,
        "unknown solver 'bogus': choose one of",
    ),
    (
        "backward_panel(norm=-1)",
        lambda: implicit.backward_panel(norm=-1.0),
        ValueError,
        r"norm=-1.0 is outside \[0.05, 1.5\]",
    ),
    (
        "broyden_memory_panel(norm=5)",
        lambda: implicit.broyden_memory_panel(norm=5.0),
        ValueError,
        r"norm=5.0 is outside",
    ),
    (
        "broyden_memory_panel(memories=()): was 'min() arg is an empty sequence'",
        lambda: implicit.broyden_memory_panel(memories=()),
        ValueError,
        "memories must hold at least one",
    ),
    (
        "cost_panel(mode='phantom'): was a bare KeyError",
        lambda: implicit.cost_panel(mode="phantom"),
        ValueError,
        "unknown mode 'phantom'",
    ),
    (
        "growth_exponent('bogus'): was a bare KeyError",
        lambda: implicit_measures.growth_exponent("bogus", (0.5, 0.8)),
        ValueError,
        "unknown solver 'bogus'",
    ),
    (
        "rho_panel(norm=nan): was snapped silently",
        lambda: implicit.rho_panel(norm=NAN),
        ValueError,
        "norm=nan is outside",
    ),
]


@pytest.mark.parametrize("call, exception, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_is_refused_with_its_range(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_predicted_iterations_at_rho_zero_is_one_step():
    assert welcome.predicted_iterations(0.0, 1.0) == 1.0  # was "math domain error"


def test_an_exercise_checker_given_no_function_says_so():
    # was "TypeError: 'NoneType' object is not callable" from inside the checker
    assert "not a function" in stable.check_picard_steps(None)


def test_tanh_logit_floor_of_a_large_cap_is_near_zero():
    # was "OverflowError: math range error" (e^1000); the floor log(1 + (classes − 1) e^(−2 cap)) tends to 0
    assert digits.tanh_logit_floor(10, 1000.0) == 0.0
    e = math.e  # at cap = 1 the original form −log(e / (e + 9/e)) is far from overflow
    assert digits.tanh_logit_floor(10, 1.0) == pytest.approx(-math.log(e / (e + 9 / e)), rel=1e-12)
