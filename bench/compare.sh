#!/usr/bin/env bash
# Tiller against the eager-PyTorch reference (bench/reference/), on the same shapes and threads,
# run alternately (tiller, reference, tiller, reference, ...) so that a change in the machine's
# load hits both sides alike; each side's best round counts. Prints the ratios. By hand, not CI:
#   bash bench/compare.sh [--threads N] [--rounds N] [--quick] [--train-124m]
#   bash bench/compare.sh --peers [...]   TRL's trainers instead (bench/peers/compare_peers.sh)
# Needs build/tiller (scripts/build.sh) and Debian's python3-torch (apt-get install
# python3-torch: the same LibTorch 1.13.1). The machine should be otherwise idle (see `uptime`).
set -euo pipefail
cd "$(dirname "$0")/.."

# --peers: Tiller's stages against TRL's trainers, the other side of the comparison (its own
# script, its own virtual environment); the rows below are the eager reference's.
for arg in "$@"; do
  if [ "$arg" = --peers ]; then
    args=()
    for a in "$@"; do [ "$a" = --peers ] || args+=("$a"); done
    exec bash bench/peers/compare_peers.sh "${args[@]}"
  fi
done

threads=$(nproc)
rounds=2
quick=0
train_124m=0
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --quick) quick=1; shift ;;          # fewer tokens and repeats: a smoke run of this script
    --train-124m) train_124m=1; shift ;;  # add the llama-124m training step (minutes)
    *) echo "compare.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
done

tiller=build/tiller
python=/usr/bin/python3  # Debian's interpreter, where python3-torch lives (not a pyenv shim)
[ -x "$tiller" ] || { echo "compare.sh: $tiller not found; run scripts/build.sh" >&2; exit 1; }
"$python" -c "import torch" 2>/dev/null ||
  { echo "compare.sh: $python cannot import torch; apt-get install python3-torch" >&2; exit 1; }
command -v jq >/dev/null || { echo "compare.sh: jq is needed" >&2; exit 1; }
export OMP_WAIT_POLICY=passive  # as tiller sets for itself; spinning OpenMP threads skew both

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
new_tokens=64 repeats=3 ppo_iterations=2 train_steps=3
[ "$quick" = 1 ] && new_tokens=16 repeats=1 ppo_iterations=1 train_steps=1

echo "compare: $threads threads, $rounds rounds; load at start:$(uptime | sed 's/.*load average://')"

# The load of every round goes to stderr: a round taken while other work ran is suspect.
progress() { echo "  $1 (load $(cut -d' ' -f1 /proc/loadavg))" >&2; }

# run NAME TILLER_ARGS... -- REFERENCE_ARGS...: each side `rounds` times, alternating; the JSON of
# round r lands in $out/NAME.{tiller,reference}.r.json.
run() {
  local name=$1
  shift
  local tiller_args=() reference_args=()
  while [ "$1" != "--" ]; do tiller_args+=("$1"); shift; done
  shift
  reference_args=("$@")
  for r in $(seq 1 "$rounds"); do
    progress "$name round $r"
    "$tiller" bench "${tiller_args[@]}" --threads "$threads" --json >"$out/$name.tiller.$r.json"
    "$python" bench/reference/bench.py "${reference_args[@]}" --threads "$threads" \
      >"$out/$name.reference.$r.json"
  done
}

decode_args=(--prompt-tokens 16 --new-tokens "$new_tokens" --repeats "$repeats")
run decode-stories260k decode --shape stories260k --batch 1,16 "${decode_args[@]}" -- \
  decode --shape stories260k --batch 1,16 "${decode_args[@]}"
run decode-llama-15m decode --shape llama-15m --batch 1,16 "${decode_args[@]}" -- \
  decode --shape llama-15m --batch 1,16 "${decode_args[@]}"
train_args=(--shape llama-15m --batch 8 --seq 256 --steps "$train_steps")
run train-llama-15m train "${train_args[@]}" -- train "${train_args[@]}"
if [ "$train_124m" = 1 ]; then
  train_args=(--shape llama-124m --batch 4 --seq 256 --steps "$train_steps")
  run train-llama-124m train "${train_args[@]}" -- train "${train_args[@]}"
fi
# The reference reads the shapes and settings Tiller used from Tiller's own JSON, so the PPO pair
# runs one round at a time: tiller first.
for r in $(seq 1 "$rounds"); do
  progress "ppo-quickstart round $r"
  "$tiller" bench ppo --recipe recipes/quickstart.json --iterations "$ppo_iterations" \
    --threads "$threads" --json >"$out/ppo-quickstart.tiller.$r.json"
  "$python" bench/reference/bench.py ppo --like "$out/ppo-quickstart.tiller.$r.json" \
    --iterations "$ppo_iterations" --threads "$threads" >"$out/ppo-quickstart.reference.$r.json"
  # At these shapes the eager reference is faster on one thread than on two (per-operator
  # overhead, not arithmetic, sets its pace): the ratio is also given against that.
  "$python" bench/reference/bench.py ppo --like "$out/ppo-quickstart.tiller.$r.json" \
    --iterations "$ppo_iterations" --threads 1 >"$out/ppo-quickstart.reference-1-thread.$r.json"
done

# best NAME SIDE JQ_FILTER max|min: the best value of a number over the rounds.
best() {
  jq -s "map($3) | $4" "$out/$1.$2".*.json
}
line() {  # label, tiller value, reference value, ratio
  printf '%-34s %12.4g %12.4g %9.2fx\n' "$1" "$2" "$3" "$4"
}
ratio() { echo "$1 / $2" | bc -l; }

printf '\n%-34s %12s %12s %10s\n' "" "tiller" "reference" "ratio"
for shape in stories260k llama-15m; do
  for batch in 1 16; do
    filter=".[] | select(.batch == $batch) | .tokens_per_s"
    t=$(best "decode-$shape" tiller "$filter" max)
    p=$(best "decode-$shape" reference "$filter" max)
    line "decode $shape b$batch tokens/s" "$t" "$p" "$(ratio "$t" "$p")"
  done
done
for shape in llama-15m $([ "$train_124m" = 1 ] && echo llama-124m); do
  t=$(best "train-$shape" tiller .tokens_per_s max)
  p=$(best "train-$shape" reference .tokens_per_s max)
  line "train $shape tokens/s" "$t" "$p" "$(ratio "$t" "$p")"
  t=$(best "train-$shape" tiller .fraction_of_peak max)
  p=$(best "train-$shape" reference .fraction_of_peak max)
  # Each side divides by a peak it measured itself, at another moment: no ratio of these.
  printf '%-34s %12.4g %12.4g\n' "train $shape % of own fp32 peak" "$(ratio "100 * $t" 1)" \
    "$(ratio "100 * $p" 1)"
done
t=$(best ppo-quickstart tiller .iteration_s min)
p=$(best ppo-quickstart reference .iteration_s min)
line "ppo quickstart s/iteration" "$t" "$p" "$(ratio "$p" "$t")"
for part in generate_s score_s train_s; do
  t=$(best ppo-quickstart tiller ".$part" min)
  p=$(best ppo-quickstart reference ".$part" min)
  line "  ${part%_s} s" "$t" "$p" "$(ratio "$p" "$t")"
done
t=$(best ppo-quickstart tiller .iteration_s min)
p=$(best ppo-quickstart reference-1-thread .iteration_s min)
line "ppo s/iteration, reference 1 thread" "$t" "$p" "$(ratio "$p" "$t")"
echo "(ratios: tiller/reference for tokens/s, reference/tiller for seconds:"
echo " above 1 means Tiller is faster)"
echo "load at end:$(uptime | sed 's/.*load average://')"
