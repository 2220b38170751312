#!/usr/bin/env bash
# Tiller's byte-level BPE (common/tokenizer/byte_level_bpe.cpp) against transformers' own
# tokenizer library, the Rust `tokenizers` (through its Node binding @anush008/tokenizers), on the
# real Llama 3 (first and 3.1 releases), Qwen2.5, GPT-2 and DeepSeek-V3 tokenizer.json files of
# the @lenml/tokenizer-* npm packages:
# the ids and the decoded text (special tokens skipped) of every text make_texts.py writes must
# agree. By hand, not in CI: it needs node, npm and the npm registry.
#
#   tests/tokenizer_reference/compare.sh [--tiller PATH] [--keep]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

tiller=build/tiller
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tiller) tiller="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "compare: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -x "$tiller" ] || { echo "compare: no tiller binary at $tiller (build first)" >&2; exit 2; }
command -v npm >/dev/null && command -v node >/dev/null ||
  { echo "compare: needs node and npm (apt-get install nodejs npm)" >&2; exit 2; }

work=$(mktemp -d /tmp/tiller-tokref.XXXXXX)
trap '[ "$keep" = 1 ] && echo "compare: kept $work" || rm -rf "$work"' EXIT
models=(llama3 llama3_1 qwen2_5 gpt2 deepseek_v3)
(cd "$work" && npm init -y >/dev/null &&
  npm install --silent @anush008/tokenizers "${models[@]/#/@lenml/tokenizer-}" >/dev/null)
cp "$here/reference_encode.js" "$work/"
python3 "$here/make_texts.py" >"$work/texts.json"

status=0
for m in "${models[@]}"; do
  tokenizer="$work/node_modules/@lenml/tokenizer-$m/models/tokenizer.json"
  (cd "$work" && node reference_encode.js "$tokenizer" texts.json) >"$work/reference-$m.json"
  "$tiller" tokenize --tokenizer "$tokenizer" --texts "$work/texts.json" >"$work/tiller-$m.json"
  first=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0])' "$work/texts.json")
  "$tiller" tokenize --tokenizer "$tokenizer" --text "$first" --bos >"$work/tiller-bos-$m.txt"
  python3 - "$m" "$tokenizer" "$work/tiller-bos-$m.txt" "$work/texts.json" \
    "$work/reference-$m.json" "$work/tiller-$m.json" <<'PY' ||
import json, os, sys
name, tokenizer, bos_line = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().split()
texts, ref, got = (json.load(open(p)) for p in sys.argv[4:])
with_bos = ref.pop()["ids"]
# The Rust library adds what tokenizer.json's post-processor says; transformers' tokenizer
# classes also add BOS when tokenizer_config.json sets add_bos_token (DeepSeek-V3 does), as
# Tiller does.
config = json.load(open(os.path.join(os.path.dirname(tokenizer), "tokenizer_config.json")))
if config.get("add_bos_token") and config.get("bos_token"):
    bos = config["bos_token"]
    bos = bos["content"] if isinstance(bos, dict) else bos
    bos_id = next(t["id"] for t in json.load(open(tokenizer))["added_tokens"] if t["content"] == bos)
    if with_bos[:1] != [bos_id]:
        with_bos = [bos_id] + with_bos
if [int(x) for x in bos_line] != with_bos:
    print(f"{name}: with special tokens, tokenizers {with_bos} but tiller --bos {bos_line}")
    sys.exit(1)
ids = [i for i in range(len(texts)) if ref[i]["ids"] != got[i]["ids"]]
text = [i for i in range(len(texts)) if ref[i]["decoded"] != got[i]["decoded"]]
print(f"{name}: {len(texts)} texts, ids differ on {len(ids)}, decoded text differs on {len(text)}")
for i in ids[:3]:
    print(f"  {texts[i][:60]!r}\n    tokenizers {ref[i]['ids'][:20]}\n    tiller     {got[i]['ids'][:20]}")
sys.exit(1 if ids or text else 0)
PY
    status=1
done
exit $status
