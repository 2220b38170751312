#!/usr/bin/env python3
"""Renders the chat-template table through jinja2 as transformers renders chat templates.

Usage: chat_template_oracle.py TEMPLATES_DIR OUT.json

TEMPLATES_DIR holds one tokenizer_config.json-like file per model family (chat_template,
bos_token, eos_token). For every family, conversation and add_generation_prompt value this writes
{"family", "case", "add_generation_prompt", "messages", "text"} or, when the template raises,
{"error": message} instead of "text". tests/chat_template_test.cpp renders the same table with
Tiller's renderer and compares byte for byte.

The environment is transformers' (transformers.utils.chat_template_utils._compile_jinja_template
in transformers >= 4.43; 4.41's is the same but for tojson, loop controls and strftime_now):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension, the `generation` tag, tojson without HTML escaping, raise_exception and strftime_now.
When transformers is importable, every rendering is also made by transformers' own
apply_chat_template (a PreTrainedTokenizerFast carrying the family's bos/eos tokens) and must be
the same: a difference is written as "transformers_differs" (the C++ test fails on it). Templates
that call strftime_now are left out of that check (transformers before 4.43 does not define it,
so it renders its fallback date where this environment renders today's).
"""
import glob
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(Extension):
    """transformers' AssistantTracker without the tracking: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def special(value):
    if isinstance(value, dict):
        return value.get("content")
    return value


S = {"role": "system", "content": "You are a terse assistant."}


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = {
    "one_user": [U("Hello!")],
    "system_user": [S, U("What is 2+2?")],
    "multi_turn": [U("Hi"), A("Hello, how can I help?"), U("Tell me a joke."), A("Why did the chicken cross the road?")],
    "system_multi_turn": [S, U("Hi"), A("Hello."), U("And now?")],
    "system_exchange": [S, U("Name a colour."), A("Blue.")],
    "unicode": [U("Grüße aus Köln, 世界 🌍"), A("Ça va — naïve café ✓ 😀")],
    "empty_content": [U(""), A("")],
    "padded_content": [U("  spaced question  \n"), A("\n  spaced answer\t ")],
    "template_like_content": [U("{{ not a tag }} {% if %} {# c #} \\n \" '"), A("<|im_end|> </s> [INST]")],
    "multiline_content": [U("line one\nline two\n\nline four"), A("a\nb\n")],
    "assistant_first": [A("I speak first."), U("Then me.")],
    "two_users": [U("one"), U("two")],
}


def transformers_renderer():
    """apply_chat_template of transformers, or None when it is not installed."""
    try:
        import warnings
        warnings.filterwarnings("ignore")
        import transformers
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        return None, None

    def render(config, messages, add_generation_prompt):
        tokens = {k: config[k] for k in ("bos_token", "eos_token") if config.get(k)}
        tok = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")), **tokens)
        return tok.apply_chat_template(messages, chat_template=config["chat_template"], tokenize=False,
                                       add_generation_prompt=add_generation_prompt)

    return render, transformers.__version__


def main():
    templates_dir, out_path = sys.argv[1], sys.argv[2]
    env = environment()
    by_transformers, transformers_version = transformers_renderer()
    checked = 0
    rows = []
    for path in sorted(glob.glob(os.path.join(templates_dir, "*.json"))):
        family = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        template = env.from_string(config["chat_template"])
        for case, messages in CONVERSATIONS.items():
            for add_generation_prompt in (False, True):
                row = {"family": family, "case": case, "add_generation_prompt": add_generation_prompt,
                       "messages": messages}
                # as transformers passes them: special tokens that are set, then the call's
                context = {k: special(config[k]) for k in ("bos_token", "eos_token")
                           if special(config.get(k)) is not None}
                try:
                    row["text"] = template.render(messages=messages,
                                                  add_generation_prompt=add_generation_prompt,
                                                  **context)
                except jinja2.exceptions.TemplateError as e:
                    row["error"] = str(e)
                if by_transformers and "strftime_now" not in config["chat_template"]:
                    try:
                        theirs = by_transformers(config, messages, add_generation_prompt)
                    except Exception as e:  # noqa: BLE001 (jinja2's TemplateError, as transformers raises it)
                        theirs = {"error": str(e)}
                    if theirs != row.get("text", {"error": row.get("error")}):
                        row["transformers_differs"] = theirs
                    checked += 1
                rows.append(row)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"jinja2": jinja2.__version__, "transformers": transformers_version,
                   "transformers_checked": checked, "rows": rows}, f, ensure_ascii=False, indent=1)
    print(f"{len(rows)} renderings written to {out_path} ({checked} also by transformers "
          f"{transformers_version})")


if __name__ == "__main__":
    main()
