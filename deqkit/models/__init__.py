"""Models built on the DEQ layer."""

from .mdeq import MDEQHead, MultiscaleBlock, mdeq
from .mnist import (
    MNIST_MODELS,
    MNISTDEQ,
    ConvBlock,
    MLPBlock,
    SeedMNISTBlock,
    WideBlock,
    conv_deq,
    mlp_deq,
    mnist_model,
    seed_mnist_model,
    wide_mlp_deq,
)
from .regression import SeedBlock, fit_regression, seed_regression_model

__all__ = [
    "MNIST_MODELS",
    "ConvBlock",
    "MLPBlock",
    "MDEQHead",
    "MNISTDEQ",
    "MultiscaleBlock",
    "SeedBlock",
    "SeedMNISTBlock",
    "WideBlock",
    "conv_deq",
    "fit_regression",
    "mdeq",
    "mlp_deq",
    "mnist_model",
    "seed_mnist_model",
    "seed_regression_model",
    "wide_mlp_deq",
]
