import pytest

from .tiny import synthetic


@pytest.fixture(scope="module")
def data():
    """96 training samples (3 steps of 32) and 40 test samples."""
    return synthetic(96, 1), synthetic(40, 2)
