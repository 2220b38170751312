// The command reward with real verifier programs (/bin/sh and awk): episodes go out as JSONL, one
// score per line comes back; a verifier that crashes, hangs, miscounts, prints something else or
// is not there is an error that names it (or, for a hang, the on_timeout score).
#include "rlhf/command_reward.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

ScoredEpisode episode(const std::string& prompt, const std::string& response,
                      const std::string& answer) {
  ScoredEpisode result;
  result.prompt = prompt;
  result.response = response;
  result.answer = answer;
  return result;
}

std::vector<ScoredEpisode> episodes(size_t count) {
  std::vector<ScoredEpisode> result;
  for (size_t i = 0; i < count; ++i) result.push_back(episode("p", "r", "a"));
  return result;
}

CommandRewardOptions shell_verifier(const std::string& script, double timeout_seconds = 60) {
  CommandRewardOptions options;
  options.command = {"/bin/sh", "-c", script};
  options.timeout_seconds = timeout_seconds;
  return options;
}

// 1 when the line's response equals its answer, else 0 (the test texts hold no quotes).
const char* kExactMatch =
    "awk '{ r = $0; sub(/.*\"response\":\"/, \"\", r); sub(/\".*/, \"\", r);"
    "       a = $0; sub(/.*\"answer\":\"/, \"\", a); sub(/\".*/, \"\", a);"
    "       print (r == a) ? 1 : 0 }'";

}  // namespace

TEST(CommandReward, ScoresEachEpisodeByTheVerifiersLineForIt) {
  CommandReward reward("exact", shell_verifier(kExactMatch));
  const std::vector<double> scores =
      reward.score({episode("2+2?", "4", "4"), episode("3+3?", "5", "6"), episode("1+1?", "2", "2"),
                    episode("9-1?", "", "8")});
  EXPECT_EQ(scores, (std::vector<double>{1, 0, 1, 0}));
}

TEST(CommandReward, SendsEachEpisodeAsOneJsonLineWithItsIndex) {
  // Texts with newlines, quotes and a byte that is not UTF-8 still make one line each; the
  // verifier replies with 10 * index + 1 if the line parses as the expected object.
  const char* check_line =
      "awk '/^\\{\"answer\":\".*\",\"index\":[0-9]+,\"prompt\":\".*\",\"response\":\".*\"\\}$/ {"
      "  i = $0; sub(/.*\"index\":/, \"\", i); sub(/,.*/, \"\", i); print 10 * i + 1; next }"
      "  { print \"not an episode line:\", $0 }'";
  CommandReward reward("lines", shell_verifier(check_line));
  const std::vector<double> scores =
      reward.score({episode("line one\nline two", "say \"hi\"", "x"),
                    episode("tab\there", "cut \xE2\x82", ""), episode("", "", "")});
  EXPECT_EQ(scores, (std::vector<double>{1, 11, 21}));
}

TEST(CommandReward, ReadsDecimalNumbersWithBlanksAroundThemAndTrailingBlankLines) {
  CommandReward reward(
      "numbers", shell_verifier("cat > /dev/null; printf ' 0.5\\r\\n+2\\n-1e-3\\n7\\n\\n\\n'"));
  EXPECT_EQ(reward.score(episodes(4)), (std::vector<double>{0.5, 2, -1e-3, 7}));
}

TEST(CommandReward, AVerifierThatCrashesIsAnErrorNamingItsStatusAndItsLastStderrLine) {
  CommandReward reward(
      "crashy", shell_verifier("echo 'loading' >&2; echo 'no module named sympy' >&2; exit 3"));
  const std::string error = test::error_of([&] { reward.score(episodes(2)); });
  EXPECT_NE(error.find("(reward crashy) exited with status 3"), std::string::npos) << error;
  EXPECT_NE(error.find("\"no module named sympy\""), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << "one line: " << error;
}

TEST(CommandReward, AVerifierKilledByASignalIsAnErrorNamingTheSignal) {
  CommandReward reward("segv", shell_verifier("kill -SEGV $$"));
  const std::string error = test::error_of([&] { reward.score(episodes(1)); });
  EXPECT_NE(error.find("killed by signal 11"), std::string::npos) << error;
  EXPECT_NE(error.find("nothing on stderr"), std::string::npos) << error;
}

TEST(CommandReward, ASlowVerifierIsKilledAtTheTimeLimitAndIsAnErrorByDefault) {
  CommandReward reward("slow", shell_verifier("sleep 30; echo 1", 0.5));
  const std::string error = test::error_of([&] { reward.score(episodes(1)); });
  EXPECT_NE(error.find("(reward slow) did not answer within 0.5 s; killed"), std::string::npos)
      << error;
  EXPECT_EQ(reward.timeouts(), 0);
}

TEST(CommandReward, ASlowVerifiersBatchGetsTheOnTimeoutScoreAndIsCounted) {
  CommandRewardOptions options = shell_verifier("sleep 30; echo 1; echo 1", 0.5);
  options.timeout_score = -1;
  CommandReward reward("slow", options);
  EXPECT_EQ(reward.score(episodes(2)), (std::vector<double>{-1, -1}));
  EXPECT_EQ(reward.score(episodes(3)), (std::vector<double>{-1, -1, -1}));
  EXPECT_EQ(reward.timeouts(), 2);
}

TEST(CommandReward, TooFewOrTooManyScoresIsAnError) {
  CommandReward three("short", shell_verifier("cat > /dev/null; echo 1; echo 0; echo 1"));
  EXPECT_NE(test::error_of([&] {
              three.score(episodes(4));
            }).find("(reward short) printed 3 score lines for 4 episodes"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              three.score(episodes(2));
            }).find("printed 3 score lines for 2 episodes"),
            std::string::npos);
}

TEST(CommandReward, AVerifierThatPrintsWithoutEndIsStoppedAndIsAnError) {
  CommandReward reward("chatty", shell_verifier("yes 1"));
  const std::string error = test::error_of([&] { reward.score(episodes(2)); });
  EXPECT_NE(error.find("(reward chatty) printed more than 64 MiB for 2 episodes; killed"),
            std::string::npos)
      << error;
}

TEST(CommandReward, ALineThatIsNotAFiniteNumberIsAnErrorQuotingIt) {
  for (const std::string bad : {"correct", "nan", "inf", "0x10", "1 2", ""}) {
    CommandReward reward("words", shell_verifier("echo 1; echo '" + bad + "'; echo 0"));
    const std::string error = test::error_of([&] { reward.score(episodes(3)); });
    EXPECT_NE(error.find("line 2 of its reply is not a finite number: \"" + bad + "\""),
              std::string::npos)
        << bad << ": " << error;
  }
}

TEST(CommandReward, AProgramThatIsNotThereIsAnErrorNamingIt) {
  CommandRewardOptions options;
  options.command = {"tiller-no-such-verifier", "--strict"};
  CommandReward reward("missing", options);
  const std::string error = test::error_of([&] { reward.score(episodes(1)); });
  EXPECT_NE(error.find("verifier 'tiller-no-such-verifier --strict' (reward missing) cannot start: "
                       "No such file or directory"),
            std::string::npos)
      << error;
}

TEST(CommandReward, AVerifierThatNeverReadsItsInputStillScores) {
  // 200 episodes of 1 KiB: more than a pipe holds, so writing meets a closed pipe (EPIPE).
  std::vector<ScoredEpisode> batch = episodes(200);
  for (auto& item : batch) item.prompt = std::string(1024, 'q');
  CommandReward reward("deaf",
                       shell_verifier("i=0; while [ $i -lt 200 ]; do echo 1; i=$((i+1)); done"));
  EXPECT_EQ(reward.score(batch), std::vector<double>(200, 1));
}

TEST(CommandReward, ABigBatchReadWholeBeforeAnyReplyDoesNotDeadlock) {
  // 2000 episodes of 1 KiB; the verifier first writes 1 MiB to stderr, then reads everything, then
  // answers.
  std::vector<ScoredEpisode> batch = episodes(2000);
  for (size_t i = 0; i < batch.size(); ++i) batch[i].response = std::string(1024, 'a' + i % 26);
  CommandReward reward(
      "patient", shell_verifier("head -c 1048576 /dev/zero >&2; awk '{ n++ } END { for (i = 0; i "
                                "< n; i++) print i % 2 }'"));
  const std::vector<double> scores = reward.score(batch);
  ASSERT_EQ(scores.size(), 2000u);
  for (size_t i = 0; i < scores.size(); ++i) ASSERT_EQ(scores[i], i % 2) << i;
}

TEST(CommandReward, RunsInItsWorkingDirectoryWhereARelativeProgramIsFound) {
  const std::string dir = test::temp_dir("command_reward_working_dir");
  ASSERT_EQ(test::run_command("printf '#!/bin/sh\\ncat > /dev/null; echo 0.25\\n' > " + dir +
                                  "/verify.sh && chmod +x " + dir + "/verify.sh",
                              nullptr),
            0);
  CommandRewardOptions options;
  options.command = {"./verify.sh"};
  options.working_dir = dir;
  EXPECT_EQ(CommandReward("local", options).score(episodes(1)), (std::vector<double>{0.25}));

  options.working_dir = dir + "/absent";
  EXPECT_NE(test::error_of([&] {
              CommandReward("local", options);
            }).find("working_dir '" + dir + "/absent' is not a directory"),
            std::string::npos);
}

TEST(CommandReward, AnEmptyBatchRunsNothing) {
  CommandReward reward("failing", shell_verifier("exit 1"));
  EXPECT_TRUE(reward.score({}).empty());
}

TEST(CommandReward, OptionsAreCheckedWithTheirPathsAndStatedInFull) {
  RewardFunctionSpec spec;
  spec.type = "command";
  spec.name = "verify";
  spec.options = {{"command", "python3 verify.py"},
                  {"timeout_seconds", 0},
                  {"on_timeout", "skip"},
                  {"retries", 2}};
  const std::string error = test::error_of([&] { make_command_reward(spec); });
  for (const std::string expected :
       {"reward verify: 4 errors", "rewards[verify].command: expected a non-empty list of strings",
        "rewards[verify].timeout_seconds: must be a finite number > 0",
        "rewards[verify].on_timeout: expected \"error\" or a finite number",
        "rewards[verify].retries"})
    EXPECT_NE(error.find(expected), std::string::npos) << expected << " in: " << error;

  spec.options = {{"command", {"/bin/sh", "-c", "cat > /dev/null; echo 3"}}};
  ConfigErrors errors;
  CommandRewardOptions read;
  {
    ConfigReader reader(spec.options, "r", errors);
    read = read_command_reward_options(reader);
  }
  ASSERT_TRUE(errors.empty());
  EXPECT_EQ(read.values(),
            (nlohmann::json{{"command", {"/bin/sh", "-c", "cat > /dev/null; echo 3"}},
                            {"timeout_seconds", 30.0},
                            {"on_timeout", "error"},
                            {"working_dir", ""}}));
  spec.options = read.values();
  EXPECT_EQ(make_command_reward(spec)->score(episodes(1)), (std::vector<double>{3}));
}

TEST(CommandReward, TheDocumentedExampleVerifierScoresAsDocumented) {
  if (test::run_command("command -v python3", nullptr) != 0)
    GTEST_SKIP() << "skipped: python3 is not on PATH (the documented example is Python)";
  const std::string docs = test::read_bytes(std::string(TILLER_SOURCE_DIR) + "/docs/rewards.md");
  const size_t start = docs.find("```python\n");
  ASSERT_NE(start, std::string::npos) << "docs/rewards.md has no Python example";
  const size_t code = start + std::string("```python\n").size();
  const std::string example = docs.substr(code, docs.find("```", code) - code);
  CommandRewardOptions options;
  options.command = {"python3", "-c", example};
  CommandReward reward("example", options);
  EXPECT_EQ(reward.score({episode("2+2?", "so #### 4 ", "4"), episode("3+3?", "5", "6"),
                          episode("hi", "hello", "")}),
            (std::vector<double>{1, 0, 0}));
}
