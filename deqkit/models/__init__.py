"""Models built on the DEQ layer."""

from .regression import SeedBlock, fit_regression, seed_regression_model

__all__ = ["SeedBlock", "fit_regression", "seed_regression_model"]
