#!/usr/bin/env python3
"""Tiller's byte-level BPE (common/tokenizer/byte_level_bpe.cpp) against transformers' tokenizer
library, the Rust `tokenizers` (its Python binding, from PyPI), on real tokenizers that PyPI
packages ship (packages.txt pins them; none is made here):

  claude           anthropic 0.38.0      anthropic/tokenizer.json (Claude's 2023 tokenizer, NFKC)
  deepseek         litellm 1.110.2       deepseek_tokenizer.json (DeepSeek-V3.x: 129,280 ids)
  gpt2             openai-whisper        whisper/assets/gpt2.tiktoken (GPT-2's 50,257)
  whisper          openai-whisper        whisper/assets/multilingual.tiktoken (Whisper's own)
  p50k_base        litellm               tiktoken's p50k_base (Codex, text-davinci-003)
  cl100k_base      litellm               tiktoken's cl100k_base (GPT-4, GPT-3.5)
  o200k_base       litellm               tiktoken's o200k_base (GPT-4o)
  llama3           llama-models 0.3.0    llama_models/llama3/tokenizer.model (Llama 3, 3.1-3.3)
  llama4           llama-models 0.3.0    llama_models/llama4/tokenizer.model (Llama 4)
  qwen             dashscope 2.0.2       dashscope/resources/qwen.tiktoken (Qwen's 151,643 ranks)
  tekken           mistral-common 1.13.1 mistral_common/data/tekken_240718.json (Mistral NeMo;
                                         tekken_240911.json, Pixtral's, has the same vocabulary)

Two of them are tokenizer.json files and are read as they are. The others are tiktoken files;
each becomes a tokenizer.json through transformers' own TikTokenConverter (what made Llama 3's
tokenizer.json), with the pattern and special tokens the package's own code gives tiktoken, and
is checked twice: by `tokenizers` on that tokenizer.json and by `tiktoken` itself on the package's
encoding, as the package builds it. Tiller must give the ids of every text make_texts.py writes,
and their decoded text (special tokens skipped), as both do.

  python compare.py --packages DIR --tiller PATH [--texts FILE] [--work DIR] [--only NAME,...]

DIR holds the archives `pip download --no-deps -r packages.txt` fetched (scripts/setup.sh
--tokenizer-reference puts them in .venv/tokenizer-reference; --tests fetches the small part,
packages-small.txt: claude, gpt2, whisper); a tokenizer whose package is not there is named and
left out. Exit status 0 when every tokenizer checked agrees on every text, 1 otherwise, 77 when
none could be checked.
"""
import argparse
import ast
import base64
import glob
import importlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import zipfile


# --- The packages' archives ---------------------------------------------------------------------

def archive_of(packages, name, must=True):
    """The one archive of package `name` (a wheel or an sdist) in the download folder; None
    where there is none and not `must`."""
    stem = name.replace("-", "_").lower()
    found = [p for p in glob.glob(os.path.join(packages, "*"))
             if re.sub(r"-\d.*", "", os.path.basename(p)).lower().replace("-", "_") == stem]
    if not found and not must:
        return None
    if len(found) != 1:
        raise SystemExit(f"compare: expected one archive of {name} in {packages}, found {found}")
    return found[0]


def unpack(packages, name, prefixes, into):
    """Unpacks the members of package `name` under `prefixes` (package-relative paths; an sdist's
    top folder is dropped) into `into`; returns `into` and the archive's file name."""
    path = archive_of(packages, name)
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if member.startswith(tuple(prefixes)):
                    z.extract(member, into)
    else:
        with tarfile.open(path) as t:
            for member in t.getmembers():
                inner = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and inner.startswith(tuple(prefixes)):
                    member.name = inner
                    t.extract(member, into)
    return into, os.path.basename(path)


def import_from(root, dotted):
    """Imports module `dotted` from the folder `root` without running its packages' __init__.py
    (they pull in what the tokenizer's module does not need: torch for whisper, an HTTP client
    for dashscope)."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        package = ".".join(parts[:i])
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [os.path.join(root, *parts[:i])]
            sys.modules[package] = module
    sys.path.insert(0, root)
    try:
        return importlib.import_module(dotted)
    finally:
        sys.path.remove(root)


# --- Each tokenizer, as its package has it ------------------------------------------------------
# A loader returns (kind, value, file): kind "json" with a tokenizer.json path, or "tiktoken"
# with a tiktoken.Encoding and the number of special ids placed before the ranks (Tekken's).

def claude(packages, work):
    root, archive = unpack(packages, "anthropic", ["anthropic/tokenizer.json"], work)
    return "json", os.path.join(root, "anthropic/tokenizer.json"), archive


def deepseek(packages, work):
    root, archive = unpack(packages, "litellm", ["litellm/litellm_core_utils/tokenizers/"], work)
    return "json", os.path.join(root, "litellm/litellm_core_utils/tokenizers/deepseek_tokenizer.json"), archive


def whisper(name):
    def load(packages, work):
        root, archive = unpack(packages, "openai-whisper", ["whisper/tokenizer.py", "whisper/assets/"], work)
        return "tiktoken", (import_from(root, "whisper.tokenizer").get_encoding(name), 0), archive
    return load


def openai(name):
    # tiktoken's own definition of the encoding (pattern, special tokens, the file's SHA-256),
    # its file from the cache litellm ships (named as tiktoken names its cache entries).
    def load(packages, work):
        root, archive = unpack(packages, "litellm", ["litellm/litellm_core_utils/tokenizers/"], work)
        cache = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = os.path.join(root, "litellm/litellm_core_utils/tokenizers")
        import tiktoken
        try:
            return "tiktoken", (tiktoken.get_encoding(name), 0), archive
        finally:
            if cache is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = cache
    return load


def llama(version):
    def load(packages, work):
        root, archive = unpack(packages, "llama-models", ["llama_models/"], work)
        module = import_from(root, f"llama_models.llama{version}.tokenizer")
        from pathlib import Path
        path = Path(root) / f"llama_models/llama{version}/tokenizer.model"
        return "tiktoken", (module.Tokenizer(path).model, 0), archive
    return load


def qwen(packages, work):
    root, archive = unpack(packages, "dashscope", ["dashscope/tokenizers/", "dashscope/resources/"], work)
    module = import_from(root, "dashscope.tokenizers.qwen_tokenizer")
    encoding = module.QwenTokenizer(os.path.join(root, "dashscope/resources/qwen.tiktoken"))._tokenizer
    return "tiktoken", (encoding, 0), archive


def tekken(packages, work):
    # mistral_common's Tekkenizer needs pydantic 2 and more; this is what it does for a file
    # without a special-token list (as this one): its ranks cut to default_vocab_size less the
    # special tokens, its pattern, the deprecated special tokens then <SPECIAL_i> fillers before
    # the ranks (ids 0-999), texts encoded without special tokens. The token names come from the
    # package's source.
    root, archive = unpack(packages, "mistral-common", [
        "mistral_common/data/tekken_240718.json", "mistral_common/tokens/tokenizers/"], work)
    model = json.load(open(os.path.join(root, "mistral_common/data/tekken_240718.json")))
    config = model["config"]
    n_special = config["default_num_special_tokens"]
    ranks = {}
    for i, entry in enumerate(model["vocab"][:config["default_vocab_size"] - n_special]):
        assert entry["rank"] == i
        ranks[base64.b64decode(entry["token_bytes"])] = i
    source = os.path.join(root, "mistral_common/tokens/tokenizers")
    names = {}
    for node in ast.walk(ast.parse(open(os.path.join(source, "base.py")).read())):
        if isinstance(node, ast.ClassDef) and node.name == "SpecialTokens":
            for item in node.body:
                if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant):
                    names[item.targets[0].id] = item.value.value
    special = {}
    for node in ast.walk(ast.parse(open(os.path.join(source, "tekken.py")).read())):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DEPRECATED_SPECIAL_TOKENS":
            for call in node.value.elts:
                keywords = {k.arg: k.value for k in call.keywords}
                special[names[keywords["token_str"].attr]] = keywords["rank"].value
    assert sorted(special.values()) == list(range(len(special))), special
    for i in range(len(special), n_special):
        special[f"<SPECIAL_{i}>"] = i
    import tiktoken
    # The special ids sit below the ranks: tiktoken gets them shifted up past the ranks, and
    # ids are moved back as mistral_common moves them (rank + 1000; special id as it is).
    encoding = tiktoken.Encoding("tekken_240718", pat_str=config["pattern"], mergeable_ranks=ranks,
                                 special_tokens={t: len(ranks) + i for t, i in special.items()})
    return "tiktoken", (encoding, n_special), archive


TOKENIZERS = [
    ("claude", "anthropic", "anthropic/tokenizer.json", "Claude (2023)", claude),
    ("deepseek", "litellm", "litellm/litellm_core_utils/tokenizers/deepseek_tokenizer.json",
     "DeepSeek-V3.x", deepseek),
    ("gpt2", "openai-whisper", "whisper/assets/gpt2.tiktoken", "GPT-2", whisper("gpt2")),
    ("whisper", "openai-whisper", "whisper/assets/multilingual.tiktoken", "Whisper (multilingual)",
     whisper("multilingual")),
    ("p50k_base", "litellm", "tiktoken cache of p50k_base", "Codex, text-davinci-003", openai("p50k_base")),
    ("cl100k_base", "litellm", "tiktoken cache of cl100k_base", "GPT-4, GPT-3.5", openai("cl100k_base")),
    # As TikTokenConverter writes it, `\p{N}{1,3}+` kept: tokenizers and Tiller take whole digit
    # runs, tiktoken does not (it is left out).
    ("cl100k_base.verbatim", "litellm", "tiktoken cache of cl100k_base", "GPT-4, GPT-3.5",
     openai("cl100k_base")),
    ("o200k_base", "litellm", "tiktoken cache of o200k_base", "GPT-4o", openai("o200k_base")),
    ("llama3", "llama-models", "llama_models/llama3/tokenizer.model", "Llama 3 to 3.3", llama(3)),
    ("llama4", "llama-models", "llama_models/llama4/tokenizer.model", "Llama 4", llama(4)),
    ("qwen", "dashscope", "dashscope/resources/qwen.tiktoken", "Qwen", qwen),
    ("tekken", "mistral-common", "mistral_common/data/tekken_240718.json", "Mistral NeMo (Tekken)",
     tekken),
]


# --- tiktoken file -> tokenizer.json ------------------------------------------------------------

def model_id(tiktoken_id, encoding, shift):
    """An id of the tiktoken Encoding as the model numbers it (Tekken: specials first)."""
    if shift == 0:
        return tiktoken_id
    return tiktoken_id - encoding.n_vocab + shift if tiktoken_id >= encoding.n_vocab - shift else tiktoken_id + shift


def as_tiktoken_reads_it(pattern):
    """The pattern in a form Oniguruma (the tokenizers library's engine) reads as tiktoken's
    engine does. They differ on `{n,m}+`: possessive for tiktoken, a repeated interval for
    Oniguruma, which takes a whole digit run for cl100k_base's `\p{N}{1,3}+` (and so does Tiller
    on such a tokenizer.json, as transformers does). Where the interval ends an alternative,
    possessive and greedy match alike: there the `+` goes."""
    return re.sub(r"(\{\d*,?\d*\})\+(?=\||$)", r"\1", pattern)


def convert(encoding, shift, path, work, verbatim):
    """tokenizer.json of a tiktoken Encoding, by transformers' TikTokenConverter: its ranks (a
    tiktoken file written from the Encoding's), its pattern (as_tiktoken_reads_it unless
    `verbatim`); the special tokens as special added tokens with their ids (entered in the
    vocabulary too where the ids leave gaps, as tokenizers would otherwise number them on from
    the vocabulary)."""
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter
    ranks_file = os.path.join(work, "ranks.tiktoken")
    with open(ranks_file, "wb") as f:
        for token, rank in sorted(encoding._mergeable_ranks.items(), key=lambda kv: kv[1]):
            if token:  # Whisper's multilingual file holds an empty token (no BPE makes it)
                f.write(base64.b64encode(token) + b" %d\n" % rank)
    # tiktoken would cache the file by its path (in /tmp/data-gym-cache), and read a stale copy
    # at the next run: "" turns its cache off.
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        pattern = encoding._pat_str if verbatim else as_tiktoken_reads_it(encoding._pat_str)
        data = json.loads(TikTokenConverter(ranks_file, pattern=pattern).converted().to_str())
    finally:
        if cache is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = cache
    os.remove(ranks_file)
    if shift:
        data["model"]["vocab"] = {t: i + shift for t, i in data["model"]["vocab"].items()}
    special = sorted(((model_id(i, encoding, shift), t) for t, i in encoding._special_tokens.items()))
    data["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, t in special]
    text = json.dumps(data, ensure_ascii=False)
    tokenizer = Tokenizer.from_str(text)
    if any(tokenizer.token_to_id(t) != i for i, t in special):
        for i, t in special:
            data["model"]["vocab"][t] = i
        text = json.dumps(data, ensure_ascii=False)
        tokenizer = Tokenizer.from_str(text)
    wrong = [(t, i, tokenizer.token_to_id(t)) for i, t in special if tokenizer.token_to_id(t) != i]
    assert not wrong, f"special tokens numbered otherwise: {wrong[:3]}"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --- The comparison -----------------------------------------------------------------------------

def tokenizers_reference(path, texts):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(path)
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        out.append({"ids": ids, "decoded": tokenizer.decode(ids, skip_special_tokens=True)})
    return out


def tiktoken_reference(encoding, shift, texts):
    special = set(encoding._special_tokens.values())
    out = []
    for text in texts:
        ids = encoding.encode(text, allowed_special="all")
        decoded = encoding.decode([i for i in ids if i not in special])
        out.append({"ids": [model_id(i, encoding, shift) for i in ids], "decoded": decoded})
    return out


def differences(texts, reference, got, label):
    ids = [i for i in range(len(texts)) if reference[i]["ids"] != got[i]["ids"]]
    decoded = [i for i in range(len(texts)) if reference[i]["decoded"] != got[i]["decoded"]]
    lines = []
    for i in (ids or decoded)[:3]:
        lines.append(f"    {texts[i][:60]!r}\n      {label[0]:10} {reference[i]['ids'][:16]} "
                     f"{reference[i]['decoded'][:40]!r}\n      {label[1]:10} {got[i]['ids'][:16]} "
                     f"{got[i]['decoded'][:40]!r}")
    return len(ids), len(decoded), lines


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", required=True)
    parser.add_argument("--tiller", required=True)
    parser.add_argument("--texts", help="a JSON list of texts (default: make_texts.py's)")
    parser.add_argument("--work", help="where to unpack and write (default: a temporary folder)")
    parser.add_argument("--only", help="comma-separated names of the tokenizers to check")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="tiller-tokref.") as work:
            return compare(args, here, work)
    os.makedirs(args.work, exist_ok=True)
    return compare(args, here, args.work)


def compare(args, here, work):
    texts_file = args.texts
    if texts_file is None:
        texts_file = os.path.join(work, "texts.json")
        with open(texts_file, "w", encoding="utf-8") as f:
            subprocess.run([sys.executable, os.path.join(here, "make_texts.py")], stdout=f, check=True)
    texts = json.load(open(texts_file, encoding="utf-8"))
    only = set(args.only.split(",")) if args.only else None
    import tiktoken
    import tokenizers
    import transformers
    print(f"compare: tokenizers {tokenizers.__version__}, tiktoken {tiktoken.__version__}, "
          f"transformers {transformers.__version__}; {len(texts)} texts")
    failed, checked, distinct, absent = [], 0, set(), []
    for name, package, file, model, load in TOKENIZERS:
        if only is not None and name not in only:
            continue
        if archive_of(args.packages, package, must=False) is None:
            absent.append(name)
            continue
        start = time.time()
        folder = os.path.join(work, name)
        os.makedirs(folder, exist_ok=True)
        kind, value, archive = load(args.packages, os.path.join(folder, "package"))
        references = []
        if kind == "json":
            path = value
        else:
            encoding, shift = value
            path = os.path.join(folder, "tokenizer.json")
            verbatim = name.endswith(".verbatim")
            convert(encoding, shift, path, folder, verbatim)
            if not verbatim:
                references.append(("tiktoken", tiktoken_reference(encoding, shift, texts)))
        references.insert(0, ("tokenizers", tokenizers_reference(path, texts)))
        result = subprocess.run([args.tiller, "tokenize", "--tokenizer", path, "--texts", texts_file],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{name}: tiller tokenize failed: {result.stderr.strip()}")
            failed.append(name)
            continue
        got = json.loads(result.stdout)
        counts, details = [], []
        for label, reference in references:
            n_ids, n_text, lines = differences(texts, reference, got, (label, "tiller"))
            counts.append(f"{label}: ids differ on {n_ids}, decoded text on {n_text}")
            details += lines
            if n_ids or n_text:
                failed.append(name)
        if len(references) == 2:  # the two references must agree too
            n_ids, n_text, lines = differences(texts, references[0][1], references[1][1],
                                               ("tokenizers", "tiktoken"))
            if n_ids or n_text:
                counts.append(f"tokenizers and tiktoken differ on {max(n_ids, n_text)}")
                details += lines
                failed.append(name)
        checked += 1
        distinct.add(name.split(".")[0])
        how = "as shipped" if kind == "json" else "converted"
        if kind != "json" and encoding._pat_str != as_tiktoken_reads_it(encoding._pat_str):
            how += ", pattern verbatim" if verbatim else ", {n,m}+ as tiktoken reads it"
        print(f"{name}: {model}, {package} {archive} {file} ({how}, {len(texts)} texts, "
              f"{time.time() - start:.1f} s): " + "; ".join(counts))
        for line in details:
            print(line)
    failed = sorted(set(failed))
    if absent:
        print(f"compare: not fetched, so not checked: {', '.join(absent)} (all of them: "
              "bash scripts/setup.sh --tokenizer-reference)")
    if checked == 0:
        print("compare: skipped: no tokenizer's package is in " + args.packages)
        return 77
    print(f"compare: {len(distinct)} tokenizers ({checked} checks), {len(texts)} texts each: "
          + (f"differences in {', '.join(failed)}" if failed else "0 differences"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
