#!/usr/bin/env python3
"""The eager-PyTorch side of bench/compare.sh: the steps `tiller bench` times, written the way a
TRL / Hugging Face user's stack runs them, on the same shapes, printing JSON with the same keys.

  bench.py gemm   [--size N]
  bench.py decode --shape S --batch 1,16 [--prompt-tokens P] [--new-tokens N] [--dtype D]
  bench.py train  --shape S [--batch B] [--seq T] [--dtype D] [--steps N]
  bench.py ppo    --like TILLER_PPO.json [--iterations N] [--warmup N]

Each takes --threads N (0: all cores). `ppo` reads the model shape and the PPO settings from
the JSON that `tiller bench ppo --json` printed, so both sides run the very same configuration.
Runs on Debian's python3-torch (LibTorch 1.13.1, the library Tiller links).
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama import Config, Llama, builtin_config, generate  # noqa: E402


def best_seconds(repeats, f):
    f()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(size, dtype, repeats):
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    c = torch.empty(size, size, dtype=dtype)
    return 2.0 * size ** 3 / best_seconds(repeats, lambda: torch.mm(a, b, out=c)) / 1e9


def matmul_parameters(c):
    embedding_is_head = c.num_labels == 0 and c.tie_word_embeddings
    return c.parameter_count() - (0 if embedding_is_head else c.vocab_size * c.hidden_size)


# ---------------------------------------------------------------------------------------------

def run_gemm(args):
    with torch.no_grad():
        source = torch.ones(64 << 20)
        target = torch.empty_like(source)
        copy_s = best_seconds(args.repeats, lambda: target.copy_(source))
        return {"bench": "gemm", "size": args.size, "threads": torch.get_num_threads(),
                "fp32_gflops": matmul_gflops(args.size, torch.float32, args.repeats),
                "bf16_gflops": matmul_gflops(args.size, torch.bfloat16, args.repeats),
                "copy_gbps": 2.0 * source.numel() * 4 / copy_s / 1e9}


def run_decode(args):
    config = builtin_config(args.shape)
    model = Llama(config).eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        ids = torch.tensor([[(b * 31 + t * 7 + 3) % config.vocab_size
                             for t in range(args.prompt_tokens)] for b in range(batch)])
        mask = torch.ones_like(ids)

        def timed(new_tokens):
            start = time.perf_counter()
            generate(model, ids, mask, new_tokens, eos_id=config.eos_token_id, stop_at_eos=False)
            return time.perf_counter() - start

        # As tiller bench decode: prefill = making one token, decode = what the others add;
        # the fastest of the repeats, the first round a warm-up.
        prefill_s = total_s = float("inf")
        for r in range(args.repeats + 1):
            one, everything = timed(1), timed(args.new_tokens)
            if r > 0:
                prefill_s, total_s = min(prefill_s, one), min(total_s, everything)
        rows.append({"shape": args.shape, "parameters": config.parameter_count(),
                     "dtype": args.dtype, "threads": torch.get_num_threads(), "batch": batch,
                     "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                     "prefill_tokens_per_s": batch * args.prompt_tokens / prefill_s,
                     "tokens_per_s": batch * (args.new_tokens - 1) / max(total_s - prefill_s,
                                                                         1e-9)})
    return rows


def run_train(args):
    config = builtin_config(args.shape)
    model = Llama(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=0.0)
    torch.manual_seed(1)
    ids = torch.randint(config.vocab_size, (args.batch, args.seq))
    targets = torch.randint(config.vocab_size, (args.batch, args.seq))
    bf16 = args.dtype == "bf16"

    def step():
        optimizer.zero_grad()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(ids)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        forward = time.perf_counter() - start
        start = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - start
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return forward, backward, time.perf_counter() - start

    step()
    best = min((step() for _ in range(args.steps)), key=sum)
    peak = matmul_gflops(2048, torch.bfloat16 if bf16 else torch.float32, 3)
    tokens = args.batch * args.seq
    flops_per_token = (6.0 * matmul_parameters(config)
                       + 12.0 * config.num_hidden_layers * config.hidden_size * args.seq)
    tokens_per_s = tokens / sum(best)
    gflops = flops_per_token * tokens_per_s / 1e9
    return {"bench": "train", "shape": args.shape, "parameters": config.parameter_count(),
            "dtype": args.dtype, "threads": torch.get_num_threads(), "batch": args.batch,
            "seq": args.seq, "steps": args.steps, "step_s": sum(best), "forward_s": best[0],
            "backward_s": best[1], "optimizer_s": best[2], "tokens_per_s": tokens_per_s,
            "flops_per_token": flops_per_token, "gflops": gflops, "peak_gflops": peak,
            "fraction_of_peak": gflops / peak}


# ---------------------------------------------------------------------------------------------
# PPO, as TRL's PPOTrainer.step runs it (with a separate critic model, as OpenRLHF has): generate;
# batched forward passes of actor, reference and critic over whole sequences and a reward-model
# pass; KL-penalised rewards and GAE in a Python loop; epochs of shuffled minibatch updates.

def logprobs_from_logits(logits, labels):
    return torch.log_softmax(logits, dim=-1).gather(2, labels.unsqueeze(2)).squeeze(2)


def entropy_from_logits(logits):
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def whiten(values, shift_mean=True):
    mean, var = values.mean(), values.var()
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def masked_whiten(values, mask):
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def forward_pass(model, sequences, mask, prompt_len, temperature, entropy=False):
    """Log-probs [b, R] of the response tokens from a whole-sequence forward (as TRL's
    batched_forward_pass), and optionally the entropy at each response position."""
    logits, _ = model(sequences, mask)
    logits = logits[:, :-1] / temperature
    logp = logprobs_from_logits(logits, sequences[:, 1:])[:, prompt_len - 1:]
    ent = entropy_from_logits(logits[:, prompt_len - 1:]) if entropy else None
    return logp, ent


def value_pass(critic, sequences, mask, prompt_len):
    values, _ = critic(sequences, mask)
    return values.squeeze(-1)[:, prompt_len - 1:-1]


def in_chunks(n, chunk, f):
    return [f(slice(i, min(n, i + chunk))) for i in range(0, n, chunk)]


def run_ppo(args):
    with open(args.like) as f:
        like = json.load(f)
    config = Config(**like["model"])
    critic_config = Config(**{**like["model"], "num_labels": 1})
    batch, prompt_len, new_tokens = like["batch_size"], like["prompt_tokens"], like["new_tokens"]
    epochs, mini, micro = like["epochs"], like["mini_batch_size"], like["micro_batch_size"]
    temperature = like["temperature"] if like["temperature"] > 0 else 1.0
    beta, gamma, lam, clip, value_clip, value_coef = 0.05, 1.0, 0.95, 0.2, 0.2, 0.1
    torch.manual_seed(1234)
    actor, critic = Llama(config).train(), Llama(critic_config).train()
    reference, reward = Llama(config).eval(), Llama(critic_config).eval()
    reference.load_state_dict(actor.state_dict())
    for frozen in (reference, reward):
        frozen.requires_grad_(False)
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=like["actor_lr"], betas=(0.9, 0.95),
                                  eps=1e-8, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=like["critic_lr"], betas=(0.9, 0.95),
                                   eps=1e-8, weight_decay=0.0)
    generator = torch.Generator().manual_seed(7)
    prompts = torch.randint(3, config.vocab_size, (batch, prompt_len), generator=generator)
    prompts[:, 0] = config.bos_token_id
    eos = config.eos_token_id

    def iteration():
        times = {}
        start = time.perf_counter()
        sequences, mask = generate(actor, prompts, torch.ones_like(prompts), new_tokens,
                                   temperature, eos_id=eos, stop_at_eos=False)
        times["generate_s"] = time.perf_counter() - start

        start = time.perf_counter()
        responses = sequences[:, prompt_len:]
        response_mask = torch.ones_like(responses, dtype=torch.float)
        with torch.no_grad():
            parts = in_chunks(batch, micro, lambda rows: forward_pass(
                actor, sequences[rows], mask[rows], prompt_len, temperature, entropy=True))
            logprobs = torch.cat([p[0] for p in parts])
            ref_logprobs = torch.cat(in_chunks(batch, micro, lambda rows: forward_pass(
                reference, sequences[rows], mask[rows], prompt_len, temperature)[0]))
            values = torch.cat(in_chunks(batch, micro, lambda rows: value_pass(
                critic, sequences[rows], mask[rows], prompt_len)))
            rm_start = time.perf_counter()
            # The reward model reads prompt, response and a closing EOS; its score sits on the last.
            scored = torch.cat([sequences, torch.full((batch, 1), eos)], dim=1)
            scores = torch.cat(in_chunks(batch, micro, lambda rows: reward(
                scored[rows], torch.ones_like(scored[rows]))[0][:, -1, 0]))
            times["rm_s"] = time.perf_counter() - rm_start
        ended = (responses == eos).any(dim=1)
        scores = torch.where(ended, scores, torch.full_like(scores, -10.0))
        scores = whiten(scores)
        kl = (logprobs - ref_logprobs) * response_mask
        rewards = -beta * kl
        rewards[:, -1] += scores
        last_gae = 0
        advantages_reversed = []
        for t in reversed(range(new_tokens)):
            next_values = values[:, t + 1] if t < new_tokens - 1 else 0.0
            delta = rewards[:, t] + gamma * next_values - values[:, t]
            last_gae = delta + gamma * lam * last_gae
            advantages_reversed.append(last_gae)
        advantages = torch.stack(advantages_reversed[::-1]).transpose(0, 1)
        returns = advantages + values
        advantages = masked_whiten(advantages, response_mask).detach()
        times["score_s"] = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(batch)
            for begin in range(0, batch, mini):
                rows_all = order[begin:begin + mini]
                actor_opt.zero_grad()
                critic_opt.zero_grad()
                for m in range(0, len(rows_all), micro):
                    rows = rows_all[m:m + micro]
                    logp, _ = forward_pass(actor, sequences[rows], mask[rows], prompt_len,
                                           temperature)
                    vpred = value_pass(critic, sequences[rows], mask[rows], prompt_len)
                    m_mask = response_mask[rows]
                    ratio = torch.exp(logp - logprobs[rows])
                    adv = advantages[rows]
                    pg_loss = masked_mean(torch.max(-adv * ratio,
                                                    -adv * ratio.clamp(1 - clip, 1 + clip)),
                                          m_mask)
                    vclipped = values[rows] + (vpred - values[rows]).clamp(-value_clip, value_clip)
                    vf_loss = 0.5 * masked_mean(torch.max((vpred - returns[rows]) ** 2,
                                                          (vclipped - returns[rows]) ** 2), m_mask)
                    loss = (pg_loss + value_coef * vf_loss) * len(rows) / len(rows_all)
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
                torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
                actor_opt.step()
                critic_opt.step()
        times["train_s"] = time.perf_counter() - start
        return times

    for _ in range(args.warmup):
        iteration()
    totals = {}
    for _ in range(args.iterations):
        start = time.perf_counter()
        times = iteration()
        times["iteration_s"] = time.perf_counter() - start
        for key, value in times.items():
            totals[key] = totals.get(key, 0.0) + value / args.iterations
    return {"bench": "ppo", "parameters": config.parameter_count(), "dtype": "fp32",
            "threads": torch.get_num_threads(), "batch_size": batch, "prompt_tokens": prompt_len,
            "new_tokens": new_tokens, "epochs": epochs, "mini_batch_size": mini,
            "micro_batch_size": micro, "iterations": args.iterations, **totals,
            "episodes_per_s": batch / totals["iteration_s"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gemm")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p = sub.add_parser("decode")
    p.add_argument("--shape", default="llama-15m")
    p.add_argument("--batch", default="1,16")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("train")
    p.add_argument("--shape", default="llama-15m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=3)
    p = sub.add_parser("ppo")
    p.add_argument("--like", required=True, help="the JSON of tiller bench ppo --json")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = parser.parse_args()
    threads = args.threads if args.threads else os.cpu_count()
    torch.set_num_threads(threads)
    run = {"gemm": run_gemm, "decode": run_decode, "train": run_train, "ppo": run_ppo}
    print(json.dumps(run[args.command](args), indent=2))


if __name__ == "__main__":
    main()
