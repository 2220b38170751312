#!/usr/bin/env bash
# The cost of quantisation in quality, fp32 against int8 and int4 (round to nearest and GPTQ):
# perplexity of stories260K on held-out TinyStories text, and the ground-truth rule rate (a happy
# ending, `\b(happy|smiled)\b`) of the quickstart's PPO policy on 256 sampled prompts.
#   bench/quantize_quality.sh [--tiller build/tiller] [--work DIR]
# Needs ../shared/data (stories260K, tinystories_head.txt) and a finished quickstart
# (runs/quickstart/ppo/final; ./scripts/quickstart.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
tiller=build/tiller
work=$(mktemp -d /tmp/tiller-quantize-quality.XXXXXX)
while [ $# -gt 0 ]; do
  case "$1" in
    --tiller) tiller="$2"; shift 2 ;;
    --work) work="$2"; mkdir -p "$work"; shift 2 ;;
    *) echo "quantize_quality: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
data=${TILLER_SHARED_DATA:-../shared/data}
text="$data/corpus/tinystories_head.txt"
[ -f "$text" ] || { echo "quantize_quality: needs $text (../shared/data)" >&2; exit 2; }
policy=runs/quickstart/ppo/final
[ -f "$policy/config.json" ] || { echo "quantize_quality: needs $policy (run the quickstart)" >&2; exit 2; }

head -n 3000 "$text" >"$work/calibration.txt"
tail -n 1000 "$text" >"$work/held_out.txt"
"$tiller" convert --model "$data/models/stories260K/stories260K.bin" \
  --tokenizer "$data/models/stories260K/tok512.model" --out "$work/stories260K" >/dev/null

# Both models' widths are 64 and 172: groups of 4 are the only 4-bit groups that divide them.
variants=("int8 rtn" "int8 gptq" "int4 rtn" "int4 gptq")
quantise() {  # MODEL OUT SCHEME METHOD CALIBRATION
  local extra=()
  [ "$4" = gptq ] && extra=(--calibration "$5" --samples 64 --length 128)
  [ "$3" = int4 ] && extra+=(--group-size 4 --lm-head int4)
  "$tiller" quantize --quiet --model "$1" --out "$2" --scheme "$3" --method "$4" "${extra[@]}" >/dev/null
}

printf '%-12s %12s %10s\n' "stories260K" "perplexity" "vs fp32"
base=$("$tiller" eval perplexity --model "$work/stories260K" --text "$work/held_out.txt" \
  --max-windows 64 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
printf '%-12s %12.4f\n' fp32 "$base"
for v in "${variants[@]}"; do
  set -- $v
  quantise "$work/stories260K" "$work/s-$1-$2" "$1" "$2" "$work/calibration.txt"
  p=$("$tiller" eval perplexity --model "$work/s-$1-$2" --text "$work/held_out.txt" \
    --max-windows 64 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  printf '%-12s %12.4f %+9.2f%%\n' "$1 $2" "$p" "$(python3 -c "print(100*($p/$base-1))")"
done

# The policy's rule rate: the same 256 prompts and sampling seed for every variant.
head -n 256 runs/quickstart/data/prompts.jsonl >"$work/prompts.jsonl"
awk 'NR%4==1' runs/quickstart/data/sft.jsonl | head -n 400 | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line); print((r.get("prompt", "") + " " + r.get("completion", "")).replace("\n", " "))
' >"$work/policy_calibration.txt"
rule_rate() {  # MODEL
  "$tiller" generate --model "$1" --prompts "$work/prompts.jsonl" --out "$work/out.jsonl" \
    --template plain --temperature 1.0 --max-new-tokens 48 --seed 7 >/dev/null
  python3 -c '
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
hits = sum(bool(re.search(r"\b(happy|smiled)\b", r.get("completion", r.get("response", "")))) for r in rows)
print(f"{hits / len(rows):.4f} {len(rows)}")' "$work/out.jsonl"
}
printf '\n%-12s %12s\n' "PPO policy" "rule rate"
printf '%-12s %12s\n' fp32 "$(rule_rate "$policy")"
for v in "${variants[@]}"; do
  set -- $v
  quantise "$policy" "$work/p-$1-$2" "$1" "$2" "$work/policy_calibration.txt"
  printf '%-12s %12s\n' "$1 $2" "$(rule_rate "$work/p-$1-$2")"
done
echo "(work files in $work)"
