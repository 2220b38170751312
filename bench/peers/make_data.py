"""Writes the data both sides of `bench/compare.sh --peers` train on, as text for Tiller and as the
very token ids Tiller trains on for TRL, so that the two run the same tokens in the same shapes.

    make_data.py --tiller build/tiller --model DIR --out DIR [--seq 256] [--prompt-tokens 64]
                 [--examples 64] [--seed 1]

Texts are made of words that are one token each in the model's tokenizer (checked), so every
example has exactly the planned length: with Tiller's `plain` template a prompt-completion example
is BOS, the prompt's words and "\n" (one token), the completion's words and EOS: `--seq` tokens,
the first 1 + prompt-tokens of them the prompt. The ids are Tiller's own (`tiller tokenize`, the
same encoder the stages use), checked against those lengths.

OUT gets:
  sft.jsonl           {"prompt", "completion"}           Tiller's sft (format prompt_completion)
  sft_ids.jsonl       {"input_ids", "completion_mask"}   TRL's SFTTrainer (a processed dataset)
  pairs.jsonl         {"prompt", "chosen", "rejected"}   Tiller's reward and dpo (format preference)
  pairs_ids.jsonl     {"prompt_ids", "chosen_ids", "rejected_ids"}  TRL's DPOTrainer; its reward
                      dataset is prompt_ids + chosen_ids (RewardTrainer's chosen_ids), likewise
  prompts.jsonl       {"prompt", "answer"}               Tiller's grpo and rlhf; TRL's GRPOTrainer
                      and PPOTrainer read "prompt" (tokenized by the model's tokenizer)
  prompts_ids.jsonl   {"input_ids"}                      the prompts as Tiller tokenizes them
Plain Python: runs under any python3.
"""
import argparse
import json
import os
import random
import subprocess
import tempfile

# Common English words; those the tokenizer does not keep whole are dropped.
WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have an "
         "they which one you were her all she there would their we him been has when who will more "
         "no if out so said what up its about into than them can only other new some could time "
         "these two may then do first any my now such like our over man me even most made after "
         "also did many before must through back years where much your way well down should "
         "because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while "
         "last might us great old year off come since against go came right used take three").split()


def tokenize(tiller, model, texts):
    """Tiller's ids of each text (no BOS, no EOS), as its stages encode a template segment."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
        path = f.name
    try:
        out = subprocess.run([tiller, "tokenize", "--model", model, "--texts", path], check=True,
                             capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    return [entry["ids"] for entry in json.loads(out)]


def single_token_words(tiller, model):
    ids = tokenize(tiller, model, WORDS)
    words = [w for w, i in zip(WORDS, ids) if len(i) == 1]
    if len(words) < 50:
        raise SystemExit(f"make_data.py: only {len(words)} one-token words in {model}'s tokenizer")
    return words


def special_ids(model):
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    return config["bos_token_id"], config["eos_token_id"]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def checked(ids, length, what):
    if len(ids) != length:
        raise SystemExit(f"make_data.py: {what} is {len(ids)} tokens, planned {length}")
    return ids


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiller", required=True)
    parser.add_argument("--model", required=True, help="the HF directory whose tokenizer is used")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="words in a prompt")
    parser.add_argument("--grpo-prompt-tokens", type=int, default=32, help="words in an RL prompt")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    os.makedirs(args.out, exist_ok=True)
    bos, eos = special_ids(args.model)
    words = single_token_words(args.tiller, args.model)
    rng = random.Random(args.seed)

    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    # BOS + prompt words + "\n" + completion words + EOS = seq.
    completion_words = args.seq - args.prompt_tokens - 3
    if completion_words < 1:
        raise SystemExit("make_data.py: --seq leaves no room for a completion")
    n = args.examples
    prompts = [text(args.prompt_tokens) for _ in range(n)]
    chosen = [text(completion_words) for _ in range(n)]
    rejected = [text(completion_words) for _ in range(n)]
    rl_prompts = [text(args.grpo_prompt_tokens) for _ in range(n)]
    ids = tokenize(args.tiller, args.model,
                   [p + "\n" for p in prompts] + chosen + rejected + [p + "\n" for p in rl_prompts])
    prompt_ids = [[bos] + checked(i, args.prompt_tokens + 1, "a prompt") for i in ids[:n]]
    chosen_ids = [checked(i, completion_words, "a completion") + [eos] for i in ids[n:2 * n]]
    rejected_ids = [checked(i, completion_words, "a completion") + [eos] for i in ids[2 * n:3 * n]]
    rl_ids = [[bos] + checked(i, args.grpo_prompt_tokens + 1, "an RL prompt") for i in ids[3 * n:]]

    write_jsonl(os.path.join(args.out, "sft.jsonl"),
                [{"prompt": p, "completion": c} for p, c in zip(prompts, chosen)])
    write_jsonl(os.path.join(args.out, "sft_ids.jsonl"),
                [{"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)}
                 for p, c in zip(prompt_ids, chosen_ids)])
    write_jsonl(os.path.join(args.out, "pairs.jsonl"),
                [{"prompt": p, "chosen": c, "rejected": r}
                 for p, c, r in zip(prompts, chosen, rejected)])
    write_jsonl(os.path.join(args.out, "pairs_ids.jsonl"),
                [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
                 for p, c, r in zip(prompt_ids, chosen_ids, rejected_ids)])
    # The answer is never right (no reward function reads it here): a placeholder Tiller accepts.
    write_jsonl(os.path.join(args.out, "prompts.jsonl"),
                [{"prompt": p, "answer": "0"} for p in rl_prompts])
    write_jsonl(os.path.join(args.out, "prompts_ids.jsonl"), [{"input_ids": i} for i in rl_ids])
    print(json.dumps({"out": args.out, "examples": n, "seq": args.seq,
                      "prompt_tokens": 1 + args.prompt_tokens + 1,
                      "completion_tokens": completion_words + 1,
                      "rl_prompt_tokens": 1 + args.grpo_prompt_tokens + 1}))


if __name__ == "__main__":
    main()
