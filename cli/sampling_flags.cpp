#include "cli/sampling_flags.h"

#include "common/io/hf_dir.h"
#include "common/io/peft_adapter.h"

namespace tiller {

void add_sampling_flags(CLI::App& cmd, SamplingOptions& sampling, const std::string& seed_help) {
  cmd.add_option("--max-new-tokens", sampling.max_new_tokens)->capture_default_str();
  cmd.add_option("--temperature", sampling.temperature, "0 = greedy")->capture_default_str();
  cmd.add_option("--top-p", sampling.top_p)->capture_default_str();
  cmd.add_option("--top-k", sampling.top_k, "0 = off")->capture_default_str();
  cmd.add_option("--seed", sampling.seed, seed_help)->capture_default_str();
}

TextModel load_text_model(const std::string& model_dir, const std::string& adapter_dir,
                          const std::string& tokenizer_path, SamplingOptions& sampling) {
  TextModel out{load_hf_model_with_adapter(model_dir, adapter_dir, /*num_labels=*/-1,
                                           QuantizedModels::load_frozen),
                Tokenizer(tokenizer_path.empty() ? tokenizer_path_in(model_dir) : tokenizer_path)};
  out.model->eval();
  out.tokenizer.check_matches(out.model->config, model_dir);
  sampling.eos_id = out.tokenizer.eos_id();
  sampling.pad_id = out.tokenizer.pad_id();
  sampling.full_pass_logprobs = false;
  return out;
}

}  // namespace tiller
