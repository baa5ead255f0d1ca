"""The Jacobian-penalty experiment (deqkit.teach.stable_runs): the probe's measurements, regenerating runs, and
the saved runs as package data an installed deqkit finds."""

import os
import pathlib

import pytest
import torch

import deqkit
from deqkit.teach import stable_runs as jacobian_reg


def test_frobenius_is_exact(small_mlp_deq):
    model, images, _ = small_mlp_deq
    with torch.no_grad():
        x = model.features(images)
        z, _ = deqkit.solve(lambda z: model.deq.f(z, x), torch.zeros_like(x), solver="anderson", max_nfe=None)
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v, i=i: model.deq.f(v[None], x[i : i + 1])[0], z[i])
            for i in range(len(z))
        ]
    )
    expected = jac.pow(2).sum((1, 2)) / z.shape[1]
    torch.testing.assert_close(jacobian_reg._frobenius(model.deq.f, z, x), expected, rtol=1e-5, atol=1e-7)


def test_probe_measures_the_equilibrium_and_keeps_the_model(small_mlp_deq, equilibrium_of):
    model, images, labels = small_mlp_deq
    model.eval()
    out = jacobian_reg.probe(model, images, labels)
    assert not model.training and model.deq.backward.name == "implicit"
    assert all(p.grad is None for p in model.parameters())
    assert out["probe_converged"] == 1.0 and 2 <= out["probe_nfe"] <= 500
    rho = deqkit.spectral_radius(model.deq.f, *equilibrium_of(model, images))
    assert out["rho_mean"] == pytest.approx(float(rho.mean()), rel=1e-4) and out["rho_max"] >= out["rho_mean"]
    assert 0 < out["frobenius"] and out["grad_cos"] == pytest.approx(1.0, abs=1e-4)  # its own gradient is implicit
    model.deq.backward = "one_step"
    try:
        # the one-step gradient is not the gradient
        assert jacobian_reg.probe(model, images, labels)["grad_cos"] < 0.999
    finally:
        model.deq.backward = "implicit"
    model.train()


def test_regenerate_trains_and_probes_every_epoch():
    folder = os.environ.get("DEQKIT_MNIST_DIR")
    if not folder or not (pathlib.Path(folder) / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files")
    lines = []
    doc = jacobian_reg.regenerate(epochs=2, subset=256, only=["LayerNorm, γ = 1"], log=lines.append)
    (run,) = doc["runs"]
    assert run["jac_reg"] == 1.0 and [r["epoch"] for r in run["epochs"]] == [0, 1, 2]
    assert all(r["jac_penalty"] > 0 and "rho_mean" in r and "grad_cos" in r for r in run["epochs"][1:])
    assert len(lines) == 1 and lines[0].startswith("LayerNorm, γ = 1:")
    with pytest.raises(ValueError, match="unknown run"):
        jacobian_reg.regenerate(only=["γ = 42"])


def test_an_installed_deqkit_finds_the_saved_runs(tmp_path):
    """Build the wheel from a copy of the sources, unpack it away from the checkout, and read the runs from there."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root = pathlib.Path(__file__).resolve().parents[2]
    src, out, site = tmp_path / "src", tmp_path / "dist", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "deqkit", src / "deqkit", ignore=shutil.ignore_patterns("__pycache__"))
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    wheel = subprocess.run([sys.executable, "-c", build, str(out)], cwd=src, capture_output=True, text=True, check=True)
    with zipfile.ZipFile(out / wheel.stdout.strip().splitlines()[-1]) as archive:
        for name in ("jacobian_reg.json", "regression_grid.json.gz", "regression_modes.json"):
            assert f"deqkit/teach/results/{name}" in archive.namelist()
        archive.extractall(site)
    read = (
        "import deqkit, sys; from deqkit.teach.stable_runs import BASELINE, load_runs; "
        "assert deqkit.__file__.startswith(sys.argv[1]), deqkit.__file__; "
        "print(len(load_runs()['runs']), load_runs()['runs'][0]['name'] == BASELINE); "
        "from deqkit.teach import y2x; print(len(y2x._grid()), len(y2x.load_comparison()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    found = subprocess.run(
        [sys.executable, "-c", read, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert found.stdout.split() == [str(len(jacobian_reg.RUNS)), "True", "180", "3"]
