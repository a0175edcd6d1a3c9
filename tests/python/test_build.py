"""Building without Highway (issue 19 item 9): `pip install .` on a machine without libhwy-dev
(Highway is not on PyPI) must stop at CMake's configure step with one line that says what to
install, not deep inside the build. This runs that configure step on the source tree with
Highway hidden (CMAKE_DISABLE_FIND_PACKAGE_hwy) and checks the message."""

import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MESSAGE = ("sdpa needs Highway (Debian/Ubuntu: apt-get install libhwy-dev, or run bash "
           "scripts/setup.sh first)")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.skipif(not (REPO / "src" / "CMakeLists.txt").exists(),
                    reason="the source tree is not next to the tests")
def test_configure_without_highway_says_what_to_install(tmp_path):
    command = ["cmake", "-S", str(REPO), "-B", str(tmp_path / "build"),
               "-DCMAKE_DISABLE_FIND_PACKAGE_hwy=ON", "-DSDPA_BUILD_TESTS=OFF",
               "-DSDPA_BUILD_BENCH=OFF", "-DSDPA_BUILD_TOOLS=OFF"]
    if shutil.which("ninja"):
        command += ["-G", "Ninja"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # CMake wraps long messages; compare with the whitespace collapsed.
    assert MESSAGE in " ".join(output.split()), output
