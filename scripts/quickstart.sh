#!/usr/bin/env bash
# Installs what is missing, builds, and runs Tiller's main job as it stands: import the pretrained
# stories260K llama2.c checkpoint into a Hugging Face directory and generate from it.
# (The base -> SFT -> reward -> PPO quickstart recipe replaces this once the stages exist.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
DATA=../shared/data/models/stories260K
OUT=runs/quickstart
if [ ! -f "$DATA/stories260K.bin" ]; then
  echo "quickstart: $DATA is absent; it needs the shared stories260K checkpoint" >&2
  exit 1
fi
build/tiller convert --from llama2c --model "$DATA/stories260K.bin" --tokenizer "$DATA/tok512.model" \
  --out "$OUT/stories260K-hf"
echo "--- greedy"
build/tiller generate --model "$OUT/stories260K-hf" --prompt "Once upon a time" \
  --max-new-tokens 116 --temperature 0 | tee "$OUT/greedy.txt"
if cmp -s "$OUT/greedy.txt" "$DATA/greedy_once_upon_a_time.txt"; then
  echo "--- identical to the reference llama2.c output"
else
  echo "--- differs from the reference llama2.c output" >&2
  exit 1
fi
echo "--- sampled (temperature 0.8, top-p 0.9)"
build/tiller generate --model "$OUT/stories260K-hf" --prompt "The little dog" \
  --max-new-tokens 80 --temperature 0.8 --top-p 0.9 --seed 7
