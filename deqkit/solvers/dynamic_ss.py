"""The ODE route: integrate dz/dt = f(z) − z until steady state, like Julia's ``DynamicSS(Tsit5())``.

torchdiffeq's Runge–Kutta core takes the steps; deqkit drives it one step at a time so that it can stop each
sample as soon as it meets the termination rule (see :mod:`deqkit.solvers.monitor`). The rule is checked at
every accepted step on the derivative the method already computed at the new state (free for the FSAL
methods tsit5, dopri5, bosh3 and dopri8; one extra evaluation per step for the others). A converged sample's
derivative is set to zero from then on, so it no longer moves and no longer limits the step size: the error
norm is the largest per-sample RMS, and a frozen sample's error is zero.

A sample is judged on the ODE's steps only once its residual is settling: it must meet the rule *and* not have
grown since the previous check. Near an unstable equilibrium (a saddle) the residual grows along the flow however
small it is, so a start next to one is carried away from it instead of being declared converged there.

With a polisher (the default), each sample is first solved by Anderson acceleration of the flow's explicit Euler
discretisation with step 1 (which is Anderson's iteration ``z ← f(z)``, accelerated), and handed to the adaptive
flow only where that fails: its residual grows past ``polish_guard`` times its best, it stalls, or it converges to
an equilibrium the flow leaves (an unstable one). There the flow carries it on until its residual has fallen again,
and the polisher takes over once more. Every decision is per sample.

torchdiffeq is reached only through :mod:`deqkit.solvers.torchdiffeq_adapter`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..errors import DivergenceError
from ..settings import INT_MAX, Configured, check_int, check_real
from .anderson import Anderson, growth_rates
from .core import Map, Solver, evaluate_moving, first_evaluation
from .monitor import Monitor, batch_view, where_rows
from .torchdiffeq_adapter import ADAPTIVE, FIXED, AdaptiveStepper, FixedStepper, StepFailure, step_cost

#: Growth rate (largest real part of an eigenvalue of ∂f/∂z − I, as the polisher's secant history sees it) above
#: which a polished equilibrium is judged unstable for the flow and the sample goes back to the ODE.
UNSTABLE_RATE = 0.05
#: Size of the push along the unstable direction, relative to ``max(1, ‖z‖∞)``, from which the flow leaves an
#: unstable equilibrium the polisher found (started exactly there, the flow would stay).
KICK = 1e-2
#: Polishes that diverged or stalled after which a sample is left to the flow alone (which then runs to tolerance).
POLISH_FAILURES = 2
#: Polishing iterations between two applications of the guard and the stall test.
GUARD_EVERY = 4


def per_sample_rms_max(x: torch.Tensor) -> torch.Tensor:
    """Error norm: RMS within each sample, maximum over the batch (each sample gets its own accuracy)."""
    return x.flatten(1).pow(2).mean(1).sqrt().amax()


class StepSizeController(Configured):
    """How the adaptive ODE methods choose their steps: local error tolerances and the step-size update.

    Parameters
    ----------
    rtol, atol : float, optional
        Local error tolerances. With ``s = max(‖z‖∞, ‖f(z)‖∞)`` over the batch at the start of an integration,
        they default to ``reltol / 10`` and ``max(abstol, reltol · s) / 10`` when the ODE must reach the target by
        itself (tighter than the termination rule: near the steady state the step size sits at the method's
        stability limit and the residual levels off near the ODE tolerance), and to ``1e-3`` and ``1e-3 · s``
        while a polisher will finish the solve (the flow only has to reach the basin).
    first_step : float, optional
        The first step size. Default: chosen from the data by torchdiffeq (Hairer–Nørsett–Wanner; one evaluation).
    max_step : float, optional
        Largest step size.
    safety, ifactor, dfactor : float
        The step-size update ``h ← h · clip(safety · err^(−1/order), dfactor, ifactor)``.
    """

    rtol: float | None  # these four are set by the loop in __init__
    atol: float | None
    first_step: float | None
    max_step: float | None

    def __init__(
        self,
        rtol: float | None = None,
        atol: float | None = None,
        first_step: float | None = None,
        max_step: float | None = None,
        safety: float = 0.9,
        ifactor: float = 10.0,
        dfactor: float = 0.2,
    ):
        for name, value in {"rtol": rtol, "atol": atol, "first_step": first_step, "max_step": max_step}.items():
            # finite: an infinite tolerance accepts every step and an infinite step leaves the flow at once
            setattr(
                self,
                name,
                None if value is None else check_real(name, value, 0.0, math.inf, low_open=True, high_open=True),
            )
        self.safety = check_real("safety", safety, 0.0, 1.0, low_open=True)
        self.ifactor = check_real("ifactor", ifactor, 1.0)
        self.dfactor = check_real("dfactor", dfactor, 0.0, 1.0, low_open=True)

    def options(self) -> dict[str, float]:
        """The keyword options of torchdiffeq's adaptive solvers."""
        opts = {"safety": self.safety, "ifactor": self.ifactor, "dfactor": self.dfactor}
        opts.update({k: getattr(self, k) for k in ("first_step", "max_step") if getattr(self, k) is not None})
        return opts

    def tolerances(
        self, z0: torch.Tensor, r0: torch.Tensor, abstol: float, reltol: float, polishing: bool
    ) -> tuple[float, float]:
        """``(rtol, atol)`` for an integration from ``z0`` with derivative ``r0`` (see the class docstring)."""
        scale = float(torch.maximum(z0.detach().abs().amax(), (r0 + z0).detach().abs().amax()))
        scale = scale if scale > 0 else 1.0
        if polishing:
            rtol, atol = 1e-3, 1e-3 * scale
        else:
            rtol, atol = reltol / 10, max(abstol, reltol * scale) / 10
        return (rtol if self.rtol is None else self.rtol, atol if self.atol is None else self.atol)


class _VectorField:
    """``dz/dt = (f(z) − z) · running``, with the callbacks torchdiffeq's solvers call."""

    def __init__(self, f: Map, z0: torch.Tensor):
        self.f, self.nfe = f, 0
        self.running = torch.ones(z0.shape[0], dtype=z0.dtype, device=z0.device)
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (z, f(z)) at the last check
        self.undefined: torch.Tensor | None = None  # samples where f returned NaN at a finite point
        # each sample's residual at the previous check, which a settling residual does not exceed; NaN before the
        # first check, so that no sample settles at step 0
        self.previous = torch.full((z0.shape[0],), float("nan"), dtype=z0.dtype, device=z0.device)

    def __call__(self, t: torch.Tensor, z: torch.Tensor, perturb: object = None) -> torch.Tensor:
        if self.cached is not None and z is self.cached[0]:  # the value computed just before, reused once
            out, self.cached = self.cached[1], None
            return out
        fz = first_evaluation(self.f, z) if self.nfe == 0 else self.f(z)
        self.nfe += 1
        # f undefined at a trial point (NaN) would show only as rejected steps: remember it (no host sync here)
        bad = torch.isnan(fz.detach()).flatten(1).any(1) & torch.isfinite(z.detach()).flatten(1).all(1)
        self.undefined = bad if self.undefined is None else self.undefined | bad
        return (fz - z) * batch_view(self.running, z)

    def freeze(self, running: torch.Tensor) -> None:
        self.running = running.to(self.running.dtype)

    def check(
        self,
        monitor: Monitor,
        step: int,
        z: torch.Tensor,
        r: torch.Tensor,
        fz: torch.Tensor,
        t: float,
        mark_below: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``monitor.check`` where a sample converges only once its residual is settling: it meets the rule and
        has not grown since the previous check (a residual growing along the flow means an unstable equilibrium is
        near, however small it is). Returns the mask of samples still running."""
        running = monitor.check(step, z, r, fz, self.nfe, t=t, cap=self.previous, mark_below=mark_below)
        self.previous = monitor.current
        return running

    def callback_step(self, t0, y0, dt) -> None: ...
    def callback_accept_step(self, t0, y0, dt) -> None: ...
    def callback_reject_step(self, t0, y0, dt) -> None: ...


@dataclass
class _Handover:
    """Per sample: when the flow hands a sample (back) to the polisher.

    A sample is ready once its residual has fallen to ``below`` times the largest value it had on its current leg of
    the flow. After a polish that converged to an unstable equilibrium the sample is not ready again until its
    residual has doubled along the flow (it has left that equilibrium) and fallen again.
    """

    peak: torch.Tensor
    floor: torch.Tensor  # residual where an unstable answer was rejected (0: none)
    failures: torch.Tensor  # polishes that diverged or stalled, per sample
    ready_count: int = 0
    waited: int = 0  # checks since ready_count last grew

    @classmethod
    def start(cls, res: torch.Tensor) -> _Handover:
        return cls(res.clone(), torch.zeros_like(res), torch.zeros_like(res, dtype=torch.long))

    def restart(self, res: torch.Tensor, legs: torch.Tensor, unstable: torch.Tensor) -> None:
        """A new leg of the flow for the samples ``legs`` from residual ``res``; ``unstable`` ones must leave first."""
        self.peak = torch.where(legs, res, self.peak)
        self.floor = torch.where(unstable, res, torch.where(legs, 0.0, self.floor))
        self.failures = self.failures + (legs & ~unstable).long()
        self.ready_count = self.waited = 0

    def pending(self, running: torch.Tensor) -> bool:
        """Whether a running sample may still be polished (else the flow must finish by itself, to tolerance)."""
        return bool((running & (self.failures < POLISH_FAILURES)).any())

    def observe(self, res: torch.Tensor) -> None:
        self.floor = torch.where(res > 2 * self.floor, 0.0, self.floor)  # left the unstable equilibrium
        self.peak = torch.where(self.floor > 0, res, torch.maximum(self.peak, res))

    def target(self, below: float) -> torch.Tensor:
        never = (self.floor > 0) | (self.failures >= POLISH_FAILURES)
        return torch.where(never, -1.0, below * self.peak)

    def time_to_polish(self, monitor: Monitor, patience: int) -> bool:
        """Every running sample is ready, or some are and no more became ready in ``patience`` checks.

        Reads the last check's ready samples, which it marked (``mark_below=self.target(...)``).
        """
        if monitor.n_marked > self.ready_count:
            self.ready_count, self.waited = monitor.n_marked, 0
        elif monitor.n_marked > 0:
            self.waited += 1
        every = monitor.n_converged + monitor.n_marked == monitor.converged.numel()
        return every or (monitor.n_marked > 0 and self.waited >= patience)


def moved_options(options: dict[str, object]) -> str:
    """The error for options :class:`DynamicSS` does not take, saying where torchdiffeq's step-size options live."""
    hints = [f"{k}: use {DynamicSS.MOVED[k]}" if k in DynamicSS.MOVED else f"{k}: not an option" for k in options]
    return "DynamicSS got option(s) it does not take; " + "; ".join(hints)


class DynamicSS(Solver):
    """Integrate the ODE ``dz/dt = f(z) − z`` to steady state with an explicit Runge–Kutta method.

    Unlike plain iteration the flow converges to *stable* equilibria even where ``f`` is not a contraction (e.g.
    ∂f/∂z with eigenvalues below −1), and never to unstable ones — except from a start exactly at one (there
    ``f(z0) = z0``: the flow does not move, and no difference is there to show its instability). With the polisher
    (the default) an unstable equilibrium is rejected where the polisher's differences see its unstable direction;
    from a start a hair off a saddle's stable manifold they may not, and the saddle is returned (notebook 02).

    Polishing (default, ``polish=deqkit.Anderson()``): each sample starts with the polisher, Anderson acceleration
    of the flow's explicit Euler step of size 1 (``z ← f(z)``), which on the maps DEQs train converges in far fewer
    evaluations than the adaptive flow. A sample goes to the adaptive flow, from where its polishing began, when its
    residual grows past ``polish_guard`` times its best (at once), when its best residual has not improved for
    ``polish_stall`` iterations (once every sample still polishing has stalled: until then the batch pays for its
    evaluations anyway, so it goes on), or when it converges to an equilibrium that the flow leaves (the polisher's
    secant history shows ``∂f/∂z − I`` with an eigenvalue of real part above :data:`UNSTABLE_RATE`: a saddle, say).
    The flow hands it back once its residual has fallen to ``polish_below`` times the largest value it had along the
    flow (after an unstable answer: once it has doubled, then fallen). Each decision is per sample, so a sample's
    equilibrium does not depend on the rest of its batch. ``polish=None`` is the pure ``DynamicSS`` of
    SteadyStateDiffEq (the flow alone).

    Parameters
    ----------
    ode_method : str
        ``"tsit5"`` (default), any adaptive Runge–Kutta method of torchdiffeq (``"dopri5"``, ``"bosh3"``,
        ``"dopri8"``, ``"fehlberg2"``, ``"adaptive_heun"``) or a fixed-step one (``"euler"``, ``"midpoint"``,
        ``"heun2"``, ``"heun3"``, ``"rk4"``, which need ``step_size``).
    controller : StepSizeController, optional
        Tolerances and step-size rule of the adaptive methods (default ``StepSizeController()``).
    step_size : float, optional
        Step size of a fixed-step method.
    polish : Anderson, "anderson" or None
        The polisher (``"anderson"`` means ``Anderson()``), or None for the flow alone.
    polish_below : float
        In (0, 1): how far a sample's residual must fall along the flow before it is polished again.
    polish_guard : float
        A polished sample whose residual exceeds this multiple of its best goes to the flow.
    polish_stall : int
        Polishing iterations without a new best residual after which a sample counts as stalled; the stalled ones
        go to the flow once every sample still polishing has stalled.
    polish_patience : int
        While on the flow, polishing starts once every running sample is ready, or once some are and no more became
        ready during this many accepted ODE steps (the others wait, then go on with the flow).

    Notes
    -----
    ``max_steps`` counts polishing iterations plus attempted ODE steps (accepted and rejected).
    ``stats.times`` holds NaN for polishing iterations; every leg of the flow starts again from ``t = 0``.
    """

    name = "dynamic_ss"
    default_max_steps = 500
    #: torchdiffeq's names of step-size options (``odeint(..., options={...})``), and where DynamicSS takes them.
    MOVED = {
        name: f"controller=deqkit.StepSizeController({name}=...)"
        for name in ("first_step", "max_step", "safety", "ifactor", "dfactor")
    }

    def __init__(
        self,
        ode_method: str = "tsit5",
        controller: StepSizeController | None = None,
        step_size: float | None = None,
        polish: Anderson | str | None = "anderson",
        polish_below: float = 0.7,
        polish_guard: float = 10.0,
        polish_stall: int = 10,
        polish_patience: int = 4,
        **moved: object,
    ):
        if moved:
            raise TypeError(moved_options(moved))
        if ode_method not in ADAPTIVE and ode_method not in FIXED:
            raise ValueError(f"unknown ode_method {ode_method!r}; choose one of {sorted(ADAPTIVE) + sorted(FIXED)}")
        if ode_method in FIXED and step_size is None:
            raise ValueError(f"ode_method={ode_method!r} takes fixed steps: give step_size (e.g. 0.5)")
        if ode_method in ADAPTIVE and step_size is not None:
            raise ValueError(
                f"step_size is for fixed-step methods; {ode_method!r} adapts its steps "
                "(use controller=deqkit.StepSizeController(first_step=..., max_step=...))"
            )
        if controller is not None and not isinstance(controller, StepSizeController):
            raise TypeError(f"controller must be a deqkit.StepSizeController, got {controller!r}")
        if controller is not None and ode_method in FIXED and controller != StepSizeController():
            raise ValueError(
                f"controller sets the adaptive methods' step sizes; {ode_method!r} takes fixed steps of step_size, so "
                "it would be ignored: drop controller, or choose an adaptive method such as 'tsit5'"
            )
        if polish == "anderson":
            polish = Anderson()
        if polish is not None and not isinstance(polish, Anderson):
            raise ValueError(f"polish must be 'anderson', a deqkit.Anderson(...) or None, got {polish!r}")
        if polish is not None and polish.sync_every != 1:
            raise ValueError(
                f"polish={polish!r}: DynamicSS reads every polishing step (its hand-overs to the flow "
                "are decided per sample at each one), so a polisher's sync_every does not apply; use "
                "polish=deqkit.Anderson() with the other settings you want"
            )
        self.ode_method, self.polish = ode_method, polish
        self.controller = StepSizeController() if controller is None else controller
        self.step_size = None if step_size is None else check_real("step_size", step_size, 0.0, low_open=True)
        self.polish_below = check_real("polish_below", polish_below, 0.0, 1.0, low_open=True, high_open=True)
        self.polish_guard = check_real("polish_guard", polish_guard, 1.0, low_open=True)
        self.polish_stall = check_int("polish_stall", polish_stall, 1, INT_MAX)  # compared with a count tensor
        self.polish_patience = check_int("polish_patience", polish_patience, 1)
        if polish is None:  # compared once checked (any number type, no NaN): settings that would do nothing
            defaults = {p.name: p.default for p in DynamicSS.settings()}
            polishing = ("polish_below", "polish_guard", "polish_stall", "polish_patience")
            unused = [k for k in polishing if getattr(self, k) != defaults[k]]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} set the polisher's hand-overs, and polish=None turns the polisher off, so "
                    "they would be ignored: drop them, or keep the polisher (polish='anderson')"
                )

    def _changed_options(self) -> list[str]:
        shown = super()._changed_options()
        return [
            s
            for s in shown
            if not (s.startswith("polish=") and self.polish == Anderson())
            and not (s.startswith("controller=") and self.controller == StepSizeController())
        ]

    @property
    def label(self) -> str:
        polish = "" if self.polish is None else "+" + self.polish.label
        return f"dynamic_ss({self.ode_method}{polish})"

    def run(self, f: Map, z0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        field = _VectorField(f, z0)
        integrate = self._fixed if self.ode_method in FIXED else self._adaptive
        if self.polish is None:
            return integrate(field, z0, None, monitor, 0, None, restart=False), field.nfe
        fz = first_evaluation(f, z0)
        field.nfe = 1
        field.check(monitor, 0, z0, fz - z0, fz, t=0.0)
        handover = _Handover.start(monitor.current)
        z, moving, steps = z0, ~monitor.converged, 0
        while True:
            steps, failed, left, field.previous = self._polish(f, field, z, fz, monitor, steps, moving)
            if self._stop(monitor, steps, field.nfe):
                return steps, field.nfe
            # every running sample goes on with the flow: from where this polish began (on a new leg if it failed,
            # else on the leg it was on), or pushed off the unstable equilibrium it found
            unstable = torch.zeros_like(failed) if left is None else left[0]
            handover.restart(field.previous, failed, unstable)
            known: torch.Tensor | None = fz  # f(z), unless z moves off an unstable equilibrium
            if left is not None:
                z, known = where_rows(unstable, left[1], z), None
            field.freeze(~monitor.converged)
            handing = handover if handover.pending(~monitor.converged) else None
            steps = integrate(field, z, known, monitor, steps, handing, restart=True)
            if self._stop(monitor, steps, field.nfe):
                return steps, field.nfe
            assert field.last is not None, "the flow took a step (else the budget stopped the solve above)"
            (z, fz), moving = field.last, monitor.marked  # the samples ready to polish, at the flow's last check
            # the flow held converged samples frozen where this leg began, with f(z) read as z: give them their
            # answer and its f(z), so that every sample's pair is consistent for the polish (which keeps the pairs
            # of the samples it holds still, and compares one with a fresh evaluation)
            z, fz = where_rows(monitor.converged, monitor.best_z, z), where_rows(monitor.converged, monitor.best_fz, fz)

    def _stop(self, monitor: Monitor, steps: int, nfe: int) -> bool:
        return monitor.done or steps >= monitor.max_steps or monitor.out_of_budget or not monitor.affords(nfe, 1)

    def _polish(
        self,
        f: Map,
        field: _VectorField,
        z: torch.Tensor,
        fz: torch.Tensor,
        monitor: Monitor,
        steps: int,
        moving: torch.Tensor,
    ) -> tuple[int, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor]:
        """Polish the samples ``moving`` from ``z`` (``fz = f(z)``, checked already); hold the others there.

        Returns the step count, the mask of samples that failed (diverged, stalled, or converged to an unstable
        equilibrium), for the unstable ones (None if there are none) their mask and the points pushed off their
        equilibrium along its unstable direction, and each sample's residual where the flow goes on: at ``z``, or
        at the unstable equilibrium.
        """
        polisher, start, origin = self.polish, monitor.current.clone(), (z, fz - z)
        assert polisher is not None, "run() polishes only with a polisher"
        state = polisher.init_state(z.flatten(1), fz.flatten(1))
        best, since = start.clone(), torch.zeros_like(start, dtype=torch.long)
        failed = torch.zeros_like(monitor.converged)
        moving = moving & ~monitor.converged
        whole = bool(moving.all())  # every sample moves: no masked copy needed (until one converges)
        secants = []  # (rows, ΔZ, ΔG) of the samples that converged, taken when they did
        for k in itertools.count(1):
            if monitor.done or steps >= monitor.max_steps or not monitor.affords(field.nfe, 1):
                break
            z_next, state = polisher.update(z.flatten(1), fz.flatten(1), state)
            z = z_next.view_as(z) if whole else where_rows(moving, z_next.view_as(z), z)
            fz, field.nfe, steps = evaluate_moving(f, z, fz, moving), field.nfe + 1, steps + 1
            before, r = monitor.n_converged, fz - z
            monitor.check(steps, z, r, fz, field.nfe, t=float("nan"))
            if monitor.n_converged > before:  # read now: a converged sample's history is overwritten as it rests
                rows = (monitor.converged & moving).nonzero().squeeze(1)
                secants.append((rows, *polisher.secants(state, rows, z, r)))
                moving, whole = moving & ~monitor.converged, False
            if k % GUARD_EVERY:
                continue
            # the guard and the stall test, every few iterations (their bookkeeping costs as much as a cheap f)
            res = monitor.current
            improved = monitor.residual < best  # the monitor keeps each sample's best residual
            best, since = torch.minimum(best, monitor.residual), torch.where(improved, 0, since + GUARD_EVERY)
            diverged = moving & (res > self.polish_guard * best)
            failed, moving = failed | diverged, moving & ~diverged
            whole = whole and not bool(diverged.any())
            # A stalled sample goes on with the polisher while others still make progress (the batch pays for its
            # evaluation anyway); once only stalled ones are left, they go to the flow.
            if not bool((moving & (since < self.polish_stall)).any()):
                failed = failed | moving
                break
        left = self._unstable(secants, monitor, origin) if secants else None
        if left is not None:
            failed = failed | left[0]
            start = torch.where(left[0], monitor.residual, start)
        return steps, failed, left, start

    @staticmethod
    def _unstable(
        secants: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        monitor: Monitor,
        origin: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Reject the polished answers that are equilibria the flow leaves (one batched eigenvalue problem): their
        mask and the points pushed off them along the unstable direction, to the side the sample came from (None if
        every answer is stable). ``origin`` is ``(z, f(z) − z)`` where the polish began."""
        rows = torch.cat([r for r, _, _ in secants])
        k = max(dz.shape[1] for _, dz, _ in secants)
        padded = [
            [t[i] if t[i].shape[1] == k else F.pad(t[i], (0, 0, 0, k - t[i].shape[1])) for t in secants] for i in (1, 2)
        ]
        dz, dg = torch.cat(padded[0]), torch.cat(padded[1])
        rates, directions = growth_rates(dz, dg, above=UNSTABLE_RATE)
        bad = torch.zeros_like(monitor.converged)
        bad[rows] = rates > UNSTABLE_RATE
        if not bool(bad.any()):
            return None
        monitor.reject(bad)
        here = monitor.best_z.flatten(1)[rows]
        size = KICK * here.abs().amax(1, keepdim=True).clamp_min(1.0)
        # The side the sample came from: the start's offset along the unstable direction, where it is clearly larger
        # than the answer's own error; from next to the equilibrium, the start's residual, which grows along that
        # direction like the offset does and is known exactly.
        offset = ((origin[0].flatten(1)[rows] - here) * directions).sum(1, keepdim=True)
        growth = (origin[1].flatten(1)[rows] * directions).sum(1, keepdim=True)
        side = torch.where(torch.where(offset.abs() > 0.1 * size, offset, growth) < 0, -1.0, 1.0)
        push = torch.zeros_like(monitor.best_z.flatten(1))
        push[rows] = torch.where((rates > UNSTABLE_RATE)[:, None], size * side * directions, 0.0).to(push.dtype)
        return bad, (monitor.best_z.flatten(1) + push).view_as(monitor.best_z)

    def _adaptive(
        self,
        field: _VectorField,
        z0: torch.Tensor,
        fz0: torch.Tensor | None,
        monitor: Monitor,
        steps: int,
        handover: _Handover | None,
        *,
        restart: bool,
    ) -> int:
        """Follow the flow from ``z0`` (``fz0 = f(z0)`` if known) until done, out of steps or budget, or (with a
        ``handover``) until it is time to polish; return the step count."""
        cost = step_cost(self.ode_method) + (self.controller.first_step is None)  # + choosing the first step
        if restart and not monitor.affords(field.nfe, cost):
            return steps
        t0 = torch.zeros((), dtype=torch.float64)
        r0 = field(t0, z0) if fz0 is None else (fz0 - z0) * batch_view(field.running, z0)
        field.cached = (z0, r0)  # torchdiffeq's own first evaluation at z0 reuses it
        if not restart and not monitor.affords(field.nfe, cost):
            raise ValueError(
                f"{monitor.tol.budget_name}={monitor.tol.max_nfe} cannot pay for one step of {self.ode_method}: "
                f"{field.nfe} evaluation at the start and {cost} for the first step; raise {monitor.tol.budget_name}"
            )
        rtol, atol = self.controller.tolerances(z0, r0, monitor.tol.abstol, monitor.tol.reltol, handover is not None)
        ode = AdaptiveStepper(
            self.ode_method, field, z0, rtol=rtol, atol=atol, norm=per_sample_rms_max, **self.controller.options()
        )
        if not restart:
            field.check(monitor, 0, ode.y, ode.f, ode.f + ode.y, t=0.0)
        accepted = 0
        while not monitor.done and steps < monitor.max_steps and monitor.affords(field.nfe, ode.cost):
            try:
                ok, t1, y1, f1 = ode.step()
            except StepFailure as err:
                raise self._failure(err, ode.t, accepted, monitor, field.undefined) from err
            steps += 1
            if not ok:
                monitor.stats.rejected_steps += 1
                continue
            accepted += 1
            if self._checked(field, monitor, steps, y1, f1, t1, handover):
                break
            ode.set_derivative(f1 * batch_view(field.running, f1))
        return steps

    def _checked(
        self,
        field: _VectorField,
        monitor: Monitor,
        steps: int,
        z: torch.Tensor,
        dz: torch.Tensor,
        t: float,
        handover: _Handover | None,
    ) -> bool:
        """Check a state of the flow (``dz = f(z) − z``), freeze what converged; True when it is time to polish."""
        target = None if handover is None else handover.target(self.polish_below)
        running = field.check(monitor, steps, z, dz, dz + z, t, mark_below=target)
        field.last = (z, dz + z)
        field.freeze(running)
        if handover is None:
            return False
        handover.observe(monitor.current)
        return not monitor.done and handover.time_to_polish(monitor, self.polish_patience)

    def _failure(
        self, err: StepFailure, t: float, accepted: int, monitor: Monitor, undefined: torch.Tensor | None = None
    ) -> DivergenceError:
        """The error for a step torchdiffeq refused, naming f undefined at a trial point, or a drift, when seen."""
        if undefined is not None and bool(undefined.any()):
            return DivergenceError(
                f"{self.label}: the ODE solver failed at t={t:.4g} after {accepted} accepted steps ({err}) because f "
                f"returned NaN at a finite trial point for {int(undefined.sum())} of {undefined.numel()} "
                "samples: f is undefined there (e.g. log or sqrt of a negative number, 0/0), which is no sign of an "
                "expansive map. Find where with torch.autograd.detect_anomaly(), or guard f's domain."
            )
        drift = ""
        scale = monitor.last_scale  # (set by the first check, before any sample can drift)
        if scale is not None and bool(monitor.drifting.any()):
            drift = (
                f" {int(monitor.drifting.sum())} samples drift away (‖f(z)‖∞ grew to "
                f"{float(scale.max()):.3g} while the residual never fell): f probably has no fixed "
                "point there."
            )
        return DivergenceError(
            f"{self.label}: the ODE solver failed at t={t:.4g} after {accepted} accepted steps ({err}).{drift} The "
            "flow is probably blowing up (an unstable equilibrium or no equilibrium): check deqkit.spectral_radius, "
            "or constrain f."
        )

    def _fixed(
        self,
        field: _VectorField,
        z0: torch.Tensor,
        fz0: torch.Tensor | None,
        monitor: Monitor,
        steps: int,
        handover: _Handover | None,
        *,
        restart: bool,
    ) -> int:
        assert self.step_size is not None, "__init__ requires step_size for a fixed-step method"
        ode = FixedStepper(self.ode_method, field, z0, self.step_size)
        if not monitor.affords(field.nfe, ode.cost):
            if restart:
                return steps
            raise ValueError(
                f"{monitor.tol.budget_name}={monitor.tol.max_nfe} is less than one step of {self.ode_method} "
                f"({ode.cost} evaluations): raise {monitor.tol.budget_name}"
            )
        if fz0 is not None:
            field.cached = (z0, (fz0 - z0) * batch_view(field.running, z0))
        t, z = torch.zeros((), dtype=torch.float64, device=z0.device), z0
        while True:
            # The step function evaluates f at z first: that derivative is what the rule checks.
            dz, r = ode.step(t, z)
            polish = self._checked(field, monitor, steps, z, r, float(t), handover)
            if monitor.done or steps >= monitor.max_steps or polish or not monitor.affords(field.nfe, ode.cost):
                return steps
            z, t, steps = z + dz * batch_view(field.running, dz), t + ode.dt, steps + 1
