#!/usr/bin/env bash
# Peak memory of a dpo stage with the reference log-probs cached vs a live reference model, on a
# randomly initialised llama-124m-shaped model (stories260K's 512-piece tokenizer: ~85M weights),
# 40 HH pairs, 3 steps. Prints each mode's maximum resident set size (GNU time) and the stage's
# own peak_rss_mib. Usage: bench/dpo_reference_memory.sh [OUT_DIR] (from the repository root).
set -euo pipefail
out=${1:-/tmp/dpo_reference_memory}
tiller=${TILLER:-build/tiller}
shared=../shared/data
mkdir -p "$out"
head -c 20000 "$shared/corpus/tinystories_head.txt" > "$out/text.txt"
cat > "$out/recipe.json" <<JSON
{
  "run": {"name": "dpo_memory", "dir": "$out/run", "seed": 1, "threads": 2},
  "base": "@init",
  "stages": [
    {"name": "init", "type": "pretrain", "tokenizer": "$shared/models/stories260K/tok512.model",
     "model": {"shape": "llama-124m", "max_position_embeddings": 256},
     "data": {"train": "$out/text.txt", "format": "text"},
     "train": {"steps": 1, "batch_size": 1, "micro_batch_size": 1, "max_seq_len": 64, "lr": 1e-9}},
    {"name": "dpo", "type": "dpo", "init": "@init",
     "data": {"train": "$shared/preference/hh_rlhf_harmless_base_test.jsonl.gz", "format": "hh",
              "max_records": 40, "val_fraction": 0.1},
     "reference": {"mode": "cache"},
     "train": {"steps": 3, "batch_size": 4, "micro_batch_size": 4, "max_seq_len": 128,
               "eval_batches": 1}}
  ]
}
JSON
"$tiller" run "$out/recipe.json" --only init > "$out/init.log" 2>&1
for mode in cache live; do
  rm -rf "$out/run/dpo"
  /usr/bin/time -v "$tiller" run "$out/recipe.json" --only dpo dpo.reference.mode=$mode \
    > "$out/$mode.log" 2>&1
  rss=$(grep "Maximum resident" "$out/$mode.log" | awk '{print $NF}')
  stage=$(python3 -c "import json; print(json.load(open('$out/run/dpo/complete.json'))['peak_rss_mib'])")
  echo "$mode: max RSS $((rss / 1024)) MiB (time -v); stage peak_rss_mib $stage"
done
