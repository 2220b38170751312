#!/usr/bin/env python3
"""Greedy generation by llama.cpp itself (llama-cpp-python) from a GGUF file Tiller wrote, as
llama2.c's run.c does: BOS and the prompt, then `--new-tokens` greedy tokens. Prints one JSON
object {"prompt_ids", "text"}: the prompt followed by what llama.cpp generated.

  llama_cpp_generate.py FILE.gguf --prompt TEXT --new-tokens N
"""
import argparse
import json

from llama_cpp import Llama


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gguf")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--new-tokens", type=int, required=True)
    a = parser.parse_args()
    llm = Llama(model_path=a.gguf, n_ctx=512, n_threads=2, verbose=False)
    prompt = llm.tokenize(a.prompt.encode("utf-8"), add_bos=True)
    new = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        if token == llm.token_eos() or len(new) >= a.new_tokens:
            break
        new.append(token)
    text = a.prompt + llm.detokenize(new).decode("utf-8", "replace")
    print(json.dumps({"prompt_ids": prompt, "text": text}))


if __name__ == "__main__":
    main()
