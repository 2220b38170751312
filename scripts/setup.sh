#!/usr/bin/env bash
# Installs the Debian 12 packages Tiller needs that are missing (as root, or through sudo).
# With --tests, also what only the tests need (the quickstart does without them).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch 1.13.1, CPU, with c10d and Gloo
  libgloo-dev             # the Gloo headers c10d's ProcessGroupGloo.hpp includes
  openmpi-bin             # mpirun, one of the launchers the multi-process tests try
  libopenblas0-openmp     # LibTorch's fp32 matmuls go through libblas.so.3: 30x the reference BLAS
  libblas-dev             # cblas.h and libblas.so, for the fast decode step's direct BLAS calls
  libsentencepiece-dev sentencepiece
  libcli11-dev nlohmann-json3-dev zlib1g-dev
  libyaml-cpp-dev         # YAML recipes
  libicu-dev              # Unicode regexes and NFC for byte-level BPE tokenizers (tokenizer.json)
  libgtest-dev            # CMake configures the test targets (built only by scripts/test.sh)
)
TEST_PACKAGES=(
  clang libclang-rt-14-dev llvm  # the sanitizer build and libFuzzer (scripts/sanitize_and_fuzz.sh)
  python3                 # tests/fuzz/make_corpus.py writes the fuzzers' seeds
  python3-torch           # the independent PPO oracle (tests/oracle/ppo_oracle.py); never Tiller
  chromium                # headless, for the test that renders report.html as a browser does
)
if [ "${1:-}" = "--tests" ]; then
  PACKAGES+=("${TEST_PACKAGES[@]}")
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
