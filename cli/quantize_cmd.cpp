// `tiller quantize`: weight-only int8/int4 quantisation of an HF directory (quantize/quantize.h),
// and `tiller eval perplexity`, the quality check beside it (eval/perplexity.h).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "common/io/hf_dir.h"
#include "common/io/peft_adapter.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "eval/perplexity.h"
#include "quantize/quantize.h"

namespace tiller {

namespace {

void print_summary(const nlohmann::json& s) {
  std::printf("wrote %s: %s\n", s["out"].get<std::string>().c_str(),
              s["quantization"].get<std::string>().c_str());
  std::printf("quantised weights: %.2f MB in fp32 -> %.2f MB\n",
              s["quantised_fp32_bytes"].get<double>() / 1e6,
              s["quantised_bytes"].get<double>() / 1e6);
  if (s.contains("mean_relative_output_error"))
    std::printf(
        "mean relative output error on the calibration inputs: %.4f (round to nearest: %.4f)\n",
        s["mean_relative_output_error"].get<double>(),
        s["mean_rtn_relative_output_error"].get<double>());
}

struct PerplexityArgs {
  std::string model, adapter, text;
  int64_t length = 256, max_windows = 0;
  bool json = false;
};

void run_perplexity(const PerplexityArgs& a) {
  Transformer model = load_hf_model_with_adapter(a.model, a.adapter, /*num_labels=*/-1,
                                                 QuantizedModels::load_frozen);
  check(model->config.num_labels == 0, "eval perplexity: " + a.model +
                                           " has a score head; it "
                                           "must be a causal LM");
  Tokenizer tokenizer(tokenizer_path_in(a.model));
  tokenizer.check_matches(model->config, a.model);
  const int64_t needed = a.max_windows > 0 ? a.max_windows * a.length : 0;
  const auto tokens = eval::text_token_stream(tokenizer, a.text, needed);
  const auto r = eval::perplexity(*model, tokens, a.length, a.max_windows);
  if (a.json) {
    nlohmann::json j = {{"model", a.model},
                        {"text", a.text},
                        {"length", a.length},
                        {"windows", r.windows},
                        {"predicted_tokens", r.predicted_tokens},
                        {"mean_nll", r.mean_nll},
                        {"perplexity", r.perplexity}};
    if (model->quantized) j["quantization"] = describe(model->quantized->config);
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf(
      "%s on %s: perplexity %.4f (mean NLL %.5f nats over %lld tokens, %lld windows of %lld)\n",
      a.model.c_str(), a.text.c_str(), r.perplexity, r.mean_nll,
      static_cast<long long>(r.predicted_tokens), static_cast<long long>(r.windows),
      static_cast<long long>(a.length));
}

}  // namespace

void add_quantize_command(CLI::App& app, CommandAction& action) {
  auto o = std::make_shared<QuantizeOptions>();
  auto quiet = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand(
      "quantize", "weight-only int8 / int4 quantisation of an HF model directory (docs/export.md)");
  cmd->add_option("--model", o->model_dir, "the full-precision HF directory")->required();
  cmd->add_option("--out", o->out_dir, "the quantised HF directory to write")->required();
  cmd->add_option("--scheme", o->scheme, "int8 (a scale per output row) or int4 (groups)")
      ->capture_default_str();
  cmd->add_option("--group-size", o->group_size, "int4: columns per scale and minimum")
      ->capture_default_str();
  cmd->add_option("--method", o->method, "rtn (round to nearest) or gptq (calibrated)")
      ->capture_default_str();
  cmd->add_option("--calibration", o->calibration, "gptq: a text file, one document a line");
  cmd->add_option("--samples", o->samples, "gptq: calibration windows")->capture_default_str();
  cmd->add_option("--length", o->length, "gptq: tokens a window")->capture_default_str();
  cmd->add_option("--damp", o->damp, "gptq: Hessian damping, a fraction of its mean diagonal")
      ->capture_default_str();
  cmd->add_option("--lm-head", o->lm_head, "int8, int4 or keep (fp32); a tied embedding follows it")
      ->capture_default_str();
  cmd->add_option("--embeddings", o->embeddings, "int8, int4 or keep (untied models)")
      ->capture_default_str();
  cmd->add_flag("--quiet", *quiet, "no progress lines");
  cmd->callback([o, quiet, &action] {
    action = [o, quiet] {
      print_summary(quantize_model(*o, !*quiet));
      return 0;
    };
  });
}

void add_eval_perplexity_command(CLI::App& eval_cmd, CommandAction& action) {
  auto a = std::make_shared<PerplexityArgs>();
  auto* cmd = eval_cmd.add_subcommand("perplexity", "perplexity of a causal LM on a text file");
  cmd->add_option("--model", a->model, "HF directory (full or quantised)")->required();
  cmd->add_option("--adapter", a->adapter, "a PEFT LoRA adapter on the model");
  cmd->add_option("--text", a->text, "text file, one document a line")->required();
  cmd->add_option("--length", a->length, "tokens a window")->capture_default_str();
  cmd->add_option("--max-windows", a->max_windows, "score at most this many windows (0: all)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "print JSON");
  cmd->callback([a, &action] {
    action = [a] {
      run_perplexity(*a);
      return 0;
    };
  });
}

}  // namespace tiller
