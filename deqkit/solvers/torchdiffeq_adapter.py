"""The one seam between deqkit and torchdiffeq's private Runge–Kutta core (``torchdiffeq._impl``).

deqkit drives torchdiffeq one step at a time, so that each sample can stop as soon as it meets the termination
rule: that needs internals that torchdiffeq does not export (its solver registry, the Butcher tableau type,
``_before_integrate``, ``rk_state``, ``_adaptive_step``, ``_step_func``, its assertions on step underflow). They are
all here, behind two small steppers; a torchdiffeq upgrade touches this file alone (pinned to torchdiffeq 0.2.5;
``tests/solvers/test_torchdiffeq_adapter.py`` checks every internal used).

deqkit's Tsit5 (:mod:`deqkit.solvers.tsit5`) is registered whatever torchdiffeq ships: later torchdiffeq
releases have a ``tsit5`` of their own whose last error weight makes it lose the first-same-as-last property, so
every step would cost one more evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau
from torchdiffeq._impl.solvers import FixedGridODESolver

from ..errors import StepFailure
from . import tsit5

__all__ = [
    "ADAPTIVE",
    "FIXED",
    "AdaptiveStepper",
    "FixedStepper",
    "StepFailure",
    "Tsit5Solver",
    "TSIT5_TABLEAU",
    "is_fsal",
    "registries",
]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TSIT5_TABLEAU = _ButcherTableau(alpha=tsit5.ALPHA, beta=tsit5.BETA, c_sol=tsit5.C_SOL, c_error=tsit5.C_ERROR)


class Tsit5Solver(RKAdaptiveStepsizeODESolver):
    """torchdiffeq-compatible adaptive solver for Tsit5 (also usable with its ``integrate`` method)."""

    order = 5
    tableau = TSIT5_TABLEAU
    mid = tsit5.dense_weights(0.5)  # torchdiffeq fits its interpolant through the step's midpoint


def registries(
    solvers: dict[str, object],
) -> tuple[dict[str, type[RKAdaptiveStepsizeODESolver]], dict[str, type[FixedGridODESolver]]]:
    """Split torchdiffeq's solver table into the adaptive and the fixed-step methods deqkit can step.

    deqkit's Tsit5 is entered last, so that it wins over any ``tsit5`` that torchdiffeq ships.
    """
    adaptive = {k: v for k, v in solvers.items() if isinstance(v, type) and issubclass(v, RKAdaptiveStepsizeODESolver)}
    fixed = {
        k: v
        for k, v in solvers.items()
        if isinstance(v, type) and issubclass(v, FixedGridODESolver) and hasattr(v, "_step_func")
    }
    return adaptive | {"tsit5": Tsit5Solver}, fixed


ADAPTIVE, FIXED = registries(_TORCHDIFFEQ_SOLVERS)


def is_fsal(cls: type[RKAdaptiveStepsizeODESolver]) -> bool:
    """True when the last stage is evaluated at the new state, so the step's last derivative is ``f(y1)``."""
    tab = cls.tableau
    return bool(tab.alpha[-1] == 1 and tab.c_sol[-1] == 0 and torch.equal(tab.beta[-1], tab.c_sol[:-1]))


def step_cost(method: str) -> int:
    """Evaluations of the field per attempted step of the adaptive ``method`` (FSAL methods reuse the last)."""
    cls = ADAPTIVE[method]
    return len(cls.tableau.alpha) + (0 if is_fsal(cls) else 1)


class AdaptiveStepper:
    """One adaptive Runge–Kutta integration of ``dy/dt = field(t, y)`` from ``t = 0``, a step at a time.

    Parameters
    ----------
    method : str
        A key of :data:`ADAPTIVE`.
    field : callable
        ``field(t, y)``; torchdiffeq also calls its ``callback_*`` hooks, which it must provide.
    y0 : torch.Tensor
    rtol, atol : float
    norm : callable
        The error norm.
    **controller
        ``first_step``, ``max_step``, ``safety``, ``ifactor``, ``dfactor``.
    """

    def __init__(
        self,
        method: str,
        field: VectorField,
        y0: torch.Tensor,
        *,
        rtol: float,
        atol: float,
        norm: Callable[[torch.Tensor], torch.Tensor],
        **controller: float,
    ):
        cls = ADAPTIVE[method]
        self.fsal = is_fsal(cls)
        self.cost = step_cost(method)  # evaluations of field per attempted step
        self._field = field
        self._ode = cls(func=field, y0=y0, rtol=rtol, atol=atol, norm=norm, **controller)
        self._ode._before_integrate(torch.zeros(1, dtype=torch.float64, device=y0.device))
        self._state = self._ode.rk_state
        self.t = 0.0

    @property
    def y(self) -> torch.Tensor:
        """The current state."""
        return self._state.y1

    @property
    def f(self) -> torch.Tensor:
        """The derivative at the current state."""
        return self._state.f1

    def step(self) -> tuple[bool, float, torch.Tensor, torch.Tensor]:
        """Attempt one step; return ``(accepted, t1, y1, f1)`` with ``f1`` the derivative at ``y1``.

        For a non-FSAL method, an accepted step costs one more evaluation of ``field`` for ``f1``. A rejected
        step leaves the state where it was (with a smaller step size) and returns it.

        Raises
        ------
        StepFailure
            When torchdiffeq's assertions refuse the step (step size underflow, non-finite state).
        """
        try:
            new = self._ode._adaptive_step(self._state)
        except AssertionError as err:
            raise StepFailure(str(err)) from err
        t1 = float(new.t1.detach())  # the one host read per step: acceptance and the time stamp
        accepted = t1 > self.t
        if accepted and not self.fsal:
            new = new._replace(f1=self._field(new.t1, new.y1))
        self._state, self.t = new, (t1 if accepted else self.t)
        return accepted, t1, new.y1, new.f1

    def set_derivative(self, f1: torch.Tensor) -> None:
        """Replace the derivative at the current state (e.g. zeroed for samples that stopped)."""
        self._state = self._state._replace(f1=f1)


class FixedStepper:
    """A fixed-step Runge–Kutta method (``euler``, ``rk4``, ...) of torchdiffeq, a step at a time."""

    def __init__(self, method: str, field: VectorField, y0: torch.Tensor, step_size: float):
        self._field = field
        self._ode = FIXED[method](func=field, y0=y0, step_size=step_size, atol=0.0)
        self.dt = torch.tensor(step_size, dtype=torch.float64, device=y0.device)
        self.cost = _count_evaluations(self._ode, self.dt)  # evaluations of field per step

    def step(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(dy, f0)``: the increment over one step from ``(t, y)`` and the derivative at ``y``."""
        return self._ode._step_func(self._field, t, self.dt, t + self.dt, y)


def _count_evaluations(ode: FixedGridODESolver, dt: torch.Tensor) -> int:
    """How many times one step of ``ode`` evaluates its field (counted on a scalar problem)."""
    calls = []

    def probe(t: torch.Tensor, y: torch.Tensor, perturb: object = None) -> torch.Tensor:
        calls.append(1)
        return -y

    t = torch.zeros((), dtype=dt.dtype)
    ode._step_func(probe, t, dt.cpu(), t + dt.cpu(), torch.ones(1, dtype=dt.dtype))
    return len(calls)
