"""Data sets for deqkit's examples and notebooks: MNIST, read by deqkit's own IDX reader."""

from .mnist import MNIST_MEAN, MNIST_STD, MNISTError, load_mnist, mnist_datasets, mnist_dir, mnist_unavailable, read_idx

__all__ = [
    "MNISTError",
    "MNIST_MEAN",
    "MNIST_STD",
    "load_mnist",
    "mnist_datasets",
    "mnist_dir",
    "mnist_unavailable",
    "read_idx",
]
