#!/usr/bin/env bash
# The one script a GPU machine runs (docs/gpu.md): from the repository root, within ~8 minutes,
# everything under $OUT (default ./out-device):
#   1. unpacks the Debian packages of tests/device/prepare.sh (.device-deps/) into a sysroot
#   2. configures and builds `tiller` and `tiller_device_tests` against the machine's Python torch
#      (torch.utils.cmake_prefix_path), with ninja on every core
#   3. the device tests: one SFT, reward-model and PPO step on the CPU and on the GPU agree within
#      fp32 tolerance, bf16 autocast close to fp32 (device_tests.json)
#   4. tiller bench gemm / train (bf16 MFU at llama-1b) / decode (batch 1 and 64) / ppo (the
#      quickstart's shapes, then llama-500m), each into $OUT/bench_*.json
#   5. the quickstart chain (pretrain, SFT, reward, PPO) with run.device=cuda, its summaries and
#      metrics copied to $OUT/quickstart/
# Every step is time-boxed (timeout) within an overall budget, logged to $OUT/logs/, and recorded
# in $OUT/steps.jsonl; a failed step is recorded and the next one runs. $OUT/summary.json and the
# last lines printed gather the figures.
#
#   tests/device/run.sh                  # on the GPU machine
#   tests/device/run.sh --dry-run        # here: everything short of CUDA, on the CPU, tiny sizes,
#                                        # against .venv-cuda's torch when present
#   tests/device/run.sh --dry-run --cpu-build   # the same against Debian's LibTorch 1.13
#   ... --system-deps                    # the machine's own libraries, not .device-deps/'s
# Environment: OUT; TILLER_DEVICE_BUDGET_S (seconds for everything, default 470);
# TILLER_TORCH_CMAKE_PREFIX (torch's CMake prefix, instead of asking python3); JOBS (build jobs,
# default every core); TILLER_DEVICE (default cuda; cpu in a dry run).
# shellcheck disable=SC2054,SC2317  # --batch 1,64 is one argument; step runs the functions
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

# Everything in one function, read whole before it runs: an edit of this file during a run (the
# dry run takes an hour) cannot change what the run does next. (Its body is not indented: the
# Python of its here-documents must start in column one.)
main() {
REPO=$PWD
START=$(date +%s)

DRY_RUN=0
CPU_BUILD=0
SYSTEM_DEPS=0
for option in "$@"; do
  case "$option" in
    --dry-run) DRY_RUN=1 ;;
    --cpu-build) CPU_BUILD=1 ;;
    --system-deps) SYSTEM_DEPS=1 ;;
    *) echo "run.sh: unknown option '$option' (expected --dry-run, --cpu-build," \
         "--system-deps)" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-$REPO/out-device}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/steps.jsonl"
BUDGET=${TILLER_DEVICE_BUDGET_S:-470}
JOBS=${JOBS:-$(nproc)}
if [ "$DRY_RUN" = 1 ]; then
  DEVICE=${TILLER_DEVICE:-cpu}
  BUILD=$REPO/build-device-dry$([ "$CPU_BUILD" = 1 ] && echo -cpu)
  BUDGET=${TILLER_DEVICE_BUDGET_S:-7200}  # 2 cores: the build alone takes most of an hour cold
else
  DEVICE=${TILLER_DEVICE:-cuda}
  BUILD=$REPO/build-device
fi
SYSROOT=$BUILD/sysroot
TILLER=$BUILD/tiller
export OMP_WAIT_POLICY=passive

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "[run.sh $(printf '%4d' "$(elapsed)")s] $*"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in logs/NAME.log, killed after
# LIMIT_S or when the budget runs out (whichever first); skipped when under 20 s of the budget is
# left. Records {"step","status","rc","seconds","limit_s"} in steps.jsonl; returns COMMAND's status.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - $(elapsed)))
  if [ "$left" -lt 20 ]; then
    say "$name: skipped, ${left}s of the budget left"
    printf '{"step": "%s", "status": "skipped (budget)", "rc": null, "seconds": 0, "limit_s": 0}\n' \
      "$name" >>"$OUT/steps.jsonl"
    return 125
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name: started (limit ${limit}s)"
  local began
  began=$(date +%s)
  if declare -F "$1" >/dev/null; then
    # A function of this script: timeout runs programs, so a bash that has the functions and
    # the variables they read runs it.
    timeout --kill-after=10 "$limit" bash -c "$(declare -p REPO OUT BUILD SYSROOT TILLER DEVICE \
      JOBS CONFIGURE QUICKSTART 2>/dev/null); $(declare -f); \"\$@\"" step "$@" \
      >"$OUT/logs/$name.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  fi
  local rc=$?
  local took=$(($(date +%s) - began))
  local status=passed
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out"; elif [ "$rc" != 0 ]; then status=failed; fi
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' \
    "$name" "$status" "$rc" "$took" "$limit" >>"$OUT/steps.jsonl"
  say "$name: $status (rc $rc, ${took}s)"
  if [ "$status" != passed ]; then tail -n 15 "$OUT/logs/$name.log" | sed 's/^/    /'; fi
  return $rc
}

# bench_step NAME LIMIT_S ARGS...: `tiller bench ARGS --json` with stdout into bench_NAME.json.
bench_step() {
  local name=$1 limit=$2
  shift 2
  # shellcheck disable=SC2016  # $0 and $@ are the inner bash's
  step "bench_$name" "$limit" bash -c '"$0" bench "$@" --json >"'"$OUT/bench_$name.json"'"' \
    "$TILLER" "$@"
}

# ---------------------------------------------------------------------------------------------
# The machine

{
  echo "date: $(date -u +%FT%TZ)"
  echo "mode: $([ "$DRY_RUN" = 1 ] && echo dry-run || echo device), device $DEVICE"
  echo "uname: $(uname -a)"
  [ -r /etc/os-release ] && grep -E '^(PRETTY_NAME)=' /etc/os-release
  echo "cores: $(nproc)"
  echo "memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  echo "cmake: $(cmake --version 2>/dev/null | head -1)"
  echo "ninja: $(ninja --version 2>/dev/null)"
  echo "c++: $(c++ --version 2>/dev/null | head -1)"
  # The carried Debian 12 libraries need glibc 2.34 or later (2.36 built them).
  echo "glibc: $(ldd --version 2>/dev/null | head -1)"
  echo "nvcc: $({ nvcc --version || /usr/local/cuda/bin/nvcc --version; } 2>/dev/null | tail -2 | head -1)"
  echo "git: $(git log -1 --format='%h %s' 2>/dev/null)"
  command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# ---------------------------------------------------------------------------------------------
# 1. The sysroot of carried Debian packages

# Unpacks one .deb into $SYSROOT: dpkg-deb where there is one, else ar and tar, else Python.
unpack_deb() {
  local deb=$1
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$SYSROOT"
  elif command -v ar >/dev/null; then
    local scratch
    scratch=$(mktemp -d)
    (cd "$scratch" && ar x "$REPO/$deb" && tar -xf data.tar.* -C "$SYSROOT")
    rm -rf "$scratch"
  else
    python3 - "$deb" "$SYSROOT" <<'EOF'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not an ar archive"
at = 8
while at < len(data):
    name = data[at:at + 16].decode().strip().rstrip("/")
    size = int(data[at + 48:at + 58].decode().strip())
    body = data[at + 60:at + 60 + size]
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2])
    at += 60 + size + (size % 2)
EOF
  fi
}

make_sysroot() {
  # Kept when made from the same packages (a second call, continuing a build the budget cut
  # short, saves the unpacking; the packages' files keep their dates either way, so ninja
  # rebuilds nothing for them).
  if cmp -s .device-deps/manifest.txt "$SYSROOT/.made-from" 2>/dev/null; then
    echo "sysroot: kept ($SYSROOT, made from the same packages)"
    return 0
  fi
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT"
  local deb
  for deb in .device-deps/*.deb; do unpack_deb "$deb" || return 1; done
  local lib=$SYSROOT/usr/lib/x86_64-linux-gnu
  mkdir -p "$lib"
  # Packages that still install into /lib (zlib1g): beside the rest.
  if [ -d "$SYSROOT/lib/x86_64-linux-gnu" ]; then
    cp -a "$SYSROOT/lib/x86_64-linux-gnu/." "$lib/"
  fi
  # Absolute links (to /lib/... or /usr/...) point into the sysroot instead.
  local link target
  while IFS= read -r link; do
    target=$(readlink "$link")
    case "$target" in
      /*) ln -sfn "$SYSROOT/usr${target#/usr}" "$link" ;;
    esac
  done < <(find "$SYSROOT" -type l)
  # What Debian's alternatives would have made: cblas.h and libblas.so for the build. At run
  # time libblas.so.3 is the machine's where it has one (LibTorch may load it too: two BLAS
  # libraries in one process hung here, an OpenMP OpenBLAS and a pthreads one); the reference
  # BLAS's otherwise (blas-fallback/, below), which only the CPU's fast decode step calls.
  ln -sfn cblas-netlib.h "$SYSROOT/usr/include/x86_64-linux-gnu/cblas.h"
  ln -sfn blas/libblas.so "$lib/libblas.so"
  rm -f "$lib/libblas.so.3"
  mkdir -p "$SYSROOT/blas-fallback"
  ln -sfn "$lib/blas/libblas.so.3" "$SYSROOT/blas-fallback/libblas.so.3"
  cp .device-deps/manifest.txt "$SYSROOT/.made-from" 2>/dev/null
  return 0
}

if [ "$SYSTEM_DEPS" = 0 ] && compgen -G ".device-deps/*.deb" >/dev/null; then
  step sysroot 60 make_sysroot
  [ -r .device-deps/manifest.txt ] && cp .device-deps/manifest.txt "$OUT/device-deps.txt"
else
  say "sysroot: none ($([ "$SYSTEM_DEPS" = 1 ] && echo --system-deps ||
    echo 'no .device-deps/: tests/device/prepare.sh makes it')): the machine's own libraries"
  SYSROOT=""
fi

# ---------------------------------------------------------------------------------------------
# 2. Configure and build

# Torch's CMake prefix: given, .venv-cuda's in a dry run where there is one, else the Python
# torch of this machine; none with --cpu-build (Debian's LibTorch, which CMake finds itself).
TORCH_PREFIX=${TILLER_TORCH_CMAKE_PREFIX:-}
PYTHON=python3
if [ -z "$TORCH_PREFIX" ] && [ "$CPU_BUILD" = 0 ]; then
  # The first Python that imports torch.
  for candidate in python3 python; do
    if "$candidate" -c 'import torch' 2>/dev/null; then PYTHON=$candidate; break; fi
  done
  # .venv-cuda's torch is installed without its Python dependencies (scripts/setup.sh --cuda), so
  # it cannot be imported: its CMake prefix is taken by path, as scripts/build.sh --cuda does.
  VENV_TORCH=$(echo .venv-cuda/lib/python3*/site-packages/torch)
  if [ "$DRY_RUN" = 1 ] && [ -d "$VENV_TORCH/share/cmake/Torch" ]; then
    TORCH_PREFIX=$REPO/$VENV_TORCH/share/cmake
    echo "torch: $VENV_TORCH, $(grep -m1 "^__version__" "$VENV_TORCH/version.py")" >>"$OUT/machine.txt"
  else
    TORCH_PREFIX=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
  fi
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI, "gpus", torch.cuda.device_count())' \
    >>"$OUT/machine.txt" 2>/dev/null
  [ -z "$TORCH_PREFIX" ] && say "torch: $PYTHON cannot import torch; CMake looks for LibTorch itself"
  if [ "$("$PYTHON" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null)" = 0 ]
  then
    say "WARNING: this torch is built with the old C++ ABI (_GLIBCXX_USE_CXX11_ABI=0); the" \
      "carried Debian libraries use the new one, so linking against them will fail"
  fi
fi
say "torch CMake prefix: ${TORCH_PREFIX:-none given, CMake searches}"

CONFIGURE=(-DCMAKE_BUILD_TYPE=Release -DTILLER_BUILD_TESTS=OFF -DTILLER_DEVICE_TESTS=ON)
command -v ninja >/dev/null && CONFIGURE+=(-G Ninja)
PREFIXES=$TORCH_PREFIX
if [ -n "$SYSROOT" ]; then
  lib=$SYSROOT/usr/lib/x86_64-linux-gnu
  PREFIXES="$PREFIXES;$SYSROOT/usr"
  # Each package's CMake config by path, and its libraries and headers searched first: the
  # machine may be no Debian (no lib/x86_64-linux-gnu in CMake's own search).
  CONFIGURE+=(-Dnlohmann_json_DIR="$SYSROOT/usr/share/cmake/nlohmann_json"
              -DCLI11_DIR="$(dirname "$(find "$SYSROOT" -name CLI11Config.cmake | head -1)")"
              -Dyaml-cpp_DIR="$lib/cmake/yaml-cpp" -DGTest_DIR="$lib/cmake/GTest"
              -DCMAKE_LIBRARY_PATH="$lib" -DICU_ROOT="$SYSROOT/usr" -DZLIB_ROOT="$SYSROOT/usr"
              -DCMAKE_INCLUDE_PATH="$SYSROOT/usr/include;$SYSROOT/usr/include/x86_64-linux-gnu"
              -DCMAKE_CXX_FLAGS="-isystem $SYSROOT/usr/include/x86_64-linux-gnu")
  export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$SYSROOT/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$SYSROOT"
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # (The listing is read whole: under pipefail, grep -q's early exit failed ldconfig.)
  if ! grep -q 'libblas\.so\.3 ' <<<"$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null)"; then
    say "libblas.so.3: none on this machine; the reference BLAS of the sysroot"
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$SYSROOT/blas-fallback"
  fi
  # The machine's pkg-config where it has one (the sysroot's needs glibc 2.34), reading the
  # sysroot's .pc files all the same.
  if command -v pkg-config >/dev/null; then
    CONFIGURE+=(-DPKG_CONFIG_EXECUTABLE="$(command -v pkg-config)")
  else
    CONFIGURE+=(-DPKG_CONFIG_EXECUTABLE="$SYSROOT/usr/bin/pkgconf")
  fi
fi
[ -n "$PREFIXES" ] && CONFIGURE+=(-DCMAKE_PREFIX_PATH="${PREFIXES#;}")
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ "$CPU_BUILD" = 0 ] && [ -x "$NVCC" ]; then
  CONFIGURE+=(-DCMAKE_CUDA_COMPILER="$NVCC")
fi

configure() {
  rm -f "$BUILD/CMakeCache.txt"
  cmake -S . -B "$BUILD" "${CONFIGURE[@]}" || return 1
  # Which copy of each library the build took: the sysroot's, or the machine's.
  grep -E '^(TILLER_BLAS_LIB|SENTENCEPIECE_TRAIN_LIB|ICU_INCLUDE_DIR|ZLIB_LIBRARY_RELEASE|yaml-cpp_DIR|GTest_DIR|Torch_DIR|TILLER_TORCH_LIBGOMP)' \
    "$BUILD/CMakeCache.txt"
}
build() {
  cmake --build "$BUILD" --parallel "$JOBS" --target tiller tiller_device_tests
}
BUILT=0
if step configure 120 configure; then
  grep -E "Tiller: LibTorch" "$OUT/logs/configure.log" | head -1
  # On the GPU machine the build gets what the budget leaves after 150 s of runs.
  BUILD_LIMIT=$((BUDGET - $(elapsed) - 150))
  [ "$DRY_RUN" = 1 ] && BUILD_LIMIT=$((BUDGET - $(elapsed)))
  step build "$BUILD_LIMIT" build && BUILT=1
fi

# ---------------------------------------------------------------------------------------------
# 3-5. Tests, benchmarks, quickstart

if [ "$BUILT" = 1 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    # The sizes that exercise every path in seconds on two CPU cores.
    TRAIN=(--shape stories260k --dtype fp32 --batch 2 --seq 32 --steps 1)
    DECODE=(--shape stories260k --batch 1,4 --new-tokens 32 --repeats 2)
    GEMM=(--size 256 --repeats 1)
    PPO=(--iterations 1 --warmup 0)
    PPO_LARGE=(--shape stories260k --iterations 1 --warmup 0)
    QUICKSTART=(synthetic_data.corpus_stories=300 synthetic_data.sft_examples=64
                synthetic_data.preference_pairs=64 synthetic_data.prompts=32
                pretrain.train.steps=4 pretrain.train.eval_every=2 pretrain.train.checkpoint_every=2
                sft.train.steps=2 sft.train.eval_every=2 sft.train.checkpoint_every=2
                reward.train.steps=2 reward.train.eval_every=2 reward.train.checkpoint_every=2
                ppo.train.iterations=1 ppo.train.checkpoint_every=1 ppo.eval.prompts=8
                ppo.eval.every=1 ppo.rollout.batch_size=8)
  else
    TRAIN=(--shape llama-1b --dtype bf16 --batch 8 --seq 1024 --steps 3)
    DECODE=(--shape llama-1b --dtype bf16 --batch 1,64 --prompt-tokens 16 --new-tokens 64
            --repeats 2)
    GEMM=(--size 8192 --repeats 3)
    PPO=(--iterations 2 --warmup 1)
    PPO_LARGE=(--shape llama-500m --iterations 1 --warmup 1)
    QUICKSTART=()
  fi

  step device_tests 150 env TILLER_TEST_DEVICE="$DEVICE" \
    TILLER_TEST_DEVICE_REQUIRED="$([ "$DRY_RUN" = 1 ] && echo 0 || echo 1)" \
    "$BUILD/tiller_device_tests" --gtest_output="json:$OUT/device_tests.json"
  bench_step gemm 40 gemm --device "$DEVICE" "${GEMM[@]}"
  bench_step train 90 train --device "$DEVICE" "${TRAIN[@]}"
  bench_step decode 60 decode --device "$DEVICE" "${DECODE[@]}"
  bench_step ppo_quickstart 60 ppo --device "$DEVICE" --recipe recipes/quickstart.json "${PPO[@]}"

  # The quickstart in a folder of its own (its recipe names paths relative to where it runs).
  quickstart() {
    local work=$BUILD/quickstart
    rm -rf "$work"
    mkdir -p "$work"
    (cd "$work" && "$TILLER" run "$REPO/recipes/quickstart.json" "run.device=$DEVICE" \
      "${QUICKSTART[@]}" --until ppo)
    local rc=$?
    # The summaries, metrics and resolved recipe (no checkpoints or models).
    mkdir -p "$OUT/quickstart"
    (cd "$work/runs/quickstart" 2>/dev/null &&
      find . \( -name 'summary.json' -o -name 'metrics.jsonl' -o -name 'recipe.json' \
        -o -name 'complete.json' \) -not -path '*/checkpoints/*' -not -path '*/step-*' |
      while read -r f; do mkdir -p "$OUT/quickstart/$(dirname "$f")" && cp "$f" "$OUT/quickstart/$f"; done)
    return "$rc"
  }
  step quickstart 150 quickstart
  bench_step ppo_large 90 ppo --device "$DEVICE" --recipe recipes/quickstart.json "${PPO_LARGE[@]}"
fi

# ---------------------------------------------------------------------------------------------
# The figures

python3 - "$OUT" "$DEVICE" "$(elapsed)" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
out, device, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except Exception:
        return None
steps = [json.loads(l) for l in open(os.path.join(out, "steps.jsonl")) if l.strip()]
summary = {"device": device, "seconds": seconds, "steps": {s["step"]: s["status"] for s in steps}}
tests = load("device_tests.json")
if tests:
    cases = [c for suite in tests.get("testsuites", []) for c in suite.get("testsuite", [])]
    summary["device_tests"] = {
        c["name"]: {"result": "failed" if c.get("failures") else
                              "skipped" if c.get("result") == "SKIPPED" else "passed",
                    "worst_relative_difference": c.get("worst_relative_difference")}
        for c in cases}
train = load("bench_train.json")
if train:
    summary["train"] = {k: train.get(k) for k in (
        "shape", "parameters", "dtype", "device_name", "batch", "seq", "tokens_per_s",
        "gflops", "peak_gflops", "peak_source", "measured_matmul_gflops", "fraction_of_peak")}
gemm = load("bench_gemm.json")
if gemm:
    summary["gemm"] = {k: gemm.get(k) for k in ("device_name", "size", "fp32_gflops",
                                                 "bf16_gflops", "copy_gbps")}
decode = load("bench_decode.json")
if decode:
    summary["decode"] = [{k: row.get(k) for k in ("shape", "dtype", "batch", "tokens_per_s",
                          "prefill_tokens_per_s", "fraction_of_bandwidth_bound", "decode_path")}
                         for row in decode]
for name in ("ppo_quickstart", "ppo_large"):
    ppo = load(f"bench_{name}.json")
    if ppo:
        summary[name] = {k: ppo.get(k) for k in ("shape", "parameters", "dtype", "batch_size",
                         "generate_s", "score_s", "train_s", "iteration_s", "episodes_per_s")}
quickstart = load("quickstart/summary.json")
if quickstart is not None:
    summary["quickstart_summary"] = quickstart
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "quickstart_summary"}, indent=1))
EOF
FAILED=$(grep -cv '"status": "passed"' "$OUT/steps.jsonl")
say "done: $FAILED step(s) not passed; everything is under $OUT"
[ "$FAILED" = 0 ]
}

main "$@"; exit  # on one line: nothing after it is read, however the file changes
