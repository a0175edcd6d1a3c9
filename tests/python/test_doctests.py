"""The examples in the package's docstrings run as doctests (the installed package)."""

import doctest

import numpy as np

import sdpa


def test_docstring_examples():
    printoptions = np.get_printoptions()
    try:
        result = doctest.testmod(sdpa, optionflags=doctest.NORMALIZE_WHITESPACE)
    finally:
        np.set_printoptions(**printoptions)
        sdpa.set_num_threads(0)
    assert result.attempted >= 30, result  # every public function has examples
    assert result.failed == 0, result


def test_public_api():
    assert sdpa.__version__.count(".") == 2
    for name in sdpa.__all__:
        function = getattr(sdpa, name)
        if callable(function):
            assert function.__module__ == "sdpa", name
            assert ">>> " in function.__doc__, f"{name} has no example"
