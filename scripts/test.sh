#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
#   test.sh          Debian's LibTorch 1.13 (CPU) in build/
#   test.sh --cuda   PyPI's LibTorch 2.x with CUDA in build-cuda/ (scripts/setup.sh --cuda); on a
#                    machine without a GPU its tests run on the CPU, as in CI
# Further arguments go to ctest (e.g. -R Ppo).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build
CONFIG=()
if [ "${1:-}" = --cuda ]; then
  BUILD=build-cuda
  CONFIG=(--cuda)
  shift
fi
bash scripts/build.sh --tests "${CONFIG[@]}"
cd "$BUILD"
ctest --output-on-failure --parallel "$(nproc)" --timeout 900 "$@"
