#include "dpo/preference_eval.h"

#include "common/io/hf_dir.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "dpo/pair_log_probs.h"

namespace tiller {

namespace {

Transformer load_frozen_lm(const std::string& dir, const std::string& role) {
  Transformer model = load_hf_model(dir, /*num_labels=*/-1, QuantizedModels::load_frozen);
  check(model->config.num_labels == 0,
        role + " " + dir + " has a score head; it must be a causal LM");
  model->eval();
  return model;
}

}  // namespace

PreferenceEvalResult evaluate_preference_policy(const PreferenceEvalOptions& o) {
  Transformer policy = load_frozen_lm(o.model, "model");
  Transformer reference = load_frozen_lm(o.reference, "reference");
  Tokenizer tok(tokenizer_path_in(o.model));
  tok.check_matches(policy->config, o.model);
  check(read_file(tokenizer_path_in(o.reference)) == read_file(tokenizer_path_in(o.model)),
        "the reference " + o.reference + " has a different tokenizer from the model's");
  PreferenceDataOptions data;
  data.path = o.data;
  data.format = o.format;
  data.template_name = o.template_name;
  data.max_seq_len = o.max_seq_len > 0 ? o.max_seq_len : policy->config.max_position_embeddings;
  check(data.max_seq_len <= policy->config.max_position_embeddings,
        "max_seq_len " + std::to_string(data.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(policy->config.max_position_embeddings));
  PreferenceEvalResult out;
  const auto pairs = load_preference_pairs(data, tok, &out.data);
  const auto order = identity_order(pairs.size());
  const int64_t pad_id = tok.pad_id() >= 0 ? tok.pad_id() : 0;
  torch::NoGradGuard no_grad;
  double correct = 0, chosen = 0, rejected = 0;
  for (size_t begin = 0; begin < pairs.size(); begin += static_cast<size_t>(o.micro_batch)) {
    const PairSlice slice{pairs, order, begin,
                          std::min(static_cast<size_t>(o.micro_batch), pairs.size() - begin)};
    // Each pair's prompt computed once, as in every scoring without a recipe to say otherwise.
    const SideLogProbs p = pair_log_probs(*policy, slice, pad_id, /*share_prefixes=*/true);
    const SideLogProbs r = pair_log_probs(*reference, slice, pad_id, /*share_prefixes=*/true);
    const auto c = (o.beta * (p.chosen - r.chosen)).to(torch::kDouble);
    const auto j = (o.beta * (p.rejected - r.rejected)).to(torch::kDouble);
    correct += (c > j).sum().item<double>();
    chosen += c.sum().item<double>();
    rejected += j.sum().item<double>();
  }
  out.pairs = static_cast<int64_t>(pairs.size());
  const double n = static_cast<double>(out.pairs);
  out.accuracy = correct / n;
  out.chosen_reward = chosen / n;
  out.rejected_reward = rejected / n;
  out.margin = (chosen - rejected) / n;
  return out;
}

}  // namespace tiller
