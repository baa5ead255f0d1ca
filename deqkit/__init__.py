"""deqkit: Deep Equilibrium Models as Neural ODEs run to steady state.

``solve`` finds fixed points ``z = f(z)`` with a :class:`Solver` (``Picard``, ``Anderson``, ``Broyden``, or
``DynamicSS``: the ODE ``dz/dt = f(z) − z`` run to steady state with Tsit5); ``DEQ`` is the layer
``z* = f(z*, x)`` with a :class:`Gradient` (``Implicit``, ``Unrolled``, ``OneStep``, ``Phantom``);
``spectral_radius`` and ``compare_gradients`` diagnose them, ``jacobian_penalty`` regularizes them,
``normalize`` applies weight or spectral normalization to a block's layers. Solvers and gradients are objects;
their names are shorthands.
"""

from .adjoint import GRADIENTS, Gradient, Implicit, OneStep, Phantom, Unrolled
from .diagnostics import GradientReport, compare_gradients, spectral_radius
from .errors import ConvergenceError, ConvergenceWarning, DivergenceError
from .layer import DEQ, DEQStats
from .normalization import normalize, remove_normalization
from .regularization import jacobian_penalty
from .solvers import GMRES, SOLVERS, Anderson, Broyden, DynamicSS, Picard, Solver, StepSizeController, solve
from .stats import SolverStats

__all__ = [
    "DEQ",
    "DEQStats",
    "GRADIENTS",
    "SOLVERS",
    "Anderson",
    "Broyden",
    "ConvergenceError",
    "ConvergenceWarning",
    "DivergenceError",
    "DynamicSS",
    "StepSizeController",
    "GMRES",
    "Gradient",
    "GradientReport",
    "Implicit",
    "OneStep",
    "Phantom",
    "Picard",
    "Solver",
    "SolverStats",
    "Unrolled",
    "compare_gradients",
    "jacobian_penalty",
    "normalize",
    "remove_normalization",
    "solve",
    "spectral_radius",
]
__version__ = "0.1.0"
