// `tiller export`: a model directory in a deployment format (GGUF for llama.cpp).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "export/gguf.h"

namespace tiller {

namespace {

struct ExportArgs {
  std::string format = "gguf", type = "f32", model, out;
};

void run_export(const ExportArgs& a) {
  const GgufExportSummary s = export_gguf(a.model, a.type, a.out);
  std::printf("wrote %s: GGUF v3, %s, %lld tensors, %.2f MiB\n", a.out.c_str(), s.type.c_str(),
              static_cast<long long>(s.tensors), static_cast<double>(s.bytes) / (1 << 20));
  if (!s.f16_instead.empty())
    std::printf("%zu matrices in f16 instead (rows not whole blocks of 32), e.g. %s\n",
                s.f16_instead.size(), s.f16_instead.front().c_str());
}

}  // namespace

void add_export_command(CLI::App& app, CommandAction& action) {
  auto args = std::make_shared<ExportArgs>();
  auto* cmd = app.add_subcommand("export", "write a model directory as a GGUF file (llama.cpp)");
  cmd->add_option("--format", args->format)->check(CLI::IsMember({"gguf"}))->capture_default_str();
  cmd->add_option("--type", args->type, "tensor type of the matrices (norms stay f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0", "q4_0"}))
      ->capture_default_str();
  cmd->add_option("--model", args->model,
                  "the model's HF directory (tokenizer.model or tokenizer.json)")
      ->required();
  cmd->add_option("--out", args->out, "the .gguf file to write")->required();
  cmd->callback([args, &action] {
    action = [args] {
      run_export(*args);
      return 0;
    };
  });
}

}  // namespace tiller
