// `tiller tokenize` (token ids of a text) and `tiller tokenizer train` (a SentencePiece BPE).
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/io/hf_dir.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

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

struct TrainTokenizerArgs {
  std::string input, out;
  int64_t vocab_size = 0;
};

}  // namespace

void add_tokenize_commands(CLI::App& app, CommandAction& action) {
  auto tokenize = std::make_shared<TokenizeArgs>();
  auto* tok_cmd = app.add_subcommand("tokenize", "print the token ids of a text");
  tok_cmd->add_option("--tokenizer", tokenize->tokenizer, "tokenizer.model or tokenizer.json");
  tok_cmd->add_option("--model", tokenize->model, "HF directory holding the tokenizer");
  auto* tok_text = tok_cmd->add_option("--text", tokenize->text, "text to encode");
  auto* tok_texts = tok_cmd->add_option(
      "--texts", tokenize->texts, "a JSON list of texts: prints a JSON list of {ids, decoded}");
  tok_text->excludes(tok_texts);
  tok_cmd->add_flag("--bos", tokenize->bos, "prepend BOS");
  tok_cmd->add_flag("--eos", tokenize->eos, "append EOS");
  tok_cmd->add_flag("--pieces", tokenize->pieces, "print pieces instead of ids");
  tok_cmd->callback([tok_text, tok_texts, tokenize, &action] {
    if (tok_text->count() + tok_texts->count() == 0)
      throw CLI::RequiredError("tokenize: --text or --texts");
    action = [tokenize] {
      run_tokenize(*tokenize);
      return 0;
    };
  });

  auto* tokenizer_cmd = app.add_subcommand("tokenizer", "tokenizer tools");
  tokenizer_cmd->require_subcommand(1);
  auto train = std::make_shared<TrainTokenizerArgs>();
  auto* train_cmd = tokenizer_cmd->add_subcommand("train", "train a SentencePiece BPE tokenizer");
  train_cmd->add_option("--input", train->input, "text corpus, one sentence or paragraph a line")
      ->required();
  train_cmd->add_option("--vocab-size", train->vocab_size, "number of pieces")->required();
  train_cmd->add_option("--out", train->out, "output directory for tokenizer.model")->required();
  train_cmd->callback([train, &action] {
    action = [train] {
      train_tokenizer(train->input, train->vocab_size, train->out);
      std::printf("wrote %s/tokenizer.model (%lld pieces)\n", train->out.c_str(),
                  (long long)train->vocab_size);
      return 0;
    };
  });
}

}  // namespace tiller
