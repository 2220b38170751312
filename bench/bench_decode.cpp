#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/io/hf_dir.h"
#include "common/model/quantized.h"
#include "common/rollout/fast_decode.h"
#include "common/rollout/generator.h"
#include "common/util/error.h"
#include "quantize/quantize.h"

namespace tiller::bench {

int64_t matmul_parameters(const ModelConfig& c) {
  const bool embedding_is_head = c.num_labels == 0 && c.tie_word_embeddings;
  return c.parameter_count() - (embedding_is_head ? 0 : c.vocab_size * c.hidden_size);
}

Transformer load_bench_model(const std::string& model_dir, const std::string& shape,
                             std::string& label) {
  Transformer model{nullptr};
  if (!model_dir.empty()) {
    model = load_hf_model(model_dir, /*num_labels=*/-1, QuantizedModels::load_frozen);
    label = model_dir;
  } else {
    model = Transformer(builtin_shape(shape));
    model->init_weights(1234);
    label = shape;
  }
  model->eval();
  return model;
}

void check_dtype(const std::string& dtype, const std::string& flag_owner) {
  check(dtype == "fp32" || dtype == "bf16",
        flag_owner + ": --dtype must be fp32 or bf16, got '" + dtype + "'");
}

namespace {

// What one decode step of `batch` rows reads at least, and the FLOPs it does per row, averaged
// over the steps of a run (the KV cache grows by one slot a step).
struct StepCost {
  double bytes = 0;
  double flops_per_token = 0;
};

StepCost decode_step_cost(const ModelConfig& c, int64_t batch, int64_t prompt_tokens,
                          int64_t new_tokens, double weight_bytes, int64_t element_bytes) {
  // Decode step i (1 .. new_tokens - 1) attends to prompt_tokens + i slots.
  const double mean_slots = static_cast<double>(prompt_tokens) + new_tokens / 2.0;
  const double kv_width = static_cast<double>(c.num_key_value_heads * c.resolved_head_dim());
  const double q_width = static_cast<double>(c.num_attention_heads * c.resolved_head_dim());
  const double layers = static_cast<double>(c.num_hidden_layers);
  StepCost cost;
  cost.bytes = weight_bytes + static_cast<double>(element_bytes) * 2.0 * layers *
                                  static_cast<double>(batch) * mean_slots * kv_width;
  // Scores and the weighted sum of values: 2 FLOPs per multiply-add, each over q_width.
  cost.flops_per_token =
      2.0 * static_cast<double>(matmul_parameters(c)) + 4.0 * layers * mean_slots * q_width;
  return cost;
}

// The bytes of the matrices a decode step multiplies by (the embedding only when it is the LM
// head): packed where the model is quantised and the step reads the packed weights.
double matmul_weight_bytes(TransformerImpl& model, int64_t element_bytes, bool packed_read) {
  const auto& c = model.config;
  const bool embedding_is_head = c.num_labels == 0 && c.tie_word_embeddings;
  double bytes = 0;
  for (auto& [name, tensor] : model.named_weights()) {
    if (name == "model.embed_tokens.weight" && !embedding_is_head) continue;
    if (tensor.dim() != 2) continue;  // norms: read, but not matrices
    const QuantizedMatrix* packed =
        model.quantized && packed_read ? model.quantized->find(name) : nullptr;
    bytes += packed != nullptr ? static_cast<double>(packed->bytes())
                               : static_cast<double>(tensor.numel() * element_bytes);
  }
  return bytes;
}

// The weights a row of the table measures: the model as loaded (fp32 or bf16), or a quantised
// copy of the same weights.
struct Variant {
  std::string weights;  // "fp32", "bf16", "int8", "int4-g32", ...
  Transformer model;
};

// Checked before any output, so that a bad flag never leaves half a table behind.
void check_decode_options(const DecodeOptions& o, const torch::Device& device) {
  check(o.prompt_tokens >= 1, "bench decode: --prompt-tokens must be at least 1");
  check(o.new_tokens >= 2,
        "bench decode: --new-tokens must be at least 2 (the first token comes from the prefill)");
  check(o.repeats >= 1, "bench decode: --repeats must be at least 1");
  check(!o.no_weight_panels || (!o.torch_decode && device.is_cpu()),
        "bench decode: --no-weight-panels chooses within the fast CPU step, which --torch-decode "
        "and a GPU leave out");
  check_dtype(o.dtype, "bench decode");
  check(o.quantize.empty() || o.dtype == "fp32",
        "bench decode: --quantize compares with fp32 weights; it cannot be combined with --dtype "
        "bf16");
  for (const auto& scheme : o.quantize)
    check(scheme == "int8" || scheme == "int4",
          "bench decode: --quantize takes int8 and int4, got '" + scheme + "'");
  check(o.quantize.empty() || device.is_cpu(),
        "bench decode: --quantize measures the CPU's packed kernels; it cannot be combined with "
        "--device " +
            o.device);
}

// The model as loaded first, then a copy quantised in memory for each --quantize scheme.
std::vector<Variant> decode_variants(const DecodeOptions& o, std::string& label) {
  std::vector<Variant> variants;
  variants.push_back({o.dtype, load_bench_model(o.model_dir, o.shape, label)});
  for (const auto& scheme : o.quantize) {
    QuantizeOptions q;
    q.scheme = scheme;
    q.group_size = o.group_size;
    q.lm_head = scheme;
    Transformer copy = load_bench_model(o.model_dir, o.shape, label);
    quantize_in_place(*copy, q);
    variants.push_back({scheme == "int4" ? "int4-g" + std::to_string(o.group_size) : scheme, copy});
  }
  return variants;
}

// Each variant's fastest prefill (generate() making one token) and whole run (new_tokens), over
// `repeats` rounds after one to warm up. Prefill and decode are timed through generate(): the very
// code paths of a rollout (a bare forward would also compute the logits of every prompt slot,
// which generate() does not, and its time would be taken off decode's). The variants take turns
// within each round, so that a slower or faster spell of the machine falls on all of them.
struct Timings {
  std::vector<double> prefill_s, total_s;
};
Timings time_variants(std::vector<Variant>& variants,
                      const std::vector<std::vector<int64_t>>& prompts, SamplingOptions sampling,
                      const DecodeOptions& o, const torch::Device& device) {
  auto timed = [&](TransformerImpl& model, int64_t new_tokens) {
    sampling.max_new_tokens = new_tokens;
    synchronize(device);
    Stopwatch watch;
    generate(model, prompts, sampling);
    synchronize(device);
    return watch.seconds();
  };
  Timings t{std::vector<double>(variants.size(), 1e30), std::vector<double>(variants.size(), 1e30)};
  for (int r = 0; r < o.repeats + 1; ++r) {
    for (size_t v = 0; v < variants.size(); ++v) {
      const double one = timed(*variants[v].model, 1);
      const double all = timed(*variants[v].model, o.new_tokens);
      if (r == 0) continue;
      t.prefill_s[v] = std::min(t.prefill_s[v], one);
      t.total_s[v] = std::min(t.total_s[v], all);
    }
  }
  return t;
}

// The bounds a row is measured against: the memory bandwidth (decode at small batches reads
// every weight once a step) and the matmul peak (what large batches approach).
struct Bounds {
  double copy_gbps = 0, peak_gflops = 0;
};

}  // namespace

void run_decode(const DecodeOptions& o) {
  const torch::Device device = bench_device(o.device, "bench decode");
  check_decode_options(o, device);
  // FastDecoder is CPU code (BLAS on fp32 host tensors): a GPU decodes through LibTorch's ops.
  const bool torch_decode = o.torch_decode || !device.is_cpu();
  const std::string decode_path =
      torch_decode         ? (device.is_cpu() ? "libtorch (--torch-decode)"
                                              : "libtorch (the fast decode step is CPU-only)")
      : o.no_weight_panels ? "fast (FastDecoder where it applies), BLAS only (--no-weight-panels)"
                           : "fast (FastDecoder where it applies)";
  apply_threads(o.threads);
  std::string label;
  std::vector<Variant> variants = decode_variants(o, label);
  const auto& config = variants.front().model->config;
  check(o.prompt_tokens + o.new_tokens <= config.max_position_embeddings,
        "bench decode: --prompt-tokens + --new-tokens (" +
            std::to_string(o.prompt_tokens + o.new_tokens) + ") exceed the context of " + label +
            " (" + std::to_string(config.max_position_embeddings) + ")");
  const bool bf16 = o.dtype == "bf16";
  const int64_t element_bytes = bf16 ? 2 : 4;
  if (bf16) variants.front().model->to(torch::kBFloat16);  // the KV cache follows the weights
  for (auto& variant : variants) variant.model->to(device);
  // A 1024 matmul keeps the peak's measurement under a second on a CPU; a GPU reaches its rate
  // at 8192 only.
  const Bounds bounds{measure_copy_gbps(3, device),
                      measure_matmul_gflops(device.is_cuda() ? 8192 : 1024, bf16, 2, device)};
  const std::string name = device_name(device);

  nlohmann::json rows = nlohmann::json::array();
  if (!o.json) {
    std::printf(
        "model: %s (%.2fM parameters), prompt %lld tokens, %lld new tokens, %d threads\n"
        "device: %s, decode: %s\n"
        "bounds: copy %.1f GB/s, matmul %.1f GFLOP/s\n",
        label.c_str(), config.parameter_count() / 1e6, (long long)o.prompt_tokens,
        (long long)o.new_tokens, torch::get_num_threads(),
        (device.is_cuda() ? device.str() + " (" + name + ")" : device.str()).c_str(),
        decode_path.c_str(), bounds.copy_gbps, bounds.peak_gflops);
    std::printf("%8s  %6s  %10s  %14s  %14s  %10s  %16s  %16s\n", "weights", "batch", "MB/step",
                "prefill tok/s", "decode tok/s", "speedup", "of bandwidth", "of matmul peak");
  }
  for (int64_t batch : o.batches) {
    std::vector<std::vector<int64_t>> prompts(batch);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < o.prompt_tokens; ++t)
        prompts[b].push_back((b * 31 + t * 7 + 3) % config.vocab_size);
    SamplingOptions sampling;
    sampling.temperature = 1.0;
    sampling.stop_at_eos = false;         // every row runs the full length
    sampling.full_pass_logprobs = false;  // decode alone, without the rescoring pass
    sampling.fast_decode = !torch_decode;
    sampling.weight_panels = !o.no_weight_panels;
    const Timings t = time_variants(variants, prompts, sampling, o, device);
    // The packed weights are read only where the fast step takes them (FastDecoder::project).
    const bool packed_read = !torch_decode && batch < FastDecoder::kPackedRowsLimit;
    double first_decode = 0;
    for (size_t v = 0; v < variants.size(); ++v) {
      const double prefill = batch * o.prompt_tokens / t.prefill_s[v];
      const double decode =
          batch * (o.new_tokens - 1) / std::max(t.total_s[v] - t.prefill_s[v], 1e-9);
      if (v == 0) first_decode = decode;
      const StepCost cost = decode_step_cost(
          config, batch, o.prompt_tokens, o.new_tokens,
          matmul_weight_bytes(*variants[v].model, element_bytes, packed_read), element_bytes);
      const double bandwidth_bound = batch / (cost.bytes / (bounds.copy_gbps * 1e9));
      const double compute_bound = bounds.peak_gflops * 1e9 / cost.flops_per_token;
      rows.push_back({{"shape", label},
                      {"parameters", config.parameter_count()},
                      {"dtype", o.dtype},
                      {"weights", variants[v].weights},
                      {"device", device.str()},
                      {"device_name", name},
                      {"decode_path", decode_path},
                      {"threads", torch::get_num_threads()},
                      {"batch", batch},
                      {"prompt_tokens", o.prompt_tokens},
                      {"new_tokens", o.new_tokens},
                      {"prefill_tokens_per_s", prefill},
                      {"tokens_per_s", decode},
                      {"speedup_vs_" + variants.front().weights, decode / first_decode},
                      {"bytes_per_step", cost.bytes},
                      {"copy_gbps", bounds.copy_gbps},
                      {"bandwidth_bound_tokens_per_s", bandwidth_bound},
                      {"fraction_of_bandwidth_bound", decode / bandwidth_bound},
                      {"matmul_gflops", bounds.peak_gflops},
                      {"compute_bound_tokens_per_s", compute_bound},
                      {"fraction_of_compute_bound", decode / compute_bound}});
      if (!o.json)
        std::printf("%8s  %6lld  %10.2f  %14.0f  %14.0f  %9.2fx  %15.1f%%  %15.1f%%\n",
                    variants[v].weights.c_str(), (long long)batch, cost.bytes / 1e6, prefill,
                    decode, decode / first_decode, 100.0 * decode / bandwidth_bound,
                    100.0 * decode / compute_bound);
    }
  }
  if (o.json) std::printf("%s\n", rows.dump(2).c_str());
}

}  // namespace tiller::bench
