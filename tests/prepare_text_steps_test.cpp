// The text steps of `tiller data prepare` (prepare/text_steps.h): each rule on a crafted document
// that it must remove or change, and a normal English paragraph that every step keeps.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <thread>
#include <vector>

#include "prepare/text_steps.h"

namespace tiller {
namespace {

// About 90 words of ordinary English prose: every filter keeps it.
const std::string kParagraph =
    "The old lighthouse stood at the edge of the cliff for more than a century, guiding ships "
    "through the narrow passage between the rocks. Every evening the keeper climbed the spiral "
    "stairs with a can of oil and a box of matches. In the winter of 1887 a storm destroyed the "
    "lantern, and the village raised money to replace it with a brighter lamp. Today the tower "
    "is a small museum that welcomes visitors who want to learn about the history of the coast "
    "and the people who worked there.";

std::string repeat(const std::string& piece, int times, const std::string& separator = " ") {
  std::string out;
  for (int i = 0; i < times; ++i) out += (i ? separator : "") + piece;
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Reads `config` as the prepare section; the errors found.
TextSteps read(const nlohmann::json& config, std::vector<std::string>* errors_out = nullptr) {
  ConfigErrors errors;
  TextSteps steps;
  {
    ConfigReader r(config, "prepare", errors);
    steps = read_text_steps(r, errors);
  }
  if (errors_out)
    *errors_out = errors.list();
  else
    EXPECT_TRUE(errors.empty()) << errors.list().front();
  return steps;
}

// ---------------------------------------------------------------------------------------------
// normalize

TEST(PrepareTextSteps, NfcComposesCombiningAccents) {
  NormalizeOptions o;
  o.control_chars = false;
  o.whitespace = false;
  EXPECT_EQ(normalize_text("Cafe\u0301 and re\u0301sume\u0301", o),
            "Caf\u00E9 and r\u00E9sum\u00E9");
  o.nfc = false;
  EXPECT_EQ(normalize_text("Cafe\u0301", o), "Cafe\u0301");
}

TEST(PrepareTextSteps, ControlCharactersGoTabsAndNewlinesStay) {
  NormalizeOptions o;
  o.whitespace = false;
  const std::string text = std::string("a\x01") + "b\tc\nd\u200Be\uFEFF\u0085f\x7Fg\u2060h\x1B";
  EXPECT_EQ(normalize_text(text, o), "ab\tc\ndefgh");
}

TEST(PrepareTextSteps, WhitespaceIsCleanedUp) {
  NormalizeOptions o;
  EXPECT_EQ(normalize_text("  \n Hello   world \t\r\nsecond\t\tline  \r\n\n\n\n\rthird  \n\n", o),
            "Hello world\nsecond line\n\nthird");
  EXPECT_EQ(normalize_text("a\n    indented", o), "a\n indented");
  EXPECT_EQ(normalize_text("a\rb", o), "a\nb");
  o.whitespace = false;
  EXPECT_EQ(normalize_text("a   b", o), "a   b");
}

TEST(PrepareTextSteps, NormalizeReportsWhetherItChangedTheText) {
  TextSteps steps;
  steps.normalize = NormalizeOptions{};
  EXPECT_FALSE(apply_text_steps(kParagraph, steps).normalized_changed);
  const TextOutcome changed = apply_text_steps("a  b", steps);
  EXPECT_TRUE(changed.normalized_changed);
  EXPECT_EQ(changed.text, "a b");
  const TextOutcome blank = apply_text_steps(" \n\t ", steps);
  EXPECT_EQ(blank.removed_by, "normalize");
}

// ---------------------------------------------------------------------------------------------
// boilerplate

TEST(PrepareTextSteps, BoilerplateDropsMatchingAndShortLines) {
  BoilerplateOptions o;
  int64_t removed = 0;
  const std::string text =
      "Please enable JavaScript to view this page.\n"
      "The cat sat on the mat.\n"
      "Home\n"
      "\n"
      "Read our Privacy Policy for details.\n"
      "Another good line follows here";
  EXPECT_EQ(remove_boilerplate_lines(text, o, removed),
            "The cat sat on the mat.\n\nAnother good line follows here");
  EXPECT_EQ(removed, 3);
}

TEST(PrepareTextSteps, BoilerplateOptionalRules) {
  BoilerplateOptions o;
  o.patterns = {};
  o.min_words_per_line = 0;
  int64_t removed = 0;
  const std::string text = "No full stop here\nA sentence ends here.\nint main() {";
  EXPECT_EQ(remove_boilerplate_lines(text, o, removed), text);
  EXPECT_EQ(removed, 0);
  o.require_terminal_punctuation = true;
  EXPECT_EQ(remove_boilerplate_lines(text, o, removed), "A sentence ends here.");
  EXPECT_EQ(removed, 2);
  o.require_terminal_punctuation = false;
  o.drop_curly_bracket_lines = true;
  removed = 0;
  EXPECT_EQ(remove_boilerplate_lines(text, o, removed), "No full stop here\nA sentence ends here.");
  EXPECT_EQ(removed, 1);
}

TEST(PrepareTextSteps, DocumentEmptiedByBoilerplateIsRemoved) {
  TextSteps steps;
  steps.boilerplate = BoilerplateOptions{};
  const TextOutcome out = apply_text_steps("Enable javascript, please.\nShort line", steps);
  EXPECT_EQ(out.removed_by, "boilerplate");
  EXPECT_EQ(out.lines_removed, 2);
  const TextOutcome kept = apply_text_steps(kParagraph + "\nClick here", steps);
  EXPECT_TRUE(kept.kept());
  EXPECT_EQ(kept.text, kParagraph);
  EXPECT_EQ(kept.lines_removed, 1);
}

// ---------------------------------------------------------------------------------------------
// gopher_quality

TEST(PrepareTextSteps, GopherQualityKeepsEnglishProse) {
  EXPECT_EQ(gopher_quality_rejection(kParagraph, GopherQualityOptions{}), "");
}

TEST(PrepareTextSteps, GopherQualityRejectsEachRule) {
  const GopherQualityOptions o;
  auto why = [&](const std::string& text) { return gopher_quality_rejection(text, o); };
  EXPECT_EQ(why("The cat and the dog."), "word_count 5 < 50");
  EXPECT_EQ(why(""), "word_count 0 < 50");
  GopherQualityOptions few = o;
  few.max_words = 20;
  EXPECT_EQ(gopher_quality_rejection(kParagraph, few), "word_count 90 > 20");
  EXPECT_EQ(why(repeat("I a to be of it", 12)), "mean_word_length 1.667 < 3");
  EXPECT_EQ(why(repeat("extraordinarily", 60)), "mean_word_length 15 > 10");
  EXPECT_TRUE(starts_with(why(kParagraph + repeat("#tag", 20)), "hash_word_ratio"));
  EXPECT_TRUE(starts_with(why(kParagraph + repeat(" wait...", 15)), "ellipsis_word_ratio"));
  EXPECT_TRUE(starts_with(why(repeat("- The item here is good and fine to have", 10, "\n")),
                          "bullet_lines_ratio"));
  EXPECT_TRUE(starts_with(
      why(repeat("The story went on and on for a long time with the people and then...", 5, "\n")),
      "ellipsis_lines_ratio"));
  EXPECT_TRUE(starts_with(why(kParagraph + " " + repeat("123", 40)), "alpha_words_ratio"));
  EXPECT_EQ(why(repeat("Quick brown foxes jump over lazy dogs.", 9)), "stop_words 0 < 2");
}

TEST(PrepareTextSteps, GopherQualityCountsStopWordsIgnoringCaseAndPunctuation) {
  GopherQualityOptions o;
  o.min_words = 1;
  o.min_stop_words = 2;
  EXPECT_EQ(gopher_quality_rejection("The cats sang, (and) danced.", o), "");
  EXPECT_EQ(gopher_quality_rejection("Theme cats sang, android danced.", o), "stop_words 0 < 2");
}

// ---------------------------------------------------------------------------------------------
// gopher_repetition

TEST(PrepareTextSteps, GopherRepetitionKeepsEnglishProse) {
  EXPECT_EQ(gopher_repetition_rejection(kParagraph, GopherRepetitionOptions{}), "");
  EXPECT_EQ(gopher_repetition_rejection(kParagraph + "\n\n" + kParagraph.substr(0, 40),
                                        GopherRepetitionOptions{}),
            "");
}

TEST(PrepareTextSteps, GopherRepetitionRejectsRepeats) {
  const GopherRepetitionOptions o;
  auto why = [&](const std::string& text) { return gopher_repetition_rejection(text, o); };
  // Two of four lines repeat: 0.5 of the lines.
  EXPECT_TRUE(
      starts_with(why("Buy now and save\nBuy now and save\nBuy now and save\n" + kParagraph),
                  "dup_line_frac 0.5 > 0.3"))
      << why("Buy now and save\nBuy now and save\nBuy now and save\n" + kParagraph);
  // A repeated paragraph among three.
  EXPECT_TRUE(
      starts_with(why("Short intro.\n\n" + kParagraph + "\n\n" + kParagraph), "dup_para_frac"));
  // One long line repeated among many short distinct ones: few lines repeat, many characters do.
  std::string lines = kParagraph;
  for (int i = 0; i < 4; ++i) lines += "\nline " + std::to_string(i) + " of the list";
  lines += "\n" + kParagraph;
  EXPECT_TRUE(starts_with(why(lines), "dup_line_char_frac")) << why(lines);
  // "the cat" everywhere.
  std::string bigrams;
  for (int i = 0; i < 30; ++i) bigrams += "the cat word" + std::to_string(i) + " ";
  EXPECT_TRUE(starts_with(why(bigrams), "top_2_gram_char_frac")) << why(bigrams);
  // A ten-word passage repeated inside otherwise distinct prose.
  GopherRepetitionOptions no_top = o;
  no_top.max_top_ngram_char_frac.clear();
  const std::string passage = "a very long sentence that keeps coming back again and again";
  const std::string repeated = kParagraph.substr(0, 200) + " " + passage + " middle " + passage +
                               " words " + passage + " end";
  EXPECT_TRUE(starts_with(gopher_repetition_rejection(repeated, no_top), "dup_5_gram_char_frac"))
      << gopher_repetition_rejection(repeated, no_top);
  // With every n-gram rule off, the same text passes.
  no_top.max_dup_ngram_char_frac.clear();
  EXPECT_EQ(gopher_repetition_rejection(repeated, no_top), "");
}

// ---------------------------------------------------------------------------------------------
// c4

TEST(PrepareTextSteps, C4DocumentRules) {
  C4Options o;
  EXPECT_EQ(c4_rejection(kParagraph, o), "");
  EXPECT_EQ(c4_rejection("Only one sentence here.", o), "sentences 1 < 3");
  EXPECT_EQ(c4_rejection("Pi is 3.14 and e is 2.71. That is all", o), "sentences 2 < 3");
  EXPECT_EQ(c4_rejection("One. Two! Three?", o), "");
  EXPECT_EQ(c4_rejection("He said \"stop.\" She left. They ran", o), "");
  EXPECT_EQ(c4_rejection(kParagraph + " Lorem Ipsum dolor sit amet.", o), "lorem_ipsum");
  EXPECT_EQ(c4_rejection(kParagraph + " f() { return 1; }", o), "");
  o.drop_curly_bracket = true;
  EXPECT_EQ(c4_rejection(kParagraph + " f() { return 1; }", o), "curly_bracket");
  o.drop_lorem_ipsum = false;
  o.min_sentences = 0;
  EXPECT_EQ(c4_rejection("lorem ipsum", o), "");
}

// ---------------------------------------------------------------------------------------------
// pii

std::string redacted(const std::string& text, PiiCounts* counts_out = nullptr,
                     const PiiOptions& o = PiiOptions{}) {
  PiiCounts counts;
  std::string out = redact_pii(text, o, counts);
  if (counts_out) *counts_out = counts;
  return out;
}

TEST(PrepareTextSteps, PiiRedactsEmails) {
  PiiCounts c;
  EXPECT_EQ(redacted("Write to jane.doe+news@mail.example.co.uk, or to bob@x.org.", &c),
            "Write to <EMAIL>, or to <EMAIL>.");
  EXPECT_EQ(c.emails, 2);
  EXPECT_EQ(redacted("not@an address, user@localhost, @handle, a@b.c"),
            "not@an address, user@localhost, @handle, a@b.c");
}

TEST(PrepareTextSteps, PiiRedactsIpAddresses) {
  PiiCounts c;
  EXPECT_EQ(
      redacted("Server 192.168.0.1, gateway 10.0.0.254. Host 2001:db8::8a2e:370:7334 up.", &c),
      "Server <IP>, gateway <IP>. Host <IP> up.");
  EXPECT_EQ(c.ips, 3);
  EXPECT_EQ(redacted("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334 form"), "full <IP> form");
  // Not addresses: an octet over 255, three parts, five parts, times, C++ names.
  const std::string not_ips =
      "999.1.1.1 and 256.0.0.1, version 1.2.3, 1.2.3.4.5, at 12:30:45, std::max, add::bee";
  EXPECT_EQ(redacted(not_ips, &c), not_ips);
  EXPECT_EQ(c.ips, 0);
}

TEST(PrepareTextSteps, PiiRedactsPhones) {
  PiiCounts c;
  EXPECT_EQ(
      redacted("Call (212) 555-0123, 212-555-0123, 212.555.0123 or 1-800-555-0199 today.", &c),
      "Call <PHONE>, <PHONE>, <PHONE> or <PHONE> today.");
  EXPECT_EQ(c.phones, 4);
  EXPECT_EQ(redacted("London +44 20 7946 0958, Berlin +49-30-901820, mobile +4915112345678."),
            "London <PHONE>, Berlin <PHONE>, mobile <PHONE>.");
  // Not phones: years, plain digit runs, versions, dates, prices, short numbers.
  const std::string not_phones =
      "In 2023 we sold 12345678 units at $1,234.56 on 2023-01-15 (v10.0.19041), +12 and "
      "100 200 3000 or 555-0123.";
  EXPECT_EQ(redacted(not_phones, &c), not_phones);
  EXPECT_EQ(c.phones + c.ips + c.emails, 0);
}

TEST(PrepareTextSteps, PiiKindsAndTokensAreSettings) {
  PiiOptions o;
  o.phone = false;
  o.email_token = "[email]";
  PiiCounts c;
  EXPECT_EQ(redacted("a@example.com 212-555-0123 8.8.8.8", &c, o), "[email] 212-555-0123 <IP>");
  EXPECT_EQ(c.phones, 0);
}

// ---------------------------------------------------------------------------------------------
// Configuration and the whole chain

TEST(PrepareTextSteps, TrueGivesDefaultsAndFalseOrAbsentIsOff) {
  const TextSteps steps =
      read({{"normalize", true}, {"boilerplate", nlohmann::json::object()}, {"pii", false}});
  ASSERT_TRUE(steps.normalize && steps.boilerplate);
  EXPECT_FALSE(steps.pii || steps.c4 || steps.gopher_quality || steps.gopher_repetition);
  TextSteps defaults;
  defaults.normalize = NormalizeOptions{};
  defaults.boilerplate = BoilerplateOptions{};
  EXPECT_EQ(text_steps_values(steps), text_steps_values(defaults));
  EXPECT_EQ(text_steps_values(steps)["pii"], false);
  EXPECT_EQ(text_step_names(steps), (std::vector<std::string>{"normalize", "boilerplate"}));
}

TEST(PrepareTextSteps, UnknownKeysAndBadValuesAreReportedWithPaths) {
  std::vector<std::string> errors;
  read({{"gopher_quality", {{"min_wordz", 3}}},
        {"gopher_repetition", {{"max_top_ngram_char_frac", {{"two", 0.2}}}}},
        {"pii", 3},
        {"c4", {{"min_sentences", -1}}}},
       &errors);
  auto reported = [&](const std::string& prefix) {
    for (const auto& e : errors)
      if (starts_with(e, prefix)) return true;
    return false;
  };
  EXPECT_TRUE(reported("prepare.gopher_quality.min_wordz: unknown key"));
  EXPECT_TRUE(reported("prepare.gopher_repetition.max_top_ngram_char_frac.two:"));
  EXPECT_TRUE(reported("prepare.pii:"));
  EXPECT_TRUE(reported("prepare.c4.min_sentences:"));
  EXPECT_EQ(errors.size(), 4u) << errors.front();
}

TEST(PrepareTextSteps, ValuesRoundTrip) {
  const nlohmann::json config = {
      {"normalize", {{"nfc", false}}},
      {"boilerplate",
       {{"patterns", nlohmann::json::array({"Subscribe"})}, {"min_words_per_line", 1}}},
      {"c4", {{"min_sentences", 2}, {"drop_curly_bracket", true}}},
      {"gopher_quality", {{"min_words", 20}, {"stop_words", nlohmann::json::array({"the", "a"})}}},
      {"gopher_repetition", {{"max_dup_ngram_char_frac", {{"5", 0.2}}}}},
      {"pii", {{"phone", false}, {"ip_token", "[ip]"}}}};
  const TextSteps steps = read(config);
  ASSERT_TRUE(steps.boilerplate && steps.gopher_repetition && steps.pii);
  EXPECT_EQ(steps.boilerplate->patterns, std::vector<std::string>{"subscribe"});
  EXPECT_EQ(steps.gopher_repetition->max_dup_ngram_char_frac.size(), 1u);
  EXPECT_EQ(steps.gopher_repetition->max_top_ngram_char_frac.size(), 3u);
  const nlohmann::json values = text_steps_values(steps);
  EXPECT_EQ(values["pii"]["ip_token"], "[ip]");
  EXPECT_EQ(text_steps_values(read(values)), values);
  EXPECT_EQ(text_step_names(steps),
            (std::vector<std::string>{"normalize", "boilerplate", "c4", "gopher_quality",
                                      "gopher_repetition", "pii"}));
}

TEST(PrepareTextSteps, AbsentStepsDoNotRun) {
  const std::string messy = "tiny   doc with x@example.com";
  EXPECT_EQ(apply_text_steps(messy, TextSteps{}).text, messy);
  TextSteps only_pii;
  only_pii.pii = PiiOptions{};
  const TextOutcome out = apply_text_steps(messy, only_pii);
  EXPECT_TRUE(out.kept());
  EXPECT_EQ(out.text, "tiny   doc with <EMAIL>");
  EXPECT_EQ(out.emails, 1);
}

TEST(PrepareTextSteps, AllStepsKeepProseAndRemoveJunkAcrossThreads) {
  const TextSteps steps = read({{"normalize", true},
                                {"boilerplate", true},
                                {"c4", true},
                                {"gopher_quality", true},
                                {"gopher_repetition", true},
                                {"pii", true}});
  const std::string document = "  " + kParagraph + "  Write to jane@example.com for a tour.\r\n";
  const TextOutcome kept = apply_text_steps(document, steps);
  EXPECT_TRUE(kept.kept()) << kept.removed_by << ": " << kept.reason;
  EXPECT_EQ(kept.text, kParagraph + " Write to <EMAIL> for a tour.");
  EXPECT_TRUE(kept.normalized_changed);
  EXPECT_EQ(kept.emails, 1);
  const TextOutcome short_doc = apply_text_steps("Hello there my friend. Bye now. See you.", steps);
  EXPECT_EQ(short_doc.removed_by, "gopher_quality");
  EXPECT_EQ(short_doc.reason, "word_count 8 < 50");

  // Two threads at once give what one gives.
  std::vector<std::string> inputs;
  for (int i = 0; i < 200; ++i)
    inputs.push_back(i % 3 ? document : repeat("Buy now and save big.", 20, "\n"));
  std::vector<TextOutcome> a(inputs.size()), b(inputs.size());
  std::thread first([&] {
    for (size_t i = 0; i < inputs.size(); ++i) a[i] = apply_text_steps(inputs[i], steps);
  });
  std::thread second([&] {
    for (size_t i = 0; i < inputs.size(); ++i) b[i] = apply_text_steps(inputs[i], steps);
  });
  first.join();
  second.join();
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(a[i].text, b[i].text);
    EXPECT_EQ(a[i].removed_by, b[i].removed_by);
    EXPECT_EQ(a[i].removed_by, i % 3 ? "" : "gopher_repetition");
  }
}

}  // namespace
}  // namespace tiller
