"""The peers' side of `bench/compare.sh --peers`: TRL's trainers on transformers models, on the CPU,
in fp32 (or bf16 autocast with --dtype bf16), with the model, data, shapes, optimizer settings and
steps of the Tiller recipe they are measured against (bench/peers/recipe.py, data from
bench/peers/make_data.py).

    trl_bench.py KIND --model DIR --data DIR --steps N --batch B [--threads T] [--seq 256]
                 [--group 8] [--new-tokens 64] [--reward-model DIR] [--dtype fp32|bf16]

KIND: sft (SFTTrainer), reward (RewardTrainer), dpo (DPOTrainer, precompute_ref_log_probs=True),
grpo (GRPOTrainer: transformers generation, no vLLM), ppo (trl.experimental.ppo.PPOTrainer).
Each trainer runs with TRL's defaults except what must match Tiller's side: batch, lengths, steps,
threads, a checkpoint at the last step and the final model saved (as Tiller's stage ends), no
progress bar. Prints one JSON object: seconds per step
(the mean of the steps after the first, which is a warm-up, as on Tiller's side), tokens per step
and per second, peak RSS, the versions. Runs in .venv-peers (scripts/setup_peers.sh).
"""
import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never ask the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,  # noqa: E402
                          AutoTokenizer, TrainerCallback)


class StepTimer(TrainerCallback):
    """Wall seconds of each optimizer step: from on_step_begin (before the step's first
    micro-batch, whose inputs GRPO generates) to on_step_end (after the optimizer step).
    PPOTrainer's own loop calls no on_step_begin: there a step runs from the previous step's end
    (or the start of training) to its own, rollout included."""

    def __init__(self):
        self.started = None
        self.seconds = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self.started)
        self.started = now


def time_calls(trainer, method):
    """Wraps trainer.METHOD to record each call's wall seconds in trainer.call_seconds."""
    inner = getattr(trainer, method)
    trainer.call_seconds = {"method": method, "seconds": []}

    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = inner(*args, **kwargs)
        trainer.call_seconds["seconds"].append(time.perf_counter() - started)
        return result

    setattr(trainer, method, timed)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tokenizer_of(model_dir):
    """The model's tokenizer, padding with id 0 (<unk>) as Tiller does for a tokenizer without a
    pad token: distinct from EOS, which a reward model's last real token is."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    return tokenizer


def common_args(args, output_dir):
    """TrainingArguments every trainer shares here (the rest are each trainer's defaults). A
    checkpoint (model, optimizer, scheduler, RNG) at the last step, then the model alone, as
    Tiller's stage ends with a checkpoint and final/: the peak RSS then counts the same saves on
    both sides (neither is in the steps' time: the trainer saves after on_step_end).

    TRL 0.29's configs default to bf16=True and gradient_checkpointing=True, and with use_cpu the
    trainer then runs under CPU bf16 autocast and recomputes each layer's forward in the backward.
    Tiller's recipe states its precision and runs without recomputation, so both are set here to
    match it: bf16 autocast only with --dtype bf16 (Tiller's precision: bf16, fp32 master weights
    on both sides), no gradient checkpointing on either."""
    return dict(output_dir=output_dir, per_device_train_batch_size=args.batch,
                gradient_accumulation_steps=1, max_steps=args.steps, save_strategy="steps",
                save_steps=args.steps, report_to="none", use_cpu=True, seed=1, disable_tqdm=True,
                logging_steps=1, dataloader_num_workers=0, bf16=args.dtype == "bf16",
                gradient_checkpointing=False)


def sft_trainer(args, output_dir):
    tokenizer = tokenizer_of(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    data = datasets.Dataset.from_list(read_jsonl(os.path.join(args.data, "sft_ids.jsonl")))
    config = trl.SFTConfig(**common_args(args, output_dir), max_length=args.seq, packing=False,
                           completion_only_loss=True)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=data,
                             processing_class=tokenizer)
    return trainer, args.batch * args.seq


def reward_trainer(args, output_dir):
    tokenizer = tokenizer_of(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    records = [{"chosen_ids": r["prompt_ids"] + r["chosen_ids"],
                "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
               for r in read_jsonl(os.path.join(args.data, "pairs_ids.jsonl"))]
    config = trl.RewardConfig(**common_args(args, output_dir), max_length=2 * args.seq)
    trainer = trl.RewardTrainer(model=model, args=config,
                                train_dataset=datasets.Dataset.from_list(records),
                                processing_class=tokenizer)
    return trainer, 2 * args.batch * args.seq


class PretokenizedDPOTrainer(trl.DPOTrainer):
    """DPOTrainer for a dataset already in the columns its collator reads (prompt_ids,
    chosen_ids with EOS, rejected_ids with EOS): TRL 0.29's _prepare_dataset tokenizes text
    only, so such a dataset passes through. Everything else is DPOTrainer's own."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def dpo_trainer(args, output_dir):
    tokenizer = tokenizer_of(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    data = datasets.Dataset.from_list(read_jsonl(os.path.join(args.data, "pairs_ids.jsonl")))
    config = trl.DPOConfig(**common_args(args, output_dir), max_length=2 * args.seq,
                           precompute_ref_log_probs=True)
    trainer = PretokenizedDPOTrainer(model=model, args=config, train_dataset=data,
                                     processing_class=tokenizer)
    return trainer, 2 * args.batch * args.seq


def contains_the(completions, **kwargs):
    """The reward Tiller's side uses (`contains` "the"): 1 when the completion has "the"."""
    return [1.0 if "the" in completion else 0.0 for completion in completions]


def grpo_trainer(args, output_dir):
    tokenizer = tokenizer_of(args.model)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    # Tiller's plain template renders a prompt as its text and "\n".
    records = [{"prompt": r["prompt"] + "\n"}
               for r in read_jsonl(os.path.join(args.data, "prompts.jsonl"))]
    micro = min(8, args.batch)
    common = common_args(args, output_dir)
    common.update(per_device_train_batch_size=micro, gradient_accumulation_steps=args.batch // micro)
    config = trl.GRPOConfig(**common, num_generations=args.group,
                            max_completion_length=args.new_tokens, temperature=1.0, use_vllm=False)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[contains_the], args=config,
                              train_dataset=datasets.Dataset.from_list(records),
                              processing_class=tokenizer)
    time_calls(trainer, "_generate")  # the rollouts' share of a step, beside Tiller's seconds_sample
    return trainer, args.batch * args.new_tokens


def ppo_trainer(args, output_dir):
    """trl.experimental.ppo.PPOTrainer (TRL's PPOv2: policy and value model trained together
    with one AdamW), its defaults except: the batch of episodes as one mini-batch in micro-batches
    of 8, the response length, and no sample generations between steps (debugging output)."""
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = tokenizer_of(args.model)
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1,
                                                                dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1,
                                                               dtype=torch.float32)
    data = datasets.Dataset.from_list(read_jsonl(os.path.join(args.data, "prompts_ids.jsonl")))
    micro = min(8, args.batch)
    common = common_args(args, output_dir)
    common.update(per_device_train_batch_size=micro, gradient_accumulation_steps=args.batch // micro)
    del common["max_steps"]  # PPOTrainer counts episodes
    config = PPOConfig(**common, total_episodes=args.steps * args.batch, num_mini_batches=1,
                       response_length=args.new_tokens, num_sample_generations=0)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=reward, value_model=value, train_dataset=data)
    return trainer, args.batch * args.new_tokens


BUILDERS = {"sft": sft_trainer, "reward": reward_trainer, "dpo": dpo_trainer,
            "grpo": grpo_trainer, "ppo": ppo_trainer}


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "datasets": datasets.__version__,
            "python": sys.version.split()[0]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(BUILDERS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True,
                        help="sequences (sft), pairs (reward, dpo) or episodes (grpo, ppo) a step")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reward-model", help="ppo: the reward model (and the critic's init)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="fp32, or bf16 autocast with fp32 master weights (TRL's bf16=True)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first is a warm-up)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()

    with tempfile.TemporaryDirectory(prefix="trl_bench_") as output_dir:
        if args.kind == "ppo" and not args.reward_model:
            parser.error("ppo needs --reward-model")
        trainer, tokens_per_step = BUILDERS[args.kind](args, output_dir)
        if trainer.args.bf16 != (args.dtype == "bf16") or trainer.args.gradient_checkpointing:
            sys.exit(f"trl_bench.py: the trainer would run bf16={trainer.args.bf16}, gradient "
                     f"checkpointing {trainer.args.gradient_checkpointing}: not --dtype "
                     f"{args.dtype} without recomputation as Tiller's side runs")
        timer = StepTimer()
        trainer.add_callback(timer)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer's log lines: stdout is the JSON
            trainer.train()
        total = time.perf_counter() - started
        trainer.save_model(os.path.join(output_dir, "final"))
    timed = timer.seconds[1:]
    step_s = sum(timed) / len(timed)
    print(json.dumps({
        "side": "trl", "kind": args.kind, "model": args.model, "threads": torch.get_num_threads(),
        "batch": args.batch, "seq": args.seq, "steps": args.steps, "dtype": args.dtype,
        "gradient_checkpointing": trainer.args.gradient_checkpointing,
        "step_seconds": timer.seconds, "step_s": step_s, "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_s, "train_s": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "timed_calls": getattr(trainer, "call_seconds", None), "versions": versions()}))


if __name__ == "__main__":
    main()
