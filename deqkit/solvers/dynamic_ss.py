"""The ODE route: integrate dz/dt = f(z) − z until steady state, like Julia's ``DynamicSS(Tsit5())``.

torchdiffeq's Runge–Kutta core takes the steps; deqkit drives it one step at a time so that it can stop each
sample as soon as it meets the termination rule (see :mod:`deqkit.solvers.core`). The rule is checked at
every accepted step on the derivative the method already computed at the new state (free for the FSAL
methods tsit5, dopri5, bosh3 and dopri8; one extra evaluation per step for the others). A converged sample's
derivative is set to zero from then on, so it no longer moves and no longer limits the step size: the error
norm is the largest per-sample RMS, and a frozen sample's error is zero.

This module uses torchdiffeq's private ``_impl`` API (pinned to torchdiffeq 0.2.5; covered by tests).
"""

from __future__ import annotations

import torch
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
from torchdiffeq._impl.solvers import FixedGridODESolver

from ..errors import DivergenceError
from .anderson import Anderson
from .core import Map, Monitor, batch_view, check_map_output
from .tsit5 import Tsit5Solver

ADAPTIVE = {"tsit5": Tsit5Solver} | {
    k: v for k, v in SOLVERS.items() if isinstance(v, type) and issubclass(v, RKAdaptiveStepsizeODESolver)
}
FIXED = {k: v for k, v in SOLVERS.items() if isinstance(v, type) and issubclass(v, FixedGridODESolver)
         and hasattr(v, "_step_func")}


def _is_fsal(cls: type[RKAdaptiveStepsizeODESolver]) -> bool:
    """True when the last stage is evaluated at the new state, so ``k[-1] = f(y1)``."""
    tab = cls.tableau
    return bool(tab.alpha[-1] == 1 and tab.c_sol[-1] == 0 and torch.equal(tab.beta[-1], tab.c_sol[:-1]))


def per_sample_rms_max(x: torch.Tensor) -> torch.Tensor:
    """Error norm: RMS within each sample, maximum over the batch (each sample gets its own accuracy)."""
    return x.flatten(1).pow(2).mean(1).sqrt().amax()


class _VectorField:
    """``dz/dt = (f(z) − z) · running``, with the callbacks torchdiffeq's solvers call."""

    def __init__(self, f: Map, z0: torch.Tensor):
        self.f, self.z0, self.nfe = f, z0, 0
        self.running = torch.ones(z0.shape[0], dtype=z0.dtype, device=z0.device)
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, t: torch.Tensor, z: torch.Tensor, perturb: object = None) -> torch.Tensor:
        if self.cached is not None and z is self.cached[0]:  # the value computed just before, reused once
            out, self.cached = self.cached[1], None
            return out
        fz = self.f(z)
        if self.nfe == 0:
            check_map_output(fz, z)
        self.nfe += 1
        return (fz - z) * batch_view(self.running, z)

    def freeze(self, running: torch.Tensor) -> None:
        self.running = running.to(self.running.dtype)

    def callback_step(self, t0, y0, dt) -> None: ...
    def callback_accept_step(self, t0, y0, dt) -> None: ...
    def callback_reject_step(self, t0, y0, dt) -> None: ...


class DynamicSS:
    """Integrate the ODE ``dz/dt = f(z) − z`` to steady state with an explicit Runge–Kutta method.

    Unlike plain iteration it follows the continuous flow, so it converges to *stable* equilibria even where
    ``f`` is not a contraction (e.g. ∂f/∂z with eigenvalues below −1), and never to unstable ones.

    Polishing (default): the flow is followed only until every sample's residual has fallen to
    ``polish_below`` times its starting value — by then the state is well inside the basin of the stable
    equilibrium the flow is heading to — and Anderson acceleration (``polish="anderson"``) finishes the
    solve, as steady-state solvers switch from time stepping to a Newton-type method near the answer. A
    sample whose residual grows past ``polish_guard`` times its value at the switch, or that has not
    converged after ``polish_steps`` iterations, goes back to the ODE from its best iterate, which then runs
    to the end without polishing. ``polish=None`` is the pure ``DynamicSS`` of SteadyStateDiffEq.

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
        Switch once every running sample's residual is at most this fraction of its starting residual. A
        start near an unstable equilibrium has a small residual that first *grows* along the flow, so the
        switch waits until the flow has left it and is settling towards a stable one.
    polish_guard : float
        A polished sample whose residual exceeds this multiple of its residual at the switch goes back.
    polish_steps : int
        Most polishing iterations before the remaining samples go back to the ODE.
    polish_m : int
        Memory of the polishing Anderson solver.

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
                 polish_below: float = 0.5, polish_guard: float = 10.0, polish_steps: int = 50,
                 polish_m: int = 5):
        if ode_method not in ADAPTIVE and ode_method not in FIXED:
            raise ValueError(f"unknown ode_method {ode_method!r}; choose one of {sorted(ADAPTIVE) + sorted(FIXED)}")
        if ode_method in FIXED and step_size is None:
            raise ValueError(f"ode_method={ode_method!r} takes fixed steps: give step_size (e.g. 0.5)")
        if ode_method in ADAPTIVE and step_size is not None:
            raise ValueError(f"step_size is for fixed-step methods; {ode_method!r} adapts its steps "
                             "(use first_step / max_step)")
        if polish not in ("anderson", None):
            raise ValueError(f"polish must be 'anderson' or None, got {polish!r}")
        if not 0 < polish_below < 1:
            raise ValueError(f"polish_below must be in (0, 1), got {polish_below}")
        self.ode_method, self.ode_rtol, self.ode_atol = ode_method, ode_rtol, ode_atol
        if polish and first_step is None and ode_method in ADAPTIVE:
            first_step = 0.5
        self.step_size = step_size
        self.controller = {"safety": safety, "ifactor": ifactor, "dfactor": dfactor}
        if first_step is not None:
            self.controller["first_step"] = first_step
        if max_step is not None:
            self.controller["max_step"] = max_step
        self.polish, self.polish_below, self.polish_guard = polish, polish_below, polish_guard
        self.polish_steps = polish_steps
        self.polisher = Anderson(m=polish_m) if polish else None

    @property
    def label(self) -> str:
        return f"dynamic_ss({self.ode_method}{'+' + self.polish if self.polish else ''})"

    def run(self, f: Map, z0: torch.Tensor, monitor: Monitor) -> tuple[int, int]:
        field = _VectorField(f, z0)
        integrate = self._fixed if self.ode_method in FIXED else self._adaptive
        budget = monitor.tol.max_steps
        steps = integrate(field, z0, monitor, 0, switch=self.polisher is not None)
        if monitor.done or steps >= budget or self.polisher is None:
            return steps, field.nfe
        # polish: start from the iterate just checked (its f(z) is known), hold samples that blow up
        at_switch = monitor.current.clone()
        guard = self.polish_guard * at_switch
        steps, field.nfe = self.polisher.iterate(
            f, monitor.best_z, monitor.best_fz, monitor, step=steps, nfe=field.nfe,
            limit=min(budget, steps + self.polish_steps), hold=lambda res: res > guard,
            t=float("nan"))
        if monitor.done or steps >= budget:
            return steps, field.nfe
        field.freeze(~monitor.converged)  # the rest go back to the ODE, from their best iterates
        steps = integrate(field, monitor.best_z, monitor, steps, switch=False)
        return steps, field.nfe

    def _adaptive(self, field: _VectorField, z0: torch.Tensor, monitor: Monitor, steps: int, *,
                  switch: bool) -> int:
        tol = monitor.tol
        t0 = torch.zeros(1, dtype=torch.float64, device=z0.device)
        r0 = field(t0[0], z0)
        field.cached = (z0, r0)  # torchdiffeq's own first evaluation at z0 reuses it
        scale = float(torch.maximum(z0.detach().abs().amax(), (r0 + z0).detach().abs().amax()))
        scale = scale if scale > 0 else 1.0
        if switch:  # polishing will finish the job: the flow only has to reach the basin
            rtol, atol = 1e-3, 1e-3 * scale
        else:
            rtol, atol = tol.reltol / 10, max(tol.abstol, tol.reltol * scale) / 10
        rtol = rtol if self.ode_rtol is None else self.ode_rtol
        atol = atol if self.ode_atol is None else self.ode_atol
        cls = ADAPTIVE[self.ode_method]
        fsal = _is_fsal(cls)
        ode = cls(func=field, y0=z0, rtol=rtol, atol=atol, norm=per_sample_rms_max, **self.controller)
        ode._before_integrate(t0)
        state = ode.rk_state
        if steps == 0:
            monitor.check(0, state.y1, state.f1, state.f1 + state.y1, field.nfe, t=0.0)
        target = self.polish_below * monitor.current if switch else None
        accepted, t_prev = 0, 0.0
        while not monitor.done and steps < tol.max_steps:
            try:
                new = ode._adaptive_step(state)
            except AssertionError as err:  # torchdiffeq's dt-underflow / non-finite-state asserts
                raise DivergenceError(
                    f"{self.label}: the ODE solver failed at t={float(state.t1):.4g} after {accepted} accepted "
                    f"steps ({err}). The flow is probably blowing up (an unstable equilibrium or no equilibrium): "
                    "check deqkit.spectral_radius, or constrain f."
                ) from err
            steps += 1
            t1 = float(new.t1.detach())  # the one host read per step for acceptance (and the time stamp)
            if t1 > t_prev:
                accepted, t_prev = accepted + 1, t1
                f1 = new.f1 if fsal else field(new.t1, new.y1)
                running = monitor.check(steps, new.y1, f1, f1 + new.y1, field.nfe, t=t1, below=target)
                field.freeze(running)
                new = new._replace(f1=f1 * batch_view(field.running, f1))
                if switch and not monitor.done and monitor.below:
                    break
            else:
                monitor.stats.rejected_steps += 1
            state = new
        return steps

    def _fixed(self, field: _VectorField, z0: torch.Tensor, monitor: Monitor, steps: int, *, switch: bool) -> int:
        ode = FIXED[self.ode_method](func=field, y0=z0, step_size=self.step_size, atol=0.0)
        dt = torch.tensor(self.step_size, dtype=torch.float64, device=z0.device)
        t, z, first = torch.zeros((), dtype=torch.float64, device=z0.device), z0, steps
        target = None
        while True:
            # The step function evaluates f at z first: that derivative is what the rule checks.
            dz, f0 = ode._step_func(field, t, dt, t + dt, z)
            running = monitor.check(steps, z, f0, f0 + z, field.nfe, t=float(t), below=target)
            if monitor.done or steps >= monitor.tol.max_steps:
                return steps
            if steps == first:
                target = self.polish_below * monitor.current if switch else None
            elif switch and monitor.below:
                return steps
            field.freeze(running)
            z, t, steps = z + dz * batch_view(field.running, dz), t + dt, steps + 1
