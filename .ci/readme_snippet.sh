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

# The second ```cpp block (the variants) is a fragment: compile it inside a main() that provides
# query, key, value and heads of a packed batch of 356 rows, and check it computes.
variants=$(awk '/^```cpp$/ {n++; if (n == 2) {inside = 1; next}} /^```$/ && inside {exit} inside {print}' README.md)
[[ -n "$variants" ]] || { echo "README.md has no second \`\`\`cpp block" >&2; exit 1; }
{
  cat <<'CPP'
#include <sdpa/sdpa.h>

#include <cstdio>
#include <vector>

int main() {
  const std::int64_t heads = 8, seq = 356, head_dim = 64;
  std::vector<float> q(heads * seq * head_dim, 0.5f), k(q.size(), 0.25f), v(q.size(), 1.0f);
  const sdpa::TensorView query(q.data(), {1, heads, seq, head_dim});
  const sdpa::TensorView key(k.data(), {1, heads, seq, head_dim});
  const sdpa::TensorView value(v.data(), {1, heads, seq, head_dim});
CPP
  echo "$variants"
  cat <<'CPP'
  std::printf("variants: out[0] = %.3f\n", out.data<float>()[0]);
  return out.size() == heads * seq * head_dim ? 0 : 1;
}
CPP
} > "$dir/main.cc"
cmake --build "$dir/build" > /dev/null
"$dir/build/snippet"
echo "README variants snippet: built and ran"
