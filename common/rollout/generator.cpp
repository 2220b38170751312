#include "common/rollout/generator.h"

#include <algorithm>
#include <limits>
#include <optional>

#include "common/model/attention_mask.h"
#include "common/rollout/fast_decode.h"
#include "common/torch_compat.h"
#include "common/train/token_log_probs.h"
#include "common/util/error.h"
#include "common/util/runtime.h"
#include "common/util/vec_math.h"

namespace tiller {

void SamplingOptions::validate() const {
  check(max_new_tokens >= 1,
        "max_new_tokens must be at least 1, got " + std::to_string(max_new_tokens));
  check(temperature >= 0, "temperature must be >= 0, got " + std::to_string(temperature));
  check(top_k >= 0, "top_k must be >= 0, got " + std::to_string(top_k));
  check(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got " + std::to_string(top_p));
}

std::vector<int64_t> GenerationBatch::response(int64_t row) const {
  // One copy of the row to the CPU, then plain reads (not an item() call per token).
  auto ids = response_ids[row].cpu();
  auto mask = response_mask[row].cpu();
  auto ids_a = ids.accessor<int64_t, 1>();
  auto mask_a = mask.accessor<bool, 1>();
  std::vector<int64_t> out;
  for (int64_t t = 0; t < ids.size(0); ++t)
    if (mask_a[t]) out.push_back(ids_a[t]);
  return out;
}

torch::Tensor GenerationBatch::sequence_ids() const {
  return torch::cat({prompt_ids, response_ids}, 1);
}
torch::Tensor GenerationBatch::sequence_mask() const {
  return torch::cat({prompt_mask, response_mask}, 1);
}

namespace {

double effective_temperature(double temperature) {
  return temperature > 0 ? temperature : 1.0;
}

// Uniform draws in [0, 1), one per row: [B, 1].
class RowUniforms {
 public:
  RowUniforms(const SamplingOptions& o, int64_t batch) {
    if (o.row_seeds.empty()) {
      shared_.push_back(compat::make_cpu_generator(o.seed));
      return;
    }
    check(static_cast<int64_t>(o.row_seeds.size()) == batch,
          "generate: row_seeds has " + std::to_string(o.row_seeds.size()) + " seeds for " +
              std::to_string(batch) + " rows (prompts x group size)");
    for (uint64_t seed : o.row_seeds) shared_.push_back(compat::make_cpu_generator(seed));
    per_row_ = true;
  }
  torch::Tensor draw(int64_t batch) {
    if (!per_row_) return torch::rand({batch, 1}, shared_[0], torch::kFloat);
    std::vector<torch::Tensor> rows;
    rows.reserve(shared_.size());
    for (auto& gen : shared_) rows.push_back(torch::rand({1, 1}, gen, torch::kFloat));
    return torch::cat(rows, 0);
  }
  // The draws of `steps` calls of draw(batch) at once: [steps, B, 1]. The same numbers: LibTorch
  // fills a CPU tensor from its generator serially, element after element (1.13 and 2.x alike).
  torch::Tensor draw_steps(int64_t steps, int64_t batch) {
    if (!per_row_) return torch::rand({steps, batch, 1}, shared_[0], torch::kFloat);
    std::vector<torch::Tensor> rows;
    rows.reserve(shared_.size());
    for (auto& gen : shared_) rows.push_back(torch::rand({steps, 1, 1}, gen, torch::kFloat));
    return torch::cat(rows, 1);
  }

 private:
  std::vector<at::Generator> shared_;
  bool per_row_ = false;
};

// logits: [B, V] float; uniform: [B, 1] float draws in [0, 1) on the logits' device (unused when
// greedy). Returns the next token per row: [B] int64.
torch::Tensor sample(const torch::Tensor& logits, const SamplingOptions& o,
                     const torch::Tensor& uniform) {
  if (o.temperature == 0) return logits.argmax(-1);
  auto scaled = logits / o.temperature;
  const int64_t vocab = scaled.size(-1);
  if (o.top_k > 0 && o.top_k < vocab) {
    auto kth = std::get<0>(scaled.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);  // [B, 1]
    scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(scaled, -1);
  torch::Tensor order;
  if (o.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    // Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    auto before = sorted.cumsum(-1) - sorted;
    sorted = sorted.masked_fill(before >= o.top_p, 0.0);
    probs = torch::zeros_like(probs).scatter(-1, idx, sorted);
  }
  // Inverse-CDF sampling with one uniform per row (no multinomial: it is slow and unseeded here).
  auto cdf = probs.cumsum(-1);
  auto total = cdf.narrow(-1, vocab - 1, 1);
  auto u = uniform.to(probs.dtype()) * total;
  auto token = (cdf <= u).sum(-1).clamp_max(vocab - 1);
  // Never pick a zero-probability token through rounding at the end of the CDF.
  auto picked_prob = probs.gather(-1, token.unsqueeze(-1)).squeeze(-1);
  return torch::where(picked_prob > 0, token, probs.argmax(-1));
}

// Whether sample_on_cpu() takes these logits: fp32 on the CPU, with neither a top-k nor a top-p
// filter (those stay with sample()).
bool cpu_sampling_applies(const torch::Tensor& logits, const SamplingOptions& o) {
  const int64_t vocab = logits.size(-1);
  return o.fast_decode && logits.device().is_cpu() && logits.scalar_type() == torch::kFloat &&
         logits.dim() == 2 && (o.top_k == 0 || o.top_k >= vocab) && o.top_p >= 1.0;
}

struct Picks {
  torch::Tensor tokens;    // [B] int64
  torch::Tensor logprobs;  // [B] float: log p(token) at the effective temperature
};

// sample() without filters, and the log-probability of each pick, in plain loops over each row
// instead of some 15 LibTorch ops (at stories260k batch 16 their dispatch cost as much as the
// attention of a decode step). The same draw: inverse CDF with one uniform per row from the same
// generators, the CDF summed in double (in blocks, then within the block of the pick); picks can
// differ from sample()'s only where the uniform falls within rounding of a CDF step. `buffer` is
// reused across steps.
Picks sample_on_cpu(const torch::Tensor& logits_in, const SamplingOptions& o, RowUniforms& uniforms,
                    std::vector<float>& buffer) {
  const auto logits = logits_in.contiguous();
  const int64_t batch = logits.size(0), vocab = logits.size(1);
  const float temperature = static_cast<float>(effective_temperature(o.temperature));
  const auto isa = vec::best_isa();
  torch::Tensor draws;
  if (o.temperature > 0) draws = uniforms.draw(batch).contiguous();
  Picks picks{torch::empty({batch}, torch::kLong), torch::empty({batch}, torch::kFloat)};
  int64_t* tokens = picks.tokens.data_ptr<int64_t>();
  float* logprobs = picks.logprobs.data_ptr<float>();
  buffer.resize(2 * vocab);
  float *scaled = buffer.data(), *exps = buffer.data() + vocab;
  std::vector<double> block_sums;
  for (int64_t b = 0; b < batch; ++b) {
    const float* row = logits.data_ptr<float>() + b * vocab;
    for (int64_t i = 0; i < vocab; ++i) scaled[i] = row[i] / temperature;
    const float max = vec::max(isa, scaled, vocab);
    const float sum = vec::exp_sum(isa, scaled, max, vocab, exps);
    const auto first_max = [&] { return std::find(scaled, scaled + vocab, max) - scaled; };
    int64_t token;
    if (o.temperature == 0) {
      token = first_max();
    } else {
      // The sums of blocks of kCdfBlock terms (four independent adds each), and the total; then
      // the running sum, a block at a time to the block of the pick and a term at a time in it.
      // A token-by-token walk is a chain of dependent adds: at a 32,000-token vocabulary it
      // took more of a llama-15m decode step than its attention.
      constexpr int64_t kCdfBlock = 256;
      block_sums.clear();
      for (int64_t start = 0; start < vocab; start += kCdfBlock) {
        double partial[4] = {};
        const int64_t end = std::min(vocab, start + kCdfBlock);
        int64_t i = start;
        for (; i + 4 <= end; i += 4)
          for (int64_t j = 0; j < 4; ++j) partial[j] += exps[i + j];
        for (; i < end; ++i) partial[0] += exps[i];
        block_sums.push_back((partial[0] + partial[1]) + (partial[2] + partial[3]));
      }
      double total = 0;
      for (double s : block_sums) total += s;
      const double target = draws.data_ptr<float>()[b] * total;
      double cdf = 0;
      size_t block = 0;
      while (block + 1 < block_sums.size() && cdf + block_sums[block] <= target)
        cdf += block_sums[block++];
      token = static_cast<int64_t>(block) * kCdfBlock;
      while (token < vocab - 1 && (cdf += exps[token]) <= target) ++token;
      // Never a zero-probability token through rounding at the end of the CDF.
      if (exps[token] == 0) token = first_max();
    }
    tokens[b] = token;
    logprobs[b] = (scaled[token] - max) - std::log(sum);
  }
  return picks;
}

// log p(token) of each row at the effective temperature: [B] float, on the logits' device.
torch::Tensor log_prob_of(const torch::Tensor& logits, const torch::Tensor& token,
                          const SamplingOptions& o) {
  return torch::log_softmax(logits / effective_temperature(o.temperature), -1)
      .gather(-1, token.unsqueeze(-1))
      .squeeze(-1);
}

// Picks the next token of every row ([B] int64) and its log-probability ([B] float), on the CPU.
Picks pick_next(const torch::Tensor& logits, const SamplingOptions& o, RowUniforms& uniforms,
                std::vector<float>& buffer) {
  if (cpu_sampling_applies(logits, o)) return sample_on_cpu(logits, o, uniforms, buffer);
  const auto cpu_logits = logits.cpu();
  auto token = sample(cpu_logits, o,
                      o.temperature > 0 ? uniforms.draw(cpu_logits.size(0)) : torch::Tensor());
  auto logp = log_prob_of(logits, token.to(logits.device()), o).to(torch::kCPU, torch::kFloat);
  return {token.to(torch::kLong).contiguous(), logp.contiguous()};
}

// The length of the longest prompt, once every prompt is checked against the model and options.
int64_t checked_prompt_length(const TransformerImpl& model,
                              const std::vector<std::vector<int64_t>>& prompts,
                              const SamplingOptions& o) {
  check(!prompts.empty(), "generate: no prompts");
  check(model.config.num_labels == 0, "generate: the model has a score head, not an LM head");
  int64_t prompt_len = 0;
  for (const auto& p : prompts) {
    check(!p.empty(), "generate: a prompt is empty (add BOS at least)");
    for (int64_t id : p)
      if (id < 0 || id >= model.config.vocab_size)
        throw Error("generate: token id " + std::to_string(id) + " is outside the vocabulary");
    prompt_len = std::max<int64_t>(prompt_len, static_cast<int64_t>(p.size()));
  }
  check(prompt_len + o.max_new_tokens <= model.config.max_position_embeddings,
        "generate: prompt (" + std::to_string(prompt_len) + " tokens) + max_new_tokens (" +
            std::to_string(o.max_new_tokens) + ") exceeds the model's context of " +
            std::to_string(model.config.max_position_embeddings));
  return prompt_len;
}

// Sets out.prompt_ids and out.prompt_mask: the prompts left-padded to prompt_len, on `device`.
void lay_out_prompts(const std::vector<std::vector<int64_t>>& prompts, int64_t prompt_len,
                     int64_t pad_id, torch::Device device, GenerationBatch& out) {
  const int64_t batch = static_cast<int64_t>(prompts.size());
  auto ids = torch::full({batch, prompt_len}, pad_id, torch::kLong);
  auto mask = torch::zeros({batch, prompt_len}, torch::kBool);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<bool, 2>();
  for (int64_t b = 0; b < batch; ++b) {
    const auto& p = prompts[b];
    const int64_t offset = prompt_len - static_cast<int64_t>(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      ids_a[b][offset + static_cast<int64_t>(i)] = p[i];
      mask_a[b][offset + static_cast<int64_t>(i)] = true;
    }
  }
  out.prompt_ids = ids.to(device);
  out.prompt_mask = mask.to(device);
}

// What decoding starts from: the KV cache holding the prompts, and for each row the logits that
// predict its first response token and the rotary position that token takes.
struct Prefilled {
  KVCache cache;
  torch::Tensor logits;     // [B, V] float
  torch::Tensor positions;  // [B] int64
};

// The whole prompt at once, into a cache of `capacity` slots a row.
Prefilled prefill(TransformerImpl& model, const GenerationBatch& prompts, int64_t capacity) {
  const int64_t prompt_len = prompts.prompt_ids.size(1);
  Prefilled state{
      // In the activations' dtype, the norms': fp32 also where a LoRA's frozen base is bf16.
      KVCache(model.config, prompts.batch(), capacity,
              model.model->norm->weight.options().requires_grad(false)),
      {},
      {}};
  auto key_valid = state.cache.key_valid.narrow(1, 0, prompt_len);
  key_valid.copy_(prompts.prompt_mask);
  auto hidden = model.hidden(prompts.prompt_ids, positions_from_mask(prompts.prompt_mask),
                             causal_mask(key_valid, prompt_len), &state.cache);
  // Only each row's last slot goes through the LM head.
  state.logits = model.logits(hidden.narrow(1, prompt_len - 1, 1)).squeeze(1).to(torch::kFloat);
  state.positions = prompts.prompt_mask.to(torch::kLong).sum(1);
  return state;
}

// Row b becomes rows b*G .. b*G + G-1 (G = group_size) of the cache, logits, positions and
// prompts, each repeated on its own device: G samples continue from one prefill.
void repeat_rows(Prefilled& state, GenerationBatch& out, int64_t group_size) {
  if (group_size == 1) return;
  KVCache& cache = state.cache;
  const int64_t rows = cache.batch() * group_size;
  double bytes = 0;
  for (size_t l = 0; l < cache.keys.size(); ++l)
    bytes += static_cast<double>(cache.keys[l].nbytes() + cache.values[l].nbytes()) * group_size;
  check_fits_in_memory(bytes, "a KV cache of " + std::to_string(rows) + " rows x " +
                                  std::to_string(cache.capacity()) + " positions");
  for (auto& keys : cache.keys) keys = keys.repeat_interleave(group_size, 0);
  for (auto& values : cache.values) values = values.repeat_interleave(group_size, 0);
  cache.key_valid = cache.key_valid.repeat_interleave(group_size, 0);
  state.logits = state.logits.repeat_interleave(group_size, 0);
  state.positions = state.positions.repeat_interleave(group_size, 0);
  out.prompt_ids = out.prompt_ids.repeat_interleave(group_size, 0);
  out.prompt_mask = out.prompt_mask.repeat_interleave(group_size, 0);
}

// The responses as they are sampled, in plain arrays on the CPU (where the tokens are picked),
// not in a dozen small LibTorch ops a step: they go to the model's device once at the end.
class ResponseRecorder {
 public:
  ResponseRecorder(int64_t batch, const SamplingOptions& o)
      : o_(o),
        ids_(torch::full({batch, o.max_new_tokens}, o.pad_id, torch::kLong)),
        mask_(torch::zeros({batch, o.max_new_tokens}, torch::kBool)),
        logprobs_(torch::zeros({batch, o.max_new_tokens}, torch::kFloat)),
        fed_(torch::empty({batch}, torch::kLong)),
        alive_(batch, 1) {}

  // Writes step `step`'s picks into the rows still running and ends those that picked EOS.
  // Returns whether any row still runs.
  bool record(int64_t step, const Picks& picks) {
    const int64_t batch = fed_.size(0), width = o_.max_new_tokens;
    const int64_t* picked = picks.tokens.data_ptr<int64_t>();
    const float* picked_logprob = picks.logprobs.data_ptr<float>();
    int64_t* ids = ids_.data_ptr<int64_t>();
    bool* mask = mask_.data_ptr<bool>();
    float* logprobs = logprobs_.data_ptr<float>();
    int64_t* fed = fed_.data_ptr<int64_t>();
    bool any_alive = false;
    for (int64_t b = 0; b < batch; ++b) {
      fed[b] = alive_[b] ? picked[b] : o_.pad_id;
      if (alive_[b]) {
        ids[b * width + step] = picked[b];
        mask[b * width + step] = true;
        logprobs[b * width + step] = picked_logprob[b];
        if (o_.stop_at_eos && picked[b] == o_.eos_id) alive_[b] = 0;
      }
      any_alive = any_alive || alive_[b];
    }
    return any_alive;
  }

  // The last picks, pad_id on rows that had already ended: [B] int64 on the CPU.
  const torch::Tensor& fed_tokens() const { return fed_; }

  // Sets out's response fields from the first `steps` steps, on `device`.
  void finish(int64_t steps, torch::Device device, GenerationBatch& out) const {
    out.response_ids = ids_.narrow(1, 0, steps).contiguous().to(device);
    out.response_mask = mask_.narrow(1, 0, steps).contiguous().to(device);
    out.logprobs = logprobs_.narrow(1, 0, steps).contiguous().to(device);
    out.ended_with_eos = out.response_ids.eq(o_.eos_id).logical_and(out.response_mask).any(1);
  }

 private:
  const SamplingOptions& o_;
  torch::Tensor ids_, mask_, logprobs_, fed_;
  std::vector<char> alive_;
};

// How often the device loop asks whether every row has ended: each ask is a host sync on a GPU
// (the queue of kernels drains). Between asks at most this many steps less one run after the last
// row ended; the records are cut back to the steps a row ran, as a check every step would leave.
constexpr int64_t kEndedCheckEvery = 8;

// decode() with every step's pick and record in tensor ops on the logits' device: no host
// round-trip a token but the ended check every kEndedCheckEvery steps (every step, and a copy of
// the picks, when on_step is set). The uniforms are drawn up front, the numbers pick_next draws a
// step at a time, and sample() picks from them as it does there: on the CPU the tokens and
// log-probs are the host loop's exactly. A GPU runs this loop; so does the CPU with fast_decode
// off.
void decode_on_device(TransformerImpl& model, Prefilled& state, const SamplingOptions& o,
                      RowUniforms& uniforms, GenerationBatch& out) {
  KVCache& cache = state.cache;
  const int64_t batch = cache.batch(), width = o.max_new_tokens;
  const auto on_device = torch::dtype(torch::kLong).device(state.logits.device());
  const torch::Tensor draws = o.temperature > 0
                                  ? uniforms.draw_steps(width, batch).to(on_device.device())
                                  : torch::Tensor();
  auto ids = torch::full({batch, width}, o.pad_id, on_device);
  auto mask = torch::zeros({batch, width}, on_device.dtype(torch::kBool));
  auto logprobs = torch::zeros({batch, width}, on_device.dtype(torch::kFloat));
  auto alive = torch::ones({batch}, on_device.dtype(torch::kBool));
  const auto pad = torch::full({}, o.pad_id, on_device);
  auto positions = state.positions.clone();
  auto logits = state.logits;
  int64_t steps = 0;
  while (steps < width) {
    const auto token = sample(logits, o, draws.defined() ? draws[steps] : torch::Tensor());
    const auto logp = log_prob_of(logits, token, o);
    const auto fed = torch::where(alive, token, pad);  // pad_id on rows that had ended
    ids.select(1, steps).copy_(fed);
    mask.select(1, steps).copy_(alive);
    logprobs.select(1, steps).copy_(torch::where(alive, logp, torch::zeros_like(logp)));
    if (o.stop_at_eos) alive = alive.logical_and(token.ne(o.eos_id));
    if (o.on_step) o.on_step(fed.cpu());
    ++steps;
    if (steps == width) break;
    // With on_step, which syncs anyway, every step: it hears of no step after the last row ended.
    const bool ask = o.on_step || steps % kEndedCheckEvery == 0;
    if (o.stop_at_eos && ask && !alive.any().item<bool>()) break;

    cache.key_valid.narrow(1, cache.length, 1).fill_(true);
    auto allowed = causal_mask(cache.key_valid.narrow(1, 0, cache.length + 1), 1);
    auto hidden = model.hidden(fed.unsqueeze(1), positions.unsqueeze(1), allowed, &cache);
    logits = model.logits(hidden).squeeze(1).to(torch::kFloat);
    positions.add_(1);
  }
  // Every row runs from step 0 until its EOS: the longest ran the steps a check each step stops at.
  const int64_t ran = o.stop_at_eos ? mask.sum(1).max().item<int64_t>() : steps;
  out.response_ids = ids.narrow(1, 0, ran).contiguous();
  out.response_mask = mask.narrow(1, 0, ran).contiguous();
  out.logprobs = logprobs.narrow(1, 0, ran).contiguous();
  out.ended_with_eos = out.response_ids.eq(o.eos_id).logical_and(out.response_mask).any(1);
}

// Samples from `state` one token a step for every row until all have ended or max_new_tokens is
// reached, feeding each step's picks back through the model; sets out's response fields. On the
// CPU (fast_decode on) the picks are made and kept on the host, where a read costs nothing;
// elsewhere, and with fast_decode off, in tensor ops on the device (decode_on_device).
void decode(TransformerImpl& model, Prefilled& state, const SamplingOptions& o,
            RowUniforms& uniforms, GenerationBatch& out) {
  if (!o.fast_decode || !state.logits.device().is_cpu()) {
    decode_on_device(model, state, o, uniforms, out);
    return;
  }
  KVCache& cache = state.cache;
  const auto device = model.parameters().front().device();
  std::optional<FastDecoder> fast;
  if (o.fast_decode && FastDecoder::supports(model, cache))
    fast.emplace(model, cache, decode_kernels::best_isa(), quant_kernels::best_isa(),
                 o.weight_panels ? FastDecoder::WeightPanels::where_faster
                                 : FastDecoder::WeightPanels::never);
  ResponseRecorder responses(cache.batch(), o);
  auto positions = state.positions.cpu().contiguous();
  auto logits = state.logits;
  std::vector<float> sampling_buffer;
  int64_t steps = 0;
  while (steps < o.max_new_tokens) {
    const bool running = responses.record(steps, pick_next(logits, o, uniforms, sampling_buffer));
    if (o.on_step) o.on_step(responses.fed_tokens());
    ++steps;
    if (!running || steps == o.max_new_tokens) break;

    // Decode one: the new token at the next slot, attending to every valid slot before it.
    cache.key_valid.narrow(1, cache.length, 1).fill_(true);
    if (fast) {
      logits = fast->step(responses.fed_tokens(), positions);
    } else {
      auto allowed = causal_mask(cache.key_valid.narrow(1, 0, cache.length + 1), 1);
      auto hidden = model.hidden(responses.fed_tokens().to(device).unsqueeze(1),
                                 positions.to(device).unsqueeze(1), allowed, &cache);
      logits = model.logits(hidden).squeeze(1).to(torch::kFloat);
    }
    positions.add_(1);
  }
  responses.finish(steps, device, out);
}

}  // namespace

GenerationBatch generate(TransformerImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                         const SamplingOptions& o) {
  return generate_groups(model, prompts, 1, o);
}

GenerationBatch generate_groups(TransformerImpl& model,
                                const std::vector<std::vector<int64_t>>& prompts,
                                int64_t group_size, const SamplingOptions& o) {
  o.validate();
  check(group_size >= 1,
        "generate_groups: group_size must be at least 1, got " + std::to_string(group_size));
  const int64_t prompt_len = checked_prompt_length(model, prompts, o);
  RowUniforms uniforms(o, static_cast<int64_t>(prompts.size()) * group_size);
  torch::NoGradGuard no_grad;
  GenerationBatch out;
  lay_out_prompts(prompts, prompt_len, o.pad_id, model.parameters().front().device(), out);
  Prefilled state = prefill(model, out, prompt_len + o.max_new_tokens);
  repeat_rows(state, out, group_size);
  decode(model, state, o, uniforms, out);
  if (o.full_pass_logprobs) out.logprobs = response_logprobs(model, out, o.temperature);
  return out;
}

torch::Tensor response_logits(TransformerImpl& model, const torch::Tensor& sequence_ids,
                              const torch::Tensor& sequence_mask, int64_t prompt_len,
                              double temperature) {
  const int64_t response_len = sequence_ids.size(1) - prompt_len;
  check(prompt_len >= 1 && response_len >= 1, "response_logits: empty prompt or response");
  // The token at slot P + t is predicted by the hidden state at slot P + t - 1: only those R
  // slots leave the last layer and go through the LM head ([B, R, V] instead of [B, P + R, V]).
  const auto predicting = torch::arange(prompt_len - 1, prompt_len - 1 + response_len,
                                        torch::dtype(torch::kLong).device(sequence_ids.device()))
                              .expand({sequence_ids.size(0), response_len});
  auto hidden = model.hidden(sequence_ids, positions_from_mask(sequence_mask),
                             causal_mask(sequence_mask, sequence_ids.size(1)), nullptr, predicting);
  return at_temperature(model.logits(hidden), temperature);
}

torch::Tensor at_temperature(const torch::Tensor& logits, double temperature) {
  const double t = effective_temperature(temperature);
  const auto as_float = logits.to(torch::kFloat);
  return t == 1.0 ? as_float : as_float / t;
}

torch::Tensor response_logprobs(TransformerImpl& model, const GenerationBatch& batch,
                                double temperature) {
  auto logits = response_logits(model, batch.sequence_ids(), batch.sequence_mask(),
                                batch.prompt_ids.size(1), temperature);
  auto logp = token_log_probs(logits, batch.response_ids);
  return torch::where(batch.response_mask, logp, torch::zeros_like(logp));
}

}  // namespace tiller
