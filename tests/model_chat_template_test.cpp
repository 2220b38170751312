// `template: model`: real chat templates (tests/chat_templates/, one per model family) rendered
// byte for byte as transformers renders them (tests/oracle/chat_template_oracle.py), each assistant
// reply's span and end of turn found on every family, and the tokens that train.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/model_chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

const std::string kTemplates = std::string(TILLER_SOURCE_DIR) + "/tests/chat_templates";

nlohmann::json family_config(const std::string& family) {
  return nlohmann::json::parse(read_file(kTemplates + "/" + family + ".json"));
}

std::string text_of(const nlohmann::json& config, const char* key) {
  return config[key].is_string() ? config[key].get<std::string>() : "";
}

// The family's template with the special tokens its tokenizer has.
ModelChatTemplate family_template(const std::string& family) {
  static const std::map<std::string, std::vector<std::string>> specials = {
      {"llama3",
       {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eot_id|>"}},
      {"llama3.2",
       {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eot_id|>"}},
      {"qwen2.5", {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}},
      {"smollm2", {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}},
      {"gemma2", {"<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"}},
      {"mistral-v3", {"<s>", "</s>", "[INST]", "[/INST]"}},
  };
  const auto config = family_config(family);
  return ModelChatTemplate(config["chat_template"].get<std::string>(), family,
                           text_of(config, "bos_token"), text_of(config, "eos_token"),
                           specials.at(family));
}

std::vector<Message> messages_of(const nlohmann::json& list) {
  std::vector<Message> out;
  for (const auto& m : list)
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

// The Python that runs the oracle: $TILLER_PYTHON, else the project's .venv (transformers there
// checks the oracle itself), else a python3 that imports jinja2.
std::string oracle_python() {
  const char* env = std::getenv("TILLER_PYTHON");
  if (env != nullptr && *env != '\0') return env;
  const std::string venv = std::string(TILLER_SOURCE_DIR) + "/.venv/bin/python";
  std::string out;
  if (path_exists(venv) && test::run_command(venv + " -c 'import jinja2' 2>&1", &out) == 0)
    return venv;
  return test::python_importing("jinja2");
}

std::string python_strip(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\n\r");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\n\r") - begin + 1);
}

}  // namespace

TEST(ModelChatTemplate, RealTemplatesRenderByteForByteAsTransformersRendersThem) {
  const std::string python = oracle_python();
  if (python.empty())
    GTEST_SKIP()
        << "skipped: the chat-template oracle needs a Python with jinja2 (set TILLER_PYTHON, "
           "or install python3-jinja2)";
  const std::string out = test::temp_dir("chat_template_oracle") + "/table.json";
  std::string log;
  ASSERT_EQ(test::run_command(test::shell_command({python,
                                                   std::string(TILLER_SOURCE_DIR) +
                                                       "/tests/oracle/chat_template_oracle.py",
                                                   kTemplates, out}) +
                                  " 2>&1",
                              &log),
            0)
      << log;
  const auto table = nlohmann::json::parse(read_file(out));
  std::map<std::string, std::unique_ptr<ModelChatTemplate>> templates;
  size_t identical = 0, raised = 0;
  std::set<std::string> families;
  for (const auto& row : table["rows"]) {
    const std::string family = row["family"];
    families.insert(family);
    if (!templates.count(family))
      templates[family] = std::make_unique<ModelChatTemplate>(family_template(family));
    const std::string what =
        family + " / " + row["case"].get<std::string>() +
        (row["add_generation_prompt"].get<bool>() ? " / generation prompt" : "");
    const auto messages = messages_of(row["messages"]);
    EXPECT_FALSE(row.contains("transformers_differs"))
        << what
        << ": jinja2 in transformers' environment and transformers' apply_chat_template differ: "
        << row.dump();
    if (row.contains("error")) {
      const std::string error = test::error_of(
          [&] { templates[family]->render(messages, row["add_generation_prompt"]); });
      EXPECT_NE(error.find("the template raises: " + row["error"].get<std::string>()),
                std::string::npos)
          << what << ": " << error;
      ++raised;
      continue;
    }
    std::string got;
    try {
      got = templates[family]->render(messages, row["add_generation_prompt"]);
    } catch (const Error& e) {
      got = std::string("error: ") + e.what();
    }
    EXPECT_EQ(got, row["text"].get<std::string>()) << what;
    if (got == row["text"].get<std::string>()) ++identical;
  }
  EXPECT_EQ(families.size(), 6u);
  EXPECT_GE(identical + raised, 140u);
  std::printf(
      "[ chat templates ] %zu renderings byte-identical to jinja2's, %zu raise as jinja2 "
      "raises (%zu families); %d also rendered by transformers %s's apply_chat_template\n",
      identical, raised, families.size(), table["transformers_checked"].get<int>(),
      table["transformers"].is_string() ? table["transformers"].get<std::string>().c_str()
                                        : "(absent)");
}

TEST(ModelChatTemplate, EachReplyAndItsEndOfTurnAreFoundOnEveryFamily) {
  const std::map<std::string, std::pair<std::string, bool>> end_of_turn = {
      // family: the token closing an assistant turn, and whether the template trims the content
      {"llama3", {"<|eot_id|>", true}},    {"llama3.2", {"<|eot_id|>", true}},
      {"qwen2.5", {"<|im_end|>", false}},  {"smollm2", {"<|im_end|>", false}},
      {"gemma2", {"<end_of_turn>", true}}, {"mistral-v3", {"</s>", true}},
  };
  const std::vector<std::vector<Message>> conversations = {
      {{"user", "Hi"},
       {"assistant", "Hello, how can I help?"},
       {"user", "A joke."},
       {"assistant", "Why did the hen..."}},
      {{"user", "  spaced  "}, {"assistant", "\n  spaced answer\t "}},
      {{"user", "Grüße 世界"}, {"assistant", "Ça va — naïve ✓ 😀"}},
      {{"user", ""}, {"assistant", ""}},
      {{"user", "echo <|im_end|> </s>"},
       {"assistant", "Hello Hello"}},  // content that repeats itself
  };
  for (const auto& [family, expected] : end_of_turn) {
    const ModelChatTemplate tmpl = family_template(family);
    for (const auto& conversation : conversations) {
      const std::string text = tmpl.render(conversation, false);
      const auto replies = tmpl.replies(conversation, text);
      size_t a = 0;
      for (const Message& m : conversation) {
        if (m.role != "assistant") continue;
        ASSERT_LT(a, replies.size()) << family;
        const auto& r = replies[a++];
        const std::string content = text.substr(r.begin, r.content_end - r.begin);
        EXPECT_EQ(content, expected.second ? python_strip(m.content) : m.content)
            << family << ": " << text;
        EXPECT_EQ(python_strip(text.substr(r.content_end, r.end - r.content_end)), expected.first)
            << family << ": " << text;
      }
      EXPECT_EQ(a, replies.size()) << family;
    }
  }
}

TEST(ModelChatTemplate, AReplyRenderedTwiceOrATemplateWithoutTurnEndsIsHandled) {
  const std::vector<Message> conversation = {{"user", "Hi"}, {"assistant", "Yo"}};
  const ModelChatTemplate twice(
      "{% for m in messages %}{{ m.content }}|{{ m.content }}{% endfor %}", "twice", "", "", {});
  EXPECT_NE(test::error_of([&] { twice.replies(conversation, twice.render(conversation, false)); })
                .find("twice: assistant message 2: the template renders the reply's content more "
                      "than once"),
            std::string::npos);
  const ModelChatTemplate plain(
      "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", "plain", "", "",
      {"</s>"});
  const std::string text = plain.render(conversation, false);
  const auto replies = plain.replies(conversation, text);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(text.substr(replies[0].begin, replies[0].content_end - replies[0].begin), "Yo");
  EXPECT_EQ(replies[0].end, replies[0].content_end);  // no special token: the caller appends EOS
}

namespace {

// A copy of stories260K's tokenizer in a directory of its own, with this tokenizer_config.json.
std::string tokenizer_with_config(const std::string& tok_path, const std::string& name,
                                  const nlohmann::json& config) {
  const std::string dir = test::temp_dir("model_chat_template_" + name);
  std::filesystem::copy_file(tok_path, dir + "/tokenizer.model");
  if (!config.is_null()) std::ofstream(dir + "/tokenizer_config.json") << config.dump();
  return dir + "/tokenizer.model";
}

}  // namespace

TEST(ModelChatTemplate, TheTemplatesOwnBosIsTheOnlyOneAndTheEndOfTurnTrains) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  // Mistral's template writes <s> itself and closes each reply with </s> (tok512's BOS and EOS).
  Tokenizer tok(tokenizer_with_config(tok_path, "mistral", family_config("mistral-v3")));
  const std::vector<Message> conversation = {{"user", "Once upon a time"},
                                             {"assistant", "there was a cat."},
                                             {"user", "And then?"},
                                             {"assistant", "It slept."}};
  const auto conv = tokenize_conversation(tok, "model", conversation);
  ASSERT_EQ(conv.tokens.size(), conv.trainable.size());
  ASSERT_GE(conv.tokens.size(), 4u);
  EXPECT_EQ(conv.tokens[0], tok.bos_id());
  EXPECT_EQ(std::count(conv.tokens.begin(), conv.tokens.end(), tok.bos_id()), 1);
  EXPECT_EQ(std::count(conv.tokens.begin(), conv.tokens.end(), tok.eos_id()), 2);  // one per reply
  EXPECT_EQ(conv.tokens.back(), tok.eos_id());
  EXPECT_EQ(conv.trainable.back(), 1);
  std::vector<int64_t> trained;
  for (size_t i = 0; i < conv.tokens.size(); ++i) {
    if (conv.tokens[i] == tok.eos_id()) {
      EXPECT_EQ(conv.trainable[i], 1) << "EOS " << i;
    }
    if (conv.trainable[i] && conv.tokens[i] != tok.eos_id()) trained.push_back(conv.tokens[i]);
  }
  EXPECT_EQ(tok.decode(trained), "there was a cat. It slept.");
  // The prompt for the next reply renders the conversation the way generation sees it.
  const auto prompt = tokenize_prompt(tok, "model", {conversation[0]});
  EXPECT_EQ(prompt[0], tok.bos_id());
  EXPECT_EQ(tok.decode(prompt), "[INST] Once upon a time[/INST]");
  EXPECT_EQ(model_end_of_turn_id(tok), tok.eos_id());
}

TEST(ModelChatTemplate, ATemplateWithoutATurnTokenGetsEosAfterEachReply) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  // tok512 has no <|im_end|>: Qwen's template then closes turns with text only.
  Tokenizer tok(tokenizer_with_config(tok_path, "qwen", family_config("qwen2.5")));
  const auto conv = tokenize_conversation(tok, "model", {{"user", "Hi"}, {"assistant", "Hello"}});
  EXPECT_NE(conv.tokens[0], tok.bos_id());  // Qwen's template writes no BOS, so none is added
  size_t eos_at = 0;
  for (size_t i = 0; i < conv.tokens.size(); ++i)
    if (conv.tokens[i] == tok.eos_id()) eos_at = i;
  ASSERT_GT(eos_at, 0u);
  EXPECT_EQ(conv.trainable[eos_at], 1);
  EXPECT_EQ(model_end_of_turn_id(tok), -1);
}

TEST(ModelChatTemplate, BadOrMissingTemplatesAreOneClearError) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  const std::vector<Message> conversation = {{"user", "Hi"}, {"assistant", "Yo"}};
  {
    Tokenizer tok(tokenizer_with_config(tok_path, "none", nullptr));
    const std::string error =
        test::error_of([&] { tokenize_conversation(tok, "model", conversation); });
    EXPECT_NE(error.find("tokenizer_config.json does not exist: template 'model' reads"),
              std::string::npos)
        << error;
  }
  {
    Tokenizer tok(
        tokenizer_with_config(tok_path, "no_template", nlohmann::json{{"bos_token", "<s>"}}));
    const std::string error = test::error_of([&] { tokenize_prompt(tok, "model", conversation); });
    EXPECT_NE(error.find("tokenizer_config.json has no chat_template"), std::string::npos) << error;
  }
  {
    Tokenizer tok(tokenizer_with_config(
        tok_path, "invalid",
        nlohmann::json{{"chat_template", "{% for m in messages %}\n{% include 'x' %}"}}));
    const std::string error = test::error_of([&] { tokenize_prompt(tok, "model", conversation); });
    EXPECT_NE(error.find("tokenizer_config.json: chat_template:2:4: unsupported tag 'include'"),
              std::string::npos)
        << error;
  }
  {
    const nlohmann::json named = {
        {"chat_template",
         {{{"name", "tool_use"}, {"template", "tools"}},
          {{"name", "default"}, {"template", "{{ messages[0].content }}"}}}}};
    Tokenizer tok(tokenizer_with_config(tok_path, "named", named));
    EXPECT_EQ(tok.decode(tokenize_prompt(tok, "model", conversation)), "Hi");
    Tokenizer no_default(tokenizer_with_config(
        tok_path, "no_default",
        nlohmann::json{{"chat_template", {{{"name", "tool_use"}, {"template", "x"}}}}}));
    EXPECT_NE(test::error_of([&] {
                tokenize_prompt(no_default, "model", conversation);
              }).find("chat_template has no template named 'default' (it has tool_use)"),
              std::string::npos);
  }
}
