// tiller: the command line. Each subcommand parses its flags, calls into common/ or a stage, and
// reports a user error as one line on stderr with a non-zero exit.
#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/bench.h"
#include "cli/eval_cmd.h"
#include "cli/report_cmd.h"
#include "cli/scaling_cmd.h"
#include "cli/sweep_cmd.h"
#include "common/dist/process_group.h"
#include "common/dist/tensor_parallel.h"
#include "common/io/checkpoint.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_io.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/interrupt.h"
#include "common/util/runtime.h"
#include "reward/reward_stage.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

// ---------------------------------------------------------------------------------------------
// convert

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
    if (tokenizer.empty() &&
        (path_exists(a.model + "/tokenizer.model") || path_exists(a.model + "/tokenizer.json")))
      tokenizer = tokenizer_path_in(a.model);
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

// ---------------------------------------------------------------------------------------------
// generate

struct GenerateArgs {
  std::string model, tokenizer, prompt, prompts_file, out_file;
  bool has_prompt = false;  // --prompt given, maybe as "" (BOS alone: unconditional generation)
  SamplingOptions sampling;
  bool no_bos = false;
  std::string chat_template;  // wrap each prompt as a user turn in this chat template
};

// Reads {"prompt": "..."} lines; errors name file and line.
std::vector<std::string> read_prompt_lines(const std::string& path) {
  std::istringstream in(read_file(path));
  std::vector<std::string> prompts;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw Error(where + ": invalid JSON");
    }
    check(j.is_object() && j.contains("prompt") && j["prompt"].is_string(),
          where + ": expected an object with a string \"prompt\"");
    prompts.push_back(j["prompt"].get<std::string>());
  }
  check(!prompts.empty(), path + ": no prompts");
  return prompts;
}

void run_generate(GenerateArgs a) {
  check(!a.model.empty(), "generate: --model is required");
  check(a.has_prompt == a.prompts_file.empty(), "generate: give one of --prompt and --prompts");
  check(a.prompts_file.empty() || !a.out_file.empty(), "generate: --prompts needs --out");
  Transformer model = load_hf_model(a.model);
  Tokenizer tok(a.tokenizer.empty() ? tokenizer_path_in(a.model) : a.tokenizer);
  tok.check_matches(model->config, a.model);
  a.sampling.eos_id = tok.eos_id();
  a.sampling.pad_id = tok.pad_id();
  a.sampling.full_pass_logprobs = false;  // generate prints text, not log-probs

  std::vector<std::string> texts = a.prompts_file.empty() ? std::vector<std::string>{a.prompt}
                                                          : read_prompt_lines(a.prompts_file);
  std::vector<std::vector<int64_t>> prompts;
  check(a.chat_template.empty() || is_chat_template(a.chat_template),
        "generate: unknown --template '" + a.chat_template + "' (chatml, llama2, alpaca, plain)");
  for (const auto& text : texts) {
    prompts.push_back(a.chat_template.empty()
                          ? tok.encode(text, /*add_bos=*/!a.no_bos)
                          : tokenize_prompt(tok, a.chat_template, {{"user", text}}));
  }
  auto batch = generate(*model, prompts, a.sampling);

  if (a.prompts_file.empty()) {
    std::vector<int64_t> all = prompts[0];
    for (int64_t id : batch.response(0)) all.push_back(id);
    std::printf("%s\n", completion_text(tok, all, tok.eos_id()).c_str());
    return;
  }
  std::string out;
  for (int64_t b = 0; b < batch.batch(); ++b) {
    auto response = batch.response(b);
    nlohmann::json j = {{"prompt", texts[b]},
                        {"completion", continuation_text(tok, prompts[b], response, tok.eos_id())},
                        {"tokens", response},
                        {"finished", batch.ended_with_eos[b].item<bool>()}};
    out += j.dump() + "\n";
  }
  write_file_atomic(a.out_file, out);
  std::printf("wrote %lld completions to %s\n", (long long)batch.batch(), a.out_file.c_str());
}

// ---------------------------------------------------------------------------------------------
// tokenize

struct TokenizeArgs {
  std::string tokenizer, model, text, texts;
  bool bos = false, eos = false, pieces = false;
};

void run_tokenize(const TokenizeArgs& a) {
  check(a.tokenizer.empty() != a.model.empty(), "tokenize: give --tokenizer or --model");
  Tokenizer tok(a.tokenizer.empty() ? tokenizer_path_in(a.model) : a.tokenizer);
  if (!a.texts.empty()) {
    // A JSON list of strings -> a JSON list of {"ids", "decoded"}: for comparisons with other
    // tokenizer implementations (tests/tokenizer_reference/compare.sh).
    const nlohmann::json texts = read_json_file(a.texts);
    check(texts.is_array(), a.texts + ": expected a JSON list of strings");
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0; i < texts.size(); ++i) {
      check(texts[i].is_string(), a.texts + ": item " + std::to_string(i) + " is not a string");
      const auto ids = tok.encode(texts[i].get<std::string>(), a.bos, a.eos);
      out.push_back({{"ids", ids}, {"decoded", tok.decode(ids)}});
    }
    // A token boundary may cut a character: invalid UTF-8 is written as U+FFFD.
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  auto ids = tok.encode(a.text, a.bos, a.eos);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += a.pieces ? tok.piece(ids[i]) : std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
}

// ---------------------------------------------------------------------------------------------
// eval reward

struct EvalRewardArgs {
  std::string model, data, format = "preference", template_name;
  int64_t max_seq_len = 0;
  bool json = false;
};

void run_eval_reward(const EvalRewardArgs& a) {
  auto r = evaluate_reward_model(a.model, a.data, a.format, a.template_name, a.max_seq_len);
  if (a.json) {
    nlohmann::json j = {{"pairs", r.pairs},
                        {"accuracy", r.accuracy},
                        {"loss", r.loss},
                        {"margin", r.margin},
                        {"chosen_reward", r.chosen_reward},
                        {"rejected_reward", r.rejected_reward},
                        {"records", r.data.records},
                        {"dropped_identical", r.data.identical},
                        {"dropped_prompt_too_long", r.data.prompt_too_long},
                        {"truncated", r.data.truncated}};
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("pairs %lld  accuracy %.4f  loss %.4f  margin %.4f  chosen %.4f  rejected %.4f\n",
              (long long)r.pairs, r.accuracy, r.loss, r.margin, r.chosen_reward, r.rejected_reward);
  std::printf(
      "(%lld records; dropped %lld identical, %lld with a prompt over max_seq_len; %lld sequences "
      "truncated)\n",
      (long long)r.data.records, (long long)r.data.identical, (long long)r.data.prompt_too_long,
      (long long)r.data.truncated);
}

// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// recipes: run, sft, pretrain, reward, rlhf

struct RecipeArgs {
  std::string path;
  std::vector<std::string> overrides;
  bool check_only = false;
  std::string only, from, until;
};

struct ParsedRecipe {
  Recipe recipe;
  std::vector<SftStageConfig> sft_stages;  // pretrain and sft, in recipe order
  std::vector<RewardStageConfig> reward_stages;
  std::vector<RlhfStageConfig> rlhf_stages;
};

// Joins the multi-process job the launcher describes (torchrun, srun, mpirun), if any. On CUDA
// each process takes the GPU of its local rank.
void join_job(Recipe& recipe) {
  const dist::Launch launch = dist::launch_from_environment();
  if (launch.single()) {
    check(recipe.run.tensor_parallel == 1,
          "run.tensor_parallel " + std::to_string(recipe.run.tensor_parallel) +
              " needs a multi-process job (torchrun, srun, mpirun) of a multiple of that many "
              "ranks; this is a single process");
    return;
  }
  if (recipe.run.device == "cuda") recipe.run.device = "cuda:" + std::to_string(launch.local_rank);
  dist::initialize(launch, {std::chrono::seconds(recipe.run.dist_timeout_s), recipe.run.device});
  std::printf("distributed: %d ranks via %s, rendezvous %s:%d, %s\n", launch.world_size,
              launch.launcher.c_str(), launch.master_addr.c_str(), launch.master_port,
              recipe.run.device == "cpu" ? "gloo" : "nccl");
  dist::set_up_layout(recipe.run.tensor_parallel);
  if (recipe.run.tensor_parallel > 1)
    std::printf("distributed: %d data parallel x %d tensor parallel\n",
                launch.world_size / recipe.run.tensor_parallel, recipe.run.tensor_parallel);
}

// Loads the recipe and parses every stage; all mistakes are reported together.
ParsedRecipe parse_recipe(const RecipeArgs& a) {
  ConfigErrors errors;
  ParsedRecipe parsed{load_recipe(a.path, a.overrides, errors), {}, {}, {}};
  if (!a.check_only && errors.empty()) join_job(parsed.recipe);
  // The recipe's own dataset exists before the stages check their files (rank 0 writes it).
  if (parsed.recipe.synthetic.enabled && errors.empty() && dist::is_main() &&
      write_synthetic_dataset(parsed.recipe.synthetic.options))
    std::printf("synthetic data written to %s\n", parsed.recipe.synthetic.options.dir.c_str());
  dist::world().barrier();
  for (const auto& stage : parsed.recipe.stages) {
    if (stage.type == "pretrain" || stage.type == "sft") {
      parsed.sft_stages.push_back(parse_sft_stage(stage, errors));
    } else if (stage.type == "reward") {
      parsed.reward_stages.push_back(parse_reward_stage(stage, errors));
    } else if (stage.type == "rlhf") {
      parsed.rlhf_stages.push_back(parse_rlhf_stage(stage, errors));
    }
  }
  errors.throw_if_any(a.path);
  // The resolved recipe states the values PPO runs with (GAE's gamma and lambda among them).
  for (const auto& s : parsed.rlhf_stages) {
    const nlohmann::json stated = rlhf_stated_defaults(s);
    for (auto& body : parsed.recipe.resolved["stages"]) {
      if (body.value("name", "") != s.name) continue;
      for (const auto& section : stated.items())
        for (const auto& value : section.value().items())
          body[section.key()][value.key()] = value.value();
    }
  }
  return parsed;
}

const SftStageConfig& stage_named(const ParsedRecipe& parsed, const std::string& name) {
  for (const auto& s : parsed.sft_stages)
    if (s.name == name) return s;
  throw Error(parsed.recipe.source + ": no stage named '" + name + "'");
}

void run_stage(const ParsedRecipe& parsed, const std::string& name) {
  check_stage_reusable(parsed.recipe, name);
  if (stage_complete(parsed.recipe, name)) {
    std::printf("[%s] already complete (%s); skipped\n", name.c_str(),
                stage_output_dir(parsed.recipe, name).c_str());
    return;
  }
  for (const auto& s : parsed.reward_stages) {
    if (s.name == name) {
      run_reward_stage(parsed.recipe, s);
      return;
    }
  }
  for (const auto& s : parsed.rlhf_stages) {
    if (s.name == name) {
      run_rlhf_stage(parsed.recipe, s);
      return;
    }
  }
  run_sft_stage(parsed.recipe, stage_named(parsed, name));
}

// The run's closing table from the stages' summaries (RUN_DIR/<stage>/complete.json), printed and
// written to RUN_DIR/summary.json for the report.
void write_run_summary(const Recipe& recipe) {
  nlohmann::json rows = nlohmann::json::array();
  auto add = [&](const std::string& label, const nlohmann::json& value) {
    if (value.is_number()) rows.push_back({{"label", label}, {"value", value}});
  };
  for (const auto& stage : recipe.stages) {
    const std::string path = recipe.stage_dir(stage.name) + "/complete.json";
    if (!path_exists(path)) continue;
    const nlohmann::json s = read_json_file(path);
    auto get = [&](const char* key) { return s.contains(key) ? s[key] : nlohmann::json(); };
    if (stage.type == "pretrain" || stage.type == "sft") {
      add(stage.name + ": validation loss", get("final_val_loss"));
    } else if (stage.type == "reward") {
      add(stage.name + ": RM validation accuracy", get("val_accuracy"));
    } else if (stage.type == "rlhf") {
      if (s.contains("baselines"))
        for (const auto& [name, figures] : s["baselines"].items())
          add("ground-truth rate, " + name, figures.value("ground_truth", nlohmann::json()));
      add("ground-truth rate, policy before " + stage.name, get("ground_truth_initial"));
      add("ground-truth rate, after " + stage.name, get("ground_truth_final"));
      add(stage.name + ": RM score before", get("rm_score_initial"));
      add(stage.name + ": RM score after", get("rm_score_final"));
      add(stage.name + ": final KL to the reference (nats/response)", get("kl_final"));
    }
  }
  if (rows.empty()) return;
  write_file_atomic(recipe.run.dir + "/summary.json",
                    nlohmann::json{{"rows", rows}}.dump(2) + "\n");
  std::printf("\n%-56s %s\n", "summary", "value");
  for (const auto& row : rows)
    std::printf("%-56s %.4f\n", row["label"].get<std::string>().c_str(),
                row["value"].get<double>());
  std::printf("(%s/summary.json; `tiller report %s` draws the curves)\n", recipe.run.dir.c_str(),
              recipe.run.dir.c_str());
}

// The job's layout and each stage's effective global batch, for the head of the resolved recipe.
std::vector<std::string> distributed_layout(const ParsedRecipe& parsed) {
  const dist::Group& world = dist::world();
  if (world.single()) return {};
  const dist::Group& data = dist::layout().data;
  const std::string ranks = std::to_string(data.size());
  std::vector<std::string> lines = {
      "distributed: " + std::to_string(world.size()) + " ranks (" + dist::launch().launcher +
      "), " + ranks + "-way data parallel x " + std::to_string(dist::layout().tensor.size()) +
      "-way tensor parallel; every batch_size below is the global batch"};
  for (const auto& s : parsed.sft_stages)
    lines.push_back("stage " + s.name + ": global batch " + std::to_string(s.train.batch_size) +
                    " rows = " + ranks + " ranks x " +
                    std::to_string(s.train.batch_size / data.size()));
  for (const auto& s : parsed.reward_stages)
    lines.push_back("stage " + s.name + ": global batch " + std::to_string(s.train.batch_size) +
                    " pairs = " + ranks + " ranks x " +
                    std::to_string(s.train.batch_size / data.size()));
  for (const auto& s : parsed.rlhf_stages)
    lines.push_back("stage " + s.name + ": rollout batch " + std::to_string(s.batch_size) +
                    " episodes shared by " + ranks + " ranks");
  return lines;
}

int run_recipe(const RecipeArgs& a, const std::string& only_type) {
  ParsedRecipe parsed = parse_recipe(a);
  if (a.check_only) {
    std::printf("%s: OK (%zu stages)\n", a.path.c_str(), parsed.recipe.stages.size());
    return 0;
  }
  set_threads(parsed.recipe.run.threads);
  warn_if_slow_blas();
  if (dist::is_main()) save_resolved_recipe(parsed.recipe, distributed_layout(parsed));
  if (!only_type.empty()) {
    run_stage(parsed, only_stage_of_type(parsed.recipe, only_type).name);
    dist::shutdown();
    return 0;
  }
  for (const auto* flag : {&a.from, &a.only, &a.until}) {
    bool named = flag->empty();
    for (const auto& stage : parsed.recipe.stages) named = named || stage.name == *flag;
    check(named, "no stage named '" + *flag + "' in " + a.path);
  }
  bool started = a.from.empty();
  for (const auto& stage : parsed.recipe.stages) {
    started = started || stage.name == a.from;
    if (!started || (!a.only.empty() && stage.name != a.only)) continue;
    run_stage(parsed, stage.name);
    if (stage.name == a.until) break;
  }
  if (dist::is_main()) write_run_summary(parsed.recipe);
  dist::shutdown();
  return 0;
}

// Prints a user error as one line; returns the exit code.
// A recipe's mistakes come one per line; anything else is cut to its first line.
// In a multi-process job the line names the rank, and the process ends at once: its peers may be
// gone, and c10d's destructors would wait for them.
int report(const std::string& message, bool multi_line = false) {
  const std::string shown = multi_line ? message : message.substr(0, message.find('\n'));
  std::fprintf(stderr, "tiller: error: %s%s\n", dist::error_prefix().c_str(), shown.c_str());
  if (!dist::error_prefix().empty()) {
    std::fflush(nullptr);
    std::_Exit(1);
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_omp_wait(argv);
  tune_allocator();
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines reach a log file as they happen
  CLI::App app{"tiller: instruction SFT, reward models and PPO-based RLHF on LibTorch"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (0, the default: all cores)")
      ->check(CLI::Range(0, 1024));

  auto* version = app.add_subcommand("version", "print the version and the LibTorch in use");

  ConvertArgs convert;
  auto* convert_cmd = app.add_subcommand("convert", "convert checkpoints (llama2.c <-> HF)");
  convert_cmd->add_option("--from", convert.from, "input format")
      ->check(CLI::IsMember({"llama2c", "hf"}))
      ->capture_default_str();
  convert_cmd->add_option("--to", convert.to, "output format")
      ->check(CLI::IsMember({"hf", "llama2c"}))
      ->capture_default_str();
  convert_cmd->add_option("--model", convert.model, "input: a llama2.c .bin or an HF directory")
      ->required();
  convert_cmd->add_option("--tokenizer", convert.tokenizer,
                          "tokenizer.model or tokenizer.json to ship");
  convert_cmd->add_option("--out", convert.out, "output directory (hf) or file (llama2c)")
      ->required();

  GenerateArgs gen;
  std::vector<std::string> checkpoint_dirs;
  auto* checkpoint_cmd = app.add_subcommand("checkpoint", "checkpoint tools");
  auto* verify_cmd = checkpoint_cmd->add_subcommand(
      "verify", "read every checkpoint in CHECKPOINTS_DIR... in full (no model needed)");
  verify_cmd->add_option("dirs", checkpoint_dirs, "a stage's checkpoints/ directory")->required();
  checkpoint_cmd->require_subcommand(1);

  auto* gen_cmd = app.add_subcommand("generate", "sample completions from a model directory");
  gen_cmd->add_option("--model", gen.model, "HF model directory")->required();
  gen_cmd->add_option("--tokenizer", gen.tokenizer,
                      "tokenizer.model or tokenizer.json (default: the model directory's)");
  gen_cmd->add_option("--prompt", gen.prompt, "prompt text")->each([&gen](const std::string&) {
    gen.has_prompt = true;
  });
  gen_cmd->add_option("--prompts", gen.prompts_file, "JSONL file of {\"prompt\": ...} lines");
  gen_cmd->add_option("--out", gen.out_file, "JSONL output for --prompts");
  gen_cmd->add_option("--max-new-tokens", gen.sampling.max_new_tokens)->capture_default_str();
  gen_cmd->add_option("--temperature", gen.sampling.temperature, "0 = greedy")
      ->capture_default_str();
  gen_cmd->add_option("--top-p", gen.sampling.top_p)->capture_default_str();
  gen_cmd->add_option("--top-k", gen.sampling.top_k, "0 = off")->capture_default_str();
  gen_cmd->add_option("--seed", gen.sampling.seed)->capture_default_str();
  gen_cmd->add_flag("--no-bos", gen.no_bos, "do not prepend BOS to prompts");
  gen_cmd->add_option("--template", gen.chat_template,
                      "wrap each prompt as a user turn of this chat template (as in SFT)");

  TokenizeArgs tokenize;
  auto* tok_cmd = app.add_subcommand("tokenize", "print the token ids of a text");
  tok_cmd->add_option("--tokenizer", tokenize.tokenizer, "tokenizer.model or tokenizer.json");
  tok_cmd->add_option("--model", tokenize.model, "HF directory holding the tokenizer");
  auto* tok_text = tok_cmd->add_option("--text", tokenize.text, "text to encode");
  auto* tok_texts = tok_cmd->add_option(
      "--texts", tokenize.texts, "a JSON list of texts: prints a JSON list of {ids, decoded}");
  tok_text->excludes(tok_texts);
  tok_cmd->callback([tok_text, tok_texts] {
    if (tok_text->count() + tok_texts->count() == 0)
      throw CLI::RequiredError("tokenize: --text or --texts");
  });
  tok_cmd->add_flag("--bos", tokenize.bos, "prepend BOS");
  tok_cmd->add_flag("--eos", tokenize.eos, "append EOS");
  tok_cmd->add_flag("--pieces", tokenize.pieces, "print pieces instead of ids");

  auto* tokenizer_cmd = app.add_subcommand("tokenizer", "tokenizer tools");
  tokenizer_cmd->require_subcommand(1);
  std::string train_input, train_out;
  int64_t train_vocab = 0;
  auto* train_cmd = tokenizer_cmd->add_subcommand("train", "train a SentencePiece BPE tokenizer");
  train_cmd->add_option("--input", train_input, "text corpus, one sentence or paragraph a line")
      ->required();
  train_cmd->add_option("--vocab-size", train_vocab, "number of pieces")->required();
  train_cmd->add_option("--out", train_out, "output directory for tokenizer.model")->required();

  auto* bench_cmd = app.add_subcommand("bench", "benchmarks (docs/bench.md)");
  bench_cmd->require_subcommand(1);
  bench::GemmOptions gemm;
  auto* gemm_cmd = bench_cmd->add_subcommand(
      "gemm", "this machine's ceilings: fp32 and bf16 matmul GFLOP/s, copy GB/s");
  gemm_cmd->add_option("--size", gemm.size, "square matrix size")->capture_default_str();
  gemm_cmd->add_option("--repeats", gemm.repeats)->capture_default_str();
  gemm_cmd->add_option("--threads", gemm.threads, "intra-op threads (0: tiller --threads)");
  gemm_cmd->add_flag("--json", gemm.json, "print JSON instead of a table");

  bench::DecodeOptions decode;
  std::string batches = "1,16";
  auto* decode_cmd =
      bench_cmd->add_subcommand("decode", "generation tokens/s at several batch sizes");
  decode_cmd->add_option("--model", decode.model_dir,
                         "HF directory (default: --shape, random weights)");
  decode_cmd->add_option("--shape", decode.shape, "stories260k, llama-15m, llama-124m")
      ->capture_default_str();
  decode_cmd->add_option("--batch", batches, "comma-separated batch sizes")->capture_default_str();
  decode_cmd->add_option("--prompt-tokens", decode.prompt_tokens)->capture_default_str();
  decode_cmd->add_option("--new-tokens", decode.new_tokens)->capture_default_str();
  decode_cmd->add_option("--dtype", decode.dtype, "weights and KV cache: fp32 or bf16")
      ->capture_default_str();
  decode_cmd->add_option("--repeats", decode.repeats)->capture_default_str();
  decode_cmd->add_option("--threads", decode.threads, "intra-op threads (0: tiller --threads)");
  decode_cmd->add_flag("--torch-decode", decode.torch_decode,
                       "decode through LibTorch ops, without the fast fp32 CPU step");
  decode_cmd->add_flag("--json", decode.json, "print JSON instead of a table");

  bench::TrainOptions train_bench;
  auto* train_bench_cmd = bench_cmd->add_subcommand(
      "train", "SFT step tokens/s, GFLOP/s and the fraction of the matmul peak");
  train_bench_cmd->add_option("--model", train_bench.model_dir,
                              "HF directory (default: --shape, random weights)");
  train_bench_cmd->add_option("--shape", train_bench.shape, "stories260k, llama-15m, llama-124m")
      ->capture_default_str();
  train_bench_cmd->add_option("--batch", train_bench.batch, "rows per step")->capture_default_str();
  train_bench_cmd->add_option("--seq", train_bench.seq, "tokens per row")->capture_default_str();
  train_bench_cmd->add_option("--dtype", train_bench.dtype, "fp32, or bf16 autocast")
      ->capture_default_str();
  train_bench_cmd->add_option("--steps", train_bench.steps, "timed steps (after one warm-up)")
      ->capture_default_str();
  train_bench_cmd->add_option("--threads", train_bench.threads,
                              "intra-op threads (0: tiller --threads)");
  train_bench_cmd->add_flag("--json", train_bench.json, "print JSON instead of a table");

  bench::PpoBenchOptions ppo_bench;
  auto* ppo_bench_cmd = bench_cmd->add_subcommand(
      "ppo", "PPO iteration seconds (generate / scoring / training) on a recipe's shapes");
  ppo_bench_cmd->add_option("--recipe", ppo_bench.recipe, "recipe JSON with an rlhf stage")
      ->required();
  ppo_bench_cmd->add_option("--iterations", ppo_bench.iterations, "timed iterations")
      ->capture_default_str();
  ppo_bench_cmd->add_option("--warmup", ppo_bench.warmup, "untimed iterations first")
      ->capture_default_str();
  ppo_bench_cmd->add_option("--prompt-tokens", ppo_bench.prompt_tokens)->capture_default_str();
  ppo_bench_cmd->add_option("--threads", ppo_bench.threads,
                            "intra-op threads (0: tiller --threads)");
  ppo_bench_cmd->add_flag("--sequential", ppo_bench.sequential,
                          "actor and critic one after the other on all threads, never side by "
                          "side (to measure what side by side gains)");
  ppo_bench_cmd->add_flag("--json", ppo_bench.json, "print JSON instead of a table");

  RecipeArgs recipe_args;
  auto add_recipe_command = [&](const char* name, const char* help) {
    auto* cmd = app.add_subcommand(name, help);
    cmd->add_option("recipe", recipe_args.path, "recipe JSON file")->required();
    cmd->add_option("overrides", recipe_args.overrides, "key.sub=value overrides");
    cmd->add_flag("--check", recipe_args.check_only, "validate the recipe and exit");
    return cmd;
  };
  auto* run_cmd =
      add_recipe_command("run", "run every stage of a recipe (finished stages are skipped)");
  run_cmd->add_option("--only", recipe_args.only, "run only this stage");
  run_cmd->add_option("--from", recipe_args.from, "start at this stage");
  run_cmd->add_option("--until", recipe_args.until, "stop after this stage");
  auto* sft_cmd = add_recipe_command("sft", "run the recipe's sft stage");
  auto* pretrain_cmd = add_recipe_command("pretrain", "run the recipe's pretrain stage");
  auto* reward_cmd = add_recipe_command("reward", "run the recipe's reward stage");
  auto* rlhf_cmd = add_recipe_command("rlhf", "run the recipe's rlhf (PPO) stage");

  EvalRewardArgs eval_reward;
  auto* eval_cmd = app.add_subcommand(
      "eval", "evaluate a model on tasks (--model/--across, docs/eval.md) or a reward model");
  eval_cmd->require_subcommand(0, 1);
  auto* eval_reward_cmd = eval_cmd->add_subcommand(
      "reward", "accuracy and margins of a reward model on preference pairs");
  eval_reward_cmd->add_option("--model", eval_reward.model, "reward-model directory")->required();
  eval_reward_cmd->add_option("--data", eval_reward.data, "preference JSONL (.gz read too)")
      ->required();
  eval_reward_cmd->add_option("--format", eval_reward.format)
      ->check(CLI::IsMember({"preference", "hh"}))
      ->capture_default_str();
  eval_reward_cmd->add_option("--template", eval_reward.template_name,
                              "chat template (default: the one trained with)");
  eval_reward_cmd
      ->add_option("--max-seq-len", eval_reward.max_seq_len, "0: the length trained with")
      ->capture_default_str();
  eval_reward_cmd->add_flag("--json", eval_reward.json, "print one JSON object");

  add_eval_task_commands(*eval_cmd);
  add_report_command(app);
  add_scaling_commands(app);
  add_sweep_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // CLI11 reports a missing subcommand before an unexpected word: name the word instead.
    const auto extra = app.remaining(true);
    if (!extra.empty() && std::string(e.what()).find("subcommand is required") != std::string::npos)
      return report((extra[0][0] == '-' ? "unknown flag '" : "unknown subcommand '") + extra[0] +
                    "' (see --help)");
    return report(e.what() + std::string(" (see --help)"));
  } catch (const Error& e) {  // commands that run in their CLI11 callback (report, scaling)
    return report(e.what(), /*multi_line=*/true);
  } catch (const std::exception& e) {
    return report(e.what());
  }

  try {
    install_interrupt_handlers();
    set_threads(threads);
    if (*run_cmd) {
      return run_recipe(recipe_args, "");
    } else if (*sft_cmd) {
      return run_recipe(recipe_args, "sft");
    } else if (*pretrain_cmd) {
      return run_recipe(recipe_args, "pretrain");
    } else if (*reward_cmd) {
      return run_recipe(recipe_args, "reward");
    } else if (*rlhf_cmd) {
      return run_recipe(recipe_args, "rlhf");
    } else if (*eval_reward_cmd) {
      warn_if_slow_blas();
      run_eval_reward(eval_reward);
    } else if (*version) {
      std::printf("tiller %s (LibTorch %s%s)\n", TILLER_VERSION, compat::torch_version().c_str(),
                  compat::cuda_available() ? ", CUDA" : ", CPU");
    } else if (*verify_cmd) {
      for (const auto& dir : checkpoint_dirs) {
        const auto steps = verify_checkpoints(dir);
        std::string detail;
        if (!steps.empty()) {
          detail = " (steps " + std::to_string(steps.front()) + ".." +
                   std::to_string(steps.back()) + ")";
          if (!path_exists(dir + "/latest"))
            detail += "; no `latest`: none committed, a resume starts over";
        }
        std::printf("%s: %zu checkpoints read in full%s\n", dir.c_str(), steps.size(),
                    detail.c_str());
      }
    } else if (*convert_cmd) {
      run_convert(convert);
    } else if (*gen_cmd) {
      warn_if_slow_blas();
      run_generate(gen);
    } else if (*tok_cmd) {
      run_tokenize(tokenize);
    } else if (*train_cmd) {
      train_tokenizer(train_input, train_vocab, train_out);
      std::printf("wrote %s/tokenizer.model (%lld pieces)\n", train_out.c_str(),
                  (long long)train_vocab);
    } else if (*gemm_cmd) {
      bench::run_gemm(gemm);
    } else if (*decode_cmd) {
      warn_if_slow_blas();
      decode.batches = parse_int_list(batches, "--batch");
      bench::run_decode(decode);
    } else if (*train_bench_cmd) {
      warn_if_slow_blas();
      bench::run_train(train_bench);
    } else if (*ppo_bench_cmd) {
      warn_if_slow_blas();
      bench::run_ppo(ppo_bench);
    }
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "tiller: %s%s\n", dist::error_prefix().c_str(), e.what());
    try {
      dist::shutdown();  // every rank stopped at the same step
    } catch (const Error& e) {
      return report(e.what());
    }
    return 0;
  } catch (const Error& e) {
    return report(e.what(), /*multi_line=*/true);
  } catch (const c10::Error& e) {
    return report(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return report(e.what());
  }
  return 0;
}
