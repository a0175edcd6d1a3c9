#!/usr/bin/env bash
# Builds the .npy fuzzer with clang (libFuzzer + AddressSanitizer + UndefinedBehaviorSanitizer) in
# its own build directory and runs it for a bounded time.
#
#   tests/fuzz/run.sh [seconds]     default 60; CI calls it as is
#
# The committed seed corpus (tests/fuzz/corpus/npy/, made by make_corpus.py) is read, never
# written: new inputs go to build-fuzz/corpus/. A crash leaves its input in build-fuzz/artifacts/
# and makes this script exit non-zero. Environment: CXX (default clang++-14, else clang++),
# SDPA_FUZZ_BUILD_DIR (default <repo>/build-fuzz), SDPA_FUZZ_JOBS (build jobs, default 2).
set -euo pipefail

seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="${SDPA_FUZZ_BUILD_DIR:-$root/build-fuzz}"
cxx="${CXX:-}"
if [[ -z "$cxx" ]]; then
  cxx="$(command -v clang++-14 || command -v clang++ || true)"
fi
if [[ -z "$cxx" ]]; then
  echo "$0: clang++ not found (libFuzzer needs clang; apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi

mkdir -p "$build"
generator=()
if command -v ninja > /dev/null; then generator=(-G Ninja); fi
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSDPA_BUILD_FUZZERS=ON -DSDPA_BUILD_TOOLS=ON \
  -DSDPA_BUILD_TESTS=OFF -DSDPA_BUILD_BENCH=OFF -DSDPA_BUILD_PYTHON=OFF > "$build/configure.log" \
  || { cat "$build/configure.log" >&2; exit 1; }
cmake --build "$build" --target npy_fuzzer -j "${SDPA_FUZZ_JOBS:-2}"

mkdir -p "$build/corpus" "$build/artifacts"
echo "fuzzing the .npy reader for ${seconds} s" >&2
# -rss_limit_mb: an input that makes the reader allocate far more than its own size shows up as
# a failure. -timeout: no input may take a second (the parser is linear).
"$build/tools/fuzz/npy_fuzzer" "$build/corpus" "$here/corpus/npy" \
  -dict="$here/npy.dict" -max_total_time="$seconds" -max_len=4096 -timeout=1 \
  -rss_limit_mb=1024 -malloc_limit_mb=256 -artifact_prefix="$build/artifacts/" \
  -print_final_stats=1
