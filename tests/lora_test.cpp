// LoRA adapters (common/model/lora.h) and PEFT's adapter directories (common/io/peft_adapter.h):
// what trains, merging, writing and reading back, a hand-made PEFT adapter, and bad adapters.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <set>

#include "common/io/hf_dir.h"
#include "common/io/peft_adapter.h"
#include "common/io/safetensors.h"
#include "common/model/fused_linear.h"
#include "common/model/lora.h"
#include "common/rollout/generator.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// Vocabulary 61, width 32, MLP 48, 2 layers, 4 heads over 2 key/value heads: every projection
// has its own shape.
ModelConfig small_config() {
  return test::llama_config(61, 32, 48, 2, 4, 2, 32);
}

Transformer random_base(const ModelConfig& config, uint64_t seed) {
  Transformer model(config);
  model->init_weights(seed);
  model->eval();
  return model;
}

// Fresh adapters have B = 0 (the model is its base); these give every B values too.
void randomize_b(TransformerImpl& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& [name, adapter] : model.lora->adapters) adapter->b.normal_(0.0, 0.05);
}

torch::Tensor tokens() {
  return torch::tensor({{3, 17, 42, 5, 60, 1, 9, 33}, {8, 8, 2, 50, 21, 7, 0, 44}}, torch::kLong);
}

torch::Tensor logits_of(TransformerImpl& model) {
  torch::NoGradGuard no_grad;
  const auto ids = tokens();
  return model.forward(ids, torch::ones_like(ids));
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

LoraOptions options(int64_t rank, double alpha, std::vector<std::string> targets) {
  LoraOptions o;
  o.rank = rank;
  o.alpha = alpha;
  o.targets = std::move(targets);
  return o;
}

// The base's HF directory (its weights, not merged) and the adapter's PEFT directory.
void save_base_and_adapter(TransformerImpl& model, const std::string& base_dir,
                           const std::string& adapter_dir) {
  save_hf_model(model.config, model.named_weights(), base_dir);
  write_peft_adapter(model, adapter_dir);
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream(path) << j.dump(2);
}

}  // namespace

TEST(Lora, OnlyTheAdaptersTrainAndTheBaseStaysBitForBit) {
  const ModelConfig c = small_config();
  Transformer model = random_base(c, 1);
  std::map<std::string, torch::Tensor> before;
  for (const auto& [name, w] : model->named_weights()) before[name] = w.clone();
  attach_lora(*model, options(4, 8, lora_target_names()), /*seed=*/2, "test");

  // r * (in + out) for each of the seven projections of each layer, and nothing else.
  const int64_t h = c.hidden_size, m = c.intermediate_size;
  const int64_t kv = c.num_key_value_heads * (c.hidden_size / c.num_attention_heads);
  const int64_t per_layer = 4 * ((h + h) + (h + kv) + (h + kv) + (h + h) + 3 * (h + m));
  std::vector<torch::Tensor> trainable;
  int64_t count = 0;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) {
      trainable.push_back(p);
      count += p.numel();
    }
  EXPECT_EQ(count, c.num_hidden_layers * per_layer);
  // A fresh adapter starts at the base (B = 0).
  Transformer base = random_base(c, 1);
  EXPECT_TRUE(torch::equal(logits_of(*model), logits_of(*base)));

  model->train();
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    const auto ids = tokens();
    const auto logits = model->forward(ids, torch::ones_like(ids));
    torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}), ids.reshape({-1}))
        .backward();
    optimizer.step();
  }
  for (const auto& [name, w] : model->named_weights()) {
    EXPECT_FALSE(w.grad().defined()) << name;
    EXPECT_TRUE(torch::equal(w, before.at(name))) << name << " changed";
  }
  model->eval();
  EXPECT_GT(max_abs_diff(logits_of(*model), logits_of(*base)), 1e-3)
      << "the adapters did not learn";
  // Switched off, the adapted model is its base again, exactly.
  {
    LoraSwitchedOff off(*model);
    EXPECT_TRUE(torch::equal(logits_of(*model), logits_of(*base)));
  }
  EXPECT_FALSE(torch::equal(logits_of(*model), logits_of(*base)));
}

// PPO's LoRA critic on the reward model: one copy of the frozen weights serves both; training the
// critic's adapters and head leaves the reward model's scores exactly as they were.
// Recomputed layers (train.activation_checkpointing) behind a frozen embedding: every layer's
// adapters get the gradients that stored activations give. (Before, a recomputed layer whose
// input needed no gradient gave none, and a loss over its outputs could not be differentiated.)
TEST(Lora, RecomputedLayersTrainTheAdaptersAsStoredOnesDo) {
  Transformer model = random_base(small_config(), 4);
  attach_lora(*model, options(4, 8, lora_target_names()), /*seed=*/2, "test");
  randomize_b(*model, 6);
  const auto ids = tokens();
  const auto adapter_gradients = [&](bool recompute) {
    model->model->activation_checkpointing = recompute;
    model->zero_grad();
    (model->forward(ids, torch::ones_like(ids)) * torch::linspace(-1, 1, 61)).sum().backward();
    std::vector<torch::Tensor> out;
    for (auto& [name, adapter] : model->lora->adapters) {
      EXPECT_TRUE(adapter->a.grad().defined()) << name;
      EXPECT_TRUE(adapter->b.grad().defined()) << name;
      if (!adapter->a.grad().defined() || !adapter->b.grad().defined()) return out;
      out.push_back(adapter->a.grad().clone());
      out.push_back(adapter->b.grad().clone());
    }
    return out;
  };
  const auto stored = adapter_gradients(false);
  const auto recomputed = adapter_gradients(true);
  ASSERT_EQ(recomputed.size(), stored.size());
  ASSERT_EQ(stored.size(), 2 * model->lora->adapters.size());
  for (size_t i = 0; i < stored.size(); ++i)
    test::expect_close_to_scale(recomputed[i], stored[i], 1e-5,
                                "adapter gradient " + std::to_string(i));
}

TEST(Lora, ACriticSharingTheRewardModelsBaseTrainsOnlyItsOwnAdaptersAndHead) {
  ModelConfig c = small_config();
  c.num_labels = 1;
  Transformer reward = random_base(c, 1);
  Transformer critic = random_base(c, 1);  // as read from the reward model's directory
  LoraOptions o = options(4, 8, lora_target_names());
  o.modules_to_save = {"score"};
  attach_lora(*critic, o, /*seed=*/2, "test");
  const auto ids = tokens();
  const auto mask = torch::ones_like(ids);
  const auto reward_scores = [&] {
    torch::NoGradGuard no_grad;
    return reward->sequence_scores(ids, mask);
  };
  const torch::Tensor scores_before = reward_scores();

  const int64_t shared = share_frozen_base(*critic, *reward, "test");
  std::map<std::string, torch::Tensor> reward_weights;
  for (auto& [name, w] : reward->local_weights()) reward_weights[name] = w;
  int64_t frozen_bytes = 0;
  for (auto& [name, w] : critic->local_weights()) {
    const bool same = w.data_ptr() == reward_weights.at(name).data_ptr();
    EXPECT_EQ(same, name != "score.weight") << name;
    if (!w.requires_grad()) frozen_bytes += w.numel() * static_cast<int64_t>(w.element_size());
  }
  EXPECT_EQ(shared, frozen_bytes);
  EXPECT_GT(shared, 0);
  {
    torch::NoGradGuard no_grad;  // fresh adapters: the critic is the reward model
    EXPECT_TRUE(torch::equal(critic->sequence_scores(ids, mask), scores_before));
  }

  critic->train();
  std::vector<torch::Tensor> trainable;
  for (const auto& p : critic->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));
  for (int step = 0; step < 3; ++step) {
    optimizer.zero_grad();
    (critic->sequence_scores(ids, mask) - 1.0).pow(2).sum().backward();
    optimizer.step();
  }
  EXPECT_TRUE(torch::equal(reward_scores(), scores_before)) << "the reward model changed";
  torch::NoGradGuard no_grad;
  EXPECT_GT(max_abs_diff(critic->sequence_scores(ids, mask), scores_before), 1e-3)
      << "the critic did not learn";

  // Another width, or a model without adapters, is one clear error.
  Transformer narrow = random_base(test::llama_config(61, 16, 48, 2, 4, 2, 32), 3);
  const std::string width_error =
      test::error_of([&] { share_frozen_base(*critic, *narrow, "stage ppo"); });
  EXPECT_NE(width_error.find("stage ppo: weight model.embed_tokens.weight is [61, 32]"),
            std::string::npos)
      << width_error;
  EXPECT_NE(test::error_of([&] {
              share_frozen_base(*reward, *critic, "stage ppo");
            }).find("only a model with LoRA adapters"),
            std::string::npos);
}

// lora.base_dtype bf16 (the QLoRA idea): the frozen matrices take half the bytes, and the model
// computes, trains and generates as an fp32 model whose matrices were rounded to bf16 would.
TEST(Lora, ABf16BaseIsTheFp32ComputationOfTheRoundedBaseInHalfTheBytes) {
  const ModelConfig c = small_config();
  LoraOptions o = options(4, 8, lora_target_names());
  Transformer rounded = random_base(c, 1);
  int64_t matrix_bytes_fp32 = 0;
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, w] : rounded->local_weights())
      if (w.dim() == 2) {
        w.copy_(w.to(torch::kBFloat16).to(torch::kFloat));
        matrix_bytes_fp32 += w.numel() * 4;
      }
  }
  attach_lora(*rounded, o, /*seed=*/2, "test");
  randomize_b(*rounded, 3);
  Transformer model = random_base(c, 1);
  o.base_dtype = "bf16";
  attach_lora(*model, o, /*seed=*/2, "test");
  randomize_b(*model, 3);

  int64_t matrix_bytes = 0;
  for (auto& [name, w] : model->local_weights()) {
    EXPECT_EQ(w.scalar_type(), w.dim() == 2 ? torch::kBFloat16 : torch::kFloat) << name;
    if (w.dim() == 2) matrix_bytes += w.numel() * static_cast<int64_t>(w.element_size());
  }
  EXPECT_EQ(2 * matrix_bytes, matrix_bytes_fp32);
  for (auto& [prefix, adapter] : model->lora->adapters)
    EXPECT_EQ(adapter->a.scalar_type(), torch::kFloat) << prefix;
  const auto& attention = *model->model->layer_list[0]->self_attn;
  EXPECT_TRUE(stored_back_to_back(
      {attention.q_proj->weight, attention.k_proj->weight, attention.v_proj->weight}));
  EXPECT_LT(max_abs_diff(logits_of(*model), logits_of(*rounded)), 1e-5);

  // Training: the same adapter updates, the base untouched.
  std::map<std::string, torch::Tensor> base_before;
  for (auto& [name, w] : model->local_weights()) base_before[name] = w.clone();
  for (Transformer* m : {&model, &rounded}) {
    (*m)->train();
    std::vector<torch::Tensor> trainable;
    for (const auto& p : (*m)->parameters())
      if (p.requires_grad()) trainable.push_back(p);
    torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-2));
    for (int step = 0; step < 3; ++step) {
      optimizer.zero_grad();
      const auto ids = tokens();
      const auto logits = (*m)->forward(ids, torch::ones_like(ids));
      torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}), ids.reshape({-1}))
          .backward();
      optimizer.step();
    }
    (*m)->eval();
  }
  for (auto& [name, w] : model->local_weights())
    EXPECT_TRUE(torch::equal(w, base_before.at(name))) << name << " changed";
  const auto trained = lora_weights(*model), reference = lora_weights(*rounded);
  ASSERT_EQ(trained.size(), reference.size());
  for (size_t i = 0; i < trained.size(); ++i)
    EXPECT_LT(max_abs_diff(trained[i].second, reference[i].second), 1e-5) << trained[i].first;

  // Merged weights come out in fp32; generation picks the tokens the rounded model picks (both
  // through the model's forward: the fast decode step reads fp32 weights only, and the bf16 base
  // falls back from it by itself).
  for (const auto& [name, w] : merged_weights(*model))
    EXPECT_EQ(w.scalar_type(), torch::kFloat) << name;
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 12;
  greedy.stop_at_eos = false;
  greedy.fast_decode = false;
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {1, 40}};
  EXPECT_TRUE(torch::equal(generate(*model, prompts, greedy).response_ids,
                           generate(*rounded, prompts, greedy).response_ids));
}

TEST(Lora, MergedWeightsGiveTheLogitsOfBasePlusAdapters) {
  const ModelConfig c = small_config();
  for (const bool rslora : {false, true}) {
    SCOPED_TRACE(rslora ? "rslora" : "alpha / rank");
    Transformer model = random_base(c, 3);
    LoraOptions o = options(4, 12, lora_target_names());
    o.rslora = rslora;
    attach_lora(*model, o, 4, "test");
    randomize_b(*model, 5);
    Transformer merged(c);
    std::map<std::string, torch::Tensor> weights;
    for (const auto& [name, w] : merged_weights(*model)) weights[name] = w;
    load_weights(*merged, weights, "merged");
    merged->eval();
    const auto adapted = logits_of(*model);
    Transformer base = random_base(c, 3);
    EXPECT_GT(max_abs_diff(adapted, logits_of(*base)), 1e-2) << "the adapters change nothing";
    EXPECT_LT(max_abs_diff(logits_of(*merged), adapted), 1e-5);
  }
}

TEST(Lora, AnAdapterWrittenAndReadBackGivesIdenticalOutputs) {
  const ModelConfig c = small_config();
  const std::string dir = test::temp_dir("lora_round_trip");
  Transformer model = random_base(c, 6);
  LoraOptions o = options(3, 7, {"q_proj", "v_proj", "down_proj"});
  o.init = "gaussian";
  attach_lora(*model, o, 7, "test");
  randomize_b(*model, 8);
  model->lora->base_model = "tests/base";
  save_base_and_adapter(*model, dir + "/base", dir + "/adapter");

  const auto config = read_json_file(dir + "/adapter/adapter_config.json");
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["r"], 3);
  EXPECT_EQ(config["lora_alpha"], 7.0);
  EXPECT_EQ(config["base_model_name_or_path"], "tests/base");
  EXPECT_EQ(config["init_lora_weights"], "gaussian");
  const auto saved = read_safetensors(dir + "/adapter/adapter_model.safetensors");
  ASSERT_TRUE(saved.count("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"));
  EXPECT_EQ(saved.at("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{c.hidden_size, 3}));
  EXPECT_EQ(saved.size(), 2u * 3u * 2u);  // A and B, three targets, two layers

  Transformer read = load_hf_model_with_adapter(dir + "/base", dir + "/adapter");
  read->eval();
  ASSERT_TRUE(has_lora(*read));
  EXPECT_EQ(read->lora->options.rank, 3);
  EXPECT_EQ(read->lora->options.init, "gaussian");
  EXPECT_TRUE(torch::equal(logits_of(*read), logits_of(*model)));
}

// An adapter written by hand the way PEFT saves one (older PEFT's ".default." in the names, a
// module path suffix in target_modules, keys Tiller does not use) gives W + alpha/r B A exactly
// where it says, and nothing elsewhere.
TEST(Lora, AHandMadePeftAdapterIsReadAsPeftMeansIt) {
  const ModelConfig c = small_config();
  const std::string dir = test::temp_dir("lora_hand_made");
  Transformer base = random_base(c, 9);
  save_hf_model(*base, dir + "/base");
  make_directories(dir + "/adapter");
  write_json(dir + "/adapter/adapter_config.json",
             {{"peft_type", "LORA"},
              {"task_type", "CAUSAL_LM"},
              {"base_model_name_or_path", "someone/tiny-llama"},
              {"r", 2},
              {"lora_alpha", 6},
              {"lora_dropout", 0.05},
              {"target_modules", {"self_attn.k_proj", "up_proj"}},
              {"bias", "none"},
              {"fan_in_fan_out", false},
              {"inference_mode", true},
              {"modules_to_save", nullptr},
              {"revision", nullptr},
              {"auto_mapping", nullptr}});
  torch::manual_seed(10);
  std::vector<std::pair<std::string, torch::Tensor>> adapter;
  std::map<std::string, torch::Tensor> expected;
  for (const auto& [name, w] : base->named_weights()) expected[name] = w.clone();
  const int64_t kv = c.num_key_value_heads * (c.hidden_size / c.num_attention_heads);
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    const std::string l = "model.layers." + std::to_string(layer);
    for (const auto& [module, out] : std::vector<std::pair<std::string, int64_t>>{
             {l + ".self_attn.k_proj", kv}, {l + ".mlp.up_proj", c.intermediate_size}}) {
      const auto a = torch::randn({2, c.hidden_size}) * 0.2;
      const auto b = torch::randn({out, 2}) * 0.2;
      adapter.emplace_back("base_model.model." + module + ".lora_A.default.weight", a);
      adapter.emplace_back("base_model.model." + module + ".lora_B.default.weight", b);
      expected[module + ".weight"] += 3.0 * torch::matmul(b, a);
    }
  }
  write_safetensors(dir + "/adapter/adapter_model.safetensors", adapter, {{"format", "pt"}});

  Transformer read = load_hf_model_with_adapter(dir + "/base", dir + "/adapter");
  read->eval();
  EXPECT_EQ(read->lora->options.rank, 2);
  EXPECT_DOUBLE_EQ(read->lora->options.scale(), 3.0);
  EXPECT_EQ(read->lora->base_model, "someone/tiny-llama");
  Transformer by_hand(c);
  load_weights(*by_hand, expected, "by hand");
  by_hand->eval();
  EXPECT_GT(max_abs_diff(logits_of(*by_hand), logits_of(*base)), 1e-2);
  EXPECT_LT(max_abs_diff(logits_of(*read), logits_of(*by_hand)), 1e-5);
}

// Each bad adapter is one line that names the adapter and what is wrong, and nothing is loaded.
TEST(Lora, BadAdaptersAreOneClearLine) {
  const ModelConfig c = small_config();
  const std::string dir = test::temp_dir("lora_bad");
  Transformer model = random_base(c, 11);
  attach_lora(*model, options(2, 4, {"q_proj", "o_proj"}), 12, "test");
  save_base_and_adapter(*model, dir + "/base", dir + "/good");
  const auto good = read_json_file(dir + "/good/adapter_config.json");
  auto variant = [&](const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    const std::string out = dir + "/" + name;
    make_directories(out);
    nlohmann::json config = good;
    edit(config);
    write_json(out + "/adapter_config.json", config);
    std::filesystem::copy_file(dir + "/good/adapter_model.safetensors",
                               out + "/adapter_model.safetensors");
    return out;
  };
  // A wider base of the same vocabulary, and one of another vocabulary.
  save_hf_model(*random_base(test::llama_config(61, 48, 48, 2, 4, 2, 32), 13), dir + "/wider");
  Transformer vocab_model = random_base(c, 14);
  LoraOptions with_head = options(2, 4, {"q_proj"});
  with_head.modules_to_save = {"lm_head"};
  attach_lora(*vocab_model, with_head, 15, "test");
  save_base_and_adapter(*vocab_model, dir + "/vocab_base", dir + "/with_head");
  save_hf_model(*random_base(test::llama_config(70, 32, 48, 2, 4, 2, 32), 16), dir + "/vocab70");

  const std::vector<std::tuple<std::string, std::string, std::string, std::string>> cases = {
      {"unknown target", dir + "/base",
       variant("fc1",
               [](auto& j) {
                 j["target_modules"] = {"q_proj", "fc1"};
               }),
       "fc1"},
      {"rank 0", dir + "/base", variant("rank0", [](auto& j) { j["r"] = 0; }), "rank"},
      {"not LoRA", dir + "/base", variant("ia3", [](auto& j) { j["peft_type"] = "IA3"; }),
       "peft_type"},
      {"DoRA", dir + "/base", variant("dora", [](auto& j) { j["use_dora"] = true; }), "use_dora"},
      {"one layer's module", dir + "/base",
       variant("layer0",
               [](auto& j) { j["target_modules"] = {"model.layers.0.self_attn.q_proj"}; }),
       "one layer"},
      {"no config", dir + "/base", dir + "/base", "adapter_config.json"},
      {"rank in the config is not the tensors'", dir + "/base",
       variant("rank3", [](auto& j) { j["r"] = 3; }), "lora_A"},
      {"base of another width", dir + "/wider", dir + "/good", "[2, 32]"},
      {"base of another vocabulary", dir + "/vocab70", dir + "/with_head", "lm_head"},
  };
  for (const auto& [what, base_dir, adapter_dir, names] : cases) {
    SCOPED_TRACE(what);
    const std::string message =
        test::error_of([&] { load_hf_model_with_adapter(base_dir, adapter_dir); });
    ASSERT_FALSE(message.empty()) << "accepted";
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_NE(message.find(adapter_dir), std::string::npos) << message;
    EXPECT_NE(message.find(names), std::string::npos) << message;
  }
  // The good adapter on its base loads.
  EXPECT_EQ(test::error_of([&] { load_hf_model_with_adapter(dir + "/base", dir + "/good"); }), "");
}

// `tiller merge` and `--adapter` of generate and eval, run as a user runs them, on the pretrained
// stories260K with an adapter that changes its text: the merged directory, the model with its
// adapter and the in-process adapted model agree.
TEST(LoraCli, MergeAndAdapterFlagsAgreeWithTheAdaptedModel) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("lora_cli");
  const std::string tiller = test::tiller_binary();
  std::string out;
  ASSERT_EQ(test::run_command(tiller + " convert --model " + bin + " --tokenizer " + tok +
                                  " --out " + dir + "/base",
                              &out),
            0)
      << out;
  Transformer model = load_hf_model(dir + "/base");
  model->eval();
  attach_lora(*model, options(4, 8, lora_target_names()), 21, "test");
  {
    torch::NoGradGuard no_grad;
    torch::manual_seed(22);
    for (auto& [name, adapter] : model->lora->adapters) adapter->b.normal_(0.0, 0.1);
  }
  write_peft_adapter(*model, dir + "/adapter");

  ASSERT_EQ(test::run_command(tiller + " merge --base " + dir + "/base --adapter " + dir +
                                  "/adapter --out " + dir + "/merged",
                              &out),
            0)
      << out;
  EXPECT_TRUE(path_exists(dir + "/merged/tokenizer.model"));
  EXPECT_FALSE(path_exists(dir + "/merged/adapter")) << "a merged model is a plain HF model";
  Transformer merged = load_hf_model(dir + "/merged");
  merged->eval();
  EXPECT_LT(max_abs_diff(logits_of(*merged), logits_of(*model)), 1e-5);

  auto generate = [&](const std::string& flags) {
    std::string text;
    EXPECT_EQ(test::run_command(tiller + " generate " + flags +
                                    " --prompt 'Once upon a time' --max-new-tokens 40 "
                                    "--temperature 0 2>&1",
                                &text),
              0)
        << text;
    return text;
  };
  const std::string adapted = generate("--model " + dir + "/base --adapter " + dir + "/adapter");
  EXPECT_EQ(adapted, generate("--model " + dir + "/merged"));
  EXPECT_NE(adapted, generate("--model " + dir + "/base")) << "the adapter changes nothing";

  std::ofstream(dir + "/task.jsonl")
      << R"({"prompt": "Once upon a time", "target": " there was a little girl."})"
      << "\n"
      << R"({"prompt": "Tom saw a", "choices": [" big dog.", " red ball."], "answer": 1})"
      << "\n";
  auto eval = [&](const std::string& flags) {
    std::string text;
    EXPECT_EQ(test::run_command(
                  tiller + " eval " + flags + " --tasks " + dir + "/task.jsonl --json 2>/dev/null",
                  &text),
              0)
        << text;
    return nlohmann::json::parse(text.substr(text.find('{')));
  };
  const auto with_adapter = eval("--model " + dir + "/base --adapter " + dir + "/adapter");
  const auto of_merged = eval("--model " + dir + "/merged");
  EXPECT_EQ(with_adapter["adapter"], dir + "/adapter");
  EXPECT_NEAR(with_adapter["loglik_per_token"].get<double>(),
              of_merged["loglik_per_token"].get<double>(), 1e-4);
  EXPECT_EQ(with_adapter["exact_match"], of_merged["exact_match"]);

  // An adapter of another base: one error line, nothing written.
  save_hf_model(*random_base(small_config(), 23), dir + "/other");
  EXPECT_EQ(test::run_command(tiller + " merge --base " + dir + "/other --adapter " + dir +
                                  "/adapter --out " + dir + "/bad 2>&1",
                              &out),
            1)
      << out;
  EXPECT_NE(
      out.find("tiller: error: adapter " + dir + "/adapter on the model in " + dir + "/other"),
      std::string::npos)
      << out;
  EXPECT_FALSE(path_exists(dir + "/bad"));
  EXPECT_EQ(test::run_command(tiller + " eval --across " + dir + "/runs.jsonl --adapter " + dir +
                                  "/adapter --tasks " + dir + "/task.jsonl 2>&1",
                              &out),
            1);
  EXPECT_NE(out.find("--adapter needs --model"), std::string::npos) << out;
}

// Recipe mistakes in a lora section are refused before anything runs, each at its path, and so is
// a module to save where the reference is the policy with its adapters switched off (it would
// keep the trained module).
TEST(LoraRecipe, MistakesAreRefusedAtTheirPathsBeforeAnythingRuns) {
  const std::string dir = test::temp_dir("lora_recipe");
  const std::string recipe = test::quickstart_recipe_in(dir + "/run");
  std::string out;
  const int code = test::run_command(
      test::tiller_binary() + " run --check " + recipe +
          " sft.lora.rank=0 sft.lora.targets=fc1 reward.lora.init=normal"
          " ppo.lora.modules_to_save=lm_head grpo.lora.dropout=1 dpo.lora.modules_to_save=lm_head"
          " dpo.reference.mode=live pretrain.lora.base_dtype=fp16 ppo.critic_lora.base_dtype=bf16"
          " 2>&1",
      &out);
  EXPECT_EQ(code, 1) << out;
  for (const std::string expected :
       {"stages[1].lora.rank: must be at least 1", "stages[1].lora.targets: \"fc1\" is not",
        "stages[2].lora.init", "stages[3].lora.modules_to_save: the reference is this policy",
        "stages[4].lora.modules_to_save: the reference is this policy",
        "stages[5].lora.dropout: must be in [0, 1)", "stages[0].lora.base_dtype",
        "stages[3].critic_lora: base_dtype bf16 is refused for a critic that is the reward model"})
    EXPECT_NE(out.find(expected), std::string::npos) << expected << "\n" << out;
  EXPECT_FALSE(path_exists(dir + "/run/sft"));
  // The same module to save beside the cached DPO reference (computed before training) runs.
  EXPECT_EQ(test::run_command(test::tiller_binary() + " run --check " + recipe +
                                  " dpo.lora.modules_to_save=lm_head 2>&1",
                              &out),
            0)
      << out;
}
