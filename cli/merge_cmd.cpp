// `tiller merge`: a base HF directory plus a PEFT LoRA adapter -> full HF weights.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "common/io/hf_dir.h"
#include "common/io/peft_adapter.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

namespace {

struct MergeArgs {
  std::string base, adapter, out, tokenizer;
};

void run_merge(const MergeArgs& a) {
  Transformer model = load_hf_model_with_adapter(a.base, a.adapter);
  SaveOptions options;
  options.tokenizer_path = a.tokenizer.empty() ? tokenizer_path_if_any(a.base) : a.tokenizer;
  if (!options.tokenizer_path.empty())
    Tokenizer(options.tokenizer_path).check_matches(model->config, a.base);
  // The merged weights alone: the output is a plain HF model, with no adapter beside it.
  save_hf_model(model->config, merged_weights(*model), a.out, options);
  std::printf("wrote %s: %s merged into %s (rank %lld, %zu projections per layer)\n", a.out.c_str(),
              a.adapter.c_str(), a.base.c_str(), static_cast<long long>(model->lora->options.rank),
              model->lora->options.targets.size());
}

}  // namespace

void add_merge_command(CLI::App& app, CommandAction& action) {
  auto merge = std::make_shared<MergeArgs>();
  auto* cmd =
      app.add_subcommand("merge", "merge a LoRA adapter (PEFT layout) into its base's weights");
  cmd->add_option("--base", merge->base, "the base model's HF directory")->required();
  cmd->add_option("--adapter", merge->adapter,
                  "the adapter directory (adapter_config.json, adapter_model.safetensors)")
      ->required();
  cmd->add_option("--out", merge->out, "the merged HF directory to write")->required();
  cmd->add_option("--tokenizer", merge->tokenizer,
                  "tokenizer to ship (default: the base directory's, when it has one)");
  cmd->callback([merge, &action] {
    action = [merge] {
      run_merge(*merge);
      return 0;
    };
  });
}

}  // namespace tiller
