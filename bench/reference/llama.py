"""The Llama model as Hugging Face transformers' eager implementation computes it (RMSNorm in
fp32, rotary embedding in the rotate_half layout, grouped-query attention through repeat_kv,
SwiGLU MLP, an additive float mask), in plain PyTorch so that it runs on Debian's python3-torch
without transformers. The KV cache is a tuple per layer grown with torch.cat at every step, and
sampling draws with torch.multinomial: what model.generate() does in the TRL/HF stack.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# The shapes of common/model/model_config.cpp builtin_shape(), in HF config.json spelling.
BUILTIN_SHAPES = {
    "stories260k": dict(vocab_size=512, hidden_size=64, intermediate_size=172,
                        num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=4,
                        max_position_embeddings=512),
    "llama-15m": dict(vocab_size=32000, hidden_size=288, intermediate_size=768,
                      num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                      max_position_embeddings=256),
    "llama-124m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                       num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                       max_position_embeddings=1024),
}


class Config:
    def __init__(self, **fields):
        self.vocab_size = 32000
        self.hidden_size = 4096
        self.intermediate_size = 11008
        self.num_hidden_layers = 32
        self.num_attention_heads = 32
        self.num_key_value_heads = None
        self.max_position_embeddings = 2048
        self.rms_norm_eps = 1e-5
        self.rope_theta = 10000.0
        self.tie_word_embeddings = True
        self.bos_token_id = 1
        self.eos_token_id = 2
        self.num_labels = 0
        self.head_dim = 0  # 0: hidden_size / num_attention_heads
        for key, value in fields.items():
            if hasattr(self, key):
                setattr(self, key, value)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads

    def parameter_count(self):
        hd = self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        layer = (2 * self.hidden_size * q + 2 * self.hidden_size * kv
                 + 3 * self.hidden_size * self.intermediate_size + 2 * self.hidden_size)
        total = self.vocab_size * self.hidden_size + self.num_hidden_layers * layer + self.hidden_size
        if self.num_labels > 0:
            total += self.num_labels * self.hidden_size
        elif not self.tie_word_embeddings:
            total += self.vocab_size * self.hidden_size
        return total


def builtin_config(name, **overrides):
    if name not in BUILTIN_SHAPES:
        raise SystemExit(f"reference: unknown model shape '{name}'")
    return Config(**{**BUILTIN_SHAPES[name], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Rotary(nn.Module):
    def __init__(self, head_dim, theta):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, position_ids):
        freqs = (self.inv_freq[None, :, None] @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x, rep):
    if rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, rep, s, d).reshape(b, h * rep, s, d)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.n_heads * self.hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, past):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        rep = self.n_heads // self.n_kv
        k, v = repeat_kv(k, rep), repeat_kv(v, rep)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd) + mask
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).contiguous().reshape(b, t, -1)
        return self.o_proj(out), present


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past):
        h, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), present


def causal_mask(attention_mask, num_queries, dtype):
    """HF's 4D mask: [B, 1, T, S] of 0 (may attend) and the dtype's minimum (may not), for T
    queries at the last T of S slots."""
    b, s = attention_mask.shape
    lowest = torch.finfo(dtype).min
    causal = torch.full((num_queries, s), lowest, dtype=dtype).triu(s - num_queries + 1)
    mask = causal[None, None].expand(b, 1, num_queries, s).clone()
    return mask.masked_fill(attention_mask[:, None, None, :] == 0, lowest)


class Llama(nn.Module):
    """LlamaForCausalLM (num_labels 0) or LlamaForSequenceClassification (num_labels 1)."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary = Rotary(c.head_dim, c.rope_theta)
        if c.num_labels > 0:
            self.score = nn.Linear(c.hidden_size, c.num_labels, bias=False)
        else:
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
            if c.tie_word_embeddings:
                self.lm_head.weight = self.embed_tokens.weight
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" in name:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02)

    def hidden(self, input_ids, attention_mask=None, position_ids=None, past=None):
        b, t = input_ids.shape
        past_len = 0 if past is None else past[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(b, past_len + t, dtype=torch.long)
        if position_ids is None:
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            position_ids = position_ids[:, -t:]
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(x, position_ids)
        mask = causal_mask(attention_mask, t, x.dtype)
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, cos, sin, mask, None if past is None else past[i])
            presents.append(present)
        return self.norm(x), presents

    def forward(self, input_ids, attention_mask=None, position_ids=None, past=None):
        """Logits [B, T, V] in fp32 (as HF returns them) and the new cache; with a score head,
        the scores [B, T, num_labels] instead of logits."""
        h, presents = self.hidden(input_ids, attention_mask, position_ids, past)
        if self.config.num_labels > 0:
            return self.score(h), presents
        return self.lm_head(h).float(), presents


@torch.no_grad()
def generate(model, input_ids, attention_mask, max_new_tokens, temperature=1.0, eos_id=2,
             pad_id=0, stop_at_eos=True):
    """model.generate(do_sample=True, top_k=0, top_p=1.0) of transformers' sample loop: the
    prompt (left-padded) in one pass, then one token a step through the torch.cat cache."""
    batch = input_ids.shape[0]
    unfinished = torch.ones(batch, dtype=torch.long)
    past = None
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    for _ in range(max_new_tokens):
        if past is None:
            step_ids, step_positions = input_ids, position_ids
        else:
            step_ids, step_positions = input_ids[:, -1:], position_ids[:, -1:]
        logits, past = model(step_ids, attention_mask, step_positions, past)
        scores = logits[:, -1, :]
        if temperature != 1.0:
            scores = scores / temperature
        probs = F.softmax(scores, dim=-1)
        next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
        next_tokens = next_tokens * unfinished + pad_id * (1 - unfinished)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=-1)
        position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=-1)
        if stop_at_eos:
            unfinished = unfinished & (next_tokens != eos_id).long()
        if unfinished.max() == 0:
            break
    return input_ids, attention_mask
