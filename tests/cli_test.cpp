// The tiller command line, run as a user runs it: help, one-line errors, convert, generate,
// tokenize and bench decode. No input may crash it or print a C++ backtrace.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

struct CliRun {
  int code = -1;
  std::string out, err;
};

// Single-quotes a word for the shell.
std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `tiller ARGS` with stdout and stderr kept apart.
CliRun tiller_run(const std::string& args) {
  static int counter = 0;
  const std::string dir = test::temp_dir("cli_run_" + std::to_string(counter++));
  CliRun r;
  std::string ignored;
  r.code = test::run_command(
      "( " + quote(test::tiller_binary()) + " " + args + " >" + dir + "/out 2>" + dir + "/err )",
      &ignored);
  r.out = read_file(dir + "/out");
  r.err = read_file(dir + "/err");
  return r;
}

// A user error: exit 1 (not a signal), and on stderr exactly one "tiller: error:" line, besides
// any "tiller: warning:" lines, with no backtrace. Returns that line.
std::string expect_user_error(const CliRun& r, const std::string& what) {
  EXPECT_EQ(r.code, 1) << what << "\nstdout: " << r.out << "\nstderr: " << r.err;
  std::vector<std::string> errors;
  for (const auto& line : test::lines_of(r.err)) {
    if (line.rfind("tiller: warning:", 0) == 0) continue;
    errors.push_back(line);
  }
  EXPECT_EQ(errors.size(), 1u) << what << "\nstderr: " << r.err;
  EXPECT_TRUE(!errors.empty() && errors[0].rfind("tiller: error: ", 0) == 0) << what << r.err;
  EXPECT_EQ(r.err.find("Exception raised from"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("frame #"), std::string::npos) << r.err;
  EXPECT_TRUE(r.err.empty() || r.err.back() == '\n') << what;
  return errors.empty() ? "" : errors[0];
}

// Every file name in a directory.
std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

TEST(Cli, VersionPrintsTillerAndLibTorchVersions) {
  CliRun r = tiller_run("version");
  EXPECT_EQ(r.code, 0) << r.err;
  const std::string expected = std::string("tiller ") + TILLER_VERSION + " (LibTorch " +
                               compat::torch_version() +
                               (compat::cuda_available() ? ", CUDA" : ", CPU") + ")\n";
  EXPECT_EQ(r.out, expected);
  EXPECT_EQ(r.err, "");
}

TEST(Cli, HelpWorksForEverySubcommand) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--help", "convert"},
      {"convert --help", "--tokenizer"},
      {"generate --help", "--prompts"},
      {"tokenize --help", "--pieces"},
      {"tokenizer --help", "train"},
      {"tokenizer train --help", "--vocab-size"},
      {"bench --help", "decode"},
      {"bench decode --help", "--new-tokens"},
  };
  for (const auto& [args, mention] : cases) {
    CliRun r = tiller_run(args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(mention), std::string::npos) << args << "\n" << r.out;
  }
}

TEST(Cli, BadCommandLinesGiveOneErrorLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"convert --out x", "--model is required"},
      {"tokenize --text hi --bogus", "--bogus"},
      {"frobnicate", "unknown subcommand 'frobnicate'"},
      {"bench frob", "unknown subcommand 'frob'"},
      {"--bogus", "unknown flag '--bogus'"},
      {"", "subcommand is required"},
      {"tokenizer", "subcommand is required"},
      {"convert --from nope --model a --out b", "--from"},
      {"--threads many version", "--threads"},
      {"--threads 100000 version", "--threads"},  // not 100000 OpenMP threads
      {"bench decode --batch 1,x", "--batch"},
      {"bench decode --batch 0", "--batch"},
      {"bench decode --shape nope", "unknown model shape 'nope'"},
      {"bench decode --shape stories260k --repeats 0", "--repeats"},
      {"bench decode --shape stories260k --new-tokens 1", "--new-tokens"},
      {"bench decode --shape stories260k --prompt-tokens 500 --new-tokens 64", "context"},
      {"tokenizer train --input /nonexistent.txt --vocab-size 512 --out x", "/nonexistent.txt"},
      {"tokenize --tokenizer /nonexistent.model --text hi", "/nonexistent.model"},
      {"tokenize --tokenizer / --text hi", "directory"},
  };
  for (const auto& [args, mention] : cases) {
    CliRun r = tiller_run(args);
    const std::string line = expect_user_error(r, args);
    EXPECT_NE(line.find(mention), std::string::npos) << args << "\n" << line;
    if (args.rfind("bench", 0) == 0) {
      EXPECT_EQ(r.out, "") << args;  // no half table
    }
  }
}

TEST(Cli, ConvertOfBadInputLeavesNothingBehind) {
  const std::string dir = test::temp_dir("cli_convert_bad");
  std::ofstream(dir + "/text.bin") << "this is not a llama2.c checkpoint\n";
  std::string noise;
  for (int i = 0; i < 100000; ++i) noise.push_back(static_cast<char>((i * 7919) >> 3));
  std::ofstream(dir + "/noise.bin", std::ios::binary) << noise;
  const auto before = listing(dir);
  for (const std::string& input :
       {dir + "/missing.bin", dir + "/text.bin", dir + "/noise.bin", dir}) {
    CliRun r = tiller_run("convert --model " + quote(input) + " --out " + quote(dir + "/out"));
    const std::string line = expect_user_error(r, input);
    EXPECT_NE(line.find(input), std::string::npos) << line;
    EXPECT_EQ(listing(dir), before) << "convert of " << input << " left files behind";
  }
  // A tokenizer that does not fit the model is refused before anything is written.
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(llama, "models/llama2-tokenizer/tokenizer.model");
  CliRun r =
      tiller_run("convert --model " + bin + " --tokenizer " + llama + " --out " + dir + "/out");
  EXPECT_NE(expect_user_error(r, "mismatch").find("vocabulary mismatch"), std::string::npos);
  EXPECT_EQ(listing(dir), before);
}

// `tiller chat` on stdin: each reply follows "assistant> ", each prompt (--show-prompt) holds the
// conversation so far, /reset forgets it, /exit ends it; a greedy reply is generate's text; the
// oldest exchange is dropped (and said) when the next would not fit the context.
TEST(Cli, ChatAndGenerateSpeakTheModelsOwnTemplate) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("cli_chat_model_template");
  ASSERT_EQ(
      tiller_run("convert --model " + bin + " --tokenizer " + tok_path + " --out " + dir + "/m")
          .code,
      0);
  // Mistral's v3 template (tests/chat_templates/): <s> and </s> are tok512's BOS and EOS.
  const std::string config_path = dir + "/m/tokenizer_config.json";
  nlohmann::json config =
      path_exists(config_path) ? read_json_file(config_path) : nlohmann::json::object();
  const auto mistral = nlohmann::json::parse(
      read_file(std::string(TILLER_SOURCE_DIR) + "/tests/chat_templates/mistral-v3.json"));
  config["chat_template"] = mistral["chat_template"];
  config["bos_token"] = "<s>";
  config["eos_token"] = "</s>";
  std::ofstream(config_path) << config.dump();
  std::ofstream(dir + "/turns.txt") << "Once upon a time\nThe dog ran\n";
  const CliRun r =
      tiller_run("chat --model " + dir +
                 "/m --template model --temperature 0 --max-new-tokens 8 --show-prompt < " + dir +
                 "/turns.txt");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[prompt] [INST] Once upon a time[/INST]\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[/INST] "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[INST] The dog ran[/INST]\n"), std::string::npos) << r.out;
  const CliRun g = tiller_run("generate --model " + dir +
                              "/m --template model --prompt 'Once upon a time' --temperature 0"
                              " --max-new-tokens 4");
  EXPECT_EQ(g.code, 0) << g.err;

  // A template outside the subset: one line naming the construct and where, non-zero exit.
  config["chat_template"] = "{{ bos_token }}\n{% include 'turns.jinja' %}";
  std::ofstream(config_path) << config.dump();
  const CliRun bad = tiller_run("generate --model " + dir +
                                "/m --template model --prompt 'Once' --max-new-tokens 2");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.err.find("tokenizer_config.json: chat_template:2:4: unsupported tag 'include'"),
            std::string::npos)
      << bad.err;
}

TEST(Cli, ChatKeepsTheConversationInItsPrompts) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("cli_chat");
  ASSERT_EQ(
      tiller_run("convert --model " + bin + " --tokenizer " + tok_path + " --out " + dir + "/m")
          .code,
      0);
  std::ofstream(dir + "/turns.txt")
      << "Once upon a time\n\nThe dog ran\n/reset\nThe end\n/exit\nnever read\n";
  const std::string chat = "chat --model " + dir +
                           "/m --template plain --temperature 0 --max-new-tokens 12 --show-prompt";
  CliRun r = tiller_run(chat + " < " + dir + "/turns.txt");
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> prompts, replies;
  std::string current;
  for (const auto& line : test::lines_of(r.out)) {
    if (line.rfind("[prompt] ", 0) == 0) {
      prompts.push_back(line.substr(9));
    } else if (line.rfind("assistant> ", 0) == 0) {
      replies.push_back(line.substr(11));
    } else if (!prompts.empty() && replies.size() < prompts.size()) {
      prompts.back() += "\n" + line;  // a prompt's further lines
    }
  }
  ASSERT_EQ(replies.size(), 3u) << r.out;
  ASSERT_EQ(prompts.size(), 3u) << r.out;
  EXPECT_FALSE(replies[0].empty());
  EXPECT_NE(prompts[1].find("Once upon a time"), std::string::npos) << prompts[1];
  EXPECT_NE(prompts[1].find(replies[0]), std::string::npos) << prompts[1];
  EXPECT_NE(prompts[1].find("The dog ran"), std::string::npos) << prompts[1];
  EXPECT_NE(r.out.find("[conversation reset]"), std::string::npos);
  EXPECT_EQ(prompts[2].find("Once upon a time"), std::string::npos) << prompts[2];
  EXPECT_NE(prompts[2].find("The end"), std::string::npos) << prompts[2];
  EXPECT_EQ(r.out.find("never read"), std::string::npos);

  const CliRun g = tiller_run("generate --model " + dir +
                              "/m --template plain --prompt 'Once upon a time' --temperature 0"
                              " --max-new-tokens 12");
  ASSERT_EQ(g.code, 0) << g.err;
  ASSERT_GE(g.out.size(), replies[0].size() + 1);
  EXPECT_EQ(g.out.substr(g.out.size() - replies[0].size() - 1), replies[0] + "\n") << g.out;

  // 500 new tokens leave room for one exchange in stories260K's 512 positions.
  std::ofstream(dir + "/two.txt") << "Once upon a time\nThe dog ran\n";
  r = tiller_run("chat --model " + dir +
                 "/m --template plain --temperature 0 --max-new-tokens 500" + " --show-prompt < " +
                 dir + "/two.txt");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[the oldest exchange was dropped to fit the context of 512 tokens]"),
            std::string::npos)
      << r.out;
  r = tiller_run("chat --model " + dir + "/m --max-new-tokens 510 < " + dir + "/two.txt");
  EXPECT_NE(expect_user_error(r, "too long").find("this turn alone does not fit"),
            std::string::npos);
}

TEST(Cli, GenerateWritesOneObjectPerPrompt) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(greedy, "models/stories260K/greedy_once_upon_a_time.txt");
  const std::string dir = test::temp_dir("cli_generate");
  CliRun r =
      tiller_run("convert --model " + bin + " --tokenizer " + tok_path + " --out " + dir + "/m");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote"), std::string::npos);
  EXPECT_EQ(listing(dir), std::vector<std::string>{"m"});  // no temporary directory left

  // One prompt, greedy: the reference C implementation's text exactly.
  r = tiller_run("generate --model " + dir + "/m --prompt 'Once upon a time' --max-new-tokens 116" +
                 " --temperature 0");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, read_file(greedy));

  // Prompts from JSONL; a blank line is skipped.
  const std::vector<std::string> prompts = {"Once upon a time", "The cat", "Tom and \"Lily\"",
                                            "été 😀"};
  std::string jsonl;
  for (const auto& p : prompts) jsonl += nlohmann::json{{"prompt", p}}.dump() + "\n";
  jsonl.insert(jsonl.find('\n') + 1, "\n");
  std::ofstream(dir + "/in.jsonl") << jsonl;
  r = tiller_run("generate --model " + dir + "/m --prompts " + dir + "/in.jsonl --out " + dir +
                 "/out.jsonl --max-new-tokens 12 --temperature 0");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = test::lines_of(read_file(dir + "/out.jsonl"));
  ASSERT_EQ(lines.size(), prompts.size());
  Tokenizer tok(tok_path);
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto j = nlohmann::json::parse(lines[i]);
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j.size(), 4u) << lines[i];
    EXPECT_EQ(j.at("prompt"), prompts[i]);
    const auto tokens = j.at("tokens").get<std::vector<int64_t>>();
    const bool finished = j.at("finished").get<bool>();
    ASSERT_FALSE(tokens.empty());
    EXPECT_LE(tokens.size(), 12u);
    EXPECT_EQ(finished, tokens.back() == tok.eos_id()) << lines[i];
    if (!finished) {
      EXPECT_EQ(tokens.size(), 12u);
    }
    // The completion continues the prompt: prompt + completion is the decoded whole sequence
    // (in particular the space a completion starts with is kept).
    std::vector<int64_t> all = tok.encode(prompts[i], /*add_bos=*/true);
    for (int64_t id : tokens)
      if (id != tok.eos_id()) all.push_back(id);
    EXPECT_EQ(prompts[i] + j.at("completion").get<std::string>(), tok.decode(all)) << lines[i];
  }
  // Greedy: the first prompt's completion is the reference text's continuation.
  const std::string first = nlohmann::json::parse(lines[0]).at("completion");
  EXPECT_EQ(read_file(greedy).compare(0, 16 + first.size(), "Once upon a time" + first), 0)
      << first;

  // Malformed lines are errors naming file and line; no output is written.
  std::ofstream(dir + "/bad.jsonl") << "{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\"\n";
  r = tiller_run("generate --model " + dir + "/m --prompts " + dir + "/bad.jsonl --out " + dir +
                 "/bad_out.jsonl");
  EXPECT_NE(expect_user_error(r, "bad json").find(dir + "/bad.jsonl:3:"), std::string::npos)
      << r.err;
  std::ofstream(dir + "/bad2.jsonl") << "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n";
  r = tiller_run("generate --model " + dir + "/m --prompts " + dir + "/bad2.jsonl --out " + dir +
                 "/bad_out.jsonl");
  EXPECT_NE(expect_user_error(r, "no prompt").find(dir + "/bad2.jsonl:2:"), std::string::npos)
      << r.err;
  EXPECT_FALSE(path_exists(dir + "/bad_out.jsonl"));
  r = tiller_run("generate --model " + dir + "/m --prompts " + dir + "/in.jsonl");
  EXPECT_NE(expect_user_error(r, "no --out").find("--out"), std::string::npos);
  expect_user_error(tiller_run("generate --model " + dir + "/m"), "no prompt at all");
  expect_user_error(tiller_run("generate --model " + dir + "/m --prompt a --prompts " + dir +
                               "/in.jsonl --out " + dir + "/o.jsonl"),
                    "both");
  expect_user_error(tiller_run("generate --model " + dir + "/m --prompt '' --no-bos"),
                    "empty prompt without BOS");

  // An empty prompt is BOS alone: unconditional generation.
  r = tiller_run("generate --model " + dir + "/m --prompt '' --max-new-tokens 8 --temperature 0");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_GT(r.out.size(), 1u);
}

TEST(Cli, TokenizePrintsTheLibrarysIds) {
  TILLER_REQUIRE_SHARED(llama, "models/llama2-tokenizer/tokenizer.model");
  const std::string dir = test::temp_dir("cli_tokenize");
  std::filesystem::create_symlink(llama, dir + "/tokenizer.model");
  Tokenizer tok(llama);
  for (const std::string& text : {std::string("Hello world"), std::string("  naïve café, 中文 😀!"),
                                  std::string("it's \"quoted\"\ttab")}) {
    CliRun r = tiller_run("tokenize --model " + dir + " --text " + quote(text));
    ASSERT_EQ(r.code, 0) << r.err;
    std::string expected;
    for (int64_t id : tok.encode(text))
      expected += (expected.empty() ? "" : " ") + std::to_string(id);
    EXPECT_EQ(r.out, expected + "\n") << text;
  }
  CliRun r = tiller_run("tokenize --tokenizer " + llama + " --text 'Hello world' --bos --eos");
  EXPECT_EQ(r.out, "1 15043 3186 2\n");
  r = tiller_run("tokenize --tokenizer " + llama + " --text 'Hello world' --pieces");
  EXPECT_EQ(r.out, "\xe2\x96\x81Hello \xe2\x96\x81world\n");
  // A directory without tokenizer.model, and both sources at once, are user errors.
  r = tiller_run("tokenize --model " + dir + "/.. --text hi");
  EXPECT_NE(expect_user_error(r, "no tokenizer").find("tokenizer.model"), std::string::npos);
  expect_user_error(tiller_run("tokenize --model " + dir + " --tokenizer " + llama + " --text hi"),
                    "both");
}

TEST(Cli, TokenizerTrainWritesALoadableModel) {
  TILLER_REQUIRE_SHARED(corpus, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("cli_tok_train");
  std::string text = read_file(corpus).substr(0, 60 * 1024);
  text.resize(text.rfind('\n') + 1);
  std::ofstream(dir + "/corpus.txt") << text;
  // The trainer logs through std::cerr, which once crashed inside the isolated module.
  CliRun r = tiller_run("tokenizer train --input " + dir + "/corpus.txt --vocab-size 400 --out " +
                        dir + "/tok");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "wrote " + dir + "/tok/tokenizer.model (400 pieces)\n");
  Tokenizer tok(dir + "/tok/tokenizer.model");
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.decode(tok.encode("Once upon a time, Lily smiled.")),
            "Once upon a time, Lily smiled.");
  // Fewer pieces than bytes and characters need: SentencePiece's reason, without its source line.
  const std::string line =
      expect_user_error(tiller_run("tokenizer train --input " + dir +
                                   "/corpus.txt --vocab-size 300 --out " + dir + "/tok2"),
                        "vocab too small");
  EXPECT_NE(line.find("Vocabulary size is smaller than required_chars"), std::string::npos) << line;
  EXPECT_EQ(line.find(".cc("), std::string::npos) << line;
}
