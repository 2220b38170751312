#!/usr/bin/env python3
"""An independent GGUF v3 reader for Tiller's export (tests/gguf_test.cpp runs it).

Written from the GGUF specification (ggml's docs/gguf.md) and llama.cpp's conventions, sharing no
code with Tiller: it parses the header, every metadata key and tensor record, checks the layout
(alignment, offsets back to back in order, the data ending the file), compares every tensor with
the Hugging Face directory it came from (read here from safetensors), re-quantising q8_0 and q4_0
with ggml's reference algorithm and comparing the blocks byte for byte, and, given a prompt, runs
the model from the GGUF alone (its vocabulary, SentencePiece-BPE encoding by scores, Meta's
interleaved RoPE) greedily, as llama2.c's run.c does. Prints one JSON object; exits 1 with a
message on the first inconsistency.

A byte-level BPE vocabulary (tokenizer.ggml.model = gpt2) is checked against the directory's
tokenizer.json, tokenizer_config.json and config.json, read here as llama.cpp's converter reads
them (convert_hf_to_gguf.py's get_vocab_base and gguf-py's SpecialVocab): every token and its
type, every merge in rank order, the special ids, add_bos_token, the chat template, and
tokenizer.ggml.pre as llama.cpp names the pre-tokenizer (llama-vocab.cpp's pre-types whose
regexes it reproduces).

Given --encode TEXTS (a file holding a JSON list of texts), it instead encodes each text from a gpt2 vocabulary's metadata
alone, as llama.cpp's BPE tokenizer does (llama-vocab.cpp: added tokens first, then the split
regexes of the file's tokenizer.ggml.pre, byte-level symbols, merges by rank), and prints the ids:
the test compares them with Tiller's tokenizer. That mode needs only the `regex` module (PyPI or
Debian's python3-regex), not numpy.

  gguf_reader.py FILE.gguf --hf DIR [--prompt TEXT --total-tokens N]
  gguf_reader.py FILE.gguf --encode TEXTS
"""
import argparse
import json
import struct
import sys

try:
    import numpy as np
except ImportError:  # --encode needs no numpy
    np = None

TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 8: ("Q8_0", 32, 34), 30: ("BF16", 1, 2)}
VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def fail(message):
    print("gguf_reader: " + message, file=sys.stderr)
    sys.exit(1)


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n, what):
        if self.pos + n > len(self.data):
            fail(f"file ends inside {what} at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt, what):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what):
        return self.take(self.scalar("<Q", what), what).decode("utf-8")

    def value(self, kind, what):
        if kind == 8:
            return self.string(what)
        if kind == 9:
            element, count = self.scalar("<I", what), self.scalar("<Q", what)
            return [self.value(element, what) for _ in range(count)]
        if kind not in VALUE_FORMATS:
            fail(f"{what}: unknown value type {kind}")
        return self.scalar(VALUE_FORMATS[kind], what)


def parse(path):
    data = open(path, "rb").read()
    r = Reader(data)
    if r.take(4, "magic") != b"GGUF":
        fail("no GGUF magic")
    version = r.scalar("<I", "version")
    n_tensors, n_kv = r.scalar("<Q", "tensor count"), r.scalar("<Q", "metadata count")
    metadata, types = {}, {}
    for _ in range(n_kv):
        key = r.string("key")
        kind = r.scalar("<I", key)
        if key in metadata:
            fail(f"metadata key {key} twice")
        metadata[key], types[key] = r.value(kind, key), kind
    tensors = []
    for _ in range(n_tensors):
        name = r.string("tensor name")
        dims = [r.scalar("<Q", name) for _ in range(r.scalar("<I", name))]
        kind, offset = r.scalar("<I", name), r.scalar("<Q", name)
        if kind not in TYPES:
            fail(f"{name}: unknown ggml type {kind}")
        tensors.append({"name": name, "ne": dims, "type": kind, "offset": offset})
    alignment = metadata.get("general.alignment", 32)
    start = (r.pos + alignment - 1) // alignment * alignment
    expected = 0
    for t in tensors:
        _, block, size = TYPES[t["type"]]
        count = 1
        for n in t["ne"]:
            count *= n
        if t["ne"][0] % block:
            fail(f"{t['name']}: rows of {t['ne'][0]} are not whole blocks of {block}")
        t["bytes"] = count // block * size
        if t["offset"] % alignment or t["offset"] != expected:
            fail(f"{t['name']}: offset {t['offset']}, expected {expected} (aligned to {alignment})")
        expected = (t["offset"] + t["bytes"] + alignment - 1) // alignment * alignment
        t["raw"] = data[start + t["offset"]:start + t["offset"] + t["bytes"]]
        if len(t["raw"]) != t["bytes"]:
            fail(f"{t['name']}: data runs past the end of the file")
    last = tensors[-1]
    if start + last["offset"] + last["bytes"] != len(data):
        fail(f"the file has {len(data) - start - last['offset'] - last['bytes']} bytes after the last tensor")
    return version, metadata, types, tensors


def fp16_bits(values):
    return np.asarray(values, dtype=np.float32).astype(np.float16).view(np.uint16)


def bf16_bits(values):
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def quantize_q8_0(x):
    out = bytearray()
    for block in x.reshape(-1, 32):
        d = np.float32(np.abs(block).max()) / np.float32(127)
        inv = np.float32(1) / d if d else np.float32(0)
        out += fp16_bits([d]).tobytes()
        v = (block * inv).astype(np.float64)
        out += (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8).tobytes()  # roundf: halves away from 0
    return bytes(out)


def quantize_q4_0(x):
    out = bytearray()
    for block in x.reshape(-1, 32):
        i = int(np.argmax(np.abs(block)))  # the first of largest magnitude, as ggml's strict <
        d = np.float32(block[i]) / np.float32(-8)
        inv = np.float32(1) / d if d else np.float32(0)
        q = np.minimum(15, (block * inv + np.float32(8.5)).astype(np.int8))
        out += fp16_bits([d]).tobytes()
        out += (q[:16].astype(np.uint8) | (q[16:].astype(np.uint8) << 4)).tobytes()
    return bytes(out)


def dequantize(t):
    name, _, _ = TYPES[t["type"]]
    raw, shape = t["raw"], t["ne"][::-1]
    if name == "F32":
        return np.frombuffer(raw, np.float32).reshape(shape)
    if name == "F16":
        return np.frombuffer(raw, np.float16).astype(np.float32).reshape(shape)
    if name == "BF16":
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, 34 if name == "Q8_0" else 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if name == "Q8_0":
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    else:
        low, high = blocks[:, 2:] & 15, blocks[:, 2:] >> 4
        q = np.concatenate([low, high], axis=1).astype(np.float32) - 8
    return (q * d).reshape(shape)


def read_safetensors(directory):
    import os
    out = {}
    files = [f for f in sorted(os.listdir(directory)) if f.endswith(".safetensors")]
    for f in files:
        data = open(os.path.join(directory, f), "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            if entry["dtype"] != "F32":
                fail(f"{f}: {key} is {entry['dtype']}; this reader compares F32 directories")
            begin, end = entry["data_offsets"]
            out[key] = np.frombuffer(data[8 + n + begin:8 + n + end], np.float32).reshape(entry["shape"])
    return out


def meta_to_hf(w, heads):
    """Meta's interleaved rotary rows -> Hugging Face's rotate_half rows (undoes llama.cpp's permute)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def hf_to_meta(w, heads):
    """Hugging Face's rotate_half rows -> Meta's interleaved ones (llama.cpp's permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(w.shape)


def hf_name(name, m):
    if name == "token_embd.weight":
        return "model.embed_tokens.weight", None
    if name == "output_norm.weight":
        return "model.norm.weight", None
    if name == "output.weight":
        return "lm_head.weight", None
    _, layer, part, _ = name.split(".")
    table = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    heads = {"attn_q": m["llama.attention.head_count"], "attn_k": m["llama.attention.head_count_kv"]}.get(part)
    return f"model.layers.{layer}.{table[part]}.weight", heads


def compare(tensors, metadata, hf):
    errors, unused = {}, set(hf)
    for t in tensors:
        name, heads = hf_name(t["name"], metadata)
        if name not in hf:
            fail(f"{t['name']}: the HF directory has no {name}")
        unused.discard(name)
        expected = hf[name]
        got = dequantize(t)
        if got.shape != expected.shape:
            fail(f"{t['name']}: shape {got.shape}, HF {expected.shape}")
        if heads:
            got = meta_to_hf(got, heads)
        kind = TYPES[t["type"]][0]
        source = hf_to_meta(expected, heads) if heads else expected  # the file's row order
        flat = np.ascontiguousarray(source, dtype=np.float32).reshape(-1)
        want = {"F32": lambda: flat.tobytes(), "F16": lambda: fp16_bits(flat).tobytes(),
                "BF16": lambda: bf16_bits(flat).tobytes(), "Q8_0": lambda: quantize_q8_0(flat),
                "Q4_0": lambda: quantize_q4_0(flat)}[kind]()
        if want != t["raw"]:
            fail(f"{t['name']} ({kind}): its bytes differ from the reference encoding of {name}")
        scale = float(np.abs(expected).max()) or 1.0
        errors[kind] = max(errors.get(kind, 0.0), float(np.abs(got - expected).max()) / scale)
    if unused:
        fail(f"HF weights not in the file: {sorted(unused)}")
    return errors


def flatten(pre):
    if pre.get("type") == "Sequence":
        return [step for inner in pre.get("pretokenizers", []) for step in flatten(inner)]
    return [pre]


LETTERS_THEN = r"|[^\r\n\p{L}\p{N}]?\p{L}+|"
PUNCTUATION_AND_SPACES = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
CONTRACTIONS = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])")


def pre_name(pre):
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None."""
    steps = flatten(pre)

    def byte_level(step, use_regex):
        return (step.get("type") == "ByteLevel" and step.get("add_prefix_space", True) is False
                and step.get("use_regex", True) is use_regex)

    if len(steps) == 1 and byte_level(steps[0], True):
        return "gpt-2"
    if (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") is True
            and byte_level(steps[1], True)):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and byte_level(steps[1], False):
        regex = steps[0].get("pattern", {}).get("Regex", "")
        for contractions in CONTRACTIONS:
            for digits, name in ((r"\p{N}{1,3}", "llama-bpe"), (r"\p{N}", "qwen2")):
                if regex == contractions + LETTERS_THEN + digits + PUNCTUATION_AND_SPACES:
                    return name
    return None


def looks_special(token):
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def check_gpt2_vocabulary(m, directory):
    import os
    tj = json.load(open(os.path.join(directory, "tokenizer.json"), encoding="utf-8"))
    config_path = os.path.join(directory, "tokenizer_config.json")
    tc = json.load(open(config_path, encoding="utf-8")) if os.path.exists(config_path) else {}
    config = json.load(open(os.path.join(directory, "config.json"), encoding="utf-8"))
    n = m["llama.vocab_size"]
    by_id = {i: (t, 1) for t, i in tj["model"]["vocab"].items()}
    added = tj.get("added_tokens", [])
    for a in added:
        by_id[a["id"]] = (a["content"], 3 if a.get("special") or looks_special(a["content"]) else 4)
    tokens = [by_id[i][0] if i in by_id else f"[PAD{i}]" for i in range(n)]
    types = [by_id[i][1] if i in by_id else 5 for i in range(n)]
    for key, want in (("tokenizer.ggml.tokens", tokens), ("tokenizer.ggml.token_type", types)):
        got = m.get(key)
        if got is None or len(got) != n:
            fail(f"{key}: {None if got is None else len(got)} entries, expected {n}")
        for i in range(n):
            if got[i] != want[i]:
                fail(f"{key}[{i}] is {got[i]!r}, expected {want[i]!r}")
    merges = [x if isinstance(x, str) else " ".join(x) for x in tj["model"].get("merges", [])]
    if m.get("tokenizer.ggml.merges") != merges:
        got = m.get("tokenizer.ggml.merges") or []
        first = next((i for i in range(min(len(got), len(merges))) if got[i] != merges[i]), None)
        fail(f"tokenizer.ggml.merges: {len(got)} merges, expected {len(merges)}; first difference at {first}")
    if m.get("tokenizer.ggml.model") != "gpt2" or "tokenizer.ggml.scores" in m:
        fail("a byte-level BPE vocabulary is model gpt2 without scores")
    pre = pre_name(tj["pre_tokenizer"])
    if m.get("tokenizer.ggml.pre") != pre:
        fail(f"tokenizer.ggml.pre is {m.get('tokenizer.ggml.pre')!r}, expected {pre!r}")
    ids = {}
    for kind, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        entry = tc.get(f"{kind}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        found = next((a["id"] for a in added if content is not None and a["content"] == content), None)
        if found is None and isinstance(config.get(f"{kind}_token_id"), int):
            found = config[f"{kind}_token_id"]
        if m.get(f"tokenizer.ggml.{key}_token_id") != found:
            fail(f"tokenizer.ggml.{key}_token_id is {m.get(f'tokenizer.ggml.{key}_token_id')}, expected {found}")
        ids[kind] = found
    processors, template_bos = [tj.get("post_processor")], False
    while processors:
        p = processors.pop()
        if isinstance(p, dict):
            processors += p.get("processors", [])
            single = p.get("single") if p.get("type") == "TemplateProcessing" else None
            template_bos = template_bos or bool(single and "SpecialToken" in single[0])
    add_bos = template_bos or (tc.get("add_bos_token") is True and ids["bos"] is not None)
    if m.get("tokenizer.ggml.add_bos_token") is not add_bos:
        fail(f"tokenizer.ggml.add_bos_token is {m.get('tokenizer.ggml.add_bos_token')}, expected {add_bos}")
    if m.get("tokenizer.ggml.add_eos_token") is not (tc.get("add_eos_token") is True):
        fail("tokenizer.ggml.add_eos_token differs from tokenizer_config.json's")
    template = tc.get("chat_template")
    if isinstance(template, list):  # named templates, as gguf-py's add_chat_template writes them
        named, template = {}, None
        for choice in tc["chat_template"]:
            name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
            if name == "default":
                template = choice["template"]
            elif name:
                named[name] = choice["template"]
        for name, text in named.items():
            if m.get(f"tokenizer.chat_template.{name}") != text:
                fail(f"tokenizer.chat_template.{name} differs from tokenizer_config.json's")
        if sorted(m.get("tokenizer.chat_templates", [])) != sorted(named):
            fail(f"tokenizer.chat_templates is {m.get('tokenizer.chat_templates')}, expected {sorted(named)}")
    if m.get("tokenizer.chat_template") != template:
        fail("tokenizer.chat_template differs from tokenizer_config.json's chat_template")
    return {"tokens": n, "merges": len(merges), "pre": pre, "special_ids": ids,
            "types": {str(t): types.count(t) for t in sorted(set(types))}}


# llama-vocab.cpp's split regexes of the pre-types, applied in turn (each splits every piece into
# its matches and the text between them).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
SPLIT_REGEXES = {
    "gpt-2": [GPT2_REGEX],
    "smollm": [r"\p{N}", GPT2_REGEX],
    "llama-bpe": [CONTRACTIONS[1] + LETTERS_THEN + r"\p{N}{1,3}" + PUNCTUATION_AND_SPACES],
    "qwen2": [CONTRACTIONS[1] + LETTERS_THEN + r"\p{N}" + PUNCTUATION_AND_SPACES],
}


def byte_symbols():
    """GPT-2's bytes_to_unicode."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def split_words(text, regexes):
    import regex
    words = [text]
    for expression in regexes:
        pattern, out = regex.compile(expression), []
        for word in words:
            at = 0
            for match in pattern.finditer(word):
                if match.start() > at:
                    out.append(word[at:match.start()])
                if match.end() > match.start():
                    out.append(match.group())
                at = match.end()
            if at < len(word):
                out.append(word[at:])
        words = out
    return words


def encode_gpt2(text, m):
    """Ids of `text` from the file's gpt2 vocabulary alone, as llama.cpp's BPE tokenizer."""
    tokens, types = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"]
    index = {t: i for i, t in enumerate(tokens) if types[i] in (1, 3, 4)}
    ranks = {tuple(merge.split(" ", 1)): rank for rank, merge in enumerate(m["tokenizer.ggml.merges"])}
    added = sorted((i for i, t in enumerate(types) if t in (3, 4)), key=lambda i: -len(tokens[i]))
    symbols, pre = byte_symbols(), m["tokenizer.ggml.pre"]
    ids, plain, at = [], "", 0
    while at < len(text):
        found = next((i for i in added if text.startswith(tokens[i], at)), None)
        if found is None:
            plain += text[at]
            at += 1
            continue
        ids += encode_plain(plain, index, ranks, symbols, pre)
        ids.append(found)
        plain, at = "", at + len(tokens[found])
    return ids + encode_plain(plain, index, ranks, symbols, pre)


def encode_plain(text, index, ranks, symbols, pre):
    out = []
    for word in split_words(text, SPLIT_REGEXES[pre]) if text else []:
        parts = [symbols[b] for b in word.encode("utf-8")]  # one symbol a byte
        if pre == "llama-bpe" and "".join(parts) in index:  # llama.cpp ignores merges for llama-bpe
            out.append(index["".join(parts)])
            continue
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: (ranks.get((parts[i], parts[i + 1]), 1 << 62), i))
            if (parts[best], parts[best + 1]) not in ranks:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        out += [index[part] for part in parts]
    return out


def encode(text, pieces, scores):
    """SentencePiece BPE by scores, as llama2.c's encode: characters (or their bytes), then merges."""
    index = {p: i for i, p in enumerate(pieces)}
    ids = []
    for ch in "\u2581" + text.replace(" ", "\u2581"):
        if ch in index:
            ids.append(index[ch])
        else:
            ids += [index[f"<0x{b:02X}>"] for b in ch.encode("utf-8")]
    while True:
        best, best_score = None, -1e30
        for i in range(len(ids) - 1):
            merged = pieces[ids[i]] + pieces[ids[i + 1]]
            if merged in index and scores[index[merged]] > best_score:
                best, best_score = i, scores[index[merged]]
        if best is None:
            return ids
        ids[best:best + 2] = [index[pieces[ids[best]] + pieces[ids[best + 1]]]]


def decode_piece(piece, previous_is_bos):
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        return bytes([int(piece[3:5], 16)])
    text = piece.replace("\u2581", " ")
    if previous_is_bos and text.startswith(" "):
        text = text[1:]
    return text.encode("utf-8")


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(weights, m, ids):
    """Logits of the last position, the whole sequence recomputed (no cache): llama with Meta's RoPE."""
    dim, heads = m["llama.embedding_length"], m["llama.attention.head_count"]
    kv_heads, eps = m["llama.attention.head_count_kv"], m["llama.attention.layer_norm_rms_epsilon"]
    hd, theta, n = dim // heads, m["llama.rope.freq_base"], len(ids)
    x = weights["token_embd.weight"][ids].astype(np.float64)
    freqs = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    angles = np.arange(n)[:, None] * freqs[None, :]
    cos, sin = np.cos(angles), np.sin(angles)

    def rope(v):  # v: [n, h, hd], pairs (2i, 2i+1) rotated
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(m["llama.block_count"]):
        w = lambda part: weights[f"blk.{layer}.{part}.weight"]
        h = rms_norm(x, w("attn_norm"), eps)
        q = rope((h @ w("attn_q").T).reshape(n, heads, hd))
        k = rope((h @ w("attn_k").T).reshape(n, kv_heads, hd))
        v = (h @ w("attn_v").T).reshape(n, kv_heads, hd)
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(n, dim) @ w("attn_output").T
        h = rms_norm(x, w("ffn_norm"), eps)
        gate = h @ w("ffn_gate").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w("ffn_up").T)) @ w("ffn_down").T
    x = rms_norm(x[-1], weights["output_norm.weight"], eps)
    head = weights.get("output.weight", weights["token_embd.weight"])
    return head @ x


def greedy(tensors, m, prompt, total):
    """BOS, the prompt, then greedy tokens until `total` tokens (llama2.c's run.c with steps =
    total - 1 forwards); the text as run.c prints it."""
    weights = {t["name"]: dequantize(t).astype(np.float64) for t in tensors}
    pieces, scores = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.scores"]
    ids = [m["tokenizer.ggml.bos_token_id"]] + encode(prompt, pieces, scores)
    text = b""
    for i in range(1, len(ids)):
        text += decode_piece(pieces[ids[i]], ids[i - 1] == ids[0])
    while len(ids) < total:
        ids.append(int(np.argmax(forward(weights, m, ids))))
        text += decode_piece(pieces[ids[-1]], ids[-2] == m["tokenizer.ggml.bos_token_id"])
    return text.decode("utf-8", errors="replace")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--hf")
    parser.add_argument("--encode")
    parser.add_argument("--prompt")
    parser.add_argument("--total-tokens", type=int, default=0)
    a = parser.parse_args()
    version, metadata, types, tensors = parse(a.gguf)
    if a.encode:
        print(json.dumps([encode_gpt2(text, metadata) for text in json.load(open(a.encode, encoding="utf-8"))]))
        return
    if not a.hf:
        fail("--hf DIR is required (or --encode TEXTS)")
    report = {"version": version,
              "metadata": {k: (v if not isinstance(v, list) else {"array": len(v), "first": v[:3]})
                           for k, v in metadata.items()},
              "metadata_types": types,
              "tensors": [{k: t[k] for k in ("name", "ne", "type", "offset")} for t in tensors],
              "relative_error": compare(tensors, metadata, read_safetensors(a.hf))}
    if metadata.get("tokenizer.ggml.model") == "gpt2":
        report["gpt2_vocabulary"] = check_gpt2_vocabulary(metadata, a.hf)
    if a.prompt:
        report["greedy"] = greedy(tensors, metadata, a.prompt, a.total_tokens)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
