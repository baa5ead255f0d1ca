"""Notebook 06's runs and panels (deqkit.teach.stable): the probe's measurements, the panels' numbers, the exercise."""

import json

import ipywidgets as widgets
import pytest

import deqkit
from deqkit.teach import stable
from deqkit.teach.widgets import LiveFigure, Panel
from tests.teach.harness import sweep


def fake_runs():
    """A small document shaped like deqkit/teach/results/jacobian_reg.json, with known numbers."""

    def run(name, nfe, acc, rho, cos=1.0, seconds=10.0, jac_reg=0.0):
        epochs = [
            {
                "epoch": 0,
                "probe_nfe": 50,
                "rho_mean": 0.8,
                "rho_max": 1.0,
                "frobenius": 0.5,
                "grad_cos": cos,
                "probe_converged": 1.0,
            }
        ]
        for e in (1, 2):
            epochs.append(
                {
                    "epoch": e,
                    "fwd_nfe_mean": nfe + 2 - e,
                    "test_acc": acc - 2 + e,
                    "rho_mean": rho,
                    "rho_max": rho + 0.1,
                    "probe_nfe": 20 + e,
                    "frobenius": 0.3,
                    "grad_cos": cos,
                    "seconds": seconds,
                    "fwd_unconverged": 0,
                    "jac_penalty": None,
                    "probe_converged": 1.0,
                }
            )
        return {
            "name": name,
            "model": "mlp-ln",
            "jac_reg": jac_reg,
            "backward": "implicit",
            "weight_norm": None,
            "epochs": epochs,
        }

    return {
        "settings": {"epochs": 2},
        "environment": {},
        "runs": [
            run(stable.BASELINE, 30, 97.0, 0.6),
            run("LayerNorm, γ = 0.1", 27, 97.0, 0.5, jac_reg=0.1),
            run("LayerNorm, γ = 1", 20, 96.8, 0.3, jac_reg=1.0),
            run("LayerNorm, γ = 3", 15, 96.0, 0.2, jac_reg=3.0),
            run("LayerNorm, phantom(5, 0.5)", 34, 96.9, 0.6, cos=0.9, seconds=5.0),
            run("LayerNorm, one-step", 31, 96.5, 0.6, cos=0.7, seconds=4.0),
        ],
    }


def test_summary_ratios_against_the_baseline():
    s = stable.summary(fake_runs())
    assert s[stable.BASELINE]["nfe_ratio"] == 1.0 and s[stable.BASELINE]["acc_drop"] == 0.0
    assert s["LayerNorm, γ = 1"]["nfe_ratio"] == pytest.approx(20 / 30)
    assert s["LayerNorm, γ = 1"]["acc_drop"] == pytest.approx(0.2)
    assert s["LayerNorm, γ = 3"]["rho"] == 0.2 and s["LayerNorm, γ = 3"]["probe_nfe"] == 22


def test_curves_panel_states_the_last_epoch():
    panel = stable.curves_panel(fake_runs(), "LayerNorm, γ = 1")
    assert isinstance(panel, Panel) and len(panel.figure.axes) == 4
    assert "20.0 forward evaluations per step" in panel.text and "<b>0.67×</b>" in panel.text
    assert "accuracy drop from the unregularized run" in panel.text and "<b>+0.20 points</b>" in panel.text
    assert "ρ = 0.300" in panel.text
    assert "<b>+0.00 points</b>" in stable.curves_panel(fake_runs(), stable.BASELINE).text
    with pytest.raises(KeyError, match="no run named 'γ = 7'"):
        stable.curves_panel(fake_runs(), "γ = 7")


def test_tradeoff_panel_names_the_runs_in_the_target():
    runs = fake_runs()
    assert "γ = 1" in stable.tradeoff_panel(runs).text  # 0.67× at 0.2 points
    assert "γ = 3" not in stable.tradeoff_panel(runs).text  # 0.5× but 1 point lost
    assert "<b>none</b>" in stable.tradeoff_panel(runs, nfe_ratio=0.6).text


def test_tradeoff_panel_frames_its_points():
    runs = fake_runs()
    ax = stable.tradeoff_panel(runs).figure.axes[0]
    lo, hi = ax.get_ylim()
    drops = [v["acc_drop"] for n, v in stable.summary(runs).items() if n != stable.BASELINE]
    assert lo < min(drops) and hi > max(*drops, 0.3) and hi - lo < 3  # the target box does not set the scale
    assert ax.get_xlim()[1] > 1.0
    with pytest.raises(ValueError, match="at least one run"):
        stable.tradeoff_panel(runs, [])


def test_summary_accuracy_drop_has_no_float_residue():
    runs = fake_runs()
    runs["runs"][0]["epochs"][-1]["test_acc"] = 97.28
    runs["runs"][1]["epochs"][-1]["test_acc"] = 96.98
    assert stable.summary(runs)["LayerNorm, γ = 0.1"]["acc_drop"] == 0.3  # 97.28 - 96.98 is 0.29999999999999716


def test_gradient_panel():
    panel = stable.gradient_panel(fake_runs(), "LayerNorm, one-step")
    assert "median 4.0 s per epoch" in panel.text and "0.7000" in panel.text and "96.50%" in panel.text
    with pytest.raises(KeyError, match="no gradient run"):
        stable.gradient_panel(fake_runs(), "LayerNorm, γ = 1")


def test_gradient_panel_gives_the_median_epoch_time_as_the_notebook_prints_it():
    runs = fake_runs()
    one_step = next(r for r in runs["runs"] if r["name"] == "LayerNorm, one-step")
    one_step["epochs"].append(dict(one_step["epochs"][-1], epoch=3, seconds=40.0))  # one slow epoch: 4, 4, 40
    panel = stable.gradient_panel(runs, "LayerNorm, one-step")
    assert "median 4.0 s per epoch" in panel.text  # the mean would be 16.0
    bars = [patch.get_height() for patch in panel.figure.axes[0].patches]
    assert bars == [10.0, 5.0, 4.0]


def test_widgets_on_the_saved_runs_sweep_every_control():
    runs = fake_runs()
    penalty = LiveFigure(
        lambda name: stable.curves_panel(runs, name),
        {"name": widgets.Dropdown(options=[r["name"] for r in runs["runs"][:4]])},
    )
    method = LiveFigure(
        lambda method: stable.gradient_panel(runs, method),
        {"method": widgets.Dropdown(options=list(stable.GRADIENT_RUNS))},
    )
    assert sweep(penalty) == {"name": 4} and sweep(method) == {"method": 3}
    assert penalty.last_error is None and method.last_error is None


def test_phantom_gradients_approach_the_implicit_one(small_mlp_deq, equilibrium_of):
    model, images, labels = small_mlp_deq
    # here ρ(∂f/∂z) > 1 at most samples' z*: the undamped series diverges, the damped one (eigenvalues of
    # (1 − τ)I + τJ inside the unit disk) sums to the implicit gradient
    assert float(deqkit.spectral_radius(model.deq.f, *equilibrium_of(model, images)).max()) > 1
    cosines, seconds, exact = stable.phantom_gradients(model, images, labels, [1, 3, 30], damping=0.5)
    assert model.deq.backward.name == "implicit" and len(seconds) == 3 and all(s > 0 for s in seconds)
    assert cosines[2] >= 0.999 and cosines[0] < 0.9
    undamped, _, _ = stable.phantom_gradients(model, images, labels, [30], damping=1.0)
    assert undamped[0] < 0.5
    panel = stable.phantom_panel(model, images, labels, steps=2, damping=0.5, max_steps=4)
    products = stable.implicit_products(model, images, labels)
    assert "Phantom(steps=2, damping=0.5)" in panel.text and len(panel.figure.axes) == 2
    assert 0 < products == model.deq.last_stats.backward.nfe and f"took {products} products" in panel.text
    for steps in (0, 5):
        with pytest.raises(ValueError, match="steps must be within 1 … max_steps = 4"):
            stable.phantom_panel(model, images, labels, steps=steps, damping=0.5, max_steps=4)


def test_phantom_widget_sweeps_every_control(small_mlp_deq):
    model, images, labels = small_mlp_deq
    app = LiveFigure(
        lambda steps, damping: stable.phantom_panel(model, images, labels, steps, damping, max_steps=4),
        {
            "steps": widgets.IntSlider(value=2, min=1, max=4),
            "damping": widgets.FloatSlider(value=0.5, min=0.25, max=1.0, step=0.25),
        },
    )
    seen = sweep(app, points=3)
    assert seen["steps"] > 1 and seen["damping"] > 1 and app.last_error is None


def test_the_picard_exercise_check_passes_the_solution_and_fails_wrong_answers():
    import math

    def right(rho, shrink=1e-4):
        return math.ceil(math.log(shrink) / math.log(rho))

    assert stable.check_picard_steps(right) is None
    message = stable.check_picard_steps(lambda rho, shrink=1e-4: round(1 / (1 - rho)))
    assert message and "Picard takes" in message
    assert stable.check_picard_steps(lambda rho, shrink=1e-4: math.floor(math.log(shrink) / math.log(rho)))


def test_load_runs_says_how_to_make_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m benchmarks jacobian_reg"):
        stable.load_runs(tmp_path / "nope.json")
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(fake_runs()))
    assert stable.load_runs(path)["runs"][0]["name"] == stable.BASELINE


def test_the_saved_runs_hold_every_run_and_epoch():
    runs = stable.load_runs()
    names = [r["name"] for r in runs["runs"]]
    assert names == list(stable.RUN_NAMES)
    epochs = runs["settings"]["epochs"]
    for run in runs["runs"]:
        assert [r["epoch"] for r in run["epochs"]] == list(range(epochs + 1))
        for row in run["epochs"][1:]:
            assert row["fwd_nfe_mean"] > 0 and 0 < row["test_acc"] <= 100 and row["rho_mean"] > 0
            assert (row["jac_penalty"] is not None) == (run["jac_reg"] > 0)
