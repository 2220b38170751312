#!/usr/bin/env bash
# Configures and builds Tiller into build/ (Release).
#   build.sh [--target T]... [--tests [--subset]] [--cuda] [--werror] [cmake configure arguments...]
# --target builds one target (the quickstart builds only `tiller`); --tests also installs the
# packages only the tests need, and builds every test (--subset: only CMakeLists'
# TILLER_VERSION_TESTS, the tests of what depends on the LibTorch version); --cuda builds against
# the CUDA LibTorch 2.x of .venv-cuda (scripts/setup.sh --cuda) into build-cuda/ instead of
# Debian's LibTorch 1.13 (CPU) into build/; --werror makes a compiler warning an error.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=()
SETUP=()
BUILD=build
CONFIGURE=()
TESTS=
WERROR=OFF
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET+=(--target "$2"); shift 2 ;;
    --tests) SETUP+=(--tests); TESTS=${TESTS:-all}; shift ;;
    --subset) SETUP+=(--tests); TESTS=version; shift ;;
    --werror) WERROR=ON; shift ;;
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
# Which tests, and -Werror: set on every test build, so that a build directory configured for the
# subset (or with -Werror) builds the whole suite (or without it) the next time it is asked to.
if [ -n "$TESTS" ]; then
  cmake -S . -B "$BUILD" -DTILLER_TESTS="$TESTS" -DTILLER_WARNINGS_AS_ERRORS="$WERROR" >/dev/null
elif [ "$WERROR" = ON ]; then
  cmake -S . -B "$BUILD" -DTILLER_WARNINGS_AS_ERRORS=ON >/dev/null
fi
cmake --build "$BUILD" --parallel "$(nproc)" "${TARGET[@]}"
