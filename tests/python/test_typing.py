"""Typing (issue 19 item 10): the installed package ships py.typed, the extension's stubs
(_sdpa.pyi) and annotated public functions, so `mypy --strict` checks code that uses sdpa:
typed_example.py passes, and calls that would fail at run time (a causal mode misspelled,
is_causal="False", a str scale, a missing return_lse unpacking) are type errors.

mypy is in the `test` extra (pip install .[test]); without it the mypy checks skip and say so."""

import ast
import importlib.util
import pathlib
import re
import runpy
import subprocess
import sys

import pytest

import sdpa
from sdpa import _sdpa

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = pathlib.Path(sdpa.__file__).resolve().parent
HAS_MYPY = importlib.util.find_spec("mypy") is not None
needs_mypy = pytest.mark.skipif(
    not HAS_MYPY, reason="mypy is not installed (pip install mypy, or pip install .[test])")


def test_installed_package_ships_the_typing_files():
    for name in ("py.typed", "_sdpa.pyi"):
        assert (PACKAGE / name).is_file(), f"{name} is not installed next to {sdpa.__file__}"


def _stub_names(tree):
    """Top-level names of a stub and, for each class, its attribute and method names."""
    names, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        if isinstance(node, ast.ClassDef):
            found = set()
            for n in node.body:
                if isinstance(n, ast.FunctionDef):
                    found.add(n.name)
                elif isinstance(n, ast.AnnAssign):
                    found.add(n.target.id)
                elif isinstance(n, ast.Assign):
                    found.update(t.id for t in n.targets)
            members[node.name] = found
    return names, members


def test_extension_stub_matches_the_extension():
    """Every public name of sdpa._sdpa is in _sdpa.pyi and the other way round; the classes'
    attributes and the functions' parameter names agree."""
    tree = ast.parse((PACKAGE / "_sdpa.pyi").read_text())
    names, members = _stub_names(tree)
    public = {n for n in dir(_sdpa) if not n.startswith("_")} | {"__version__"}
    assert names == public
    for cls, stub_members in members.items():
        runtime = {n for n in dir(getattr(_sdpa, cls)) if not n.startswith("_")}
        runtime -= {"name", "value"}  # enum.Enum's own
        assert stub_members - {"__init__"} == runtime, cls
    stub_params = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            stub_params.setdefault(node.name, set()).add(
                tuple(a.arg for a in node.args.args + node.args.kwonlyargs))
    for name, params in stub_params.items():
        for signature, *_ in getattr(_sdpa, name).__nb_signature__:
            runtime = tuple(re.findall(r"[(,] ?(\w+):", signature.split(" -> ")[0]))
            assert params == {runtime}, name


def mypy(*args):
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental",
                             "--cache-dir", "/dev/null", *args],
                            capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


@needs_mypy
def test_typed_example_passes_mypy_strict():
    code, output = mypy("--strict", str(HERE / "typed_example.py"))
    assert code == 0, output


@needs_mypy
def test_package_annotations_agree_with_the_stubs():
    """mypy on the installed package itself: its annotations agree with _sdpa.pyi and with each
    other (the internals are not annotated, so not --strict)."""
    code, output = mypy("-p", "sdpa")
    assert code == 0, output


def test_typed_example_runs():
    runpy.run_path(str(HERE / "typed_example.py"), run_name="__main__")


BAD_CALLS = {
    "causal": 'sdpa.attention(x, x, x, causal="diagonal")',
    "is_causal": 'sdpa.scaled_dot_product_attention(x, x, x, is_causal="False")',
    "scale": 'sdpa.attention(x, x, x, scale="0.5")',
    "backend": 'sdpa.explain(x, x, x, backend="gpu")',
    "unknown keyword": "sdpa.attention(x, x, x, windw=(1, 0))",
    "cu_seqlens in sdpa": "sdpa.scaled_dot_product_attention(x, x, x, cu_seqlens_q=[0, 2])",
    "window": 'sdpa.attention(x, x, x, window="left")',
    "threads": 'sdpa.set_num_threads("4")',
    "lse not unpacked": "y: Array = sdpa.attention(x, x, x, return_lse=True)",
    "mask keyword of sdpa": "sdpa.scaled_dot_product_attention(x, x, x, mask=x)",
    "kv cache without lengths": "sdpa.attention_with_kvcache(x, x, x)",
    "kv cache lse not unpacked": ("y: Array = sdpa.attention_with_kvcache(x, x, x, "
                                  "cache_seqlens=[0], return_lse=True)"),
}


@needs_mypy
def test_mypy_rejects_wrong_calls(tmp_path):
    """Each line is an error mypy reports on its own line."""
    lines = ["from typing import Any", "import numpy as np", "import numpy.typing as npt",
             "import sdpa", "", "Array = npt.NDArray[np.floating[Any]]", "x = np.zeros((4, 8))"]
    first = len(lines) + 1
    lines += BAD_CALLS.values()
    path = tmp_path / "bad.py"
    path.write_text("\n".join(lines) + "\n")
    code, output = mypy("--strict", str(path))
    assert code != 0
    reported = {int(n) for n in re.findall(r"bad\.py:(\d+): error", output)}
    missing = [what for line, what in enumerate(BAD_CALLS, start=first) if line not in reported]
    assert not missing, f"mypy accepted {missing}:\n{output}"
