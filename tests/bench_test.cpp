// `tiller bench`, run as a user runs it: the JSON each benchmark prints (its keys and that the
// figures are positive; never how fast, which depends on the machine) and one-line errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "common/torch_compat.h"
#include "common/train/precision.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

struct BenchRun {
  int code = -1;
  std::string out, err;
};

// Runs `tiller bench ARGS` with stdout and stderr kept apart.
BenchRun bench(const std::string& args) {
  static int counter = 0;
  const std::string dir = test::temp_dir("bench_run_" + std::to_string(counter++));
  BenchRun r;
  std::string ignored;
  r.code = test::run_command(
      "( '" + test::tiller_binary() + "' bench " + args + " >" + dir + "/out 2>" + dir + "/err )",
      &ignored);
  r.out = read_file(dir + "/out");
  r.err = read_file(dir + "/err");
  return r;
}

// stderr's lines other than warnings: what a refused run said.
std::vector<std::string> error_lines(const BenchRun& r) {
  std::vector<std::string> errors;
  std::string line;
  for (std::istringstream in(r.err); std::getline(in, line);)
    if (line.rfind("tiller: warning:", 0) != 0) errors.push_back(line);
  return errors;
}

// stdout parsed as JSON: it must be JSON and nothing else.
nlohmann::json json_of(const BenchRun& r, const std::string& args) {
  EXPECT_EQ(r.code, 0) << args << "\n" << r.err;
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << args << ": stdout is not JSON: " << e.what() << "\n" << r.out;
    return nlohmann::json::object();
  }
}

void expect_positive(const nlohmann::json& doc, const std::vector<std::string>& keys) {
  for (const auto& key : keys) {
    ASSERT_TRUE(doc.contains(key)) << key << " missing in " << doc.dump();
    EXPECT_GT(doc.at(key).get<double>(), 0) << key << " in " << doc.dump();
  }
}

const std::string kQuickstart = std::string(TILLER_SOURCE_DIR) + "/recipes/quickstart.json";

}  // namespace

TEST(Bench, GemmJson) {
  const std::string args = "gemm --size 128 --repeats 1 --threads 1 --json";
  const auto doc = json_of(bench(args), args);
  expect_positive(doc, {"fp32_gflops", "bf16_gflops", "copy_gbps"});
  EXPECT_EQ(doc.at("threads"), 1);
  EXPECT_EQ(doc.at("size"), 128);
}

TEST(Bench, DecodeJsonIsOneObjectPerBatch) {
  const std::string args =
      "decode --shape stories260k --batch 1,4 --new-tokens 8 --repeats 1 --json";
  const auto rows = json_of(bench(args), args);
  ASSERT_TRUE(rows.is_array()) << rows.dump();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at("batch"), 1);
  EXPECT_EQ(rows[1].at("batch"), 4);
  for (const auto& row : rows) {
    EXPECT_EQ(row.at("shape"), "stories260k");
    EXPECT_EQ(row.at("dtype"), "fp32");
    EXPECT_EQ(row.at("new_tokens"), 8);
    EXPECT_EQ(row.at("device"), "cpu");
    EXPECT_EQ(row.at("decode_path"), "fast (FastDecoder where it applies)");
    expect_positive(row, {"tokens_per_s", "prefill_tokens_per_s", "bytes_per_step", "copy_gbps",
                          "bandwidth_bound_tokens_per_s", "fraction_of_bandwidth_bound",
                          "fraction_of_compute_bound", "threads", "parameters"});
  }
}

TEST(Bench, DecodeInBf16) {
  if (!bf16_supported(torch::Device(torch::kCPU)))
    GTEST_SKIP() << "skipped: this CPU has no fast bf16 (AVX-512 BF16 or AMX)";
  const std::string args =
      "decode --shape stories260k --batch 2 --new-tokens 4 --repeats 1 --dtype bf16 --json";
  const auto rows = json_of(bench(args), args);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].at("dtype"), "bf16");
  expect_positive(rows[0], {"tokens_per_s"});
}

TEST(Bench, GroupsJsonSetsGroupSamplingBesideRepeatedPrompts) {
  const std::string args =
      "groups --shape stories260k --prompts 2 --group 3 --prompt-tokens 8 --new-tokens 4 "
      "--repeats 1 --json";
  const auto doc = json_of(bench(args), args);
  EXPECT_EQ(doc.at("shape"), "stories260k");
  EXPECT_EQ(doc.at("prompts"), 2);
  EXPECT_EQ(doc.at("group"), 3);
  EXPECT_EQ(doc.at("prompt_tokens"), 8);
  EXPECT_EQ(doc.at("new_tokens"), 4);
  expect_positive(doc, {"groups_prefill_s", "groups_total_s", "repeated_prefill_s",
                        "repeated_total_s", "prefill_speedup", "total_speedup", "threads"});
  EXPECT_NEAR(doc.at("total_speedup").get<double>(),
              doc.at("repeated_total_s").get<double>() / doc.at("groups_total_s").get<double>(),
              1e-9);
}

TEST(Bench, PairsJsonSetsSharedPrefixesBesideOneRowPerResponse) {
  const std::string args =
      "pairs --shape stories260k --pairs 6 --micro-batch 4 --prompt-tokens 48 "
      "--response-tokens 8 --repeats 1 --json";
  const auto doc = json_of(bench(args), args);
  EXPECT_EQ(doc.at("shape"), "stories260k");
  EXPECT_EQ(doc.at("pairs"), 6);
  EXPECT_EQ(doc.at("micro_batch"), 4);
  EXPECT_EQ(doc.at("data"), "synthetic");
  for (const char* objective : {"dpo", "reward"}) {
    SCOPED_TRACE(objective);
    const auto& side = doc.at(objective);
    expect_positive(side, {"shared_tokens_per_s", "one_row_tokens_per_s", "speedup", "tokens"});
    EXPECT_EQ(side.at("batches"), 2);
    // 48-token prompts before responses of 4 to 8: every micro-batch packs.
    EXPECT_EQ(side.at("packed_batches"), 2);
    EXPECT_NEAR(side.at("speedup").get<double>(),
                side.at("shared_tokens_per_s").get<double>() /
                    side.at("one_row_tokens_per_s").get<double>(),
                1e-9);
  }
  EXPECT_EQ(doc.at("dpo").at("tokens"), doc.at("reward").at("tokens"));
}

TEST(Bench, TrainJson) {
  const std::string args = "train --shape stories260k --batch 2 --seq 32 --steps 2 --json";
  const auto doc = json_of(bench(args), args);
  EXPECT_EQ(doc.at("shape"), "stories260k");
  EXPECT_EQ(doc.at("batch"), 2);
  EXPECT_EQ(doc.at("seq"), 32);
  EXPECT_EQ(doc.at("device"), "cpu");
  // On a CPU the peak is the matmul rate measured in the same run.
  EXPECT_EQ(doc.at("peak_source").get<std::string>().rfind("measured: ", 0), 0u) << doc.dump();
  EXPECT_EQ(doc.at("peak_gflops"), doc.at("measured_matmul_gflops"));
  expect_positive(doc, {"tokens_per_s", "step_s", "forward_s", "backward_s", "optimizer_s",
                        "flops_per_token", "gflops", "peak_gflops", "fraction_of_peak"});
}

TEST(Bench, PpoJsonOnTheQuickstartShapes) {
  // No trained checkpoint and no data file is needed: random weights of the recipe's shape.
  const std::string args = "ppo --recipe " + kQuickstart + " --iterations 1 --warmup 0 --json";
  const auto doc = json_of(bench(args), args);
  EXPECT_EQ(doc.at("model").at("hidden_size"), 64);
  EXPECT_EQ(doc.at("model").at("num_hidden_layers"), 4);
  EXPECT_EQ(doc.at("model").at("vocab_size"), 400);  // the pretrain stage's tokenizer size
  EXPECT_EQ(doc.at("batch_size"), 32);
  EXPECT_EQ(doc.at("new_tokens"), 48);
  EXPECT_EQ(doc.at("epochs"), 4);
  EXPECT_EQ(doc.at("mini_batch_size"), 8);
  EXPECT_EQ(doc.at("device"), "cpu");
  expect_positive(doc,
                  {"generate_s", "score_s", "rm_s", "train_s", "iteration_s", "episodes_per_s"});
  EXPECT_LE(doc.at("generate_s").get<double>() + doc.at("score_s").get<double>() +
                doc.at("train_s").get<double>(),
            doc.at("iteration_s").get<double>() * 1.001);
}

TEST(Bench, GrpoJsonSetsGrpoBesidePpoOnTheSameShapes) {
  const std::string args = "grpo --recipe " + kQuickstart +
                           " --group 4 --grpo-epochs 2 --iterations 1 --warmup 0 --json";
  const auto doc = json_of(bench(args), args);
  EXPECT_EQ(doc.at("bench"), "grpo");
  EXPECT_EQ(doc.at("batch_size"), 32);
  EXPECT_EQ(doc.at("new_tokens"), 48);
  const auto& ppo = doc.at("ppo");
  const auto& grpo = doc.at("grpo");
  // The two sides report the same keys; only their values differ.
  std::vector<std::string> ppo_keys, grpo_keys;
  for (auto it = ppo.begin(); it != ppo.end(); ++it) ppo_keys.push_back(it.key());
  for (auto it = grpo.begin(); it != grpo.end(); ++it) grpo_keys.push_back(it.key());
  EXPECT_EQ(ppo_keys, grpo_keys);
  // PPO as the recipe states it; GRPO with as many episodes, in groups, on the whole batch.
  EXPECT_EQ(ppo.at("prompts"), 32);
  EXPECT_EQ(ppo.at("group"), 1);
  EXPECT_EQ(ppo.at("epochs"), 4);
  EXPECT_EQ(ppo.at("mini_batch_size"), 8);
  EXPECT_EQ(ppo.at("critic"), true);
  EXPECT_EQ(ppo.at("kl_beta"), 0.1);
  EXPECT_EQ(grpo.at("prompts"), 8);
  EXPECT_EQ(grpo.at("group"), 4);
  EXPECT_EQ(grpo.at("epochs"), 2);
  EXPECT_EQ(grpo.at("mini_batch_size"), 32);
  EXPECT_EQ(grpo.at("micro_batch_size"), ppo.at("micro_batch_size"));
  EXPECT_EQ(grpo.at("critic"), false);
  EXPECT_EQ(grpo.at("kl_beta"), 0.04);
  const std::vector<std::string> seconds = {"generate_s", "score_s",     "rm_s",
                                            "train_s",    "iteration_s", "episodes_per_s"};
  expect_positive(ppo, seconds);
  expect_positive(grpo, seconds);
  const auto& ratio = doc.at("ppo_over_grpo");
  for (const std::string phase : {"generate", "score", "train", "iteration"}) {
    const std::string key = phase + "_s";
    EXPECT_NEAR(ratio.at(phase).get<double>(),
                ppo.at(key).get<double>() / grpo.at(key).get<double>(), 1e-9)
        << phase;
  }
  // The same GRPO with one row per sample, and what sharing each prompt saved.
  const auto& one_row = doc.at("grpo_one_row_per_sample");
  EXPECT_EQ(grpo.at("share_prompts"), true);
  EXPECT_EQ(one_row.at("share_prompts"), false);
  EXPECT_EQ(ppo.at("share_prompts"), false);
  EXPECT_EQ(one_row.at("prompts"), grpo.at("prompts"));
  expect_positive(one_row, seconds);
  const auto& speedup = doc.at("shared_prompt_speedup");
  for (const std::string phase : {"score", "train", "iteration"}) {
    const std::string key = phase + "_s";
    EXPECT_NEAR(speedup.at(phase).get<double>(),
                one_row.at(key).get<double>() / grpo.at(key).get<double>(), 1e-9)
        << phase;
  }
}

// The PPO benchmark at a built-in shape in place of the recipe's model: the shape's own width and
// vocabulary, the recipe's PPO settings.
TEST(Bench, PpoTakesABuiltinShapeInPlaceOfTheRecipesModel) {
  const std::string args =
      "ppo --recipe " + kQuickstart + " --shape stories260k --iterations 1 --warmup 0 --json";
  const auto doc = json_of(bench(args), args);
  EXPECT_EQ(doc.at("shape"), "stories260k");
  EXPECT_EQ(doc.at("model").at("vocab_size"), 512);  // stories260k's, not the recipe's 400
  EXPECT_EQ(doc.at("model").at("num_hidden_layers"), 5);
  EXPECT_EQ(doc.at("batch_size"), 32);
  expect_positive(doc, {"iteration_s"});
}

// Every way --device cuda can be unusable here (a LibTorch without CUDA, no GPU visible, an index
// past the GPUs) is one line that says so, and no output.
TEST(Bench, CudaWhereThereIsNoneGivesOneErrorLine) {
  const int64_t gpus = compat::cuda_available() ? torch::cuda::device_count() : 0;
  std::vector<std::string> cases = {
      "gemm --device cuda:" + std::to_string(gpus),
      "train --shape stories260k --device cuda:" + std::to_string(gpus + 3)};
  if (gpus == 0)
    cases.insert(cases.end(), {"train --shape stories260k --device cuda",
                               "decode --shape stories260k --device cuda",
                               "ppo --recipe " + kQuickstart + " --device cuda:0"});
  for (const auto& args : cases) {
    const BenchRun r = bench(args);
    EXPECT_EQ(r.code, 1) << args << "\nstdout: " << r.out << "\nstderr: " << r.err;
    EXPECT_EQ(r.out, "") << args;
    const std::vector<std::string> errors = error_lines(r);
    ASSERT_EQ(errors.size(), 1u) << args << "\n" << r.err;
#ifdef TILLER_WITH_CUDA
    const std::string why = gpus == 0 ? "no CUDA GPU is visible" : "CUDA GPUs here";
#else
    const std::string why = "built against a LibTorch without CUDA";
#endif
    EXPECT_NE(errors[0].find(why), std::string::npos) << args << "\n" << errors[0];
    EXPECT_NE(errors[0].find("--device cuda"), std::string::npos) << args << "\n" << errors[0];
  }
}

TEST(Bench, BadFlagsGiveOneErrorLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"gemm --size 0", "--size"},
      {"gemm --threads -1", "--threads"},
      {"decode --shape stories260k --dtype int8", "--dtype"},
      {"groups --shape stories260k --group 0", "--group"},
      {"groups --shape stories260k --prompt-tokens 600", "context"},
      {"pairs --shape stories260k --pairs 0", "--pairs"},
      {"pairs --shape stories260k --data pairs.jsonl", "--model"},
      {"pairs --shape stories260k --prompt-tokens 600", "context"},
      {"train --shape nope", "unknown model shape 'nope'"},
      {"train --shape stories260k --dtype fp16", "--dtype"},
      {"train --shape stories260k --seq 1", "--seq"},
      {"train --shape stories260k --seq 100000", "context"},
      {"train --shape stories260k --steps 0", "--steps"},
      {"train --shape stories260k --device tpu", "--device must be cpu, cuda or cuda:N, got 'tpu'"},
      {"train --shape stories260k --device cuda:", "--device must be cpu, cuda or cuda:N"},
      {"decode --shape stories260k --device CUDA", "--device must be cpu, cuda or cuda:N"},
      {"gemm --device cuda0", "--device must be cpu, cuda or cuda:N"},
      {"ppo --recipe " + kQuickstart + " --device gpu", "--device must be cpu, cuda or cuda:N"},
      {"ppo --recipe " + kQuickstart + " --shape gpt-5", "unknown model shape 'gpt-5'"},
      {"ppo", "--recipe"},
      {"ppo --recipe /nonexistent.json", "/nonexistent.json"},
      {"ppo --recipe " + kQuickstart + " --iterations 0", "--iterations"},
      {"ppo --recipe " + std::string(TILLER_SOURCE_DIR) + "/recipes/stories260k_alpaca_sft.json",
       "rlhf"},
      {"ppo --recipe " + kQuickstart + " --prompt-tokens 300", "context"},
      {"grpo", "--recipe"},
      {"grpo --recipe " + kQuickstart + " --group 5", "not a multiple of --group 5"},
      {"grpo --recipe " + kQuickstart + " --group 1", "--group"},
      {"grpo --recipe " + kQuickstart + " --grpo-epochs 0", "--grpo-epochs"},
      {"grpo --recipe " + kQuickstart + " --warmup -1", "--warmup"},
      {"grpo --recipe " + kQuickstart + " --prompt-tokens 300", "context"},
      {"grpo --recipe " + std::string(TILLER_SOURCE_DIR) + "/recipes/stories260k_alpaca_sft.json",
       "rlhf"},
  };
  for (const auto& [args, mention] : cases) {
    const BenchRun r = bench(args);
    EXPECT_EQ(r.code, 1) << args << "\nstdout: " << r.out << "\nstderr: " << r.err;
    EXPECT_EQ(r.out, "") << args;  // no half table
    const std::vector<std::string> errors = error_lines(r);
    ASSERT_EQ(errors.size(), 1u) << args << "\n" << r.err;
    EXPECT_EQ(errors[0].rfind("tiller: error: ", 0), 0u) << args << "\n" << r.err;
    EXPECT_NE(errors[0].find(mention), std::string::npos) << args << "\n" << errors[0];
  }
}
