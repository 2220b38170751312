// `tiller convert`: llama2.c <-> Hugging Face checkpoints.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/io/llama2c_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

struct ConvertArgs {
  std::string from = "llama2c", to = "hf", model, tokenizer, out;
};

void run_convert(const ConvertArgs& a) {
  check(!a.model.empty(), "convert: --model is required");
  check(!a.out.empty(), "convert: --out is required");
  Transformer model{nullptr};
  std::string tokenizer = a.tokenizer;
  if (a.from == "llama2c") {
    model = import_llama2c(a.model);
  } else {
    model = load_hf_model(a.model);
    if (tokenizer.empty()) tokenizer = tokenizer_path_if_any(a.model);
  }
  // llama2.c's own tokenizer.bin: the same vocabulary as a SentencePiece model, which the output
  // directory ships as tokenizer.model (through a temporary file beside it, removed at the end).
  struct RemovedAtExit {
    std::string path;
    ~RemovedAtExit() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } converted;
  if (tokenizer.size() >= 4 && tokenizer.compare(tokenizer.size() - 4, 4, ".bin") == 0) {
    converted.path = a.out + ".tokenizer-model.tmp";
    write_file_atomic(converted.path, sentencepiece_model_from_llama2c_tokenizer(
                                          tokenizer, model->config.vocab_size));
    tokenizer = converted.path;
  }
  if (!tokenizer.empty()) Tokenizer(tokenizer).check_matches(model->config, a.model);
  if (a.to == "hf") {
    SaveOptions options;
    options.tokenizer_path = tokenizer;
    save_hf_model(*model, a.out, options);
  } else {
    export_llama2c(*model, a.out);
  }
  std::printf("wrote %s (%s, %.3fM parameters)\n", a.out.c_str(), a.to.c_str(),
              model->config.parameter_count() / 1e6);
}

}  // namespace

void add_convert_command(CLI::App& app, CommandAction& action) {
  auto convert = std::make_shared<ConvertArgs>();
  auto* convert_cmd = app.add_subcommand("convert", "convert checkpoints (llama2.c <-> HF)");
  convert_cmd->add_option("--from", convert->from, "input format")
      ->check(CLI::IsMember({"llama2c", "hf"}))
      ->capture_default_str();
  convert_cmd->add_option("--to", convert->to, "output format")
      ->check(CLI::IsMember({"hf", "llama2c"}))
      ->capture_default_str();
  convert_cmd->add_option("--model", convert->model, "input: a llama2.c .bin or an HF directory")
      ->required();
  convert_cmd->add_option("--tokenizer", convert->tokenizer,
                          "tokenizer.model or tokenizer.json to ship, or llama2.c's tokenizer.bin "
                          "(shipped as the tokenizer.model of the same vocabulary)");
  convert_cmd->add_option("--out", convert->out, "output directory (hf) or file (llama2c)")
      ->required();
  convert_cmd->callback([convert, &action] {
    action = [convert] {
      run_convert(*convert);
      return 0;
    };
  });
}

}  // namespace tiller
