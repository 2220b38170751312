#!/usr/bin/env python3
"""The Python side of bench/prepare_compare.sh: the steps of `tiller data prepare` (issue 24),
written the way datatrove writes them, on the same config, printing one JSON line.

  prepare_reference.py CONFIG.json [--output DIR]

CONFIG is the JSON that `tiller data prepare` reads: inputs (a path, or a list of paths or
{"path": ...} objects; plain text, one document per non-empty line), tokenizer (a SentencePiece
.model, or a directory holding tokenizer.model), output, threads, the text steps normalize,
boilerplate, c4, gopher_quality, gopher_repetition and pii (true: the defaults; an object: the
defaults with its keys replaced), exact_dedup, and near_dedup (true: the defaults). --output
writes elsewhere than CONFIG's output, so that the two sides do not share a directory.

The shape is Tiller's: the main process reads batches of documents and hands them to `threads`
worker processes (multiprocessing.Pool.imap, results in input order); the workers run the text
steps, hash the cleaned text, compute the MinHash signature and tokenise; the main process
deduplicates in input order and appends the kept documents' tokens to OUTPUT/train.bin (uint16).

The rules and defaults are Tiller's (prepare/text_steps.h, prepare/minhash.h), so that both sides
keep about the same documents; where those differ from datatrove's own filters, the comments
say how. Every such difference makes this reference cheaper than datatrove, never dearer:
str.split() and regexes stand in for datatrove's NLTK word and sentence tokenizers.

Prints {"documents", "kept", "bytes", "seconds", "mb_per_s", "removed": {step: count}}; seconds
run from loading the tokenizer to the last token written, as Tiller's stats.json counts them.
"""
import argparse
import ipaddress
import json
import math
import os
import re
import string
import sys
import time
import unicodedata
from collections import Counter
from multiprocessing import Pool

import numpy as np
import sentencepiece
import xxhash

STEP_ORDER = ["normalize", "boilerplate", "c4", "gopher_quality", "gopher_repetition", "pii"]
ASCII_SPACE = " \t\n\r\v\f"

# ------------------------------------------------------------------------------------------------
# Text steps. Each is a callable: text -> (text, reason); a non-empty reason removes the document.
# Formatters return changed text; filters return the text as it came.


class Normalize:
    """NFC, control characters and whitespace (Tiller's normalize)."""

    name = "normalize"
    defaults = {"nfc": True, "control_chars": True, "whitespace": True}

    # C0 controls but \t \n \r, DEL, C1 controls, the BOM and the zero-width characters.
    CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\u200b-\u200d\u2060]")
    BLANKS = re.compile(r"[ \t]+")
    NEWLINES = re.compile(r" ?\n[ \n]*")  # after BLANKS: a line's end, blank lines and indent

    def __init__(self, nfc, control_chars, whitespace):
        self.nfc, self.control_chars, self.whitespace = nfc, control_chars, whitespace

    @staticmethod
    def _newlines(match):
        run = match.group()
        return "\n" * min(run.count("\n"), 2) + (" " if run.endswith(" ") else "")

    def __call__(self, text):
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if self.control_chars:
            text = self.CONTROL.sub("", text)
        if self.whitespace:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            text = self.BLANKS.sub(" ", text)
            text = self.NEWLINES.sub(self._newlines, text).strip(" \n")
        return text, "" if text.strip(ASCII_SPACE) else "empty"


class Boilerplate:
    """C4's line rules: drop lines with a boilerplate phrase or too few words."""

    name = "boilerplate"
    defaults = {
        "patterns": ["javascript", "lorem ipsum", "cookie policy", "use cookies",
                     "privacy policy", "terms of use"],
        "min_words_per_line": 3,
        "require_terminal_punctuation": False,
        "drop_curly_bracket_lines": False,
    }
    ENDS = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u2026", "\u3002", "\uff01", "\uff1f")

    def __init__(self, patterns, min_words_per_line, require_terminal_punctuation,
                 drop_curly_bracket_lines):
        self.patterns = [p.lower() for p in patterns]
        self.min_words = min_words_per_line
        self.terminal = require_terminal_punctuation
        self.curly = drop_curly_bracket_lines

    def is_boilerplate(self, line):
        lower = line.lower()
        return (any(p in lower for p in self.patterns)
                or (self.curly and "{" in line)
                or (self.terminal and not line.strip(ASCII_SPACE).endswith(self.ENDS))
                or len(line.split()) < self.min_words)

    def __call__(self, text):
        kept, removed, blank_pending = [], 0, False
        for line in text.split("\n"):
            if not line.strip(ASCII_SPACE):
                blank_pending = bool(kept)  # runs of blank lines collapse to one
            elif self.is_boilerplate(line):
                removed += 1
            else:
                if kept and blank_pending:
                    kept.append("")
                kept.append(line)
                blank_pending = False
        if not kept:
            return "", f"no line left ({removed} removed)"
        return "\n".join(kept), ""


class C4:
    """C4's document rules: lorem ipsum, curly brackets, too few sentences."""

    name = "c4"
    defaults = {"min_sentences": 3, "drop_lorem_ipsum": True, "drop_curly_bracket": False}

    # A run of sentence marks, then closing quotes or brackets, then a blank or the end; it ends a
    # sentence when some text (a letter, a digit, anything non-ASCII) came since the last end.
    # datatrove counts sentences with NLTK's sent_tokenize instead (slower).
    END = re.compile("[.!?\u2026\u3002\uff01\uff1f]+[\"')\\]\u201d\u2019]*(?=[ \t\n\r\v\f]|\\Z)")
    TEXT = re.compile("[A-Za-z0-9\u0080-\U0010ffff]")

    def __init__(self, min_sentences, drop_lorem_ipsum, drop_curly_bracket):
        self.min_sentences = min_sentences
        self.lorem, self.curly = drop_lorem_ipsum, drop_curly_bracket

    def count_sentences(self, text):
        count, start = 0, 0
        for end in self.END.finditer(text):
            if self.TEXT.search(text, start, end.start()):
                count += 1
                if count >= self.min_sentences:
                    return count
            start = end.end()
        return count + (1 if self.TEXT.search(text, start) else 0)

    def __call__(self, text):
        if self.lorem and "lorem ipsum" in text.lower():
            return text, "lorem_ipsum"
        if self.curly and "{" in text:
            return text, "curly_bracket"
        if self.min_sentences > 0:
            sentences = self.count_sentences(text)
            if sentences < self.min_sentences:
                return text, f"sentences {sentences} < {self.min_sentences}"
        return text, ""


def _symbol_characters():
    # ASCII punctuation, and every other code point that Unicode calls punctuation or a math,
    # currency, modifier or other symbol (Tiller: u_ispunct and those u_charType classes).
    # datatrove's PUNCTUATION_SET is a hand-made list of the same kind.
    symbols = set(string.punctuation)
    for cp in range(0x80, sys.maxunicode + 1):
        category = unicodedata.category(chr(cp))
        if category[0] == "P" or category in ("Sm", "Sc", "Sk", "So"):
            symbols.add(chr(cp))
    return frozenset(symbols)


SYMBOLS = _symbol_characters()  # once per process, before the clock starts; workers fork it


class GopherQuality:
    """Gopher's quality rules (datatrove's GopherQualityFilter, with Tiller's words)."""

    name = "gopher_quality"
    defaults = {
        "min_words": 50, "max_words": 100000,
        "min_mean_word_length": 3, "max_mean_word_length": 10,
        "max_symbol_word_ratio": 0.1, "max_bullet_lines_ratio": 0.9,
        "max_ellipsis_lines_ratio": 0.3, "min_alpha_words_ratio": 0.8,
        "min_stop_words": 2,
        "stop_words": ["the", "be", "to", "of", "and", "that", "have", "with"],
    }
    BULLETS = ("\u2022", "\u2023", "\u25e6", "\u2043", "\u2219", "-", "*")

    def __init__(self, **settings):
        self.o = settings
        self.stop_words = frozenset(w.lower() for w in settings["stop_words"])

    def __call__(self, text):
        o = self.o
        # Words between whitespace; datatrove splits with NLTK's word tokenizer (slower), which
        # also cuts punctuation off. Tiller divides the ratios below by the non-symbol words,
        # datatrove by all words: Tiller's choice is followed here.
        words = text.split()
        non_symbol_words = [w for w in words if any(ch not in SYMBOLS for ch in w)]
        n = len(non_symbol_words)
        if n < o["min_words"] or n == 0:
            return text, f"word_count {n} < {o['min_words']}"
        if n > o["max_words"]:
            return text, f"word_count {n} > {o['max_words']}"
        mean_length = sum(len(w) for w in non_symbol_words) / n
        if mean_length < o["min_mean_word_length"]:
            return text, f"mean_word_length {mean_length:.4g} < {o['min_mean_word_length']}"
        if mean_length > o["max_mean_word_length"]:
            return text, f"mean_word_length {mean_length:.4g} > {o['max_mean_word_length']}"
        if text.count("#") / n > o["max_symbol_word_ratio"]:
            return text, "hash_word_ratio"
        if (text.count("...") + text.count("\u2026")) / n > o["max_symbol_word_ratio"]:
            return text, "ellipsis_word_ratio"
        lines = text.split("\n")
        bullets = sum(line.lstrip(ASCII_SPACE).startswith(self.BULLETS) for line in lines)
        if bullets / len(lines) > o["max_bullet_lines_ratio"]:
            return text, "bullet_lines_ratio"
        ellipses = sum(line.rstrip(ASCII_SPACE).endswith(("...", "\u2026")) for line in lines)
        if ellipses / len(lines) > o["max_ellipsis_lines_ratio"]:
            return text, "ellipsis_lines_ratio"
        alpha_words = sum(any(ch.isalpha() for ch in w) for w in words)
        if alpha_words / n < o["min_alpha_words_ratio"]:
            return text, "alpha_words_ratio"
        stop_words = sum(w.strip(string.punctuation).lower() in self.stop_words for w in words)
        if stop_words < o["min_stop_words"]:
            return text, f"stop_words {stop_words} < {o['min_stop_words']}"
        return text, ""


# datatrove's gopher_repetition_filter.py helpers, as they are there but for the n-gram join:
# datatrove's find_all_duplicate joins words with "" and counts no spaces; Tiller counts an
# n-gram's characters with its n - 1 spaces, as get_n_grams' " ".join does, and so does this.


def get_n_grams(words, n):
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def find_duplicates(pieces):
    unique, duplicate_chars, duplicate_pieces = set(), 0, 0
    for piece in pieces:
        if piece in unique:
            duplicate_chars += len(piece)
            duplicate_pieces += 1
        else:
            unique.add(piece)
    return duplicate_pieces, duplicate_chars


def find_top_duplicate(n_grams):
    top_n_gram, count = Counter(n_grams).most_common(1)[0]
    return len(top_n_gram) * count


def find_all_duplicate(words, n):
    unique, repeated_chars, i = set(), 0, 0
    while i < len(words) - n + 1:
        n_gram = " ".join(words[i:i + n])
        if n_gram in unique:
            repeated_chars += len(n_gram)
            i += n
        else:
            unique.add(n_gram)
            i += 1
    return repeated_chars


class GopherRepetition:
    """Gopher's repetition rules (datatrove's GopherRepetitionFilter)."""

    name = "gopher_repetition"
    defaults = {
        "max_dup_line_frac": 0.30, "max_dup_para_frac": 0.30,
        "max_dup_line_char_frac": 0.20, "max_dup_para_char_frac": 0.20,
        "max_top_ngram_char_frac": {"2": 0.20, "3": 0.18, "4": 0.16},
        "max_dup_ngram_char_frac": {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11,
                                    "10": 0.10},
    }
    PARAGRAPHS = re.compile(r"\n{2,}")
    LINES = re.compile(r"\n+")

    def __init__(self, **settings):
        self.o = settings
        self.top_n_grams = sorted((int(n), f) for n, f in settings["max_top_ngram_char_frac"].items())
        self.dup_n_grams = sorted((int(n), f) for n, f in settings["max_dup_ngram_char_frac"].items())

    def __call__(self, text):
        o, chars = self.o, len(text)
        if chars == 0:
            return text, ""
        paragraphs = self.PARAGRAPHS.split(text.strip())
        duplicates, duplicate_chars = find_duplicates(paragraphs)
        if duplicates / len(paragraphs) > o["max_dup_para_frac"]:
            return text, "dup_para_frac"
        if duplicate_chars / chars > o["max_dup_para_char_frac"]:
            return text, "dup_para_char_frac"
        # Tiller does not count the empty pieces at the text's ends as lines; datatrove does.
        lines = [line for line in self.LINES.split(text) if line]
        duplicates, duplicate_chars = find_duplicates(lines)
        if duplicates / max(len(lines), 1) > o["max_dup_line_frac"]:
            return text, "dup_line_frac"
        if duplicate_chars / chars > o["max_dup_line_char_frac"]:
            return text, "dup_line_char_frac"
        words = text.split()  # datatrove: NLTK's word tokenizer
        for n, fraction in self.top_n_grams:
            n_grams = get_n_grams(words, n)
            if n_grams and find_top_duplicate(n_grams) / chars > fraction:
                return text, f"top_{n}_gram_char_frac"
        for n, fraction in self.dup_n_grams:
            if find_all_duplicate(words, n) / chars > fraction:
                return text, f"dup_{n}_gram_char_frac"
        return text, ""


class PIIReplacer:
    """A regex, its replacement, and an optional validator of each match (datatrove's PII).
    `needs`: a pattern found in every match; a text without it is not scanned (re cannot skip
    ahead by itself, and most documents hold no '@', ':', '+' or digit)."""

    def __init__(self, regex, replacement, validator=None, needs=None):
        self.regex, self.replacement, self.validator = re.compile(regex), replacement, validator
        self.needs = re.compile(needs) if needs else None

    def _replace(self, match):
        if self.validator and not self.validator(match.group()):
            return match.group()
        return self.replacement

    def replace(self, text):
        if self.needs and not self.needs.search(text):
            return text
        return self.regex.sub(self._replace, text)


def _ipv6(candidate):
    # With a decimal digit, so that words of hex letters ("add::bee") are not addresses.
    if not any(ch.isdigit() for ch in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
        return True
    except ValueError:
        return False


def _phone_digits(candidate):
    return 8 <= sum(ch.isdigit() for ch in candidate) <= 15


class Pii:
    """Redaction of e-mail addresses, IP addresses (v4, v6) and phone numbers."""

    name = "pii"
    defaults = {"email": True, "ip": True, "phone": True, "email_token": "<EMAIL>",
                "ip_token": "<IP>", "phone_token": "<PHONE>"}
    OCTET = r"(?:25[0-5]|2[0-4]\d|[01]?\d?\d)"
    NOT_AFTER = r"(?<![A-Za-z0-9._])"  # an address starts a word

    def __init__(self, email, ip, phone, email_token, ip_token, phone_token):
        self.replacers = []
        if email:
            self.replacers.append(PIIReplacer(
                r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*@[A-Za-z0-9][A-Za-z0-9-]*"
                r"(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", email_token, needs="@"))
        if ip:
            self.replacers.append(PIIReplacer(
                self.NOT_AFTER + r"(?<!:)(?:" + self.OCTET + r"\.){3}" + self.OCTET
                + r"(?![A-Za-z0-9]|\.\d)", ip_token, needs=r"\d\."))
            self.replacers.append(PIIReplacer(
                self.NOT_AFTER + r"(?<!:)[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![A-Za-z0-9.])",
                ip_token, _ipv6, needs=":"))
        if phone:
            # +CC and 8-15 digits in groups; North-American (212) 555-0123, 212-555-0123, ...
            self.replacers.append(PIIReplacer(
                r"(?<![A-Za-z0-9._+-])\+\d+(?:(?:[ .-]| \(|\) ?)\d+)*(?![A-Za-z0-9])",
                phone_token, _phone_digits, needs=r"\+\d"))
            self.replacers.append(PIIReplacer(
                r"(?<![A-Za-z0-9._+-])(?:1[ .-])?(?:\([2-9]\d\d\) ?|[2-9]\d\d[ .-])"
                r"[2-9]\d\d[ .-]\d{4}(?![A-Za-z0-9]|[-.]\d)", phone_token, needs=r"\d{3}"))

    def __call__(self, text):
        for replacer in self.replacers:
            text = replacer.replace(text)
        return text, ""


STEPS = {step.name: step for step in (Normalize, Boilerplate, C4, GopherQuality,
                                      GopherRepetition, Pii)}


def make_steps(config):
    steps = []
    for name in STEP_ORDER:
        value = config.get(name, False)
        if value is False:
            continue
        settings = dict(STEPS[name].defaults)
        if isinstance(value, dict):
            settings.update(value)
        steps.append(STEPS[name](**settings))
    return steps


# ------------------------------------------------------------------------------------------------
# MinHash (datatrove's MinhashDedupSignature: shingles hashed once, then every permutation at once
# over a (shingles x permutations) numpy array). The words, shingles and hash functions are
# Tiller's (prepare/minhash.cpp), so that both sides compute the very same signatures.

MINHASH_DEFAULTS = {"shingle_words": 5, "permutations": 128, "threshold": 0.8, "seed": 1}


def banding_for(permutations, threshold):
    """Tiller's choice when bands and rows are not given: the most rows whose S-curve makes a pair
    at the threshold a candidate with probability >= 0.99."""
    for rows in range(permutations, 0, -1):
        if permutations % rows == 0:
            bands = permutations // rows
            if 1 - (1 - threshold ** rows) ** bands >= 0.99:
                return bands, rows
    return permutations, 1
# Words are the runs between ASCII whitespace and ASCII punctuation, ASCII letters lower-cased:
# on bytes, where .lower() touches only ASCII.
WORD_SEPARATORS = re.compile(rb"[\t-\r !-/:-@\[-`{-~]+")
MASK64 = (1 << 64) - 1


def hash_functions(permutations, seed):
    """Function i maps a shingle's 64-bit hash h to the high 32 bits of a_i * h + b_i mod 2^64."""

    def splitmix64(state):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return state, z ^ (z >> 31)

    a, b = [], []
    state = seed ^ 0x6D696E6861736821  # "minhash!"
    for _ in range(permutations):
        state, value = splitmix64(state)
        a.append(value | 1)
        state, value = splitmix64(state)
        b.append(value)
    return np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)


class MinHash:
    def __init__(self, shingle_words, permutations, bands, rows, threshold, seed):
        assert bands * rows == permutations, "near_dedup: bands * rows must equal permutations"
        self.n, self.seed = shingle_words, seed
        self.a, self.b = hash_functions(permutations, seed)

    def signature(self, text):
        words = [w for w in WORD_SEPARATORS.split(text.encode().lower()) if w]
        if len(words) < self.n:
            shingles = [b" ".join(words)]
        else:
            shingles = [b" ".join(words[i:i + self.n]) for i in range(len(words) - self.n + 1)]
        hashes = np.fromiter((xxhash.xxh3_64_intdigest(s, self.seed) for s in shingles),
                             dtype=np.uint64, count=len(shingles))
        # uint64 arithmetic wraps modulo 2^64, as Tiller's does.
        values = (hashes[:, None] * self.a + self.b) >> np.uint64(32)
        return values.min(axis=0).astype(np.uint32)


class NearDuplicateIndex:
    """LSH bands of the kept documents' signatures. A document sharing a band with a kept one is
    a duplicate when their signatures agree in >= threshold of the positions (Tiller verifies so
    too; datatrove's minhash clusters every band match without checking)."""

    def __init__(self, shingle_words, permutations, bands, rows, threshold, seed):
        self.bands, self.rows = bands, rows
        # Tiller's verification: the agreement a pair at the threshold reaches with probability
        # ~0.977 (2 standard errors below its mean); on full 32-bit values chance agreement is nil.
        p = threshold
        self.min_agreements = max(1, math.ceil(
            permutations * (p - 2 * math.sqrt(p * (1 - p) / permutations)) - 1e-9))
        self.buckets = [{} for _ in range(bands)]
        self.signatures = []

    def find_or_insert(self, signature):
        """The index of a kept near-duplicate, or -1 after keeping this one."""
        keys = [signature[band * self.rows:(band + 1) * self.rows].tobytes()
                for band in range(self.bands)]
        for band, key in enumerate(keys):
            for kept in self.buckets[band].get(key, ()):
                if np.count_nonzero(self.signatures[kept] == signature) >= self.min_agreements:
                    return kept
        slot = len(self.signatures)
        self.signatures.append(signature)
        for band, key in enumerate(keys):
            self.buckets[band].setdefault(key, []).append(slot)
        return -1


# ------------------------------------------------------------------------------------------------
# The workers

worker = {}  # per worker process: the steps, the tokenizer, MinHash


def init_worker(config, tokenizer_path):
    worker["steps"] = make_steps(config)
    worker["tokenizer"] = sentencepiece.SentencePieceProcessor(model_file=tokenizer_path)
    near = config.get("near_dedup", False)
    if near is not False:
        worker["minhash"] = MinHash(**minhash_settings(near))


def process_batch(documents):
    """Per document: (removed_by, text hash, signature, tokens); all but removed_by None when
    removed."""
    steps, tokenizer, minhash = worker["steps"], worker["tokenizer"], worker.get("minhash")
    out = []
    for text in documents:
        removed_by = ""
        for step in steps:
            text, reason = step(text)
            if reason:
                removed_by = step.name
                break
        if removed_by:
            out.append((removed_by, None, None, None))
            continue
        text_hash = xxhash.xxh3_64_intdigest(text.encode())
        signature = minhash.signature(text) if minhash else None
        tokens = np.array(tokenizer.encode(text, add_bos=True), dtype=np.uint16)
        out.append(("", text_hash, signature, tokens))
    return out


# ------------------------------------------------------------------------------------------------
# The main process: read, deduplicate, write


def minhash_settings(value):
    settings = dict(MINHASH_DEFAULTS)
    if isinstance(value, dict):
        settings.update(value)
    permutations = settings["permutations"]
    if "bands" not in settings and "rows" not in settings:
        settings["bands"], settings["rows"] = banding_for(permutations, settings["threshold"])
    elif "rows" not in settings:
        settings["rows"] = permutations // settings["bands"]
    elif "bands" not in settings:
        settings["bands"] = permutations // settings["rows"]
    return settings


def input_files(inputs):
    if isinstance(inputs, (str, dict)):
        inputs = [inputs]
    for spec in inputs:
        path = spec["path"] if isinstance(spec, dict) else spec
        if os.path.isdir(path):
            yield from sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
        else:
            yield path


def read_batches(files, batch_bytes, totals):
    """Lists of documents (the non-empty lines) of about batch_bytes; counts bytes read."""
    batch, size = [], 0
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                totals["bytes"] += len(line)
                line = line.rstrip(b"\n")
                if not line:
                    continue
                batch.append(line.decode("utf-8"))
                size += len(line)
                if size >= batch_bytes:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch


def tokenizer_model(path):
    return os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--output", help="write here instead of the config's output")
    parser.add_argument("--batch-bytes", type=int, default=1 << 20,
                        help="text per batch handed to a worker (default 1 MiB)")
    args = parser.parse_args()
    with open(args.config) as f:
        config = json.load(f)
    output = args.output or config["output"]
    threads = config.get("threads", 0) or os.cpu_count()
    near = config.get("near_dedup", False)

    start = time.perf_counter()
    removed = {name: 0 for name in STEP_ORDER if config.get(name, False) is not False}
    if config.get("exact_dedup", False):
        removed["exact_dedup"] = 0
    if near is not False:
        removed["near_dedup"] = 0
    seen_hashes = set()
    index = NearDuplicateIndex(**minhash_settings(near)) if near is not False else None
    totals = {"bytes": 0}
    documents = kept = tokens_written = 0
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "train.bin"), "wb") as shard, \
            Pool(threads, init_worker, (config, tokenizer_model(config["tokenizer"]))) as pool:
        batches = read_batches(input_files(config["inputs"]), args.batch_bytes, totals)
        for results in pool.imap(process_batch, batches):
            for removed_by, text_hash, signature, tokens in results:
                documents += 1
                if removed_by:
                    removed[removed_by] += 1
                    continue
                if "exact_dedup" in removed:
                    if text_hash in seen_hashes:
                        removed["exact_dedup"] += 1
                        continue
                    seen_hashes.add(text_hash)
                if index is not None and index.find_or_insert(signature) >= 0:
                    removed["near_dedup"] += 1
                    continue
                kept += 1
                tokens_written += len(tokens)
                shard.write(tokens.tobytes())
    seconds = time.perf_counter() - start
    print(json.dumps({"documents": documents, "kept": kept, "tokens": tokens_written,
                      "bytes": totals["bytes"], "threads": threads, "seconds": seconds,
                      "mb_per_s": totals["bytes"] / 1e6 / seconds, "removed": removed}))


if __name__ == "__main__":
    main()
