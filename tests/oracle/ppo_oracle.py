"""An independent PPO oracle: recomputes every tensor of a rollout Tiller dumped
(`ppo.dump_rollouts`) from the same weights and tokens, in eager PyTorch (bench/reference/llama.py,
transformers' Llama computed by hand), then one PPO update, and compares.

    ppo_oracle.py --dump ITER.safetensors --policy DIR --reference DIR --reward DIR --critic DIR
                  [--metrics METRICS.jsonl --updated-actor DIR --updated-critic FILE]

The update is checked when the stage ran one epoch of one minibatch (the whole rollout): its
policy and value losses and gradient norms against the stage's metrics for that iteration, and the
weights after one AdamW step against the stage's output (actor) and checkpoint (critic).

Prints one JSON object: the largest difference of each tensor, scaled by max(1, max |oracle|), and
"ok". Exits 0 when every difference is within --tolerance (1e-4), 1 otherwise, 2 on bad input.
For tests only: Tiller itself never runs Python.
"""
import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench", "reference"))
from llama import Config, Llama  # noqa: E402

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
          "BOOL": torch.bool, "U8": torch.uint8, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    """(name -> tensor, metadata) of a safetensors file, read by the published layout."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    metadata = header.pop("__metadata__", {})
    body = data[8 + header_len:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=dtype) if end > begin else \
            torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(entry["shape"]).clone()
    return tensors, metadata


def load_model(directory, num_labels=None, weights_file=None):
    """A Llama from an HF directory (config.json, model.safetensors) or a flat weights file."""
    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    fields = {k: hf[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                 "max_position_embeddings", "rms_norm_eps", "rope_theta",
                                 "tie_word_embeddings", "head_dim") if hf.get(k) is not None}
    labels = num_labels if num_labels is not None else \
        (hf.get("num_labels", 0) if "ForSequenceClassification" in str(hf.get("architectures")) else 0)
    model = Llama(Config(**fields, num_labels=labels))
    weights, _ = read_safetensors(weights_file or os.path.join(directory, "model.safetensors"))
    state = {}
    for name, tensor in weights.items():
        key = name[len("model."):] if name.startswith("model.") else name
        state[key] = tensor.float()
    own = dict(model.named_parameters())
    if model.config.num_labels > 0:
        state.pop("lm_head.weight", None)
    elif model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing = [k for k in own if k not in state]
    if model.config.num_labels > 0 and missing == ["score.weight"]:
        raise SystemExit(f"oracle: {directory} has no score head")
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise SystemExit(f"oracle: {directory}: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(state[k])
    return model


def hidden(model, ids, mask):
    positions = (mask.long().cumsum(1) - 1).clamp(min=0) * mask.long()
    h, _ = model.hidden(ids, mask.long(), positions)
    return h


def response_logprobs(model, ids, mask, prompt_len, response_ids, response_mask, temperature):
    h = hidden(model, ids, mask)[:, prompt_len - 1:prompt_len - 1 + response_ids.shape[1]]
    logits = model.lm_head(h).float() / temperature
    logp = F.log_softmax(logits, -1).gather(-1, response_ids[..., None]).squeeze(-1)
    return logp * response_mask


def response_values(critic, ids, mask, prompt_len, response_len, offset, scale):
    h = hidden(critic, ids, mask)[:, prompt_len - 1:prompt_len - 1 + response_len]
    return (critic.score(h).squeeze(-1).float() - offset) / scale


def critic_value_scale(critic_dir, head, whitened, penalized_scores, iteration):
    """rlhf/rlhf_stage.cpp load_models and PpoTrainer::calibrate_value_scale: a critic that keeps
    the reward model's head predicts its raw score, less its tiller_reward_offset; with whitened
    scores the first rollout's mean and deviation of the scores also come off (offset, scale)."""
    if head == "zeros":
        return 0.0, 1.0
    with open(os.path.join(critic_dir, "config.json")) as f:
        offset = float(json.load(f).get("tiller_reward_offset", 0.0))
    if not whitened:
        return offset, 1.0
    if iteration != 1:
        raise SystemExit("oracle: a whitened run's critic scale is derived at iteration 1 only")
    ones = torch.ones_like(penalized_scores)
    mean = masked_mean(penalized_scores, ones).item()
    deviation = math.sqrt(masked_var(penalized_scores, ones).item() + 1e-8)
    return offset + mean, deviation


def reward_sequence(prompt, response, eos, max_len):
    """common/data/preference_data.cpp reward_sequence: EOS appended when missing, the prompt cut
    after BOS when too long, the end cut and EOS put last when still too long."""
    response = list(response)
    if not response or response[-1] != eos:
        response.append(eos)
    over = len(prompt) + len(response) - max_len
    cut = min(over, len(prompt) - 1) if over > 0 else 0
    tokens = [prompt[0]] + list(prompt[1 + cut:]) + response
    if len(tokens) > max_len:
        tokens = tokens[:max_len]
        tokens[-1] = eos
    return tokens


def rm_scores(rm, prompt_ids, prompt_mask, response_ids, response_mask, eos, max_len, pad, offset):
    rows = []
    for b in range(prompt_ids.shape[0]):
        prompt = prompt_ids[b][prompt_mask[b].bool()].tolist()
        response = response_ids[b][response_mask[b].bool()].tolist()
        rows.append(reward_sequence(prompt, response, eos, max_len))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r)] = 1
    h = hidden(rm, ids, mask)
    last = mask.sum(1) - 1
    return rm.score(h[torch.arange(len(rows)), last]).squeeze(-1).float() - offset


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x, mask):
    n = mask.sum()
    mean = (x * mask).sum() / n.clamp(min=1)
    var = ((x - mean) ** 2 * mask).sum() / n.clamp(min=1)
    return var * n / (n - 1).clamp(min=1)


def masked_whiten(x, mask):
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + 1e-8) * mask


def gae(rewards, values, mask, gamma, lam):
    T = rewards.shape[1]
    last = torch.zeros(rewards.shape[0])
    out = []
    for t in reversed(range(T)):
        alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_value = values[:, t + 1] * alive if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last * alive) * mask[:, t]
        out.append(last)
    advantages = torch.stack(out[::-1], 1)
    return advantages, (advantages + values) * mask


def adamw_step(model, lr, train):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(train["beta1"], train["beta2"]),
                            eps=train["eps"], weight_decay=train["weight_decay"])
    opt.step()


def grad_norm_and_clip(model, max_norm):
    """The global gradient norm before clipping; clipped as torch's clip_grad_norm_ does."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()


def main():
    ap = argparse.ArgumentParser()
    for name in ("dump", "policy", "reference", "reward", "critic"):
        ap.add_argument("--" + name, required=True)
    ap.add_argument("--metrics")
    ap.add_argument("--updated-actor")
    ap.add_argument("--updated-critic")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    d, meta = read_safetensors(a.dump)
    cfg = json.loads(meta["config"])
    beta, temperature = float(meta["beta"]), float(meta["temperature"])
    reward_offset = float(meta["reward_offset"])
    eos, pad_rm = int(meta["eos_id"]), int(meta["reward_pad_id"])
    rm_max_len = int(meta["reward_max_seq_len"])
    ppo, train = cfg["ppo"], cfg["train"]

    policy, reference = load_model(a.policy), load_model(a.reference)
    rm = load_model(a.reward, num_labels=1)
    critic = load_model(a.critic, num_labels=1)
    if ppo["critic_head"] == "zeros":
        with torch.no_grad():
            critic.score.weight.zero_()

    P = d["prompt_ids"].shape[1]
    R = d["response_ids"].shape[1]
    ids = torch.cat([d["prompt_ids"], d["response_ids"]], 1)
    smask = torch.cat([d["prompt_mask"], d["response_mask"]], 1).long()
    mask = d["response_mask"].float()
    rids = d["response_ids"]
    got, want = {}, {}
    with torch.no_grad():
        want["mask"] = mask
        want["logprobs"] = response_logprobs(policy, ids, smask, P, rids, mask, temperature)
        want["ref_logprobs"] = response_logprobs(reference, ids, smask, P, rids, mask, temperature)
        want["scorer_scores"] = rm_scores(rm, d["prompt_ids"], d["prompt_mask"], rids,
                                          d["response_mask"], eos, rm_max_len, pad_rm,
                                          reward_offset)
        scores = want["scorer_scores"].clone()
        penalty = cfg["rollout"]["missing_eos_penalty"]
        if penalty is not None:
            scores = torch.where(d["ended_with_eos"].bool(), scores, torch.full_like(scores, penalty))
        want["penalized_scores"] = scores
        value_offset, value_scale = critic_value_scale(a.critic, ppo["critic_head"],
                                                       cfg["reward"]["whiten"], scores,
                                                       int(meta["iteration"]))
        want["values"] = response_values(critic, ids, smask, P, R, value_offset, value_scale) * mask
        if cfg["reward"]["whiten"]:
            scores = masked_whiten(scores, torch.ones_like(scores))
        if cfg["reward"]["clip"] > 0:
            scores = scores.clamp(-cfg["reward"]["clip"], cfg["reward"]["clip"])
        want["scores"] = scores
        if cfg["kl"]["estimator"] != "k1":
            raise SystemExit("oracle: only the k1 estimator is implemented")
        want["kl"] = (want["logprobs"] - want["ref_logprobs"]) * mask
        rewards = -beta * want["kl"] * mask
        last = mask.sum(1).long() - 1
        rows = torch.arange(mask.shape[0])
        has = (last >= 0).float()
        rewards[rows, last.clamp(min=0)] += scores * has
        want["rewards"] = rewards
        adv, returns = gae(rewards, want["values"], mask, ppo["gamma"], ppo["lambda"])
        want["advantages"] = masked_whiten(adv, mask) if ppo["whiten_advantages"] else adv
        want["returns"] = returns
    for k in want:
        got[k] = d[k].float()

    report = {"episodes": int(mask.shape[0]), "prompt_len": P, "response_len": R,
              "ended_with_eos": int(d["ended_with_eos"].sum()),
              "left_padded_rows": int((d["prompt_mask"][:, 0] == 0).sum()), "differences": {}}
    worst = 0.0

    def compare(name, g, w):
        nonlocal worst
        diff = (g.double() - w.double()).abs().max().item() / max(1.0, w.abs().max().item())
        report["differences"][name] = diff
        worst = max(worst, diff if math.isfinite(diff) else math.inf)

    for k in want:
        compare(k, got[k], want[k])
    # The critic's offset and scale the trainer used, against the ones derived here.
    compare("value_offset", torch.tensor(float(meta["value_offset"])), torch.tensor(value_offset))
    compare("value_scale", torch.tensor(float(meta.get("value_scale", "1"))),
            torch.tensor(value_scale))

    # One PPO update: one epoch of one minibatch (the whole rollout).
    one_update = ppo["epochs"] == 1 and ppo["mini_batch_size"] == mask.shape[0]
    if a.metrics and one_update:
        metrics = [json.loads(line) for line in open(a.metrics) if line.strip()]
        step = int(meta["iteration"])
        logged = next(m for m in metrics if m.get("step") == step and "policy_loss" in m)
        old_logp, adv_t = want["logprobs"], want["advantages"]
        logp = response_logprobs(policy, ids, smask, P, rids, mask, temperature)
        ratio = torch.exp(logp - old_logp)
        clip = ppo["clip"]
        policy_loss = masked_mean(torch.max(-adv_t * ratio, -adv_t * ratio.clamp(1 - clip, 1 + clip)),
                                  mask)
        policy_loss.backward()
        actor_norm = grad_norm_and_clip(policy, train["grad_clip"])
        values = response_values(critic, ids, smask, P, R, value_offset, value_scale) * mask
        old_values = want["values"]
        vclip = old_values + (values - old_values).clamp(-ppo["value_clip"], ppo["value_clip"])
        value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (vclip - returns) ** 2),
                                       mask)
        (value_loss * ppo["value_coef"]).backward()
        critic_norm = grad_norm_and_clip(critic, train["grad_clip"])
        for name, g, w in (("policy_loss", logged["policy_loss"], policy_loss.item()),
                           ("value_loss", logged["value_loss"], value_loss.item()),
                           ("actor_grad_norm", logged["actor_grad_norm"], actor_norm),
                           ("critic_grad_norm", logged["critic_grad_norm"], critic_norm)):
            compare(name, torch.tensor(g), torch.tensor(w))
        adamw_step(policy, train["actor_lr"], train)
        adamw_step(critic, train["critic_lr"], train)
        if a.updated_actor:
            updated = load_model(a.updated_actor)
            upd = dict(updated.named_parameters())
            for name, p in policy.named_parameters():
                compare("updated_actor." + name, upd[name].detach(), p.detach())
        if a.updated_critic:
            updated = load_model(a.critic, num_labels=1, weights_file=a.updated_critic)
            upd = dict(updated.named_parameters())
            for name, p in critic.named_parameters():
                compare("updated_critic." + name, upd[name].detach(), p.detach())
    report["one_update_checked"] = bool(a.metrics and one_update)
    report["worst"] = worst
    report["ok"] = worst <= a.tolerance
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
