#!/usr/bin/env bash
# `tiller data prepare` against its Python reference (bench/reference/prepare_reference.py: the
# same steps, written the way datatrove writes them), on the same corpus and config: every text
# step, exact and near deduplication, SentencePiece tokenisation (Llama 2's tokenizer), T worker
# threads or processes. The two run alternately (tiller, reference, tiller, ...) so that a change
# in the machine's load hits both alike; each side's best round counts. Prints the MB/s of raw
# text of each side, the ratio tiller/reference (issue 24's goal: >= 10x at 2 threads) and the
# documents each kept. By hand, not CI:
#   bash bench/prepare_compare.sh [--mb N] [--rounds R] [--threads T] [--tokenizer MODEL]
# --mb: the corpus's size (default 64), made from ../shared/data/corpus/tinystories_head.txt
# (TILLER_SHARED_DATA overrides ../shared/data): each document is one story on one line, half of
# its sentences swapped for sentences of other stories (a fixed seed), so that it is new text;
# 3% are planted exact copies of an earlier document and 3% near copies (one word changed), and a
# few are short, carry an e-mail address or a phone number, or need NFC.
# Needs build/tiller (scripts/build.sh), python3-venv and PyPI: the first run makes .venv-bench
# with bench/reference/requirements-prepare.txt (again only when that file changes). The machine
# should be otherwise idle (see `uptime`).
set -euo pipefail
cd "$(dirname "$0")/.."

mb=64
rounds=2
threads=2
tokenizer=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mb) mb=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --tokenizer) tokenizer=$2; shift 2 ;;
    *) echo "prepare_compare.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
done

tiller=build/tiller
shared=${TILLER_SHARED_DATA:-../shared/data}
source_text=$shared/corpus/tinystories_head.txt
tokenizer=${tokenizer:-$shared/models/llama2-tokenizer/tokenizer.model}
[ -x "$tiller" ] || { echo "prepare_compare.sh: $tiller not found; run scripts/build.sh" >&2; exit 1; }
for f in "$source_text" "$tokenizer"; do
  [ -f "$f" ] || { echo "prepare_compare.sh: $f not found (set TILLER_SHARED_DATA)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "prepare_compare.sh: jq is needed" >&2; exit 1; }

# The reference's packages: pinned, in .venv-bench, never in the system Python. The stamp is a copy
# of the requirements installed last; a changed file reinstalls.
requirements=bench/reference/requirements-prepare.txt
stamp=.venv-bench/tiller-requirements-prepare.txt
if ! { [ -x .venv-bench/bin/python ] && cmp -s "$requirements" "$stamp"; }; then
  echo "prepare_compare: installing $requirements into .venv-bench"
  [ -x .venv-bench/bin/python ] || /usr/bin/python3 -m venv .venv-bench
  .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
python=.venv-bench/bin/python

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The corpus: plain text, one document a line, as `data prepare` reads "lines".
/usr/bin/python3 - "$source_text" "$out/corpus.txt" "$mb" <<'EOF'
import random, re, sys

source, target, megabytes = sys.argv[1], sys.argv[2], float(sys.argv[3])
# A story is a run of paragraphs with blank lines between them; the next story starts on the line
# right after its last paragraph.
stories, previous_blank = [], True
for line in open(source, encoding="utf-8"):
    line = line.strip()
    if not line:
        previous_blank = True
        continue
    if not previous_blank or not stories:
        stories.append([])
    stories[-1].append(line)
    previous_blank = False
split = re.compile(r"(?<=[.!?])\s+")
stories = [[s for p in story for s in split.split(p) if s] for story in stories]
pool = [s for story in stories for s in story]

rng = random.Random(24)
documents, size, limit = [], 0, int(megabytes * 1e6)
pii = ["Write to lily.smith@example.com for the pictures.", "Call Mom at 212-555-0123 tonight.",
       "The park's server is at 192.168.1.20 now.", "Grandpa's number is +44 20 7946 0958."]
while size < limit:
    r = rng.random()
    if r < 0.03 and documents:  # an exact copy of an earlier document
        text = rng.choice(documents)
    elif r < 0.06 and documents:  # a near copy: one word changed
        words = rng.choice(documents).split(" ")
        words[rng.randrange(len(words))] = rng.choice(["big", "small", "happy", "red", "old"])
        text = " ".join(words)
    elif r < 0.07:  # short: too few words and sentences
        text = rng.choice(pool)
    else:
        sentences = [s if rng.random() < 0.5 else rng.choice(pool) for s in rng.choice(stories)]
        if rng.random() < 0.02:
            sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(pii))
        if rng.random() < 0.01:
            sentences.append("They ate cake at the cafe\u0301 with Zoe\u0308.")  # NFD
        text = " ".join(sentences)
    documents.append(text)
    size += len(text.encode("utf-8")) + 1
with open(target, "w", encoding="utf-8") as f:
    f.write("\n".join(documents) + "\n")
print(f"corpus: {len(documents)} documents, {size / 1e6:.1f} MB")
EOF

cat >"$out/config.json" <<EOF
{
  "inputs": "$out/corpus.txt",
  "tokenizer": "$tokenizer",
  "output": "$out/tiller",
  "threads": $threads,
  "normalize": true, "boilerplate": true, "c4": true, "gopher_quality": true,
  "gopher_repetition": true, "pii": true, "exact_dedup": true, "near_dedup": true
}
EOF

echo "prepare_compare: $threads threads, $rounds rounds; load at start:$(uptime | sed 's/.*load average://')"
for r in $(seq 1 "$rounds"); do
  echo "  round $r: tiller (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  rm -rf "$out/tiller"
  "$tiller" data prepare "$out/config.json" >"$out/tiller.$r.log"
  cp "$out/tiller/stats.json" "$out/tiller.$r.json"
  echo "  round $r: reference (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  rm -rf "$out/reference"
  "$python" bench/reference/prepare_reference.py "$out/config.json" --output "$out/reference" \
    >"$out/reference.$r.json"
done

best() { jq -s "map($2) | max" "$out/$1".*.json; }
t=$(best tiller .mb_per_s)
p=$(best reference .mb_per_s)
printf '\n%-28s %12s %12s %10s\n' "" "tiller" "reference" "ratio"
printf '%-28s %12.2f %12.2f %9.1fx\n' "MB/s of raw text (best)" "$t" "$p" "$(echo "$t / $p" | bc -l)"
printf '%-28s %12d %12d\n' "documents read" "$(jq .input.documents "$out/tiller.1.json")" \
  "$(jq .documents "$out/reference.1.json")"
printf '%-28s %12d %12d\n' "documents kept" "$(jq .kept_documents "$out/tiller.1.json")" \
  "$(jq .kept "$out/reference.1.json")"
for step in normalize boilerplate c4 gopher_quality gopher_repetition pii exact_dedup near_dedup; do
  printf '%-28s %12s %12s\n' "  removed by $step" \
    "$(jq ".steps[] | select(.step == \"$step\") | .removed_documents" "$out/tiller.1.json")" \
    "$(jq ".removed.$step" "$out/reference.1.json")"
done
printf '%-28s %12d %12d\n' "tokens written" "$(jq .output.train.tokens "$out/tiller.1.json")" \
  "$(jq .tokens "$out/reference.1.json")"
echo "load at end:$(uptime | sed 's/.*load average://')"
