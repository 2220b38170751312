#!/usr/bin/env bash
# Builds the sanitizer build (build-sanitize/, see cmake/sanitize_fuzz.cmake), runs the parser and
# data unit tests under ASan + UBSan, then runs every fuzzer for a bounded time on its seed corpus
# (tests/fuzz/make_corpus.py writes it). Fails on any test failure, crash, hang or sanitizer
# report. See docs/reliability.md.
#
#   scripts/sanitize_and_fuzz.sh            # as CI runs it: 25 s per fuzzer
#   FUZZ_SECONDS=600 scripts/sanitize_and_fuzz.sh
#   FUZZ_TARGETS="safetensors recipe" FUZZ_SECONDS=3600 scripts/sanitize_and_fuzz.sh
#   SKIP_SANITIZE_TESTS=1 ...               # fuzzers only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests  # clang and the sanitizer runtime are test packages

BUILD=${SANITIZE_BUILD_DIR:-build-sanitize}
FUZZ_SECONDS=${FUZZ_SECONDS:-25}
# A fixed seed and a cap on executions make CI's inputs a prefix of the same sequence every time:
# a run that passed here passes there (raise FUZZ_RUNS, change FUZZ_SEED to explore further).
FUZZ_SEED=${FUZZ_SEED:-1}
FUZZ_RUNS=${FUZZ_RUNS:-20000}
JOBS=${JOBS:-$(nproc)}
export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1

# LibTorch, SentencePiece and libstdc++ are not instrumented, yet no ASan exception is needed
# today: leak detection, ODR and new/delete mismatch checks all pass (checked with LibTorch 1.13.1).
# If one becomes needed, add it here with the reason, as narrowly as it allows.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

CXX_COMPILER=${SANITIZE_CXX:-clang++}
FUZZ=ON
if ! command -v "$CXX_COMPILER" >/dev/null; then
  # setup.sh installs clang; a run without fuzzers must be asked for, never a quiet green.
  if [ -z "${ALLOW_NO_FUZZ:-}" ]; then
    echo "sanitize: $CXX_COMPILER not found (scripts/setup.sh installs clang); set ALLOW_NO_FUZZ=1" \
      "to build the sanitizer tests with g++ and skip fuzzing" >&2
    exit 1
  fi
  echo "sanitize: $CXX_COMPILER not found; building the sanitizer tests with g++, no fuzzers"
  CXX_COMPILER=g++
  FUZZ=OFF
fi

start=$(date +%s)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  GENERATOR=()
  command -v ninja >/dev/null && GENERATOR=(-G Ninja)
  cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER="$CXX_COMPILER" -DTILLER_SANITIZE=ON -DTILLER_FUZZ="$FUZZ"
fi
cmake --build "$BUILD" --parallel "$JOBS"
echo "sanitize: build took $(($(date +%s) - start)) s"

if [ -z "${SKIP_SANITIZE_TESTS:-}" ]; then
  start=$(date +%s)
  # Not here: tests that run the tiller binary (not built) or train for many steps.
  EXCLUDED="Recipes.ShippedRecipesParseIntoTheirStagesAndValuesAndAMistakeIsNamed:Llama2c.TokenizerOfAnotherVocabularyIsRejected"
  EXCLUDED+=":RewardStage.*:RankingRewardStage.*:ByteLevelBpe.SftStageStartsFromAnHfDirectoryWithTokenizerJson"
  EXCLUDED+=":YamlRecipe.QuickstartYamlPassesTillerRunCheck:Llama2c.ConvertWithTokenizerBinGeneratesTheGoldenText"
  EXCLUDED+=":Shards.PretrainingFromShards*:Shards.AKilledShardsRun*:Shards.RecipeChecks*:Shards.AValSplit*"
  "./$BUILD/tiller_sanitize_tests" --gtest_filter="-$EXCLUDED" --gtest_brief=1
  echo "sanitize: unit tests took $(($(date +%s) - start)) s"
fi

[ "$FUZZ" = ON ] || exit 0

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tiller_fuzz_run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
targets=${FUZZ_TARGETS:-$(cd tests/fuzz && ls -1 *_fuzz.cpp | sed 's/_fuzz\.cpp$//')}
# The seeds are generated (the same bytes every time), not kept in the repository.
python3 tests/fuzz/make_corpus.py --out "$WORK/seeds"
# One fuzzer: its log, and its exit status in $WORK/NAME/rc.
fuzz_one() {
  local name=$1
  # A copy of the seeds: libFuzzer adds what it finds to its first corpus directory.
  mkdir -p "$WORK/$name/corpus" "$WORK/$name/artifacts" "$WORK/$name/cwd"
  cp -r "$WORK/seeds/$name/." "$WORK/$name/corpus/"
  local binary rc=0
  binary=$(pwd)/$BUILD/${name}_fuzz
  # In a scratch directory (relative paths in recipes resolve there), stdin closed.
  (cd "$WORK/$name/cwd" &&
    "$binary" "$WORK/$name/corpus" -max_total_time="$FUZZ_SECONDS" -timeout=20 \
      -seed="$FUZZ_SEED" -runs="$FUZZ_RUNS" \
      -rss_limit_mb=3072 -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$WORK/$name/artifacts/" </dev/null >"$WORK/$name/log" 2>&1) || rc=$?
  echo "$rc" >"$WORK/$name/rc"
}

# JOBS fuzzers at a time (each is one process on one core), reported in the targets' order.
start=$(date +%s)
for name in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "fuzz: $name for ${FUZZ_SECONDS} s or ${FUZZ_RUNS} runs (seed ${FUZZ_SEED})"
  fuzz_one "$name" &
done
wait
failed=()
summary=()
for name in $targets; do
  log=$WORK/$name/log
  rc=$(cat "$WORK/$name/rc" 2>/dev/null || echo "no status")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" 2>/dev/null | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" 2>/dev/null | tail -1 || true)
  summary+=("$(printf '%-16s %10s executions  %s' "$name" "${execs:-?}" "${cov}")")
  if [ "$rc" != 0 ] || grep -q -E "ERROR: (AddressSanitizer|libFuzzer)|runtime error:" "$log" 2>/dev/null; then
    failed+=("$name")
    tail -n 60 "$log" 2>/dev/null || true
    # Keep the crashing inputs where CI keeps the build: the build dir (not the repository).
    mkdir -p "$BUILD/fuzz-findings/$name"
    cp -r "$WORK/$name/artifacts/." "$BUILD/fuzz-findings/$name/" || true
    echo "fuzz: $name FAILED (exit $rc); reproducer(s) in $BUILD/fuzz-findings/$name/"
  fi
done
echo "fuzz: the fuzzers took $(($(date +%s) - start)) s, $JOBS at a time"
echo "fuzz: executions per target (${FUZZ_SECONDS} s each)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: all targets clean"
