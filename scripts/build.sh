#!/usr/bin/env bash
# Configures and builds Tiller into build/ (Release).
#   build.sh [--target T] [--tests] [cmake configure arguments...]
# --target builds one target (the quickstart builds only `tiller`); --tests also installs the
# packages only the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=()
SETUP=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET=(--target "$2"); shift 2 ;;
    --tests) SETUP=(--tests); shift ;;
    *) break ;;
  esac
done
bash scripts/setup.sh "${SETUP[@]}"
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build build --parallel "$(nproc)" "${TARGET[@]}"
