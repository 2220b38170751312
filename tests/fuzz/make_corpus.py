#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/ (small valid files and edge cases).

Run from the repository root; the tokenizer seeds come from a model trained by `tiller`, passed
as --tokenizer (optional: without it the tokenizer corpus is left as it is).
"""
import argparse, gzip, json, os, shutil, struct

ROOT = None  # --out


def put(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def safetensors(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def seeds_safetensors():
    f32 = struct.pack("<6f", *range(6))
    put("safetensors", "f32_2x3", safetensors({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, f32))
    put("safetensors", "two_with_metadata", safetensors({
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]},
        "b": {"dtype": "I64", "shape": [1, 1], "data_offsets": [8, 16]},
        "e": {"dtype": "F16", "shape": [0, 7], "data_offsets": [16, 16]}}, bytes(range(16))))
    put("safetensors", "every_dtype", safetensors({
        d: {"dtype": d, "shape": [1], "data_offsets": [i * 8, i * 8 + s]}
        for i, (d, s) in enumerate([("F64", 8), ("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8),
                                     ("I32", 4), ("I16", 2), ("I8", 1), ("U8", 1), ("BOOL", 1)])},
        bytes(80)))
    put("safetensors", "overlap", safetensors({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
    put("safetensors", "huge_shape", safetensors({"w": {"dtype": "F64", "shape": [1099511627776, 2097152], "data_offsets": [0, 0]}}))
    put("safetensors", "short_length", b"\x10\x00\x00")
    put("safetensors", "empty_header", struct.pack("<Q", 2) + b"{}")


def seeds_model_config():
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
             "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5,
             "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 512,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
             "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    put("model_config", "llama.json", json.dumps(llama, indent=1))
    put("model_config", "qwen2.json", json.dumps(dict(llama, model_type="qwen2", attention_bias=True,
                                                       head_dim=16, eos_token_id=[2, 3])))
    put("model_config", "reward.json", json.dumps(dict(llama, architectures=["LlamaForSequenceClassification"],
                                                        num_labels=1, pad_token_id=0)))
    put("model_config", "mistral_nulls.json", json.dumps(dict(llama, model_type="mistral", pad_token_id=None,
                                                               sliding_window=None)))
    put("model_config", "wrong_types.json", json.dumps(dict(llama, hidden_size=64.5, num_hidden_layers=True)))
    put("model_config", "huge_head_dim.json", json.dumps(dict(llama, head_dim=4611686018427387904)))


def llama2c(dim=8, hidden=16, layers=1, heads=2, kv=2, vocab=8, seq=4, shared=True, v1=False):
    hd = dim // heads
    n = vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * hd * dim + 3 * hidden * dim) + dim
    if not shared:
        n += vocab * dim
    if v1:
        head = struct.pack("<Ii7iB", 0x616b3432, 1, dim, hidden, layers, heads, kv, vocab, seq, int(shared))
        head += bytes(256 - len(head))
    else:
        head = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq)
        n += seq * hd
    return head + struct.pack("<%df" % n, *[((i * 37) % 101) / 101.0 for i in range(n)])


def seeds_llama2c():
    put("llama2c", "legacy_shared.bin", llama2c())
    put("llama2c", "legacy_unshared_gqa.bin", llama2c(heads=2, kv=1, shared=False))
    put("llama2c", "v1.bin", llama2c(v1=True))
    put("llama2c", "truncated.bin", llama2c()[:100])
    put("llama2c", "bad_version.bin", struct.pack("<Ii", 0x616b3432, 2) + bytes(300))


def llama2c_tokenizer(entries, max_length=8):
    out = struct.pack("<i", max_length)
    for score, piece in entries:
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


def seeds_llama2c_tokenizer():
    vocab = [(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n"), (0.0, b"<0x41>"),
             (-1.0, b" t"), (-2.0, b"he"), (-3.0, b"\xc3\xa9")]
    put("llama2c_tokenizer", "small.bin", llama2c_tokenizer(vocab))
    put("llama2c_tokenizer", "repeated.bin", llama2c_tokenizer(vocab + [(-4.0, b"he")]))
    put("llama2c_tokenizer", "no_unk.bin", llama2c_tokenizer(vocab[1:]))
    put("llama2c_tokenizer", "truncated.bin", llama2c_tokenizer(vocab)[:-3])


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def seeds_data():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, who are you?"},
            {"role": "assistant", "content": "A little fox."}]
    put("sft_data", "messages.jsonl", jsonl([{"messages": msgs}, {"messages": msgs[1:]}]))
    put("sft_data", "prompt_completion.jsonl", jsonl([{"prompt": "Say hi", "completion": "Hi!"},
                                                      {"prompt": msgs[:2], "completion": msgs[2:]}]))
    put("sft_data", "alpaca.jsonl", jsonl([{"instruction": "Name a color", "input": "", "output": "Red"},
                                           {"instruction": "Add", "input": "2+2", "output": "4"}]))
    put("sft_data", "array.json", json.dumps([{"messages": msgs}, {"text": "Once upon a time."}]))
    put("sft_data", "text.jsonl", jsonl([{"text": "Once upon a time a fox found a ball."}]))
    put("sft_data", "bad_lines.jsonl", '{"messages": [}\n\n{"messages": "x"}\n' + jsonl([{"messages": msgs}]))
    put("sft_data", "messages.jsonl.gz", gzip.compress(jsonl([{"messages": msgs}]).encode(), mtime=0))

    hh_c = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 4."
    hh_r = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 5."
    put("preference_data", "strings.jsonl", jsonl([{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "margin": 1.5},
                                                   {"prompt": "x", "chosen": "same", "rejected": "same"}]))
    put("preference_data", "messages.jsonl", jsonl([{"prompt": msgs[:2], "chosen": msgs[2:],
                                                     "rejected": [{"role": "assistant", "content": "A cat."}]}]))
    put("preference_data", "no_prompt.jsonl", jsonl([{"chosen": msgs, "rejected": msgs[:2] + [{"role": "assistant", "content": "?"}]}]))
    put("preference_data", "hh.jsonl", jsonl([{"chosen": hh_c, "rejected": hh_r}]))
    put("preference_data", "long_prompt.jsonl", jsonl([{"prompt": "word " * 200, "chosen": "a", "rejected": "b"}]))

    def oasst(mid, role, rank=None, deleted=False, replies=()):
        return {"message_id": mid, "role": role, "text": "text of " + mid, "deleted": deleted,
                "rank": rank, "replies": list(replies)}
    tree = oasst("P0", "prompter", replies=[
        oasst("A1", "assistant", 0, replies=[oasst("P1", "prompter", replies=[
            oasst("A11", "assistant", 1), oasst("A12", "assistant", 0), oasst("A13", "assistant", 0)])]),
        oasst("A2", "assistant", 1), oasst("A3", "assistant", None, True), oasst("A4", "assistant")])
    def flat(message, parent):
        row = {k: v for k, v in message.items() if k != "replies"}
        row["parent_id"] = parent
        return [row] + [r for reply in message["replies"] for r in flat(reply, message["message_id"])]
    put("ranking_data", "best_first.jsonl", jsonl([{"prompt": "Say hi", "responses": ["Hi!", "Hello.", "No."]},
                                                   {"prompt": msgs[:2], "responses": [msgs[2:], "A cat."]}]))
    put("ranking_data", "ranks.jsonl", jsonl([{"prompt": "Q", "responses": ["a", "b", "c", "d"], "ranks": [2, 0, 1, 1]}]))
    put("ranking_data", "oasst_trees.jsonl", jsonl([{"message_tree_id": "P0", "prompt": tree}]))
    put("ranking_data", "oasst_messages.jsonl", jsonl(flat(tree, None)))

    put("prompt_data", "prompt.jsonl", jsonl([{"prompt": "Tell me a story."}, {"prompt": msgs[:2]}]))
    put("prompt_data", "messages.jsonl", jsonl([{"messages": msgs}]))
    put("prompt_data", "alpaca.jsonl", jsonl([{"instruction": "Name a color", "input": "warm"}]))
    put("prompt_data", "hh.jsonl", jsonl([{"chosen": hh_c}]))
    put("prompt_data", "mixed_bad.jsonl", jsonl([{"prompt": 5}, {"messages": [{"role": "assistant", "content": "x"}]}]) + "not json\n")


def seeds_recipes(repo):
    for name in sorted(os.listdir(os.path.join(repo, "recipes"))):
        if name.endswith(".json"):
            with open(os.path.join(repo, "recipes", name), "rb") as f:
                put("recipe", name, f.read())
    with open(os.path.join(repo, "recipes", "quickstart.json")) as f:
        quick = f.read()
    put("recipe", "quickstart_overrides", quick.rstrip("\n") + "\n%%\nsft.train.steps=3\nrun.name=x\n"
        "stages.0.name=\"p\"\nreward.data.format=hh\nnot_an_override\nrun.seed.x=1\n")
    put("recipe", "stage_name_number", '{"stages": [{"name": 5, "type": "sft"}]}\n%%\nx.a=1\n')
    # Once a crash: a number beyond double's range (nlohmann throws out_of_range, not parse_error).
    put("recipe", "number_overflow", '{"stages": [{"mean": 665E666, "name": "x"}]}\n%%\nx.a=1e999\n')
    put("recipe", "minimal_errors.json", '// comment\n{"run": {"name": 5}, "stages": [{"name": "s", "type": "sft", "bogus": 1}]}\n')
    for name in sorted(os.listdir(os.path.join(repo, "recipes"))):
        if name.endswith(".yaml"):
            with open(os.path.join(repo, "recipes", name), "rb") as f:
                text = f.read()
            put("yaml_recipe", name, text)
            put("yaml_recipe", name + "_overrides", text.rstrip(b"\n") + b"\n%%\nsft.train.steps=3\nppo.kl.beta=x\n")
    # Once a crash: an override whose value is not UTF-8 (the resolved recipe could not be printed).
    put("yaml_recipe", "override_not_utf8", b"stages:\n- {name: ppo, type: rlhf}\n%%\nppo.kl.beta=\xff\n")
    put("yaml_recipe", "refusals.yaml", "a: &x 1\nb: *x\n<<: {c: 1}\nd: .nan\n1: e\nf: !!int 3\na: 2\n? [g]\n: h\n---\ni: 1\n")
    put("yaml_recipe", "scalars.yaml", "run: {name: r, seed: 0x10, threads: 0o1, dir: ~}\nstages:\n- {name: s, type: sft, train: {lr: 1e-4, steps: '3'}}\n")
    put("yaml_recipe", "syntax.yaml", "stages:\n\t- name: s\n  - [1, 2\n")


def byte_symbols():
    """GPT-2's bytes_to_unicode."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    codes, n = {}, 0
    for b in range(256):
        if b in printable:
            codes[b] = b
        else:
            codes[b] = 256 + n
            n += 1
    return [chr(codes[b]) for b in range(256)]


def seeds_tokenizer_json():
    sym = byte_symbols()
    vocab = {sym[b]: b for b in range(256)}
    merges = []
    for left, right in [("t", "h"), ("th", "e"), (" ", "the"), ("1", "2"), ("\n", "\n")]:
        merges.append(" ".join("".join(sym[c] for c in part.encode()) for part in (left, right)))
        vocab.setdefault("".join(sym[c] for c in (left + right).encode()), len(vocab))
    added = [{"id": 300 + i, "content": c, "single_word": False, "lstrip": i == 1, "rstrip": i == 1,
              "normalized": False, "special": i < 2} for i, c in enumerate(["<|end|>", "<s>", "[X]"])]
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": llama3}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    tok = {"added_tokens": added, "normalizer": {"type": "NFC"}, "pre_tokenizer": pre,
           "model": {"type": "BPE", "ignore_merges": True, "vocab": vocab, "merges": merges}}
    put("tokenizer_json", "llama3_like.json", json.dumps(tok, ensure_ascii=False))
    # cl100k_base's pattern as a converted tokenizer.json keeps it (`{1,3}+`, possessives, `$`),
    # with Claude's NFKC.
    cl100k = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
    pre["pretokenizers"][0]["pattern"]["Regex"] = cl100k
    put("tokenizer_json", "cl100k_like.json",
        json.dumps(dict(tok, normalizer={"type": "NFKC"}), ensure_ascii=False))
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}
    tok["normalizer"] = None
    tok["model"]["merges"] = [m.split(" ") for m in merges]
    put("tokenizer_json", "gpt2_like.json", json.dumps(tok, ensure_ascii=False))


def seeds_tokenizer(model):
    with open(model, "rb") as f:
        data = f.read()
    put("tokenizer", "tokenizer.model", data)
    put("tokenizer", "truncated.model", data[: len(data) // 3])


def seeds_math_answer():
    put("math_answer", "gsm8k", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72")
    put("math_answer", "boxed_frac", "So the answer is $\\boxed{-\\dfrac{3}{4}}$ cm.")
    put("math_answer", "units", "The total is $1,234.50 dollars, or 50% \u2212 2e3 apples, 3/4 \\text{ kg}")
    put("math_answer", "latex", "\\fbox{x = 1{,}234\\!5} \\boxed 7$ \\frac34 \\text{\\textbf{(B)}}")
    put("math_answer", "list", "\\boxed{1, 2, (3,4)}1,2,3")


def seeds_jinja(repo):
    """The real chat templates of tests/chat_templates/ and a few constructs and errors."""
    folder = os.path.join(repo, "tests", "chat_templates")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                put("jinja", name[:-5], json.load(f)["chat_template"])
    put("jinja", "constructs", "{% macro m(a, b=1) %}{{ a ~ b }}{% endmacro %}{% set ns = namespace(n=0) %}"
        "{% for x in messages if x.role != 'system' %}{% set ns.n = ns.n + 1 %}{{ m(x.content | trim, loop.index) }}"
        "{% if loop.last %}{{ ns.n }}{% endif %}{% endfor %}{{ messages[1:] | map(attribute='role') | join(',') }}"
        "{{ {'a': [1, 2.5, none]} | tojson(indent=2) }}{{ 'a b'.split() }}{% if add_generation_prompt %}>{% endif %}")
    put("jinja", "unsupported", "{% include 'x' %}{{ x | nope }}{% raw %}")
    put("jinja", "recursion", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}")


def seeds_prepare():
    # The first byte picks the kind: 0 lines, 1 paragraphs, 2 whole file, 3 JSONL, 4 gzip.
    prose = ("Once upon a time, the little fox and the bear went to the river with a red ball. "
             "They played all day and were happy. Write to fox@example.com or call +1 555 123 4567.\n")
    put("prepare", "lines", b"\x00" + (prose * 3).encode())
    put("prepare", "paragraphs", b"\x01" + (prose + "\n" + prose + "\n\n\n" + prose).encode())
    put("prepare", "file_repetitive", b"\x02" + ("the same line again\n" * 40).encode())
    put("prepare", "jsonl", b"\x03" + jsonl([{"text": prose}, {"text": 3}, {"other": "x"}]).encode())
    put("prepare", "gzip", b"\x04" + gzip.compress((prose * 2).encode(), mtime=0))
    put("prepare", "not_utf8_skipped", b"\x80caf\xc3\x28 au lait\n" + prose.encode())
    put("prepare", "nfc_and_controls", b"\x00" + "cafe\u0301 \u200b\x07 na\u00efve\r\n".encode() * 4)


def shard_pair(tokens, offsets, fingerprint=0x1234, vocab=400, width=2):
    fmt = "<H" if width == 2 else "<I"
    body = b"".join(struct.pack(fmt, t) for t in tokens)
    bin_ = (b"TLRSHARD" + struct.pack("<IIQQQ", 1, width, len(tokens), fingerprint, vocab)).ljust(64, b"\0") + body
    idx = (b"TLRINDEX" + struct.pack("<IIQQQ", 1, 0, len(offsets) - 1, len(tokens), fingerprint)).ljust(64, b"\0")
    idx += b"".join(struct.pack("<Q", o) for o in offsets)
    return struct.pack("<I", len(bin_)) + bin_ + idx


def gguf(metadata=(), tensors=(), version=3, alignment=32):
    """A GGUF file: metadata as (key, type, packed value bytes), tensors as (name, dims, type, data)."""
    def string(s):
        b = s.encode()
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, vtype, value in metadata:
        out += string(key) + struct.pack("<I", vtype) + value
    offset, data = 0, b""
    for name, dims, ttype, payload in tensors:
        out += string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, offset)
        pad = (-len(payload)) % alignment
        data += payload + b"\0" * pad
        offset += len(payload) + pad
    out += b"\0" * ((-len(out)) % alignment)
    return out + data


def seeds_gguf():
    arch = ("general.architecture", 8, struct.pack("<Q", 5) + b"llama")
    tokens = ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + struct.pack("<Q", 3) + b"<s>" + struct.pack("<Q", 1) + b"a")
    f32 = ("w", [4], 0, struct.pack("<4f", 1, -2, 3, 0.5))
    q8 = ("q", [32], 8, struct.pack("<e", 0.5) + bytes(range(32)))
    q4 = ("r", [32, 2], 2, (struct.pack("<e", 0.25) + bytes(range(16))) * 2)
    put("gguf", "valid", gguf([arch, tokens], [f32, q8, q4]))
    put("gguf", "truncated", gguf([arch, tokens], [f32, q8, q4])[:90])
    put("gguf", "nested_array", gguf([("n", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 2) + struct.pack("<2I", 1, 2))]))
    put("gguf", "version2", gguf([arch], [f32], version=2))


def seeds_shards():
    put("shards", "valid", shard_pair([1, 5, 6, 7, 1, 9, 10], [0, 4, 7]))
    put("shards", "valid_u32", shard_pair([1, 70000, 2], [0, 3], vocab=80000, width=4))
    put("shards", "offsets_backwards", shard_pair([1, 5, 6, 7], [0, 3, 2, 4]))
    put("shards", "token_beyond_vocab", shard_pair([1, 500], [0, 2]))
    put("shards", "truncated", shard_pair([1, 5, 6, 7], [0, 4])[:70])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, help="directory to write <target>/<seed> files into")
    p.add_argument("--tokenizer")
    a = p.parse_args()
    ROOT = a.out
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    seeds_safetensors()
    seeds_model_config()
    seeds_llama2c()
    seeds_llama2c_tokenizer()
    seeds_data()
    seeds_recipes(repo)
    put("tokenizer", "not_a_model", "hello world\n")
    seeds_tokenizer_json()
    seeds_math_answer()
    seeds_jinja(repo)
    seeds_prepare()
    seeds_shards()
    seeds_gguf()
    if a.tokenizer:
        seeds_tokenizer(a.tokenizer)
