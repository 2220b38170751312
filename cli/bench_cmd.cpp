// `tiller bench gemm | decode | groups | pairs | train | ppo | grpo` (docs/bench.md).
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "cli/commands.h"
#include "common/util/error.h"
#include "common/util/runtime.h"

namespace tiller {

namespace {

std::vector<int64_t> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      out.push_back(std::stoll(item, &used));
      check(used == item.size() && out.back() > 0, "");
    } catch (...) {
      throw Error(std::string(flag) + ": expected positive integers separated by commas, got '" +
                  text + "'");
    }
  }
  check(!out.empty(), std::string(flag) + ": empty list");
  return out;
}

// The built-in shapes, for --shape's help: what each is, by parameter count.
constexpr const char* kShapes =
    "stories260k, llama-15m, llama-124m, llama-500m (513M parameters), llama-1b (1.04B)";
constexpr const char* kDeviceHelp = "cpu, cuda or cuda:N";

void add_gemm_command(CLI::App& bench_cmd, CommandAction& action) {
  auto gemm = std::make_shared<bench::GemmOptions>();
  auto* gemm_cmd = bench_cmd.add_subcommand(
      "gemm", "this machine's ceilings: fp32 and bf16 matmul GFLOP/s, copy GB/s");
  gemm_cmd->add_option("--size", gemm->size, "square matrix size")->capture_default_str();
  gemm_cmd->add_option("--repeats", gemm->repeats)->capture_default_str();
  gemm_cmd->add_option("--threads", gemm->threads, "intra-op threads (0: tiller --threads)");
  gemm_cmd->add_option("--device", gemm->device, kDeviceHelp)->capture_default_str();
  gemm_cmd->add_flag("--json", gemm->json, "print JSON instead of a table");
  gemm_cmd->callback([gemm, &action] {
    action = [gemm] {
      bench::run_gemm(*gemm);
      return 0;
    };
  });
}

void add_decode_command(CLI::App& bench_cmd, CommandAction& action) {
  auto decode = std::make_shared<bench::DecodeOptions>();
  auto batches = std::make_shared<std::string>("1,16");
  auto* decode_cmd =
      bench_cmd.add_subcommand("decode", "generation tokens/s at several batch sizes");
  decode_cmd->add_option("--model", decode->model_dir,
                         "HF directory (default: --shape, random weights)");
  decode_cmd->add_option("--shape", decode->shape, kShapes)->capture_default_str();
  decode_cmd->add_option("--batch", *batches, "comma-separated batch sizes")->capture_default_str();
  decode_cmd->add_option("--prompt-tokens", decode->prompt_tokens)->capture_default_str();
  decode_cmd->add_option("--new-tokens", decode->new_tokens)->capture_default_str();
  decode_cmd->add_option("--dtype", decode->dtype, "weights and KV cache: fp32 or bf16")
      ->capture_default_str();
  decode_cmd->add_option("--repeats", decode->repeats)->capture_default_str();
  decode_cmd->add_option("--threads", decode->threads, "intra-op threads (0: tiller --threads)");
  decode_cmd
      ->add_option("--device", decode->device,
                   "cpu, cuda or cuda:N (on CUDA decode goes through LibTorch ops: the fast "
                   "step is CPU-only)")
      ->capture_default_str();
  decode_cmd->add_flag("--torch-decode", decode->torch_decode,
                       "decode through LibTorch ops, without the fast fp32 CPU step");
  decode_cmd->add_flag("--no-weight-panels", decode->no_weight_panels,
                       "the fast step's projections through BLAS only, without its packed "
                       "copies of the weights (AVX-512 CPUs, 8 to 128 rows)");
  auto quantize = std::make_shared<std::string>();
  decode_cmd->add_option("--quantize", *quantize,
                         "also rows for these weight-only schemes, comma-separated: int8, int4 "
                         "(round to nearest in memory, as tiller quantize writes)");
  decode_cmd->add_option("--group-size", decode->group_size, "int4 rows: columns per group")
      ->capture_default_str();
  decode_cmd->add_flag("--json", decode->json, "print JSON instead of a table");
  decode_cmd->callback([decode, batches, quantize, &action] {
    action = [decode, batches, quantize] {
      decode->quantize.clear();
      for (size_t start = 0; !quantize->empty() && start <= quantize->size();) {
        const size_t comma = std::min(quantize->find(',', start), quantize->size());
        decode->quantize.push_back(quantize->substr(start, comma - start));
        start = comma + 1;
      }
      warn_if_slow_blas();
      decode->batches = parse_int_list(*batches, "--batch");
      bench::run_decode(*decode);
      return 0;
    };
  });
}

void add_groups_command(CLI::App& bench_cmd, CommandAction& action) {
  auto groups = std::make_shared<bench::GroupsOptions>();
  auto* groups_cmd = bench_cmd.add_subcommand(
      "groups", "GRPO group sampling: one prefill per prompt against the prompts repeated");
  groups_cmd->add_option("--model", groups->model_dir,
                         "HF directory (default: --shape, random weights)");
  groups_cmd->add_option("--shape", groups->shape, kShapes)->capture_default_str();
  groups_cmd->add_option("--prompts", groups->prompts, "distinct prompts")->capture_default_str();
  groups_cmd->add_option("--group", groups->group, "samples per prompt")->capture_default_str();
  groups_cmd->add_option("--prompt-tokens", groups->prompt_tokens)->capture_default_str();
  groups_cmd->add_option("--new-tokens", groups->new_tokens)->capture_default_str();
  groups_cmd->add_option("--repeats", groups->repeats)->capture_default_str();
  groups_cmd->add_option("--threads", groups->threads, "intra-op threads (0: tiller --threads)");
  groups_cmd->add_flag("--torch-decode", groups->torch_decode,
                       "decode through LibTorch ops, without the fast fp32 CPU step");
  groups_cmd->add_flag("--json", groups->json, "print JSON instead of a table");
  groups_cmd->callback([groups, &action] {
    action = [groups] {
      warn_if_slow_blas();
      bench::run_groups(*groups);
      return 0;
    };
  });
}

void add_pairs_command(CLI::App& bench_cmd, CommandAction& action) {
  auto pairs = std::make_shared<bench::PairsOptions>();
  auto* pairs_cmd = bench_cmd.add_subcommand(
      "pairs",
      "DPO and reward pairs: each pair's prompt computed once against one row per response");
  pairs_cmd->add_option("--model", pairs->model_dir,
                        "HF directory (default: --shape, random weights)");
  pairs_cmd->add_option("--shape", pairs->shape, kShapes)->capture_default_str();
  pairs_cmd->add_option("--prompt-tokens", pairs->prompt_tokens, "synthetic pairs' prompt")
      ->capture_default_str();
  pairs_cmd
      ->add_option("--response-tokens", pairs->response_tokens, "synthetic pairs' longest response")
      ->capture_default_str();
  pairs_cmd->add_option("--data", pairs->data,
                        "a preference file in place of synthetic pairs (needs --model)");
  pairs_cmd->add_option("--format", pairs->format, "--data's format: preference or hh")
      ->capture_default_str();
  pairs_cmd->add_option("--template", pairs->template_name, "--data's chat template")
      ->capture_default_str();
  pairs_cmd->add_option("--max-seq-len", pairs->max_seq_len, "--data's (0: the model's context)")
      ->capture_default_str();
  pairs_cmd->add_option("--pairs", pairs->pairs, "pairs per timed pass")->capture_default_str();
  pairs_cmd->add_option("--micro-batch", pairs->micro_batch, "pairs per forward")
      ->capture_default_str();
  pairs_cmd->add_option("--repeats", pairs->repeats)->capture_default_str();
  pairs_cmd->add_option("--threads", pairs->threads, "intra-op threads (0: tiller --threads)");
  pairs_cmd->add_flag("--json", pairs->json, "print JSON instead of a table");
  pairs_cmd->callback([pairs, &action] {
    action = [pairs] {
      warn_if_slow_blas();
      bench::run_pairs(*pairs);
      return 0;
    };
  });
}

void add_train_command(CLI::App& bench_cmd, CommandAction& action) {
  auto train = std::make_shared<bench::TrainOptions>();
  auto* train_cmd = bench_cmd.add_subcommand(
      "train", "SFT step tokens/s, GFLOP/s and the fraction of the matmul peak");
  train_cmd->add_option("--model", train->model_dir,
                        "HF directory (default: --shape, random weights)");
  train_cmd->add_option("--shape", train->shape, kShapes)->capture_default_str();
  train_cmd->add_option("--batch", train->batch, "rows per step")->capture_default_str();
  train_cmd->add_option("--seq", train->seq, "tokens per row")->capture_default_str();
  train_cmd->add_option("--dtype", train->dtype, "fp32, or bf16 autocast")->capture_default_str();
  train_cmd->add_option("--steps", train->steps, "timed steps (after one warm-up)")
      ->capture_default_str();
  train_cmd->add_option("--threads", train->threads, "intra-op threads (0: tiller --threads)");
  train_cmd
      ->add_option("--device", train->device,
                   "cpu, cuda or cuda:N (on CUDA the fraction is of the GPU's published "
                   "dense peak)")
      ->capture_default_str();
  train_cmd->add_flag("--json", train->json, "print JSON instead of a table");
  train_cmd->callback([train, &action] {
    action = [train] {
      warn_if_slow_blas();
      bench::run_train(*train);
      return 0;
    };
  });
}

void add_ppo_command(CLI::App& bench_cmd, CommandAction& action) {
  auto ppo = std::make_shared<bench::PpoBenchOptions>();
  auto* ppo_cmd = bench_cmd.add_subcommand(
      "ppo", "PPO iteration seconds (generate / scoring / training) on a recipe's shapes");
  ppo_cmd->add_option("--recipe", ppo->recipe, "recipe JSON with a PPO stage")->required();
  ppo_cmd->add_option("--shape", ppo->shape,
                      std::string("a built-in shape in place of the recipe's model: ") + kShapes);
  ppo_cmd->add_option("--iterations", ppo->iterations, "timed iterations")->capture_default_str();
  ppo_cmd->add_option("--warmup", ppo->warmup, "untimed iterations first")->capture_default_str();
  ppo_cmd->add_option("--prompt-tokens", ppo->prompt_tokens)->capture_default_str();
  ppo_cmd->add_option("--threads", ppo->threads, "intra-op threads (0: tiller --threads)");
  ppo_cmd->add_option("--device", ppo->device, kDeviceHelp)->capture_default_str();
  ppo_cmd->add_flag("--sequential", ppo->sequential,
                    "actor and critic one after the other on all threads, never side by "
                    "side (to measure what side by side gains)");
  ppo_cmd->add_flag("--json", ppo->json, "print JSON instead of a table");
  ppo_cmd->callback([ppo, &action] {
    action = [ppo] {
      warn_if_slow_blas();
      bench::run_ppo(*ppo);
      return 0;
    };
  });
}

void add_grpo_command(CLI::App& bench_cmd, CommandAction& action) {
  auto grpo = std::make_shared<bench::GrpoBenchOptions>();
  auto* grpo_cmd = bench_cmd.add_subcommand(
      "grpo", "a GRPO iteration beside the recipe's PPO iteration, on the same shapes");
  grpo_cmd->add_option("--recipe", grpo->recipe, "recipe JSON with a PPO stage")->required();
  grpo_cmd->add_option("--group", grpo->group, "GRPO samples per prompt")->capture_default_str();
  grpo_cmd->add_option("--grpo-epochs", grpo->grpo_epochs, "GRPO policy updates per batch")
      ->capture_default_str();
  grpo_cmd->add_option("--iterations", grpo->iterations, "timed iterations of each")
      ->capture_default_str();
  grpo_cmd->add_option("--warmup", grpo->warmup, "untimed iterations first")->capture_default_str();
  grpo_cmd->add_option("--prompt-tokens", grpo->prompt_tokens)->capture_default_str();
  grpo_cmd->add_option("--threads", grpo->threads, "intra-op threads (0: tiller --threads)");
  grpo_cmd->add_flag("--json", grpo->json, "print JSON instead of a table");
  grpo_cmd->callback([grpo, &action] {
    action = [grpo] {
      warn_if_slow_blas();
      bench::run_grpo(*grpo);
      return 0;
    };
  });
}

}  // namespace

void add_bench_commands(CLI::App& app, CommandAction& action) {
  auto* bench_cmd = app.add_subcommand("bench", "benchmarks (docs/bench.md)");
  bench_cmd->require_subcommand(1);
  add_gemm_command(*bench_cmd, action);
  add_decode_command(*bench_cmd, action);
  add_groups_command(*bench_cmd, action);
  add_pairs_command(*bench_cmd, action);
  add_train_command(*bench_cmd, action);
  add_ppo_command(*bench_cmd, action);
  add_grpo_command(*bench_cmd, action);
}

}  // namespace tiller
