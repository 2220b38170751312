#!/usr/bin/env bash
# Tiller against TRL's trainers on transformers models (`bash bench/compare.sh --peers`): the same
# model (written by Tiller as an HF directory), the same tokens (bench/peers/make_data.py), batch
# shapes, lengths, optimizer settings, steps and threads on each side; Tiller's stages through
# `tiller run RECIPE` (bench/peers/recipe.py) and TRL's trainers (bench/peers/trl_bench.py), run
# alternately, each side's best round kept. Prints tokens/s or seconds per iteration, peak RSS and
# the ratios. By hand, not CI:
#   bash bench/compare.sh --peers [--threads N] [--rounds N] [--quick] [--keep DIR] [--only LIST]
#                                 [--dtype fp32|bf16] [--grpo-prompt-tokens 32] [--prompt-tokens 64]
# --dtype bf16: both sides train under bf16 autocast with fp32 master weights (Tiller's precision:
# bf16, TRL's bf16=True); fp32 (the default) on both sides otherwise. Neither recomputes
# activations (TRL's default gradient_checkpointing is turned off, as Tiller's side runs).
# --prompt-tokens: words in each SFT, reward and DPO prompt of the 256-token sequences (make_data.py;
# the responses take the rest). --grpo-prompt-tokens: words in each GRPO and PPO prompt (make_data.py; Tiller's max_prompt_len
# follows the longest). LIST: comma-separated rows of sft-15m, sft-124m, reward, dpo, grpo, ppo (default: all).
# Needs build/tiller, .venv-peers (scripts/setup_peers.sh), jq, and the shared data's Llama 2
# tokenizer and TinyStories text ($TILLER_SHARED_DATA, else ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/../.."

threads=$(nproc)
rounds=1
quick=0
keep=""
only="sft-15m,sft-124m,reward,dpo,grpo,ppo"
dtype=fp32
grpo_prompt_tokens=32
prompt_tokens=64
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --quick) quick=1; shift ;;      # the fewest steps that time anything: a smoke run
    --keep) keep=$2; shift 2 ;;     # keep the models, data, runs and JSON here
    --only) only=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --grpo-prompt-tokens) grpo_prompt_tokens=$2; shift 2 ;;  # words in a GRPO/PPO prompt
    --prompt-tokens) prompt_tokens=$2; shift 2 ;;  # words in an SFT/reward/DPO prompt
    *) echo "compare.sh --peers: unknown argument '$1'" >&2; exit 1 ;;
  esac
done

tiller=build/tiller
python=.venv-peers/bin/python
shared=${TILLER_SHARED_DATA:-../shared/data}
tokenizer=$shared/models/llama2-tokenizer/tokenizer.model
corpus=$shared/corpus/tinystories_head.txt
[ -x "$tiller" ] || { echo "compare.sh --peers: $tiller not found; run scripts/build.sh" >&2; exit 1; }
"$python" -c "import trl, transformers, torch" 2>/dev/null ||
  { echo "compare.sh --peers: $python cannot import trl; run scripts/setup_peers.sh" >&2; exit 1; }
[ "$dtype" = fp32 ] || [ "$dtype" = bf16 ] ||
  { echo "compare.sh --peers: --dtype must be fp32 or bf16, not '$dtype'" >&2; exit 1; }
command -v jq >/dev/null || { echo "compare.sh --peers: jq is needed" >&2; exit 1; }
[ -f "$tokenizer" ] && [ -f "$corpus" ] ||
  { echo "compare.sh --peers: $tokenizer or $corpus missing (set TILLER_SHARED_DATA)" >&2; exit 1; }
export OMP_WAIT_POLICY=passive  # as tiller sets for itself; spinning OpenMP threads skew both

if [ -n "$keep" ]; then
  out=$keep
  mkdir -p "$out"
else
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
steps=4 ppo_steps=3 examples=32  # the first step of each side is a warm-up, left out of the mean
[ "$quick" = 1 ] && steps=2 ppo_steps=2
wants() { [[ ",$only," == *",$1,"* ]]; }
progress() { echo "  $1 (load $(cut -d' ' -f1 /proc/loadavg))" >&2; }

echo "compare --peers: $threads threads, $rounds rounds, $dtype; load at start:$(uptime | sed 's/.*load average://')"
"$python" -c 'import json, torch, transformers, trl; print("peers: torch", torch.__version__,
  "transformers", transformers.__version__, "trl", trl.__version__)'

# The models both sides start from, and the tokens they train on (the same for both shapes: one
# tokenizer).
for shape in llama-15m llama-124m; do
  [ "$shape" = llama-124m ] && ! wants sft-124m && continue
  if [ ! -f "$out/model-$shape/init/final/model.safetensors" ]; then
    python3 bench/peers/recipe.py init --shape "$shape" --tokenizer "$tokenizer" --corpus "$corpus" \
      --run-dir "$out/model-$shape" >"$out/init-$shape.json"
    "$tiller" run "$out/init-$shape.json" >"$out/init-$shape.log"
  fi
done
model15=$out/model-llama-15m/init/final
python3 bench/peers/make_data.py --tiller "$tiller" --model "$model15" --out "$out/data" \
  --examples "$examples" --grpo-prompt-tokens "$grpo_prompt_tokens" \
  --prompt-tokens "$prompt_tokens" >/dev/null

# pair NAME KIND MODEL BATCH STEPS [EXTRA...]: `rounds` rounds of Tiller's stage then TRL's
# trainer; round r's JSON in $out/NAME.{tiller,trl}.r.json, Tiller's run in $out/NAME.run.r.
pair() {
  local name=$1 kind=$2 model=$3 batch=$4 n=$5
  shift 5
  local args=(--model "$model" --data "$out/data" --steps "$n" --batch "$batch" --dtype "$dtype" "$@")
  for r in $(seq 1 "$rounds"); do
    progress "$name round $r: tiller"
    rm -rf "$out/$name.run.$r"
    python3 bench/peers/recipe.py "$kind" "${args[@]}" --threads "$threads" \
      --run-dir "$out/$name.run.$r" >"$out/$name.recipe.$r.json"
    python3 bench/peers/peak_rss.py "$out/$name.tiller.$r.json" \
      "$tiller" run "$out/$name.recipe.$r.json" >"$out/$name.tiller.$r.log"
    progress "$name round $r: trl"
    "$python" bench/peers/trl_bench.py "$kind" "${args[@]}" --threads "$threads" \
      >"$out/$name.trl.$r.json" 2>"$out/$name.trl.$r.log"
  done
}

wants sft-15m && pair sft-15m sft "$model15" 8 "$steps"
wants sft-124m && pair sft-124m sft "$out/model-llama-124m/init/final" 4 "$steps"
wants reward && pair reward reward "$model15" 8 "$steps"
wants dpo && pair dpo dpo "$model15" 8 "$steps"
wants grpo && pair grpo grpo "$model15" 32 "$steps" --group 8 --new-tokens 64
if wants ppo; then
  # The reward model (and the critic's start) of both sides: one Tiller reward training step.
  if [ ! -f "$out/rm/reward/final/model.safetensors" ]; then
    python3 bench/peers/recipe.py reward --model "$model15" --data "$out/data" --steps 1 \
      --batch 8 --threads "$threads" --run-dir "$out/rm" >"$out/rm.json"
    "$tiller" run "$out/rm.json" >"$out/rm.log"
  fi
  pair ppo ppo "$model15" 32 "$ppo_steps" --new-tokens 64 --reward-model "$out/rm/reward/final"
fi

# Tiller's figure over the steps after the first, from its metrics.jsonl: tokens/s over the timed
# steps (equal tokens a step: n / sum(1 / tokens_per_s)), or mean seconds an RL iteration.
tiller_figure() {  # NAME ROUND KIND
  local metrics=$out/$1.run.$2/$3/metrics.jsonl
  case "$3" in
    grpo) jq -s 'map(select(.step >= 2) | .seconds_sample + .seconds_train) | add / length' "$metrics" ;;
    ppo) jq -s 'map(select(.step >= 2) | .seconds_generate + .seconds_score + .seconds_train)
                | add / length' "$metrics" ;;
    *) jq -s 'map(select(.step >= 2) | 1 / .tokens_per_s) | length / add' "$metrics" ;;
  esac
}
best() {  # NAME KIND SIDE: the best round's figure (max tokens/s, min seconds)
  local values=() r
  for r in $(seq 1 "$rounds"); do
    if [ "$3" = tiller ]; then
      values+=("$(tiller_figure "$1" "$r" "$2")")
    elif [ "$2" = grpo ] || [ "$2" = ppo ]; then
      values+=("$(jq .step_s "$out/$1.trl.$r.json")")
    else
      values+=("$(jq .tokens_per_s "$out/$1.trl.$r.json")")
    fi
  done
  printf '%s\n' "${values[@]}" | jq -s "$([ "$2" = grpo ] || [ "$2" = ppo ] && echo min || echo max)"
}
rss() { jq -s 'map(.peak_rss_mb) | min' "$out/$1.$2".*.json; }
ratio() { echo "$1 / $2" | bc -l; }

printf '\n%-30s %12s %12s %9s %14s %14s\n' "" "tiller" "trl" "ratio" "tiller RSS MB" "trl RSS MB"
row() {  # NAME KIND LABEL
  wants "$1" || return 0
  local t p ratio_value
  t=$(best "$1" "$2" tiller)
  p=$(best "$1" "$2" trl)
  if [ "$2" = grpo ] || [ "$2" = ppo ]; then ratio_value=$(ratio "$p" "$t"); else ratio_value=$(ratio "$t" "$p"); fi
  printf '%-30s %12.4g %12.4g %8.2fx %14.0f %14.0f\n' "$3" "$t" "$p" "$ratio_value" \
    "$(rss "$1" tiller)" "$(rss "$1" trl)"
}
row sft-15m sft "sft llama-15m tokens/s"
row sft-124m sft "sft llama-124m tokens/s"
row reward reward "reward llama-15m tokens/s"
row dpo dpo "dpo llama-15m tokens/s"
row grpo grpo "grpo G=8 s/iteration"
row ppo ppo "ppo s/iteration"
echo "(ratios: tiller/trl for tokens/s, trl/tiller for seconds: above 1 means Tiller is faster;"
echo " RSS: each side's peak resident memory, the lowest of the rounds)"
echo "load at end:$(uptime | sed 's/.*load average://')"
