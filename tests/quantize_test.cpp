// Weight-only quantisation: round to nearest and its packing (common/model/quantized.h), the
// int8/int4 kernels of every set this CPU runs against the dequantised matrix
// (common/rollout/quant_kernels.h), GPTQ against round to nearest on correlated inputs
// (quantize/gptq.h), the quantised directory written, refused for training, loaded frozen and
// decoded by the fast step (quantize/quantize.h, common/io/hf_dir.h), and the one-line errors of
// `tiller quantize` and of a damaged quantised directory.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/model/quantized.h"
#include "common/rollout/fast_decode.h"
#include "common/rollout/generator.h"
#include "common/rollout/quant_kernels.h"
#include "common/util/files.h"
#include "eval/perplexity.h"
#include "quantize/gptq.h"
#include "quantize/quantize.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

std::vector<quant_kernels::Isa> kernel_sets() {
  std::vector<quant_kernels::Isa> sets = {quant_kernels::Isa::portable};
  for (auto isa : {quant_kernels::Isa::avx2, quant_kernels::Isa::avx512}) {
    if (quant_kernels::supported(isa))
      sets.push_back(isa);
    else
      std::cout << "[   NOTE   ] this CPU lacks " << quant_kernels::isa_name(isa)
                << ": its quantised kernels are not checked\n";
  }
  return sets;
}

// A small causal LM with widths that 4-bit groups of 16 and 32 divide.
Transformer small_model(uint64_t seed, bool tied = true) {
  ModelConfig c = test::llama_config(96, 64, 96, 2, 4, 2, 64);
  c.tie_word_embeddings = tied;
  return test::sharp_random_model(c, seed);
}

std::string save_small_model(const std::string& dir, uint64_t seed) {
  auto model = small_model(seed);
  save_hf_model(*model, dir);
  return dir;
}

}  // namespace

TEST(Quantize, RoundToNearestErrorsStayWithinHalfAStep) {
  torch::manual_seed(3);
  const auto w = torch::randn({24, 64});
  const auto int8 = quantize_rtn(w, 8, 0, "w");
  EXPECT_EQ(int8.packed.scalar_type(), torch::kChar);
  EXPECT_EQ(int8.scales.sizes(), torch::IntArrayRef({24, 1}));
  const auto step8 = int8.scales;  // [24, 1]
  EXPECT_TRUE(((dequantize(int8) - w).abs() <= step8 * 0.5 + 1e-6).all().item<bool>());
  // The largest magnitude of each row is exact (code ±127).
  const auto row_max = std::get<0>(w.abs().max(1));
  const auto dq_max = std::get<0>(dequantize(int8).abs().max(1));
  EXPECT_TRUE(torch::allclose(row_max, dq_max, 1e-5, 1e-6));

  const auto int4 = quantize_rtn(w, 4, 16, "w");
  EXPECT_EQ(int4.packed.sizes(), torch::IntArrayRef({24, 32}));
  EXPECT_EQ(int4.scales.sizes(), torch::IntArrayRef({24, 4}));
  const auto step4 = int4.scales.repeat_interleave(16, 1);  // [24, 64]
  const auto dq4 = dequantize(int4);
  EXPECT_TRUE(((dq4 - w).abs() <= step4 * 0.5 + 1e-6).all().item<bool>());
  // Each group's minimum and maximum are exact (codes 0 and 15).
  const auto groups = w.view({24, 4, 16}), dq_groups = dq4.view({24, 4, 16});
  EXPECT_TRUE(
      torch::allclose(std::get<0>(groups.min(2)), std::get<0>(dq_groups.min(2)), 1e-5, 1e-6));
  EXPECT_TRUE(
      torch::allclose(std::get<0>(groups.max(2)), std::get<0>(dq_groups.max(2)), 1e-5, 1e-5));
  // A constant group (zero range) comes back exactly.
  const auto constant = torch::full({2, 16}, 0.25f);
  EXPECT_TRUE(torch::equal(dequantize(quantize_rtn(constant, 4, 16, "c")), constant));
  EXPECT_TRUE(torch::equal(dequantize(quantize_rtn(torch::zeros({2, 8}), 8, 0, "z")),
                           torch::zeros({2, 8})));
}

TEST(Quantize, GroupSizeMustDivideRowsEvenly) {
  const auto w = torch::randn({4, 172});
  EXPECT_NE(test::error_of([&] {
              quantize_rtn(w, 4, 128, "down");
            }).find("the group size 128 does not divide its rows of 172 columns"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { quantize_rtn(w, 4, 43, "down"); }), "");  // odd: no pairs
  EXPECT_EQ(test::error_of([&] { quantize_rtn(w, 4, 4, "down"); }), "");
}

// Each kernel set, one row and several, with and without bias and accumulation, against the
// dequantised matrix in double: int8, and int4 in groups whose halves fit the vector widths (32,
// 64), one only AVX2 takes whole (16) and one the vector kernels leave to the plain loops (12).
TEST(Quantize, KernelsMatchTheDequantisedMatrixOnEverySet) {
  torch::manual_seed(5);
  struct Case {
    int bits;
    int64_t rows, cols, group;
  };
  for (const Case& c :
       {Case{8, 40, 96, 0}, Case{8, 3, 7, 0}, Case{4, 40, 128, 32}, Case{4, 33, 128, 64},
        Case{4, 20, 48, 16}, Case{4, 9, 36, 12}, Case{8, 700, 128, 0},
        Case{4, 600, 128, 32}}) {  // the last two: many output rows
    const auto m = quantize_rtn(torch::randn({c.rows, c.cols}), c.bits, c.group, "w");
    const auto reference_weight = dequantize(m).to(torch::kDouble);
    const auto bias = torch::randn({c.rows});
    for (int64_t input_rows : {1, 3, 6}) {
      const auto in = torch::randn({input_rows, c.cols});
      const auto start = torch::randn({input_rows, c.rows});
      const auto product = in.to(torch::kDouble).matmul(reference_weight.t());
      for (auto isa : kernel_sets()) {
        SCOPED_TRACE(std::string(quant_kernels::isa_name(isa)) + " bits " + std::to_string(c.bits) +
                     " group " + std::to_string(c.group) + " rows " + std::to_string(input_rows));
        auto out = torch::empty({input_rows, c.rows});
        quant_kernels::matmul(isa, m, in.data_ptr<float>(), input_rows, nullptr,
                              out.data_ptr<float>(), false);
        test::expect_close_to_scale(out.to(torch::kDouble), product, 1e-5, "product");
        auto acc = start.clone();
        quant_kernels::matmul(isa, m, in.data_ptr<float>(), input_rows, bias.data_ptr<float>(),
                              acc.data_ptr<float>(), true);
        test::expect_close_to_scale(acc.to(torch::kDouble),
                                    start.to(torch::kDouble) + product + bias.to(torch::kDouble),
                                    1e-5, "accumulated with bias");
      }
    }
  }
}

// A matrix large enough to be split over threads gives the same products as one thread.
TEST(Quantize, KernelsSplitOverThreadsGiveTheSameProducts) {
  torch::manual_seed(6);
  // 2^20 weights: the smallest matrix matmul splits (below it one thread is faster).
  const auto m = quantize_rtn(torch::randn({4096, 256}), 4, 32, "w");
  const auto in = torch::randn({1, 256});
  auto one = torch::empty({1, 4096}), many = torch::empty({1, 4096});
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  quant_kernels::matmul(quant_kernels::best_isa(), m, in.data_ptr<float>(), 1, nullptr,
                        one.data_ptr<float>(), false);
  torch::set_num_threads(std::max(2, threads));
  quant_kernels::matmul(quant_kernels::best_isa(), m, in.data_ptr<float>(), 1, nullptr,
                        many.data_ptr<float>(), false);
  torch::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one, many));
}

// Inputs with strongly correlated features (what a layer's inputs are like): GPTQ's output error
// is well below round to nearest's at 4 and 8 bits, and an input feature that is always zero
// (a dead column) leaves no NaN.
TEST(Quantize, GptqBeatsRoundToNearestOnCorrelatedInputs) {
  torch::manual_seed(7);
  const int64_t in = 64, out = 48;
  // A few directions carry most of the variance, as in a trained model's activations.
  auto inputs =
      torch::randn({2048, 6}).matmul(torch::randn({6, in})) + 0.05 * torch::randn({2048, in});
  inputs.select(1, 5).zero_();
  HessianSum hessian(in);
  hessian.add(inputs.view({2, 1024, in}));
  EXPECT_EQ(hessian.rows(), 2048);
  const auto w = torch::randn({out, in});
  for (auto [bits, group] : {std::pair<int, int64_t>{4, 16}, {8, 0}}) {
    GptqOptions o;
    o.bits = bits;
    o.group_size = group;
    o.block = 32;  // several lazy blocks
    const auto gptq = dequantize(gptq_quantize(w, hessian.sum(), o, "w"));
    ASSERT_TRUE(torch::isfinite(gptq).all().item<bool>());
    const double gptq_error = relative_output_error(w, gptq, hessian.sum());
    const double rtn_error =
        relative_output_error(w, dequantize(quantize_rtn(w, bits, group, "w")), hessian.sum());
    EXPECT_LT(gptq_error, 0.8 * rtn_error) << "bits " << bits;
    // The measured output error is what the inputs say it is.
    const auto direct = (inputs.matmul((gptq - w).t())).norm() / inputs.matmul(w.t()).norm();
    EXPECT_NEAR(gptq_error, direct.item<double>(), 1e-3);
  }
}

// The directory `tiller quantize` writes: refused where a model would be trained, loaded frozen
// with the packed weights beside the dequantised parameters, the torch path's logits those of the
// dequantised weights, and generation through the fast step the torch path's tokens.
TEST(Quantize, QuantisedDirectoryLoadsFrozenAndDecodesLikeItsDequantisedWeights) {
  const std::string dir = test::temp_dir("quantize_load");
  save_small_model(dir + "/full", 11);
  for (const std::string scheme : {"int8", "int4"}) {
    SCOPED_TRACE(scheme);
    QuantizeOptions o;
    o.model_dir = dir + "/full";
    o.out_dir = dir + "/" + scheme;
    o.scheme = scheme;
    o.group_size = 32;
    o.lm_head = scheme;
    const auto summary = quantize_model(o, /*progress=*/false);
    EXPECT_LT(summary["quantised_bytes"].get<double>(),
              (scheme == "int8" ? 0.3 : 0.2) * summary["quantised_fp32_bytes"].get<double>());

    const std::string refused = test::error_of([&] { load_hf_model(o.out_dir); });
    EXPECT_NE(refused.find("is a quantised model (" + scheme + " rtn"), std::string::npos)
        << refused;
    EXPECT_NE(refused.find("loads only where it stays frozen"), std::string::npos);

    Transformer model = load_hf_model(o.out_dir, -1, QuantizedModels::load_frozen);
    ASSERT_TRUE(model->quantized != nullptr);
    EXPECT_EQ(model->quantized->matrices.size(), 2u * 7 + 1);  // tied: the embedding is the head
    // The parameters are the packed matrices dequantised.
    for (auto& [name, param] : model->named_weights()) {
      const QuantizedMatrix* packed = model->quantized->find(name);
      if (packed != nullptr) {
        EXPECT_TRUE(torch::equal(param, dequantize(*packed))) << name;
      }
    }
    // In memory, round to nearest gives the same model.
    Transformer in_memory = load_hf_model(o.model_dir);
    quantize_in_place(*in_memory, o);
    const auto ids = torch::tensor({{1, 5, 9, 30, 2, 7}}, torch::kLong);
    const auto mask = torch::ones_like(ids);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(model->forward(ids, mask), in_memory->forward(ids, mask)));

    SamplingOptions sampling;
    sampling.max_new_tokens = 24;
    sampling.stop_at_eos = false;
    sampling.temperature = 0;
    sampling.full_pass_logprobs = false;
    // Three rows read the packed weights; five, the dequantised parameters (kPackedRowsLimit).
    for (const std::vector<std::vector<int64_t>>& prompts :
         {std::vector<std::vector<int64_t>>{{1, 5, 9}, {1}, {1, 3, 4, 8, 30}},
          std::vector<std::vector<int64_t>>{{1, 5, 9}, {1}, {1, 3, 4, 8, 30}, {1, 2}, {1, 7}}}) {
      static_assert(FastDecoder::kPackedRowsLimit == 4, "the row counts above straddle it");
      sampling.fast_decode = false;
      const auto torch_path = generate(*model, prompts, sampling);
      sampling.fast_decode = true;
      const auto fast = generate(*model, prompts, sampling);
      EXPECT_TRUE(torch::equal(fast.response_ids, torch_path.response_ids));
      test::expect_close_to_scale(fast.logprobs, torch_path.logprobs, 1e-5, "log-probs");
    }
  }
}

TEST(Quantize, GptqDirectoryFromCalibrationText) {
  const std::string dir = test::temp_dir("quantize_gptq");
  const std::string tokenizer = test::shared_file("models/stories260K/tok512.model");
  if (tokenizer.empty()) GTEST_SKIP() << "needs shared data: models/stories260K/tok512.model";
  ModelConfig c = test::llama_config(512, 64, 96, 2, 4, 2, 128);
  c.tie_word_embeddings = false;
  Transformer model = test::sharp_random_model(c, 12);
  SaveOptions save;
  save.tokenizer_path = tokenizer;
  save_hf_model(*model, dir + "/full", save);
  {
    std::ofstream text(dir + "/calibration.txt");
    for (int i = 0; i < 200; ++i)
      text << "Once upon a time there was a little dog named " << i << " who liked to run.\n";
  }
  QuantizeOptions o;
  o.model_dir = dir + "/full";
  o.out_dir = dir + "/gptq";
  o.scheme = "int4";
  o.group_size = 32;
  o.method = "gptq";
  o.calibration = dir + "/calibration.txt";
  o.samples = 8;
  o.length = 64;
  const auto summary = quantize_model(o, false);
  EXPECT_LT(summary["mean_relative_output_error"].get<double>(),
            summary["mean_rtn_relative_output_error"].get<double>());
  const auto config = quantization_of(o.out_dir);
  ASSERT_TRUE(config.has_value());
  EXPECT_EQ(config->method, "gptq");
  EXPECT_EQ(config->details["samples"], 8);
  EXPECT_EQ(config->weights.at("lm_head.weight"), 8);                 // the head: int8 by default
  EXPECT_EQ(config->weights.count("model.embed_tokens.weight"), 0u);  // embeddings: kept
  EXPECT_EQ(config->weights.at("model.layers.1.mlp.down_proj.weight"), 4);
  Transformer loaded = load_hf_model(o.out_dir, -1, QuantizedModels::load_frozen);
  EXPECT_TRUE(path_exists(o.out_dir + "/quantize.json"));

  // Too little calibration text is one line naming the numbers.
  o.out_dir = dir + "/short";
  o.samples = 4000;
  EXPECT_NE(test::error_of([&] { quantize_model(o, false); }).find("needs 256000"),
            std::string::npos);
  EXPECT_FALSE(path_exists(o.out_dir));
}

TEST(Quantize, BadRequestsAreOneLineAndWriteNothing) {
  const std::string dir = test::temp_dir("quantize_bad");
  save_small_model(dir + "/full", 13);
  QuantizeOptions good;
  good.model_dir = dir + "/full";
  good.out_dir = dir + "/q";
  good.scheme = "int8";
  quantize_model(good, false);

  auto error = [&](const std::function<void(QuantizeOptions&)>& change) {
    QuantizeOptions o = good;
    o.out_dir = dir + "/never";
    change(o);
    const std::string message = test::error_of([&] { quantize_model(o, false); });
    EXPECT_FALSE(path_exists(dir + "/never")) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    return message;
  };
  EXPECT_NE(error([&](QuantizeOptions& o) {
              o.model_dir = dir + "/q";
            }).find("is already quantised (int8 rtn"),
            std::string::npos);
  const std::string group = error([](QuantizeOptions& o) {
    o.scheme = "int4";
    o.group_size = 40;
  });
  EXPECT_NE(group.find("--group-size 40 does not divide the rows of"), std::string::npos) << group;
  EXPECT_NE(group.find("sizes that divide every 4-bit weight's rows: 32, 16, 8"), std::string::npos)
      << group;
  EXPECT_NE(error([](QuantizeOptions& o) { o.scheme = "int3"; }).find("--scheme must be one of"),
            std::string::npos);
  EXPECT_NE(error([](QuantizeOptions& o) { o.method = "gptq"; }).find("needs --calibration"),
            std::string::npos);
  EXPECT_NE(error([](QuantizeOptions& o) {
              o.calibration = "x.txt";
            }).find("--calibration is read by --method gptq only"),
            std::string::npos);
  EXPECT_NE(error([&](QuantizeOptions& o) {
              o.out_dir = dir + "/full";
            }).find("must not be the model's own"),
            std::string::npos);
  EXPECT_NE(error([](QuantizeOptions& o) { o.embeddings = "int4"; }).find("ties its embedding"),
            std::string::npos);
}

// A quantised directory damaged after it was written: each fault is one line naming the tensor.
TEST(Quantize, DamagedQuantisedDirectoriesAreRefusedByName) {
  const std::string dir = test::temp_dir("quantize_damaged");
  save_small_model(dir + "/full", 14);
  QuantizeOptions o;
  o.model_dir = dir + "/full";
  o.out_dir = dir + "/q";
  o.scheme = "int4";
  o.group_size = 32;
  quantize_model(o, false);
  const auto original = read_safetensors(o.out_dir + "/model.safetensors");
  const std::string layer = "model.layers.0.mlp.up_proj";
  auto damaged = [&](const std::function<void(std::map<std::string, torch::Tensor>&)>& change) {
    auto tensors = original;
    change(tensors);
    std::vector<std::pair<std::string, torch::Tensor>> list(tensors.begin(), tensors.end());
    write_safetensors(o.out_dir + "/model.safetensors", list, {{"format", "pt"}});
    return test::error_of([&] { load_hf_model(o.out_dir, -1, QuantizedModels::load_frozen); });
  };
  EXPECT_NE(damaged([&](auto& t) {
              t.erase(layer + ".scales");
            }).find("has no tensor " + layer + ".scales"),
            std::string::npos);
  EXPECT_NE(damaged([&](auto& t) {
              t[layer + ".scales"] = torch::ones({96, 3});
            }).find(layer + ".scales must be F32 [96, 2]"),
            std::string::npos);
  EXPECT_NE(damaged([&](auto& t) {
              t[layer + ".qweight"] = t[layer + ".qweight"].to(torch::kChar);
            }).find(layer + ".qweight must be a 2-D U8 tensor"),
            std::string::npos);
  EXPECT_NE(damaged([&](auto& t) {
              t[layer + ".mins"] = t[layer + ".mins"].clone();
              t[layer + ".mins"][0][0] = std::nanf("");
            }).find(layer + ".mins holds a non-finite value"),
            std::string::npos);
  EXPECT_NE(damaged([&](auto& t) {
              t[layer + ".weight"] = torch::zeros({96, 64});
            }).find("is stored both quantised and in full"),
            std::string::npos);
}

TEST(Quantize, PerplexityIsTheExponentOfTheMeanNextTokenLoss) {
  auto model = small_model(15);
  std::vector<int64_t> tokens;
  for (int i = 0; i < 100; ++i) tokens.push_back((i * 37 + 11) % 96);
  const auto r = eval::perplexity(*model, tokens, 20, 0, 2);
  EXPECT_EQ(r.windows, 5);
  EXPECT_EQ(r.predicted_tokens, 5 * 19);
  torch::NoGradGuard no_grad;
  const auto ids = torch::tensor(tokens).view({5, 20});
  const auto logits = model->forward(ids, torch::ones_like(ids));
  const auto nll = torch::nn::functional::cross_entropy(logits.narrow(1, 0, 19).reshape({-1, 96}),
                                                        ids.narrow(1, 1, 19).reshape({-1}));
  EXPECT_NEAR(r.mean_nll, nll.item<double>(), 1e-5);
  EXPECT_NEAR(r.perplexity, std::exp(nll.item<double>()), 1e-3);
  EXPECT_NE(test::error_of([&] {
              eval::perplexity(*model, {1, 2, 3}, 20);
            }).find("fewer than one window"),
            std::string::npos);
}
