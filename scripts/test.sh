#!/usr/bin/env bash
# Every test: install what is missing, build, run the C++ tests (ctest), install the Python
# package with `pip install .` and run the Python and command-line tests (pytest).
# PyTorch comparisons run when torch imports; this script tries `pip install torch==2.13.0` once
# (set SDPA_SKIP_TORCH=1 to skip that); without torch those tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
# torch first: setup.sh installs the transformers test dependencies only next to a torch.
if [[ "${SDPA_SKIP_TORCH:-0}" != 1 ]] && ! "$python" -c "import torch" 2> /dev/null; then
  timeout 600 "$python" -m pip install -q torch==2.13.0 ||
    echo "test: torch==2.13.0 could not be installed; PyTorch comparisons will skip" >&2
fi
scripts/setup.sh

build=${SDPA_BUILD_DIR:-build/test}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${SDPA_CMAKE_ARGS:-} > /dev/null
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" -j"$(nproc)" --output-on-failure

"$python" -m pip install -q --no-build-isolation .
SDPA_CLI="$PWD/$build/tools/sdpa" "$python" -m pytest -q tests/python tests/cli
