#!/usr/bin/env bash
# Configures and builds Tiller into build/ (Release).
#   build.sh [--target T]... [--tests] [--cuda] [cmake configure arguments...]
# --target builds one target (the quickstart builds only `tiller`); --tests also installs the
# packages only the tests need; --cuda builds against the CUDA LibTorch 2.x of .venv-cuda
# (scripts/setup.sh --cuda) into build-cuda/ instead of Debian's LibTorch 1.13 (CPU) into build/.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=()
SETUP=()
BUILD=build
CONFIGURE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET+=(--target "$2"); shift 2 ;;
    --tests) SETUP+=(--tests); shift ;;
    --cuda) SETUP+=(--cuda); BUILD=build-cuda; shift ;;
    *) break ;;
  esac
done
bash scripts/setup.sh "${SETUP[@]}"
if [ "$BUILD" = build-cuda ]; then
  TORCH_DIR=$(echo .venv-cuda/lib/python3*/site-packages/torch)
  CONFIGURE=(-DCMAKE_PREFIX_PATH="$PWD/$TORCH_DIR/share/cmake"
             -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")
fi
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release "${CONFIGURE[@]}" "$@"
fi
cmake --build "$BUILD" --parallel "$(nproc)" "${TARGET[@]}"
