"""deqkit: Deep Equilibrium Models as Neural ODEs run to steady state.

``solve`` finds fixed points ``z = f(z)`` (Picard, Anderson, Broyden, or the ODE ``dz/dt = f(z) − z`` run to
steady state with Tsit5); ``DEQ`` is the layer ``z* = f(z*, x)`` with implicit, unrolled or one-step
gradients; ``spectral_radius`` and ``compare_gradients`` diagnose them.
"""

from .diagnostics import GradientReport, compare_gradients, spectral_radius
from .errors import ConvergenceError, ConvergenceWarning, DivergenceError
from .layer import DEQ, DEQStats
from .solvers import METHODS, solve
from .stats import SolverStats

__all__ = [
    "DEQ",
    "DEQStats",
    "METHODS",
    "ConvergenceError",
    "ConvergenceWarning",
    "DivergenceError",
    "GradientReport",
    "SolverStats",
    "compare_gradients",
    "solve",
    "spectral_radius",
]
__version__ = "0.1.0"
