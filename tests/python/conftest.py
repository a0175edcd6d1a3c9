"""Fixtures for the Python package tests; helpers are in sdpa_reference.py."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
