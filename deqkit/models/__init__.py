"""Models built on the DEQ layer."""

from .mnist import (
    MNIST_MODELS,
    MNISTDEQ,
    ConvBlock,
    SeedMNISTBlock,
    WideBlock,
    conv_deq,
    mnist_model,
    seed_mnist_model,
    wide_mlp_deq,
)
from .regression import SeedBlock, fit_regression, seed_regression_model

__all__ = [
    "MNIST_MODELS",
    "ConvBlock",
    "MNISTDEQ",
    "SeedBlock",
    "SeedMNISTBlock",
    "WideBlock",
    "conv_deq",
    "fit_regression",
    "mnist_model",
    "seed_mnist_model",
    "seed_regression_model",
    "wide_mlp_deq",
]
