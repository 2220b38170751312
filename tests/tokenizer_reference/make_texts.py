#!/usr/bin/env python3
"""Texts for tests/tokenizer_reference/compare.sh, as a JSON list on stdout: cases picked to
exercise the pre-tokenizers (contractions in any case, digit runs, white-space runs and kinds,
scripts, emoji, combining marks, control characters, added tokens inside text), random strings
from a pool of such characters, and real text from ../shared/data (or $TILLER_SHARED_DATA) where it is present."""
import glob
import gzip
import json
import os
import random
import sys

ROOT = os.environ.get("TILLER_SHARED_DATA") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data")

texts = [
    "Hello world", " leading space", "trailing space ", "I'm sure they'll say DON'T, we've I'D You'RE",
    "12345 1,000,000 3.14159 2024-11-30 007", "café naïve résumé", "cafe\u0301 decomposed",
    "你好，世界！这是一个测试。", "👍🏽 emoji 🎉🎉 and ZWJ 👨‍👩‍👧", "a  b\t\tc\n\n\nd   ",
    "x\u000by\u0085z\u00a0w\u2028v", "   ", "\n", "",
    "<|begin_of_text|>hello<|eot_id|> world", "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after", "def f(x):\n    return x ** 2  # square\n\tprint('tab')",
    "ÀÉÎÕÜ ß ǅ ﬁ Ⅻ ½ ²", "Ünïcödé\r\nwindows\r\nlines", "!!!??? ... --- *** ///", "مرحبا بالعالم",
    "Здравствуй, мир", "नमस्ते दुनिया", "ｆｕｌｌ　ｗｉｄｔｈ", "a" * 300, "ab " * 50,
    "The quick brown fox's 99 problems aren't 1 ☃", "'s 'S 'T 'Re", "1234567890123", "٣٤٥ ١٢", "x²+y³=z⁴",
    "a\x1cb\x1dc\x1e d\x1f", "\x00nul", "\ufeffbom", "it'ſ ok", "IT'S 'Ｓ", "we'ʟʟ", "'K 'k",
    "İstanbul ıi", "ǅungla ǈ", "tab\there", "\u200b zero width", "\u2029para", "x\u3000y",
    "Ⅷ ⅷ ① ⑴ ¼", "٠١٢٣ ۴۵", "𝟘𝟙𝟚𝟛𝟜", "a'b'c", "don't't", " 's", "\n\n ", " \n \n", "\r\r\n",
    "   a", "a   ", "ab  \n  cd",
]

random.seed(1)
sft = os.path.join(ROOT, "sft", "alpaca_en_demo.json")
if os.path.exists(sft):
    for r in json.load(open(sft))[:400]:
        texts.append(r["instruction"] + "\n" + r.get("input", "") + "\n" + r["output"])
hh = os.path.join(ROOT, "preference", "hh_rlhf_harmless_base_test.jsonl.gz")
if os.path.exists(hh):
    with gzip.open(hh, "rt") as f:
        for i, line in enumerate(f):
            if i >= 300:
                break
            texts.append(json.loads(line)["chosen"])
for path in sorted(glob.glob(os.path.join(ROOT, "corpus", "*")))[:1]:
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", errors="ignore") as f:
        for i, line in enumerate(f):
            if i >= 300:
                break
            texts.append(line.rstrip("\n"))

pool = [chr(c) for c in list(range(0x20, 0x7F)) + list(range(0xA0, 0x250)) + list(range(0x370, 0x3FF))
        + list(range(0x4E00, 0x4E40))
        + [0x1F600, 0x1F44D, 0x200D, 0x0301, 0x0B, 0x85, 0x2028, 0x3000, 0x9, 0xA, 0xD]]
for _ in range(300):
    texts.append("".join(random.choice(pool) for _ in range(random.randint(1, 60))))

json.dump(texts, sys.stdout, ensure_ascii=False)
