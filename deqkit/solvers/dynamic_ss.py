"""The ODE route: integrate dz/dt = f(z) − z until steady state, like Julia's ``DynamicSS(Tsit5())``.

torchdiffeq's Runge–Kutta core takes the steps; deqkit drives it one step at a time so that it can stop each
sample as soon as it meets the termination rule (see :mod:`deqkit.solvers.core`). The rule is checked at
every accepted step on the derivative the method already computed at the new state (free for the FSAL
methods tsit5, dopri5, bosh3 and dopri8; one extra evaluation per step for the others). A converged sample's
derivative is set to zero from then on, so it no longer moves and no longer limits the step size: the error
norm is the largest per-sample RMS, and a frozen sample's error is zero.

A sample is judged on the ODE's steps only once its residual is settling: it must meet the rule *and* not have
grown since the previous check. Near an unstable equilibrium (a saddle) the residual grows along the flow however
small it is, so a start next to one is carried away from it instead of being declared converged there.

torchdiffeq is reached only through :mod:`deqkit.solvers.torchdiffeq_adapter`.
"""

from __future__ import annotations

import torch

from ..errors import DivergenceError
from .anderson import Anderson
from .core import Map, Monitor, Solver, batch_view, check_int, check_real, first_evaluation
from .torchdiffeq_adapter import ADAPTIVE, FIXED, AdaptiveStepper, FixedStepper, StepFailure


def per_sample_rms_max(x: torch.Tensor) -> torch.Tensor:
    """Error norm: RMS within each sample, maximum over the batch (each sample gets its own accuracy)."""
    return x.flatten(1).pow(2).mean(1).sqrt().amax()


class _VectorField:
    """``dz/dt = (f(z) − z) · running``, with the callbacks torchdiffeq's solvers call."""

    def __init__(self, f: Map, z0: torch.Tensor):
        self.f, self.nfe = f, 0
        self.running = torch.ones(z0.shape[0], dtype=z0.dtype, device=z0.device)
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (z, f(z)) at the last check
        self.peak: torch.Tensor | None = None  # each sample's largest residual along the flow
        self.polishable = torch.ones(z0.shape[0], dtype=torch.bool, device=z0.device)  # not polished in vain yet
        self.ready_count, self.waited = 0, 0  # samples ready for polishing, and checks since that number last grew

    def observe(self, monitor: Monitor, z: torch.Tensor, fz: torch.Tensor) -> None:
        """Remember the state just checked, and each sample's largest residual along the flow."""
        self.last = (z, fz)
        self.peak = monitor.current if self.peak is None else torch.maximum(self.peak, monitor.current)

    def time_to_polish(self, monitor: Monitor, patience: int) -> bool:
        """Every running sample is ready, or some are and no more became ready in ``patience`` checks."""
        if monitor.ready_count > self.ready_count:
            self.ready_count, self.waited = monitor.ready_count, 0
        elif monitor.ready_count > 0:
            self.waited += 1
        return monitor.below or (monitor.ready_count > 0 and self.waited >= patience)

    def target(self, below: float) -> torch.Tensor | None:
        """Residual under which a sample is ready for polishing (never, for a sample polished in vain)."""
        if self.peak is None:
            return None
        return torch.where(self.polishable, below * self.peak, torch.full_like(self.peak, -1.0))

    def __call__(self, t: torch.Tensor, z: torch.Tensor, perturb: object = None) -> torch.Tensor:
        if self.cached is not None and z is self.cached[0]:  # the value computed just before, reused once
            out, self.cached = self.cached[1], None
            return out
        fz = first_evaluation(self.f, z) if self.nfe == 0 else self.f(z)
        self.nfe += 1
        return (fz - z) * batch_view(self.running, z)

    def freeze(self, running: torch.Tensor) -> None:
        self.running = running.to(self.running.dtype)

    def callback_step(self, t0, y0, dt) -> None: ...
    def callback_accept_step(self, t0, y0, dt) -> None: ...
    def callback_reject_step(self, t0, y0, dt) -> None: ...


class DynamicSS(Solver):
    """Integrate the ODE ``dz/dt = f(z) − z`` to steady state with an explicit Runge–Kutta method.

    Unlike plain iteration it follows the continuous flow, so it converges to *stable* equilibria even where
    ``f`` is not a contraction (e.g. ∂f/∂z with eigenvalues below −1), and never to unstable ones.

    Polishing (default): the flow is followed only until every sample's residual has fallen to
    ``polish_below`` times the largest value it had along the flow — by then the state is well inside the basin of
    the stable equilibrium the flow is heading to — and Anderson acceleration (``polish="anderson"``) finishes the
    solve, as steady-state solvers switch from time stepping to a Newton-type method near the answer. A sample
    whose residual grows past ``polish_guard`` times its value at the switch, or that has not converged after
    ``polish_steps`` iterations, goes back to the ODE from where it switched, which then runs to the end without
    polishing. ``polish=None`` is the pure ``DynamicSS`` of SteadyStateDiffEq.

    Parameters
    ----------
    ode_method : str
        ``"tsit5"`` (default), any adaptive Runge–Kutta method of torchdiffeq (``"dopri5"``, ``"bosh3"``,
        ``"dopri8"``, ``"fehlberg2"``, ``"adaptive_heun"``) or a fixed-step one (``"euler"``, ``"midpoint"``,
        ``"heun2"``, ``"heun3"``, ``"rk4"``, which need ``step_size``).
    ode_rtol, ode_atol : float, optional
        The ODE solver's local error tolerances. With ``s = max(‖z0‖∞, ‖f(z0)‖∞)`` over the batch (the scale of
        the problem, read off the first evaluation), they default to ``reltol / 10`` and
        ``max(abstol, reltol · s) / 10`` when the ODE must reach the target by itself: tighter than the
        termination rule, because near the steady state the step size sits at the method's stability limit
        and the residual levels off near the ODE tolerance. While polishing is pending the flow only has to
        reach the basin: ``1e-3`` and ``1e-3 · s``.
    first_step, max_step : float, optional
        Initial and largest step size (adaptive methods). Default first step: 0.5 with polishing (half the
        time scale of the ``−z`` term), else chosen automatically (Hairer–Nørsett–Wanner).
    step_size : float, optional
        Step size of a fixed-step method.
    safety, ifactor, dfactor : float
        Step-size controller settings passed to torchdiffeq.
    polish : {"anderson", None}
        The method that finishes the solve near the equilibrium, or None for the ODE alone.
    polish_below : float
        Switch once every running sample's residual is at most this fraction of the largest residual it had
        along the flow. A start near an unstable equilibrium has a small residual that first *grows* along the
        flow, so the switch waits until the flow has left it and is settling towards a stable one. The default
        0.7 lets a sample that simply contracts switch after the first step: along ``dz/dt = f(z) − z`` near a
        contraction the residual falls like ``e^(−t)``, to 0.61 after the first step (``t = 0.5``); 0.5 needed a
        second step (6 more evaluations with Tsit5). Measured (docs/results.md, section 10): 4–6 fewer
        evaluations on every case of the forward benchmark (e.g. 22 → 17, 36 → 31), and on the LayerNorm
        MLP-DEQ during training 28–29 evaluations to converge every sample instead of 32.
    polish_guard : float
        A polished sample whose residual exceeds this multiple of its residual at the switch goes back.
    polish_steps : int
        Most polishing iterations before the remaining samples go back to the ODE.
    polish_m : int
        Memory of the polishing Anderson solver.
    polish_patience : int
        Polishing starts once every running sample is ready, or once some are and no more became ready during this
        many accepted ODE steps: then the ready ones are polished while the others wait, and those go on with the
        ODE afterwards (and are polished in turn when ready). A few hard samples do not keep the whole batch on
        the slow flow.

    Notes
    -----
    ``max_steps`` counts attempted ODE steps (accepted and rejected) plus polishing iterations.
    ``stats.times`` holds NaN for polishing iterations; if samples go back to the ODE after polishing, that second
    integration starts again from ``t = 0``.
    """

    name = "dynamic_ss"
    default_max_steps = 500

    def __init__(self, ode_method: str = "tsit5", ode_rtol: float | None = None, ode_atol: float | None = None,
                 first_step: float | None = None, max_step: float | None = None, step_size: float | None = None,
                 safety: float = 0.9, ifactor: float = 10.0, dfactor: float = 0.2, polish: str | None = "anderson",
                 polish_below: float = 0.7, polish_guard: float = 10.0, polish_steps: int = 100,
                 polish_m: int = 5, polish_patience: int = 4):
        if ode_method not in ADAPTIVE and ode_method not in FIXED:
            raise ValueError(f"unknown ode_method {ode_method!r}; choose one of {sorted(ADAPTIVE) + sorted(FIXED)}")
        if ode_method in FIXED and step_size is None:
            raise ValueError(f"ode_method={ode_method!r} takes fixed steps: give step_size (e.g. 0.5)")
        if ode_method in ADAPTIVE and step_size is not None:
            raise ValueError(f"step_size is for fixed-step methods; {ode_method!r} adapts its steps "
                             "(use first_step / max_step)")
        if polish not in ("anderson", None):
            raise ValueError(f"polish must be 'anderson' or None, got {polish!r}")
        positive = {"ode_rtol": ode_rtol, "ode_atol": ode_atol, "first_step": first_step, "max_step": max_step,
                    "step_size": step_size}
        for name, value in positive.items():
            if value is not None:
                setattr(self, name, check_real(name, value, 0.0, low_open=True))
            else:
                setattr(self, name, None)
        self.ode_method, self.polish = ode_method, polish
        self.safety = check_real("safety", safety, 0.0, 1.0, low_open=True)
        self.ifactor = check_real("ifactor", ifactor, 1.0)
        self.dfactor = check_real("dfactor", dfactor, 0.0, 1.0, low_open=True)
        self.polish_below = check_real("polish_below", polish_below, 0.0, 1.0, low_open=True, high_open=True)
        self.polish_guard = check_real("polish_guard", polish_guard, 1.0, low_open=True)
        self.polish_steps = check_int("polish_steps", polish_steps, 1)
        self.polish_m = check_int("polish_m", polish_m, 1)
        self.polish_patience = check_int("polish_patience", polish_patience, 1)
        self.controller = {"safety": self.safety, "ifactor": self.ifactor, "dfactor": self.dfactor}
        if polish and first_step is None and ode_method in ADAPTIVE:
            self.controller["first_step"] = 0.5  # half the time scale of the −z term
        for name in ("first_step", "max_step"):
            if getattr(self, name) is not None:
                self.controller[name] = getattr(self, name)
        self.polisher = Anderson(m=self.polish_m) if polish else None

    @property
    def label(self) -> str:
        return f"dynamic_ss({self.ode_method}{'+' + self.polish if self.polish else ''})"

    def run(self, f: Map, z0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        field = _VectorField(f, z0)
        integrate = self._fixed if self.ode_method in FIXED else self._adaptive
        steps, z = 0, z0
        while True:
            switch = self.polisher is not None and bool((field.polishable & ~monitor.converged).any())
            steps = integrate(field, z, monitor, steps, switch=switch)
            if (monitor.done or steps >= monitor.tol.max_steps or not switch or monitor.out_of_budget
                    or not monitor.affords(field.nfe, 1)):
                return steps, field.nfe
            z, steps = self._polish(f, field, monitor, steps)
            # back to the ODE only if it can afford its first evaluation (polishing may stop on its own step limit
            # or guard with the budget spent)
            if (monitor.done or steps >= monitor.tol.max_steps or monitor.out_of_budget
                    or not monitor.affords(field.nfe, 1)):
                return steps, field.nfe

    def _polish(self, f: Map, field: _VectorField, monitor: Monitor, steps: int) -> tuple[torch.Tensor, int]:
        """Anderson on the samples ready for it; return where the rest go on with the ODE, and the step count.

        Polishing starts from the iterate just checked (its f(z) is known; not the best one, which may be a start
        next to an unstable equilibrium). Samples not ready are held where they are; a polished sample that blows
        up is held too. Whatever did not converge goes back to the ODE from where it switched, and a sample
        polished in vain is not polished again.
        """
        z_switch, fz_switch = field.last
        ready, guard = monitor.ready, self.polish_guard * monitor.current
        steps, field.nfe = self.polisher.iterate(
            f, z_switch, fz_switch, monitor, step=steps, nfe=field.nfe,
            limit=min(monitor.tol.max_steps, steps + self.polish_steps), hold=lambda res: res > guard,
            t=float("nan"), moving=ready)
        field.polishable = field.polishable & ~ready
        field.ready_count = field.waited = 0
        field.freeze(~monitor.converged)
        # converged samples stay at their answers (frozen); the others resume from their switch state
        return torch.where(batch_view(monitor.converged, z_switch), monitor.best_z, z_switch), steps

    def _tolerances(self, z0: torch.Tensor, r0: torch.Tensor, monitor: Monitor, switch: bool) -> tuple[float, float]:
        """The ODE's local error tolerances (see the class docstring)."""
        tol = monitor.tol
        scale = float(torch.maximum(z0.detach().abs().amax(), (r0 + z0).detach().abs().amax()))
        scale = scale if scale > 0 else 1.0
        if switch:  # polishing will finish the job: the flow only has to reach the basin
            rtol, atol = 1e-3, 1e-3 * scale
        else:
            rtol, atol = tol.reltol / 10, max(tol.abstol, tol.reltol * scale) / 10
        return (rtol if self.ode_rtol is None else self.ode_rtol,
                atol if self.ode_atol is None else self.ode_atol)

    def _adaptive(self, field: _VectorField, z0: torch.Tensor, monitor: Monitor, steps: int, *,
                  switch: bool) -> int:
        r0 = field(torch.zeros((), dtype=torch.float64), z0)
        field.cached = (z0, r0)  # torchdiffeq's own first evaluation at z0 reuses it
        rtol, atol = self._tolerances(z0, r0, monitor, switch)
        ode = AdaptiveStepper(self.ode_method, field, z0, rtol=rtol, atol=atol, norm=per_sample_rms_max,
                              **self.controller)
        if steps == 0:
            monitor.check(0, ode.y, ode.f, ode.f + ode.y, field.nfe, t=0.0, settling=True)
            field.observe(monitor, ode.y, ode.f + ode.y)
            if not monitor.done and not monitor.affords(field.nfe, ode.cost):
                raise ValueError(f"max_nfe={monitor.tol.max_nfe} cannot pay for one step of {self.ode_method}: "
                                 f"{field.nfe} evaluation{'s' * (field.nfe > 1)} at the start and {ode.cost} per step; "
                                 "raise max_nfe")
        accepted = 0
        while not monitor.done and steps < monitor.tol.max_steps and monitor.affords(field.nfe, ode.cost):
            try:
                ok, t1, y1, f1 = ode.step()
            except StepFailure as err:
                raise self._failure(err, ode.t, accepted, monitor) from err
            steps += 1
            if not ok:
                monitor.stats.rejected_steps += 1
                continue
            accepted += 1
            target = field.target(self.polish_below) if switch else None
            running = monitor.check(steps, y1, f1, f1 + y1, field.nfe, t=t1, below=target, settling=True)
            field.observe(monitor, y1, f1 + y1)
            field.freeze(running)
            ode.set_derivative(f1 * batch_view(field.running, f1))
            if switch and not monitor.done and field.time_to_polish(monitor, self.polish_patience):
                break
        return steps

    def _failure(self, err: StepFailure, t: float, accepted: int, monitor: Monitor) -> DivergenceError:
        """The error for a step torchdiffeq refused, naming a drift when the monitor saw one."""
        drift = ""
        if bool(monitor.drifting.any()):
            drift = (f" {int(monitor.drifting.sum())} samples drift away (‖f(z)‖∞ grew to "
                     f"{float(monitor.last_scale.max()):.3g} while the residual never fell): f probably has no fixed "
                     "point there.")
        return DivergenceError(
            f"{self.label}: the ODE solver failed at t={t:.4g} after {accepted} accepted steps ({err}).{drift} The "
            "flow is probably blowing up (an unstable equilibrium or no equilibrium): check deqkit.spectral_radius, "
            "or constrain f."
        )

    def _fixed(self, field: _VectorField, z0: torch.Tensor, monitor: Monitor, steps: int, *, switch: bool) -> int:
        ode = FixedStepper(self.ode_method, field, z0, self.step_size)
        if not monitor.affords(field.nfe, ode.cost):
            raise ValueError(f"max_nfe={monitor.tol.max_nfe} is less than one step of {self.ode_method} "
                             f"({ode.cost} evaluations): raise max_nfe")
        t, z = torch.zeros((), dtype=torch.float64, device=z0.device), z0
        while True:
            # The step function evaluates f at z first: that derivative is what the rule checks.
            dz, f0 = ode.step(t, z)
            target = field.target(self.polish_below) if switch else None
            running = monitor.check(steps, z, f0, f0 + z, field.nfe, t=float(t), below=target, settling=True)
            field.observe(monitor, z, f0 + z)
            polish = switch and target is not None and field.time_to_polish(monitor, self.polish_patience)
            if monitor.done or steps >= monitor.tol.max_steps or polish or not monitor.affords(field.nfe, ode.cost):
                return steps
            field.freeze(running)
            z, t, steps = z + dz * batch_view(field.running, dz), t + ode.dt, steps + 1
