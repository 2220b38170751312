#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
#   test.sh          Debian's LibTorch 1.13 (CPU) in build/
#   test.sh --cuda   PyPI's LibTorch 2.x with CUDA in build-cuda/ (scripts/setup.sh --cuda); on a
#                    machine without a GPU its tests run on the CPU, as in CI
#   --subset         only the tests of what depends on the LibTorch version (CMakeLists'
#                    TILLER_VERSION_TESTS), as CI runs against the CUDA configuration
#   --werror         a compiler warning fails the build
# Further arguments go to ctest (e.g. -R Ppo).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=build
CONFIG=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) BUILD=build-cuda; CONFIG+=(--cuda); shift ;;
    --subset | --werror) CONFIG+=("$1"); shift ;;
    *) break ;;
  esac
done
bash scripts/build.sh --tests "${CONFIG[@]}"
cd "$BUILD"
ctest --output-on-failure --parallel "$(nproc)" --timeout 900 "$@"
