#!/usr/bin/env bash
# The main job: install what is missing, build the library and the `sdpa` tool, run `sdpa demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --minimal
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSDPA_BUILD_TESTS=OFF -DSDPA_BUILD_BENCH=OFF -DSDPA_BUILD_TOOLS=ON > /dev/null
cmake --build build/release --target sdpa_cli -j"$(nproc)"
build/release/tools/sdpa demo
