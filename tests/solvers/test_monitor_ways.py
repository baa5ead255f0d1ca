"""The monitor's shortcuts change no result: the shorter check while no sample has converged, and best iterates
merged only when read (``Monitor._merge_best``), against the plain way, bit for bit."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from deqkit.solvers import monitor as monitor_module
from deqkit.solvers.monitor import Monitor, Tolerances


def _sequence(seed: int, steps: int, batch: int, dim: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Iterates and their f with residuals that rise and fall per sample, reaching the tolerance at scattered
    steps (some samples never)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    size = torch.rand(batch, generator=gen) * 2 + 0.5
    for k in range(steps):
        z = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
        wobble = torch.rand(batch, 1, generator=gen, dtype=torch.float64) * 3  # non-monotone residuals
        shrink = (0.5 ** (k * size)).to(torch.float64)[:, None]
        r = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * shrink * wobble
        r[: batch // 4] += 1.0  # never converge: their best iterate is what the solve returns
        if k >= steps // 2:  # two converged early, then wander off (not held still): not in the history's worst
            r[-2:] += 50.0
        elif k >= 2:
            r[-2:] *= 1e-9
        out.append((z, z + r))
    return out


def _run(seq: list, *, shortcut: bool, pending: int, mark: bool, cap: bool, monkeypatch) -> dict:
    monkeypatch.setattr(monitor_module, "READ_SHORTCUT", shortcut)
    monkeypatch.setattr(monitor_module, "PENDING_MERGES", pending)
    z0 = seq[0][0]
    mon = Monitor("test", z0, Tolerances(0.0, 1e-3, max_steps=len(seq)), strict=False, record=True)
    marked = []
    for k, (z, fz) in enumerate(seq):
        mark_below = torch.full((z.shape[0],), 0.05, dtype=z.dtype) if mark else None
        capped = torch.full((z.shape[0],), 10.0, dtype=z.dtype) if cap else None
        running = mon.check(k, z, fz - z, fz, k + 1, cap=capped, mark_below=mark_below, frozen=False)
        marked.append((mon.n_marked, mon.marked.clone(), running.clone(), mon.n_converged, mon.done))
        if k == len(seq) // 2:  # a read in the middle: the merges pending so far are done then
            marked.append((mon.best_z.clone(), mon.best_fz.clone()))
    return {
        "converged": mon.converged,
        "step": mon.converged_step,
        "nfe": mon.converged_nfe,
        "residual": mon.residual,
        "scale": mon.scale,
        "best_z": mon.best_z,
        "best_fz": mon.best_fz,
        "history": torch.tensor(mon.stats.history),
        "marked": marked,
        "trajectory": mon.stats.trajectory,
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mark", [False, True])
@pytest.mark.parametrize("cap", [False, True])
def test_shortcuts_change_nothing(seed: int, mark: bool, cap: bool, monkeypatch) -> None:
    seq = _sequence(seed, steps=14, batch=24, dim=6)
    plain = _run(seq, shortcut=False, pending=1, mark=mark, cap=cap, monkeypatch=monkeypatch)
    for shortcut, pending in ((True, 1), (False, 3), (True, 3), (True, 100)):
        fast = _run(seq, shortcut=shortcut, pending=pending, mark=mark, cap=cap, monkeypatch=monkeypatch)
        assert _same(plain, fast), (shortcut, pending)


def test_the_sequence_exercises_both_ways(monkeypatch) -> None:
    """The comparison above means something: some samples converge at different steps, some never, and some
    residuals rise (a best iterate that is not the last)."""
    seq = _sequence(0, steps=14, batch=24, dim=6)
    out = _run(seq, shortcut=True, pending=3, mark=True, cap=False, monkeypatch=monkeypatch)
    steps = out["step"][out["converged"]]
    assert 1 < steps.unique().numel() and 0 < int(out["converged"].sum()) < 24
    last_z = seq[-1][0]
    never = ~out["converged"]
    assert not torch.equal(out["best_z"][never], last_z[never])  # some best iterate is an earlier one
    assert out["step"][-2:].tolist() == [2, 2] and max(out["history"]) < 50  # converged ones are not the worst


def test_verify_clears_and_counts(monkeypatch) -> None:
    """A sample that verify finds unconverged runs again, without its old convergence step, and converging later
    counts (the shorter check counts this check's news on top of verify's count)."""
    z0 = torch.zeros(4, 2)
    mon = Monitor("test", z0, Tolerances(1e-3, 0.0, max_steps=50), strict=False, record=False)
    mon.check(0, z0, torch.ones(4, 2), z0 + 1, 1)
    tiny = torch.full((4, 2), 1e-6)
    mon.check(1, z0, tiny, z0 + tiny, 2)
    assert mon.done and mon.converged_step.tolist() == [1] * 4
    mon.verify(z0, torch.tensor([[1.0, 0], [1.0, 0], [0, 0], [0, 0]]), z0)
    assert not mon.done and mon.n_converged == 2 and mon.converged_step.tolist() == [-1, -1, 1, 1]
    mon.check(5, z0, tiny, z0 + tiny, 7)
    assert mon.done and mon.n_converged == 4
    assert mon.converged_step.tolist() == [5, 5, 1, 1] and mon.converged_nfe.tolist() == [7, 7, 2, 2]


def test_pending_merges_are_bounded(monkeypatch) -> None:
    """At most PENDING_MERGES past iterates are held: the monitor merges when that many are pending."""
    monkeypatch.setattr(monitor_module, "PENDING_MERGES", 3)
    z0 = torch.zeros(4, 2)
    mon = Monitor("test", z0, Tolerances(0.0, 1e-6, max_steps=50), strict=False, record=False)
    mon.check(0, z0, torch.ones(4, 2), torch.ones(4, 2), 1)
    held = []
    for k in range(1, 10):  # one sample improves, the others do not: a merge at each check
        z = torch.full((4, 2), float(k))
        r = torch.tensor([1.0, 1.0, 1.0, 0.9**k])[:, None].expand(4, 2)
        mon.check(k, z, r, z + r, k + 1)
        held.append(len(mon._pending))
    assert max(held) == 2 and min(held) == 0  # merged when the third was pending
    assert torch.equal(mon.best_z, torch.tensor([[0.0] * 2] * 3 + [[9.0] * 2]))


def test_pending_merges_on_the_cpu_only() -> None:
    """Elsewhere (a GPU) a merge is one kernel and memory is scarce: merged at once."""
    assert monitor_module.max_pending(torch.device("cpu")) == monitor_module.PENDING_MERGES > 1
    assert monitor_module.max_pending(torch.device("cuda", 0)) == 1
    assert monitor_module.max_pending(torch.device("meta")) == 1


def _run_held(seed: int, *, frozen: bool, held_fz: bool, shortcut: bool, pending: int, monkeypatch) -> dict:
    """A solver's loop that holds its converged samples' z (as IterativeSolver does) while their f(z) changes at
    every step (a map that mixes samples, evaluated on the whole batch)."""
    monkeypatch.setattr(monitor_module, "READ_SHORTCUT", shortcut)
    monkeypatch.setattr(monitor_module, "PENDING_MERGES", pending)
    gen = torch.Generator().manual_seed(100 + seed)
    rate = torch.rand(24, 1, generator=gen, dtype=torch.float64) + 0.3  # residuals fall steadily, at their own rate
    base = torch.randn(24, 6, generator=gen, dtype=torch.float64)
    seq = []
    for k in range(16):
        z_k = torch.randn(24, 6, generator=gen, dtype=torch.float64)
        r_k = base * 0.5 ** (k * rate)
        if k % 5 == 4:  # now and then one running sample's residual rises
            r_k[k % 24] *= 10.0
        seq.append((z_k, z_k + r_k))
    z = seq[0][0]
    mon = Monitor("test", z, Tolerances(0.0, 1e-3, max_steps=len(seq)), strict=False, record=False)
    reads = []
    for k, (z_new, fz_new) in enumerate(seq):
        held = mon.converged[:, None]
        z = torch.where(held, z, z_new)
        drift = 1e-3 * torch.randn(z.shape, generator=gen, dtype=z.dtype)  # the held samples' new f(z)
        fz = torch.where(held, z + (fz_new - z_new) + drift, fz_new - z_new + z)
        mon.check(k, z, fz - z, fz, k + 1, frozen=frozen, held_fz=held_fz)
        if k in (5, 11):  # reads in between: the merges pending so far are done then
            reads.append((mon.best_z.clone(), mon.best_fz.clone()))
    return {"best_z": mon.best_z, "best_fz": mon.best_fz, "converged": mon.converged, "reads": reads}


@pytest.mark.parametrize("seed", range(4))
def test_held_iterates_with_fresh_f_keep_the_f_each_sample_was_judged_on(seed: int, monkeypatch) -> None:
    """``frozen=True, held_fz=False`` (a whole-batch evaluation of a map that may mix samples) gives the best
    iterates of the plain way, bit for bit, with fewer merges: a note replaces the one before it while no sample
    converges."""
    plain = _run_held(seed, frozen=False, held_fz=True, shortcut=False, pending=1, monkeypatch=monkeypatch)
    assert 0 < int(plain["converged"].sum()) < 24
    for shortcut, pending in ((True, 1), (True, 3), (False, 3), (True, 100)):
        fast = _run_held(seed, frozen=True, held_fz=False, shortcut=shortcut, pending=pending, monkeypatch=monkeypatch)
        assert _same(plain, fast), (shortcut, pending)
    # and the check means something: taking the held samples' f(z) as theirs (held_fz=True) differs
    wrong = _run_held(seed, frozen=True, held_fz=True, shortcut=True, pending=3, monkeypatch=monkeypatch)
    assert not torch.equal(wrong["best_fz"], plain["best_fz"])


def _at_the_threshold(seed: int, steps: int, batch: int, dim: int, dtype: torch.dtype, tol: Tolerances) -> list:
    """Iterates whose residuals sit on the termination rule's threshold max(abstol, reltol·‖f(z)‖∞), one unit in the
    last place below or above it, or on it: where a rounding of the threshold, or < for ≤, changes which samples
    converge when."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        z = torch.randn(batch, dim, generator=gen, dtype=torch.float64).to(dtype)
        # ‖f(z)‖∞ from about 0.1 to 100: where both tolerances are set, either can be the larger
        fz = z * (10 ** (3 * torch.rand(batch, 1, generator=gen, dtype=torch.float64) - 1)).to(dtype)
        abstol = tol.abstol if tol.abstol <= torch.finfo(dtype).max else math.inf  # (the dtype holds it so)
        limit = (tol.reltol * fz.abs().amax(1)).clamp_min(abstol)  # as the monitor forms it, in dtype
        limit = limit.nan_to_num(posinf=1.0)  # (an abstol beyond the dtype: every residual meets it)
        nudge = torch.randint(-1, 2, (batch,), generator=gen)
        size = torch.where(nudge < 0, limit.nextafter(torch.zeros_like(limit)), limit)
        size = torch.where(nudge > 0, limit.nextafter(torch.full_like(limit, torch.inf)), size)
        # most well above it at each step (and all at the start): some samples never converge
        above = (torch.rand(batch, generator=gen) < 0.85) | (k == 0)
        size = size * torch.where(above, 3.0, 1.0).to(dtype)
        r = torch.rand(batch, dim, generator=gen, dtype=torch.float64).to(dtype) * size[:, None]
        r[:, 0] = size  # the ∞-norm is exactly size
        out.append((z, fz, r))  # (the monitor takes r as given: only its ∞-norm against ‖fz‖∞ matters here)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("tolerances", [(0.0, 1e-3), (1e-2, 1e-3), (1e-2, 0.0), (1e300, 0.0), (1e300, 1e-3)])
def test_numpy_records_are_the_tensors_bit_for_bit(dtype, seed, tolerances, monkeypatch) -> None:
    """The records kept as numpy arrays on the CPU (``HOST_ARRAYS``) give what tensors give, at the threshold
    itself, with masks and caps, shortcut or not, in float32 and float64 (an abstol float32 cannot hold included)."""
    tol = Tolerances(*tolerances, max_steps=12)
    seq = _at_the_threshold(seed, 12, 40, 5, dtype, tol)

    def run(host: bool, shortcut: bool) -> list:
        warnings.simplefilter("error", RuntimeWarning)  # (numpy's, of overflows torch passes silently)
        monkeypatch.setattr(monitor_module, "HOST_ARRAYS", host)
        monkeypatch.setattr(monitor_module, "READ_SHORTCUT", shortcut)
        mon = Monitor("test", seq[0][0], tol, strict=False, record=False)
        assert mon._host == (host and dtype in (torch.float32, torch.float64))
        seen = []
        for k, (z, fz, r) in enumerate(seq):
            mark_below = r.abs().amax(1) * 1.5 if k % 2 else None
            running = mon.check(k, z, r, fz, k + 1, mark_below=mark_below, read=k % 3 != 1 or k == len(seq) - 1)
            seen.append((running.clone(), mon.n_converged, mon.n_marked, mon.marked.clone(), mon.converged.clone()))
        return [seen, mon.converged_step, mon.converged_nfe, mon.residual, mon.scale, mon.best_z, mon.best_fz]

    with warnings.catch_warnings():
        runs = {(host, shortcut): run(host, shortcut) for host in (False, True) for shortcut in (False, True)}
    for shortcut in (False, True):
        tensors, arrays = runs[False, shortcut], runs[True, shortcut]
        assert _same(tensors, arrays), shortcut
    steps = arrays[1]
    if tolerances[0] > torch.finfo(dtype).max:  # the dtype holds abstol as inf: every residual meets it at once
        assert steps.tolist() == [0] * 40
    else:  # samples converge at many steps, and some never
        assert steps.unique().numel() > 4 and int((steps < 0).sum()) > 0
