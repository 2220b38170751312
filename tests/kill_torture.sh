#!/usr/bin/env bash
# Kill torture: the SFT, reward and PPO stages of a shrunk quickstart chain, each killed with
# SIGKILL at seeded random moments (every third kill aimed at a checkpoint being written) and
# resumed each time. After every kill every checkpoint must read in full (`tiller checkpoint
# verify`), and the final weights must equal an uninterrupted run's byte for byte.
#
#   tests/kill_torture.sh [--kills-per-stage N] [--seed S] [--tiller PATH] [--keep]
#
# The test command runs the short form (7 kills a stage, 21 in all); by hand, raise
# --kills-per-stage (the stages' budgets grow with it) and vary --seed.
set -euo pipefail
cd "$(dirname "$0")/.."

kills_per_stage=7
seed=1
tiller=build/tiller
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kills-per-stage) kills_per_stage="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --tiller) tiller="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "kill_torture: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -x "$tiller" ] || { echo "kill_torture: no tiller binary at $tiller (build first)" >&2; exit 2; }

work=$(mktemp -d /tmp/tiller-torture.XXXXXX)
cleanup() {
  [ -n "${pid:-}" ] && kill -9 "$pid" 2>/dev/null || true
  if [ "$keep" = 1 ]; then echo "kill_torture: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
run="$work/run"
sed "s#runs/quickstart#$run#g" recipes/quickstart.json >"$work/recipe.json"
export OMP_WAIT_POLICY=passive

# Budgets: enough steps that each stage outlives its kills (a kill keeps at most about one step,
# see below); a checkpoint after every step.
steps=$((4 * kills_per_stage))
small=(
  synthetic_data.corpus_stories=300 synthetic_data.sft_examples=120
  synthetic_data.preference_pairs=120 synthetic_data.prompts=48 run.threads=1
  pretrain.train.steps=10 pretrain.train.eval_every=0
  sft.train.steps=$steps sft.train.checkpoint_every=1 sft.train.keep_checkpoints=3
  sft.train.eval_every=0 sft.train.log_every=1
  reward.train.steps=$steps reward.train.checkpoint_every=1 reward.train.keep_checkpoints=3
  reward.train.eval_every=0 reward.train.log_every=1
  ppo.train.iterations=$((2 * kills_per_stage)) ppo.train.checkpoint_every=1 ppo.train.keep_checkpoints=3
  ppo.rollout.batch_size=16 ppo.rollout.max_new_tokens=24 ppo.ppo.epochs=2
  ppo.eval.prompts=8 ppo.eval.every=0 'ppo.eval.baselines=[]' ppo.samples.every=1
  grpo.train.iterations=2 grpo.eval.prompts=8 grpo.eval.every=0
)
stages=(sft reward ppo)

# 1. The uninterrupted run; its pretrain stage stays for the tortured one.
"$tiller" run "$work/recipe.json" "${small[@]}" >"$work/reference.log" 2>&1 ||
  { tail -20 "$work/reference.log"; echo "kill_torture: the uninterrupted run failed" >&2; exit 1; }
for s in "${stages[@]}"; do
  cp "$run/$s/final/model.safetensors" "$work/reference-$s.safetensors"
  rm -rf "${run:?}/$s"
done

# 2. The tortured run.
RANDOM=$seed
declare -A killed=([sft]=0 [reward]=0 [ppo]=0)
kills=0 write_kills=0 starts=0 verified=0
current_stage() {
  for s in "${stages[@]}"; do
    [ -f "$run/$s/complete.json" ] || { echo "$s"; return; }
  done
  echo done
}
alive() { kill -0 "$pid" 2>/dev/null; }
owes_kills() {
  local s
  s=$(current_stage)
  [ "$s" != done ] && [ "${killed[$s]}" -lt "$kills_per_stage" ]
}
verify_all() {
  local dirs=()
  for s in "${stages[@]}"; do [ -d "$run/$s/checkpoints" ] && dirs+=("$run/$s/checkpoints"); done
  [ ${#dirs[@]} -eq 0 ] && return 0
  "$tiller" checkpoint verify "${dirs[@]}" >>"$work/verify.log" 2>&1 ||
    { tail -5 "$work/verify.log"; echo "kill_torture: a checkpoint failed to load" >&2; exit 1; }
  verified=$((verified + ${#dirs[@]}))
}

# A kill's moment is tied to the stage's progress, not to the clock alone, so a faster build
# cannot outrun the kills: a plain kill comes at a random moment within 2 s but no later than the
# stage's next finished checkpoint (at most one step kept per kill); every third waits for a
# checkpoint this process started writing (a step-N.tmp newer than the start; one left by an
# earlier kill does not count) and keeps no step.
latest_of() { local f="$run/$1/checkpoints/latest"; [ -f "$f" ] && echo "$(<"$f")" || echo none; }
fresh_write() {
  local d
  for d in "$run/$1"/checkpoints/*.tmp; do [[ -d "$d" && "$d" -nt "$started" ]] && return 0; done
  return 1
}
started="$work/started"
while [ "$(current_stage)" != done ]; do
  touch "$started"
  "$tiller" run "$work/recipe.json" "${small[@]}" >>"$work/tortured.log" 2>&1 &
  pid=$!
  starts=$((starts + 1))
  if ! owes_kills; then
    # This stage had its kills: let the process run until a stage that still owes kills starts.
    while alive && ! owes_kills; do sleep 0.02; done
  fi
  stage=$(current_stage)
  if [ "$stage" != done ]; then
    if [ $(((killed[$stage] + 1) % 3)) -eq 0 ]; then
      while alive && [ "$(current_stage)" = "$stage" ] && ! fresh_write "$stage"; do :; done
    else
      was=$(latest_of "$stage")
      deadline=$((RANDOM % 2000))
      for ((ms = 0; ms < deadline; ms += 10)); do
        alive && [ "$(latest_of "$stage")" = "$was" ] || break
        sleep 0.01
      done
    fi
  fi
  kill -9 "$pid" 2>/dev/null || true
  exit_code=0
  wait "$pid" 2>/dev/null || exit_code=$?
  pid=""
  [ "$exit_code" = 0 ] && continue  # it finished (every stage done) before the kill
  if [ "$exit_code" != 137 ]; then
    tail -20 "$work/tortured.log"
    echo "kill_torture: run failed on its own (exit $exit_code)" >&2
    exit 1
  fi
  # Counted against the stage that was running when the kill landed.
  stage=$(current_stage)
  [ "$stage" = done ] && continue
  kills=$((kills + 1))
  killed[$stage]=$((killed[$stage] + 1))
  fresh_write "$stage" && write_kills=$((write_kills + 1))
  verify_all
done

# 3. The verdict.
status=0
bytes=0
for s in "${stages[@]}"; do
  if [ "${killed[$s]}" -lt "$kills_per_stage" ]; then
    echo "kill_torture: stage $s finished after ${killed[$s]} kills (wanted $kills_per_stage)" >&2
    status=1
  fi
  if cmp -s "$work/reference-$s.safetensors" "$run/$s/final/model.safetensors"; then
    bytes=$((bytes + $(stat -c %s "$run/$s/final/model.safetensors")))
  else
    echo "kill_torture: $s/final/model.safetensors differs from the uninterrupted run's" >&2
    status=1
  fi
done
if [ "$write_kills" -lt 1 ]; then
  echo "kill_torture: no kill landed during a checkpoint write" >&2
  status=1
fi
echo "kill torture (seed $seed): $kills kills (sft ${killed[sft]}, reward ${killed[reward]}," \
  "ppo ${killed[ppo]}), $write_kills during a checkpoint write, $starts starts," \
  "$verified checkpoint directories verified after kills, $bytes bytes of final weights" \
  "byte-identical to the uninterrupted run"
exit $status
