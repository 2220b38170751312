"""Prints the Tiller recipe of one side of `bench/compare.sh --peers`: the stage TRL's trainer is
measured against, on the same model, data (bench/peers/make_data.py), shapes, optimizer settings
and steps as bench/peers/trl_bench.py gives TRL.

    recipe.py KIND --model DIR --data DIR --run-dir DIR --steps N --batch B [--threads T]
              [--seq 256] [--group 8] [--new-tokens 64] [--reward-model DIR] [--dtype fp32|bf16]
    recipe.py init --shape llama-15m --tokenizer tokenizer.model --corpus TEXT --run-dir DIR

KIND: sft, reward, dpo, grpo or ppo; or init, the pretraining step that writes the model both
sides start from (--shape, --tokenizer, --corpus). The optimizer is AdamW as TRL's trainers set it up by
default (betas 0.9/0.999, eps 1e-8, no weight decay, gradient clip 1.0, linear decay, no warm-up)
at each trainer's default learning rate. Nothing is validated during training, nothing held out.
Plain Python: runs under any python3.
"""
import argparse
import json


def train_section(args, lr, rl=False):
    # An RL stage's train object is its own: iterations, warmup_iterations.
    train = {"iterations" if rl else "steps": args.steps, "lr": lr, "beta1": 0.9, "beta2": 0.999,
             "eps": 1e-8, "weight_decay": 0.0, "grad_clip": 1.0, "schedule": "linear",
             "min_lr_ratio": 0.0, "warmup_iterations" if rl else "warmup_steps": 0,
             "log_every": 1, "precision": args.dtype}
    return train


def batch_train(args, lr):
    train = train_section(args, lr)
    train.update({"batch_size": args.batch, "micro_batch_size": args.batch,
                  "max_seq_len": args.seq, "eval_every": 0})
    return train


def stage(args):
    if args.kind == "init":
        # The model both sides start from: `--shape` with Tiller's initialisation and the Llama 2
        # tokenizer, one pretraining step at a negligible learning rate, written as an HF
        # directory (RUN_DIR/init/final) that transformers loads.
        return {"name": "init", "type": "pretrain", "model": {"shape": args.shape},
                "tokenizer": args.tokenizer,
                "data": {"train": args.corpus, "val_fraction": 0},
                "train": {"steps": 1, "batch_size": 1, "micro_batch_size": 1, "max_seq_len": 64,
                          "lr": 1e-9}}
    pairs = {"train": args.data + "/pairs.jsonl", "format": "preference", "template": "plain",
             "val_fraction": 0}
    if args.kind == "sft":
        # TRL's SFTConfig: lr 2e-5, no packing, the loss on the completion only.
        return {"name": "sft", "type": "sft", "init": args.model,
                "data": {"train": args.data + "/sft.jsonl", "format": "prompt_completion",
                         "template": "plain", "val_fraction": 0, "packing": False},
                "train": batch_train(args, 2e-5)}
    if args.kind == "reward":
        # TRL's RewardConfig: lr 1e-4; no centring, no margin.
        return {"name": "reward", "type": "reward", "init": args.model, "data": pairs,
                "loss": {"use_margin": False, "center_coef": 0.0},
                "normalize": {"reference": "none"}, "train": batch_train(args, 1e-4)}
    if args.kind == "dpo":
        # TRL's DPOConfig: sigmoid loss, beta 0.1, lr 1e-6; the reference's log-probs computed
        # once before training (precompute_ref_log_probs=True on TRL's side).
        return {"name": "dpo", "type": "dpo", "init": args.model, "data": pairs,
                "loss": {"type": "sigmoid", "beta": 0.1},
                "reference": {"mode": "cache"}, "train": batch_train(args, 1e-6)}
    prompts = {"prompts": args.data + "/prompts.jsonl", "template": "plain",
               "max_prompt_len": max_prompt_len(args.data)}
    if args.kind == "grpo":
        # TRL's GRPOConfig: beta 0 (no reference), loss_type "dapo" (token mean over the batch),
        # rewards scaled by the group's std, one update per batch (num_iterations 1), lr 1e-6.
        train = train_section(args, 1e-6, rl=True)
        return {"name": "grpo", "type": "grpo", "algorithm": "grpo", "policy": args.model,
                "data": prompts,
                "rollout": {"prompts_per_iteration": args.batch // args.group,
                            "group_size": args.group, "max_new_tokens": args.new_tokens,
                            "temperature": 1.0},
                "rewards": [{"type": "contains", "text": "the"}],
                "kl": {"beta": 0.0},
                "grpo": {"epochs": 1, "mini_batch_size": args.batch, "micro_batch_size": 8,
                         "loss_aggregation": "token_mean"},
                "train": train, "eval": {"prompts": 0}, "samples": {"every": 0}}
    if args.kind == "ppo":
        # TRL's experimental PPOConfig: 4 epochs over the batch as one mini-batch (num_mini_batches
        # 1) in micro-batches of 8, k1 KL 0.05 in the rewards, temperature 0.7, clip 0.2, value
        # clip 0.2, value coefficient 0.1, GAE gamma 1 lambda 0.95, lr 3e-6 for both models, the
        # critic initialised from the reward model, no whitening of the scores.
        train = train_section(args, 3e-6, rl=True)
        del train["lr"]
        train.update({"actor_lr": 3e-6, "critic_lr": 3e-6})
        return {"name": "ppo", "type": "rlhf", "policy": args.model,
                "reward_model": args.reward_model, "data": prompts,
                "rollout": {"batch_size": args.batch, "max_new_tokens": args.new_tokens,
                            "temperature": 0.7},
                "reward": {"whiten": False}, "kl": {"estimator": "k1", "beta": 0.05},
                "ppo": {"epochs": 4, "mini_batch_size": args.batch, "micro_batch_size": 8,
                        "gamma": 1.0, "lambda": 0.95, "clip": 0.2, "value_clip": 0.2,
                        "value_coef": 0.1},
                "train": train, "eval": {"prompts": 0}, "samples": {"every": 0}}
    raise SystemExit(f"recipe.py: unknown kind {args.kind}")


def max_prompt_len(data):
    """64, or the longest RL prompt as Tiller tokenizes it (make_data.py --grpo-prompt-tokens)."""
    with open(data + "/prompts_ids.jsonl") as f:
        return max([64] + [len(json.loads(line)["input_ids"]) for line in f if line.strip()])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["init", "sft", "reward", "dpo", "grpo", "ppo"])
    parser.add_argument("--model", help="the HF directory both sides start from")
    parser.add_argument("--data", help="make_data.py's output directory")
    parser.add_argument("--shape", default="llama-15m", help="init: the built-in shape")
    parser.add_argument("--tokenizer", help="init: a tokenizer.model of the shape's vocabulary")
    parser.add_argument("--corpus", help="init: a text file for the one pretraining step")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1,
                        help="sequences (sft), pairs (reward, dpo) or episodes (grpo) per step")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reward-model", help="ppo: the reward model (and the critic's init)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="the stage's train.precision (bf16: autocast, fp32 master weights)")
    args = parser.parse_args()
    recipe = {"run": {"name": "peers_" + args.kind, "dir": args.run_dir, "seed": 1,
                      "threads": args.threads},
              "stages": [stage(args)]}
    print(json.dumps(recipe, indent=1))


if __name__ == "__main__":
    main()
