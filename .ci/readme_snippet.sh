#!/usr/bin/env bash
# Builds and runs the first ```cpp block of README.md against an installed sdpa (prefix $1), so
# the README's example cannot rot.
set -euo pipefail
prefix=$1
dir=$(mktemp -d)
awk '/^```cpp$/ {inside = 1; next} /^```$/ && inside {exit} inside {print}' README.md > "$dir/main.cc"
[[ -s "$dir/main.cc" ]] || { echo "README.md has no \`\`\`cpp block" >&2; exit 1; }
cat > "$dir/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(readme_snippet LANGUAGES CXX)
find_package(sdpa REQUIRED)
add_executable(snippet main.cc)
target_link_libraries(snippet PRIVATE sdpa::sdpa)
CMAKE
cmake -S "$dir" -B "$dir/build" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" > /dev/null
cmake --build "$dir/build" > /dev/null
"$dir/build/snippet"
echo "README snippet: built and ran"
