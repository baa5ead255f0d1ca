"""Tsitouras 5(4): the Tsit5 coefficients (the tableau, its error weights and its dense output).

Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying assumption",
Computers & Mathematics with Applications 62 (2011) 770–775; coefficients as in OrdinaryDiffEq.jl.
Seven stages, first-same-as-last (FSAL): six new evaluations per accepted step. The step advances with
the 5th-order weights (``c_sol``); the embedded 4th-order solution only estimates the error.

Plain data: :mod:`deqkit.solvers.torchdiffeq_adapter` turns it into a solver of torchdiffeq's Runge–Kutta core.
"""

from __future__ import annotations

import torch


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# 5th-order weights; the last stage is evaluated at the new state, so they double as the last row of A.
_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774)

ALPHA = _t(0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
BETA = [
    _t(0.161),
    _t(-0.008480655492356989, 0.335480655492357),
    _t(2.897153057105493, -6.359448489975075, 4.3622954328695815),
    _t(5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    _t(5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
    _t(*_B),
]
C_SOL = _t(*_B, 0.0)
# 5th-order minus embedded 4th-order weights (OrdinaryDiffEq's btilde): the local error estimate.
C_ERROR = _t(
    -0.00178001105222577714,
    -0.0008164344596567469,
    0.007880878010261995,
    -0.1447110071732629,
    0.5823571654525552,
    -0.45808210592918697,
    1 / 66,
)


def dense_weights(theta: float) -> torch.Tensor:
    """Tsitouras' continuous extension: y(t0 + θh) = y0 + h Σ bᵢ(θ) kᵢ; bᵢ(1) are the 5th-order weights."""
    t = theta
    return _t(
        -1.0530884977290216 * t * (t - 1.3299890189751412) * (t * t - 1.4364028541716351 * t + 0.7139816917074209),
        0.1017 * t * t * (t * t - 2.1966568338249754 * t + 1.2949852507374631),
        2.490627285651252793 * t * t * (t * t - 2.38535645472061657 * t + 1.57803468208092486),
        -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t * t,
        47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t * t,
        -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t * t,
        2.5 * (t - 1) * (t - 0.6) * t * t,
    )
