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
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/util/error.h"
#include "tiller_build_paths.h"
#include "common/util/files.h"
#include "common/util/runtime.h"

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
    if (tokenizer.empty() && path_exists(a.model + "/tokenizer.model"))
      tokenizer = a.model + "/tokenizer.model";
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
  SamplingOptions sampling;
  bool no_bos = false;
};

std::string completion_text(const Tokenizer& tok, const std::vector<int64_t>& response, int64_t eos) {
  std::vector<int64_t> ids;
  for (int64_t id : response)
    if (id != eos) ids.push_back(id);
  return tok.decode(ids);
}

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
  check(a.prompt.empty() != a.prompts_file.empty(), "generate: give --prompt or --prompts, not both");
  check(a.prompts_file.empty() || !a.out_file.empty(), "generate: --prompts needs --out");
  Transformer model = load_hf_model(a.model);
  Tokenizer tok(a.tokenizer.empty() ? tokenizer_path_in(a.model) : a.tokenizer);
  tok.check_matches(model->config, a.model);
  a.sampling.eos_id = tok.eos_id();
  a.sampling.pad_id = tok.pad_id();

  std::vector<std::string> texts =
      a.prompts_file.empty() ? std::vector<std::string>{a.prompt} : read_prompt_lines(a.prompts_file);
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& text : texts) prompts.push_back(tok.encode(text, /*add_bos=*/!a.no_bos));
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
                        {"completion", completion_text(tok, response, tok.eos_id())},
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
  std::string tokenizer, model, text;
  bool bos = false, eos = false, pieces = false;
};

void run_tokenize(const TokenizeArgs& a) {
  check(a.tokenizer.empty() != a.model.empty(), "tokenize: give --tokenizer or --model");
  Tokenizer tok(a.tokenizer.empty() ? tokenizer_path_in(a.model) : a.tokenizer);
  auto ids = tok.encode(a.text, a.bos, a.eos);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += a.pieces ? tok.piece(ids[i]) : std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
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

// Prints a user error as one line; returns the exit code.
int report(const std::string& message) {
  std::string line = message.substr(0, message.find('\n'));
  std::fprintf(stderr, "tiller: error: %s\n", line.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  tune_allocator();
  CLI::App app{"tiller: instruction SFT, reward models and PPO-based RLHF on LibTorch"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: all cores)");

  auto* version = app.add_subcommand("version", "print the version and the LibTorch in use");

  ConvertArgs convert;
  auto* convert_cmd = app.add_subcommand("convert", "convert checkpoints (llama2.c <-> HF)");
  convert_cmd->add_option("--from", convert.from, "input format")
      ->check(CLI::IsMember({"llama2c", "hf"}))->capture_default_str();
  convert_cmd->add_option("--to", convert.to, "output format")
      ->check(CLI::IsMember({"hf", "llama2c"}))->capture_default_str();
  convert_cmd->add_option("--model", convert.model, "input: a llama2.c .bin or an HF directory")->required();
  convert_cmd->add_option("--tokenizer", convert.tokenizer, "SentencePiece tokenizer.model to ship");
  convert_cmd->add_option("--out", convert.out, "output directory (hf) or file (llama2c)")->required();

  GenerateArgs gen;
  auto* gen_cmd = app.add_subcommand("generate", "sample completions from a model directory");
  gen_cmd->add_option("--model", gen.model, "HF model directory")->required();
  gen_cmd->add_option("--tokenizer", gen.tokenizer, "tokenizer.model (default: MODEL/tokenizer.model)");
  gen_cmd->add_option("--prompt", gen.prompt, "prompt text");
  gen_cmd->add_option("--prompts", gen.prompts_file, "JSONL file of {\"prompt\": ...} lines");
  gen_cmd->add_option("--out", gen.out_file, "JSONL output for --prompts");
  gen_cmd->add_option("--max-new-tokens", gen.sampling.max_new_tokens)->capture_default_str();
  gen_cmd->add_option("--temperature", gen.sampling.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--top-p", gen.sampling.top_p)->capture_default_str();
  gen_cmd->add_option("--top-k", gen.sampling.top_k, "0 = off")->capture_default_str();
  gen_cmd->add_option("--seed", gen.sampling.seed)->capture_default_str();
  gen_cmd->add_flag("--no-bos", gen.no_bos, "do not prepend BOS to prompts");

  TokenizeArgs tokenize;
  auto* tok_cmd = app.add_subcommand("tokenize", "print the token ids of a text");
  tok_cmd->add_option("--tokenizer", tokenize.tokenizer, "SentencePiece tokenizer.model");
  tok_cmd->add_option("--model", tokenize.model, "HF directory holding tokenizer.model");
  tok_cmd->add_option("--text", tokenize.text, "text to encode")->required();
  tok_cmd->add_flag("--bos", tokenize.bos, "prepend BOS");
  tok_cmd->add_flag("--eos", tokenize.eos, "append EOS");
  tok_cmd->add_flag("--pieces", tokenize.pieces, "print pieces instead of ids");

  auto* tokenizer_cmd = app.add_subcommand("tokenizer", "tokenizer tools");
  tokenizer_cmd->require_subcommand(1);
  std::string train_input, train_out;
  int64_t train_vocab = 0;
  auto* train_cmd = tokenizer_cmd->add_subcommand("train", "train a SentencePiece BPE tokenizer");
  train_cmd->add_option("--input", train_input, "text corpus, one sentence or paragraph a line")->required();
  train_cmd->add_option("--vocab-size", train_vocab, "number of pieces")->required();
  train_cmd->add_option("--out", train_out, "output directory for tokenizer.model")->required();

  auto* bench_cmd = app.add_subcommand("bench", "benchmarks");
  bench_cmd->require_subcommand(1);
  bench::DecodeOptions decode;
  std::string batches = "1,16";
  auto* decode_cmd = bench_cmd->add_subcommand("decode", "generation tokens/s at several batch sizes");
  decode_cmd->add_option("--model", decode.model_dir, "HF directory (default: --shape, random weights)");
  decode_cmd->add_option("--shape", decode.shape, "stories260k, llama-15m, llama-124m")->capture_default_str();
  decode_cmd->add_option("--batch", batches, "comma-separated batch sizes")->capture_default_str();
  decode_cmd->add_option("--prompt-tokens", decode.prompt_tokens)->capture_default_str();
  decode_cmd->add_option("--new-tokens", decode.new_tokens)->capture_default_str();
  decode_cmd->add_option("--repeats", decode.repeats)->capture_default_str();
  decode_cmd->add_flag("--json", decode.json, "print JSON instead of a table");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    return report(e.what() + std::string(" (see --help)"));
  }

  try {
    set_threads(threads);
    if (*version) {
      std::printf("tiller %s (LibTorch %s%s)\n", TILLER_VERSION, compat::torch_version().c_str(),
                  compat::cuda_available() ? ", CUDA" : ", CPU");
    } else if (*convert_cmd) {
      run_convert(convert);
    } else if (*gen_cmd) {
      warn_if_slow_blas();
      run_generate(gen);
    } else if (*tok_cmd) {
      run_tokenize(tokenize);
    } else if (*train_cmd) {
      train_tokenizer(train_input, train_vocab, train_out);
      std::printf("wrote %s/tokenizer.model (%lld pieces)\n", train_out.c_str(), (long long)train_vocab);
    } else if (*decode_cmd) {
      warn_if_slow_blas();
      decode.batches = parse_int_list(batches, "--batch");
      bench::run_decode(decode);
    }
  } catch (const Error& e) {
    return report(e.what());
  } catch (const c10::Error& e) {
    return report(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return report(e.what());
  }
  return 0;
}
