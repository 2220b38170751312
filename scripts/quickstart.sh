#!/usr/bin/env bash
# Installs what is missing, builds, and runs Tiller's main job as it stands: import the pretrained
# stories260K llama2.c checkpoint into a Hugging Face directory, generate from it, then a short
# instruction SFT on Alpaca and a generation from the tuned model.
# (The self-contained base -> SFT -> reward -> PPO quickstart recipe replaces this once PPO exists.)
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
echo "--- a short SFT on Alpaca (60 steps; recipes/stories260k_alpaca_sft.json runs 300)"
build/tiller run recipes/stories260k_alpaca_sft.json sft.train.steps=60 sft.train.eval_every=30 \
  sft.train.checkpoint_every=30 run.dir="$OUT/alpaca_sft"
echo "--- the tuned model, prompted through the alpaca template"
build/tiller generate --model "$OUT/alpaca_sft/sft/final" --template alpaca \
  --prompt "Write a short story about a dog." --max-new-tokens 80 --temperature 0
