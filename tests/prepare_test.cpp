// `tiller data prepare` end to end: inputs of every kind, each step counted, deduplication,
// determinism across threads, hostile input, the memory bound, and a recipe that goes from raw
// text through shards to pretraining.
#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "common/data/shards.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "prepare/prepare.h"
#include "tests/test_util.h"

namespace tiller {
namespace {

void write_gzip(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())),
            static_cast<int>(text.size()));
  gzclose(f);
}

void write_zstd(const std::string& path, const std::string& text) {
  std::string out(ZSTD_compressBound(text.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), text.data(), text.size(), 3);
  ASSERT_FALSE(ZSTD_isError(n));
  out.resize(n);
  test::write_file(path, out);
}

// English-like documents that pass Gopher's and C4's rules: sentences of common words and of
// made-up words drawn with Zipf frequencies, so that distinct documents share words but few
// 5-word shingles.
class DocumentMaker {
 public:
  explicit DocumentMaker(uint64_t seed) : random_(seed) {
    const char* common[] = {"the", "and", "to",  "of", "a",    "in", "that", "with", "was", "it",
                            "he",  "she", "for", "on", "they", "is", "at",   "his",  "her", "had"};
    for (const char* w : common) words_.push_back(w);
    std::uniform_int_distribution<int> length(3, 9), letter(0, 25);
    for (int i = 0; i < 4000; ++i) {
      std::string w;
      const int n = length(random_);
      for (int k = 0; k < n; ++k) w += static_cast<char>('a' + letter(random_));
      words_.push_back(w);
    }
    double total = 0;
    for (size_t i = 0; i < words_.size(); ++i) cumulative_.push_back(total += 1.0 / (i + 1));
  }

  // A document of about `words` words in sentences of 8 to 15.
  std::string document(int words) {
    std::string text;
    std::uniform_int_distribution<int> sentence_length(8, 15);
    for (int written = 0; written < words;) {
      const int n = sentence_length(random_);
      for (int k = 0; k < n; ++k) {
        std::string w = word();
        if (k == 0) w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
        text += (k == 0 ? (text.empty() ? "" : " ") : " ") + w;
      }
      text += ".";
      written += n;
    }
    return text;
  }

  std::string word() {
    std::uniform_real_distribution<double> u(0, cumulative_.back());
    const double x = u(random_);
    return words_[static_cast<size_t>(std::lower_bound(cumulative_.begin(), cumulative_.end(), x) -
                                      cumulative_.begin())];
  }

  // The document with `count` of its words, evenly spaced, replaced by a word it does not hold
  // there: each replacement changes the 5 shingles that span it.
  std::string edited(const std::string& text, int count) {
    std::istringstream in(text);
    std::vector<std::string> words;
    for (std::string w; in >> w;) words.push_back(w);
    for (int k = 0; k < count; ++k) {
      const size_t at = words.size() * static_cast<size_t>(k + 1) / static_cast<size_t>(count + 1);
      words[at] = "zzz" + std::to_string(k) + words[at];
    }
    std::string out;
    for (const auto& w : words) out += (out.empty() ? "" : " ") + w;
    return out;
  }

 private:
  std::mt19937_64 random_;
  std::vector<std::string> words_;
  std::vector<double> cumulative_;
};

std::string json_line(const std::string& field, const std::string& text) {
  return nlohmann::json{{field, text}, {"id", 1}}.dump() + "\n";
}

PrepareConfig config_from(const nlohmann::json& json) {
  ConfigErrors errors;
  PrepareConfig config;
  {
    ConfigReader r(json, "", errors);
    config = read_prepare_config(r, errors, /*in_recipe=*/false);
  }
  errors.throw_if_any("test config");
  return config;
}

const nlohmann::json* step_of(const nlohmann::json& stats, const std::string& name) {
  for (const auto& s : stats["steps"])
    if (s["step"] == name) return &s;
  return nullptr;
}

// The one-line error of `tiller data prepare` on a config; the exit status in *status.
std::string prepare_error(const std::string& config_path, int* status) {
  std::string output;
  // stderr alone: run_command adds a 2>&1 of its own, after the group.
  *status = test::run_command(
      "{ " + test::shell_command({test::tiller_binary(), "data", "prepare", config_path}) +
          " 2>&1 >/dev/null; }",
      &output);
  return output;
}

TEST(Prepare, CleansFiltersDeduplicatesAndWritesShardsAcrossInputKinds) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("prepare_kinds");
  make_directories(dir + "/in/web");
  DocumentMaker maker(7);
  std::vector<std::string> originals;
  for (int i = 0; i < 60; ++i) originals.push_back(maker.document(80 + i % 40));
  // Plain text, one document a line: 30 originals, 5 exact copies, 5 near copies (a word changed).
  std::string text;
  for (int i = 0; i < 30; ++i) text += originals[i] + "\n\n";
  for (int i = 0; i < 5; ++i) text += originals[i] + "\n";
  for (int i = 5; i < 10; ++i) text += maker.edited(originals[i], 1) + "\n";
  text += "$$$ ### ... ### $$$ ... ###\n";  // fails gopher_quality (too few words, symbols)
  test::write_file(dir + "/in/web/a.txt", text);
  // JSONL under .gz, the document in another field; one carries an e-mail address.
  std::string jsonl;
  for (int i = 30; i < 45; ++i) jsonl += json_line("content", originals[i]);
  jsonl += json_line("content", originals[45] + " Write to jane.doe@example.com for more.");
  write_gzip(dir + "/in/web/b.jsonl.gz", jsonl);
  // Plain text under .zst.
  std::string zst;
  for (int i = 46; i < 60; ++i) zst += originals[i] + "\n";
  write_zstd(dir + "/in/c.txt.zst", zst);

  PrepareConfig config =
      config_from({{"inputs",
                    {{{"path", dir + "/in/web/*.txt"}},
                     {{"path", dir + "/in/web/b.jsonl.gz"}, {"field", "content"}},
                     dir + "/in/c.txt.zst"}},
                   {"tokenizer", tokenizer_path},
                   {"output", dir + "/out"},
                   {"threads", 2},
                   {"normalize", true},
                   {"gopher_quality", true},
                   {"pii", true},
                   {"exact_dedup", true},
                   {"near_dedup", {{"threshold", 0.7}}},
                   {"validation_fraction", 0.1},
                   {"shard_tokens", 2000}});
  const nlohmann::json stats = prepare_data(config, config.output, "[test]");

  EXPECT_EQ(stats["input"]["files"], 3);
  EXPECT_EQ(stats["input"]["documents"], 30 + 5 + 5 + 1 + 16 + 14);
  EXPECT_EQ((*step_of(stats, "gopher_quality"))["removed_documents"], 1);
  EXPECT_EQ((*step_of(stats, "exact_dedup"))["removed_documents"], 5);
  EXPECT_EQ((*step_of(stats, "near_dedup"))["removed_documents"], 5);
  EXPECT_EQ((*step_of(stats, "pii"))["emails"], 1);
  EXPECT_EQ(stats["kept_documents"], 60);
  const int64_t train = stats["output"]["train"]["documents"];
  const int64_t val = stats["output"]["val"]["documents"];
  EXPECT_EQ(train + val, 60);
  EXPECT_GT(val, 0);
  EXPECT_GT(stats["output"]["train"]["shards"].size(), 1u) << "shard_tokens 2000 cuts shards";
  EXPECT_TRUE(path_exists(config.output + "/prepare.json"));
  EXPECT_FALSE(path_exists(config.output + ".incomplete"));

  // The shards hold the kept documents, tokenised as pretraining reads them (BOS first); the
  // e-mail address is redacted in the text that was tokenised.
  const Tokenizer tokenizer(tokenizer_path);
  std::string all_text;
  int64_t documents = 0;
  for (const char* split : {"train", "val"}) {
    TokenShards shards(config.output, split, tokenizer);
    for (int64_t d = 0; d < shards.document_count(); ++d) {
      const std::vector<int64_t> ids = shards.document(d);
      ASSERT_FALSE(ids.empty());
      EXPECT_EQ(ids[0], tokenizer.bos_id());
      all_text += tokenizer.decode(ids) + "\n";
      ++documents;
    }
  }
  EXPECT_EQ(documents, 60);
  EXPECT_EQ(all_text.find("jane.doe@example.com"), std::string::npos);
  EXPECT_NE(all_text.find("<EMAIL>"), std::string::npos);
  EXPECT_NE(all_text.find(originals[59].substr(0, 40)), std::string::npos);
}

TEST(Prepare, TheOutputDoesNotDependOnTheNumberOfThreads) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("prepare_threads");
  DocumentMaker maker(11);
  std::string text;
  std::vector<std::string> docs;
  for (int i = 0; i < 400; ++i) {
    docs.push_back(i % 7 == 6 ? maker.edited(docs[static_cast<size_t>(i - 3)], 1)
                              : maker.document(60 + i % 90));
    text += docs.back() + "\n";
  }
  test::write_file(dir + "/corpus.txt", text);
  std::string first_bytes;
  for (int threads : {1, 2}) {
    const std::string out = dir + "/out" + std::to_string(threads);
    PrepareConfig config = config_from({{"inputs", dir + "/corpus.txt"},
                                        {"tokenizer", tokenizer_path},
                                        {"output", out},
                                        {"threads", threads},
                                        {"memory_mb", 20},  // small batches: many in flight
                                        {"normalize", true},
                                        {"gopher_repetition", true},
                                        {"exact_dedup", true},
                                        {"near_dedup", {{"threshold", 0.7}}},
                                        {"validation_fraction", 0.2}});
    const nlohmann::json stats = prepare_data(config, out, "[test]");
    // 57 documents are copies of the one three before with one word changed (Jaccard > 0.8).
    EXPECT_GE((*step_of(stats, "near_dedup"))["removed_documents"].get<int64_t>(), 54);
    const std::string bytes = read_file(out + "/train-00000.bin") +
                              read_file(out + "/val-00000.bin") +
                              read_file(out + "/train-00000.idx");
    if (threads == 1)
      first_bytes = bytes;
    else
      EXPECT_TRUE(bytes == first_bytes) << "2 threads wrote other shards than 1";
  }
}

TEST(Prepare, HostileInputGetsOneLineNamingTheFileAndLeavesNoOutput) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("prepare_hostile");
  DocumentMaker maker(3);
  const std::string good = maker.document(60) + "\n";
  struct Case {
    std::string name, contents, expected;
  };
  std::string long_line(100u << 20, 'a');  // 100 MB without a newline
  const std::vector<Case> cases = {
      {"bad_utf8.txt", good + "caf\xc3\x28 au lait\n", "bad_utf8.txt:2: not UTF-8 text (byte 3"},
      {"long_line.txt", good + long_line,
       "long_line.txt:2: a document longer than "
       "max_document_bytes"},
      {"empty.txt", "", "empty.txt: no documents in it"},
      {"bad.jsonl", good.substr(0, 20) + "\n", "bad.jsonl:1: not a JSON record"},
      {"bad.txt.gz", "this is not gzip data at all", "bad.txt.gz: not a readable gzip file"},
      {"cut.txt.zst", "", "cut.txt.zst: a zstd file cut short"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string input = dir + "/" + c.name;
    if (c.name == "cut.txt.zst") {
      write_zstd(input, good + good + good);
      std::filesystem::resize_file(input, std::filesystem::file_size(input) - 5);
    } else {
      test::write_file(input, c.contents);
    }
    const std::string out = dir + "/out_" + c.name;
    const std::string config = dir + "/" + c.name + ".json";
    test::write_file(config, nlohmann::json{{"inputs", input},
                                            {"tokenizer", tokenizer_path},
                                            {"output", out},
                                            {"exact_dedup", true}}
                                 .dump());
    int status = 0;
    const std::string error = prepare_error(config, &status);
    EXPECT_NE(status, 0);
    EXPECT_NE(error.find(c.expected), std::string::npos) << error;
    EXPECT_EQ(test::lines_of(error).size(), 1u) << error;
    EXPECT_FALSE(path_exists(out));
    EXPECT_FALSE(path_exists(out + ".incomplete"));
  }
}

TEST(Prepare, BadDocumentsSkippedAreCountedWhenAsked) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("prepare_skip");
  DocumentMaker maker(5);
  test::write_file(dir + "/a.txt", maker.document(50) + "\n\xff\xfe broken\n" +
                                       std::string(5000, 'x') + "\n" + maker.document(50) + "\n");
  PrepareConfig config = config_from({{"inputs", dir + "/a.txt"},
                                      {"tokenizer", tokenizer_path},
                                      {"output", dir + "/out"},
                                      {"max_document_bytes", 4096},
                                      {"bad_documents", "skip"}});
  const nlohmann::json stats = prepare_data(config, config.output, "[test]");
  EXPECT_EQ(stats["input"]["skipped_not_utf8"], 1);
  EXPECT_EQ(stats["input"]["skipped_too_long"], 1);
  EXPECT_EQ(stats["kept_documents"], 2);
}

TEST(Prepare, ConfigMistakesAreAllNamedBeforeAnythingRuns) {
  const std::string dir = test::temp_dir("prepare_config");
  test::write_file(dir + "/bad.json", nlohmann::json{{"inputs", {dir + "/missing.txt"}},
                                                     {"tokenizer", dir + "/none.model"},
                                                     {"output", dir + "/out"},
                                                     {"near_dedup", {{"bands", 10}, {"rows", 3}}},
                                                     {"gopher_qualty", true},
                                                     {"validation_fraction", 1.5}}
                                          .dump());
  int status = 0;
  const std::string error = prepare_error(dir + "/bad.json", &status);
  EXPECT_NE(status, 0);
  for (const char* expected : {"inputs[0]", "missing.txt does not exist", "tokenizer",
                               "gopher_qualty", "validation_fraction", "near_dedup"})
    EXPECT_NE(error.find(expected), std::string::npos) << expected << " in:\n" << error;
  EXPECT_FALSE(path_exists(dir + "/out"));
}

TEST(Prepare, MemoryStaysUnderItsBoundOnACorpusFourTimesLarger) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("prepare_memory");
  const int64_t memory_mb = 24;
  {
    // 4 x memory_mb of documents of about 1,500 words (web pages' size), one a line, a tenth of
    // them duplicates. The near-duplicate index costs ~0.8 KB a kept document.
    std::ofstream out(dir + "/corpus.txt", std::ios::binary);
    DocumentMaker maker(17);
    int64_t written = 0;
    std::string previous;
    for (int64_t i = 0; written < 4 * memory_mb * (int64_t{1} << 20); ++i) {
      const std::string doc = i % 10 == 9 ? previous : maker.document(1500);
      out << doc << "\n";
      written += static_cast<int64_t>(doc.size()) + 1;
      previous = doc;
    }
  }
  const std::string config = dir + "/config.json";
  test::write_file(config, nlohmann::json{{"inputs", dir + "/corpus.txt"},
                                          {"tokenizer", tokenizer_path},
                                          {"output", dir + "/out"},
                                          {"threads", 2},
                                          {"memory_mb", memory_mb},
                                          {"normalize", true},
                                          {"gopher_quality", true},
                                          {"exact_dedup", true},
                                          {"near_dedup", true}}
                               .dump());
  std::string output;
  ASSERT_EQ(test::run_command(
                test::shell_command({test::tiller_binary(), "data", "prepare", config}) + " 2>&1",
                &output),
            0)
      << output;
  const nlohmann::json stats = read_json_file(dir + "/out/stats.json");
  EXPECT_GE(stats["input"]["bytes"].get<double>(), 4.0 * memory_mb * (1 << 20));
  const double above = stats["memory"]["peak_above_baseline_mib"].get<double>();
  std::printf(
      "peak RSS %.1f MiB: %.1f MiB above the %.1f MiB at start, bound %lld MiB, %.1f MB "
      "of text\n",
      stats["memory"]["peak_rss_mib"].get<double>(), above,
      stats["memory"]["baseline_rss_mib"].get<double>(), (long long)memory_mb,
      stats["input"]["bytes"].get<double>() / 1e6);
  EXPECT_LE(above, static_cast<double>(memory_mb));
  EXPECT_GT(stats["kept_documents"].get<int64_t>(), 0);
}

TEST(Prepare, DeduplicationIndexesThatWouldOutgrowTheBoundStopWithOneLine) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("prepare_index_bound");
  {
    // 40,000 distinct short documents: ~0.8 KB of near-duplicate index each, 32 MB in all.
    std::ofstream out(dir + "/many.txt");
    DocumentMaker maker(23);
    for (int i = 0; i < 40000; ++i) out << maker.document(12) << "\n";
  }
  test::write_file(dir + "/config.json", nlohmann::json{{"inputs", dir + "/many.txt"},
                                                        {"tokenizer", tokenizer_path},
                                                        {"output", dir + "/out"},
                                                        {"threads", 1},
                                                        {"memory_mb", 20},
                                                        {"near_dedup", true}}
                                             .dump());
  int status = 0;
  const std::string error = prepare_error(dir + "/config.json", &status);
  EXPECT_NE(status, 0);
  EXPECT_NE(error.find("the deduplication indexes need"), std::string::npos) << error;
  EXPECT_NE(error.find("raise memory_mb"), std::string::npos) << error;
  EXPECT_EQ(test::lines_of(error).size(), 1u) << error;
  EXPECT_FALSE(path_exists(dir + "/out"));
  EXPECT_FALSE(path_exists(dir + "/out.incomplete"));
}

TEST(Prepare, ARecipeGoesFromRawTextThroughShardsToPretrainingAndTheReportShowsIt) {
  TILLER_REQUIRE_SHARED(tokenizer_path, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(corpus, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("prepare_recipe");
  const nlohmann::json recipe = {
      {"run", {{"name", "prepared"}, {"dir", dir + "/run"}, {"seed", 5}, {"threads", 1}}},
      {"stages",
       {{{"name", "clean"},
         {"type", "prepare"},
         {"inputs", {{{"path", corpus}, {"documents", "paragraphs"}}}},
         {"tokenizer", tokenizer_path},
         {"normalize", true},
         {"gopher_quality", {{"min_words", 20}}},
         {"exact_dedup", true},
         {"near_dedup", true},
         {"validation_fraction", 0.05}},
        {{"name", "pretrain"},
         {"type", "pretrain"},
         {"tokenizer", tokenizer_path},
         {"model",
          {{"shape", "stories260k"},
           {"hidden_size", 32},
           {"intermediate_size", 64},
           {"num_hidden_layers", 2},
           {"num_attention_heads", 4},
           {"num_key_value_heads", 4}}},
         {"data", {{"train", "@clean"}, {"format", "shards"}}},
         {"train",
          {{"steps", 6},
           {"batch_size", 4},
           {"max_seq_len", 64},
           {"lr", 3e-3},
           {"log_every", 1},
           {"eval_every", 6},
           {"checkpoint_every", 6}}}}}}};
  test::write_file(dir + "/recipe.json", recipe.dump(2));
  std::string output;
  ASSERT_EQ(test::run_command(
                test::shell_command({test::tiller_binary(), "run", dir + "/recipe.json"}) + " 2>&1",
                &output),
            0)
      << output;
  const nlohmann::json clean = read_json_file(dir + "/run/clean/complete.json");
  EXPECT_GT(clean["documents_kept"].get<int64_t>(), 100);
  EXPECT_LT(clean["documents_kept"].get<int64_t>(), clean["documents_read"].get<int64_t>())
      << "the quality filter at 20 words removes TinyStories' short paragraphs";
  const nlohmann::json pretrain = read_json_file(dir + "/run/pretrain/complete.json");
  EXPECT_TRUE(pretrain.contains("final_val_loss")) << pretrain.dump();
  // The resolved recipe states every step, those that did not run as false.
  const std::string resolved = read_file(dir + "/run/recipe.json");
  for (const char* stated :
       {"\"boilerplate\": false", "\"shard_tokens\"", "\"max_document_bytes\""})
    EXPECT_NE(resolved.find(stated), std::string::npos) << stated;

  ASSERT_EQ(test::run_command(test::shell_command({test::tiller_binary(), "report", dir + "/run",
                                                   "--out", dir + "/report.html"}) +
                                  " 2>&1",
                              &output),
            0)
      << output;
  const std::string page = read_file(dir + "/report.html");
  EXPECT_NE(page.find("Data preparation"), std::string::npos);
  EXPECT_NE(page.find("gopher_quality"), std::string::npos);
  EXPECT_NE(page.find("preparation-sizes"), std::string::npos);
}

}  // namespace
}  // namespace tiller
