#include "common/train/pairwise_reward.h"

#include <algorithm>

#include "common/io/hf_dir.h"  // tokenizer_path_in
#include "common/io/reward_model_dir.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/util/error.h"

namespace tiller {

namespace F = torch::nn::functional;

namespace {

std::vector<int64_t> identity_order(size_t n) {
  std::vector<int64_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int64_t>(i);
  return order;
}

}  // namespace

torch::Tensor pairwise_loss_sum(const torch::Tensor& chosen, const torch::Tensor& rejected,
                                const torch::Tensor& margin, double center_coef) {
  TORCH_CHECK(
      chosen.dim() == 1 && chosen.sizes() == rejected.sizes() && chosen.sizes() == margin.sizes(),
      "pairwise_loss_sum: chosen, rejected and margin must be [P] alike");
  auto loss = -F::logsigmoid(chosen - rejected - margin).sum();
  if (center_coef > 0) loss = loss + center_coef * (chosen + rejected).pow(2).sum();
  return loss;
}

torch::Tensor ranking_loss_sum(const torch::Tensor& better, const torch::Tensor& worse,
                               const torch::Tensor& weight, double center_coef) {
  TORCH_CHECK(
      better.dim() == 1 && better.sizes() == worse.sizes() && better.sizes() == weight.sizes(),
      "ranking_loss_sum: better, worse and weight must be [C] alike");
  auto per_comparison = -F::logsigmoid(better - worse);
  if (center_coef > 0) per_comparison = per_comparison + center_coef * (better + worse).pow(2);
  return (weight * per_comparison).sum();
}

// Pairs [begin, begin + count) of `order`: chosen rows first, then rejected.
ComparisonBatch make_pair_batch(const std::vector<PreferencePair>& pairs,
                                const std::vector<int64_t>& order, size_t begin, size_t count,
                                int64_t pad_id, bool use_margin) {
  std::vector<const std::vector<int64_t>*> rows;
  std::vector<float> margins;
  ComparisonBatch b;
  for (size_t i = begin; i < begin + count; ++i)
    rows.push_back(&pairs[static_cast<size_t>(order[i])].chosen);
  for (size_t i = begin; i < begin + count; ++i) {
    const auto& p = pairs[static_cast<size_t>(order[i])];
    rows.push_back(&p.rejected);
    margins.push_back(use_margin ? static_cast<float>(p.margin) : 0.0f);
    b.tokens += static_cast<int64_t>(p.chosen.size() + p.rejected.size());
  }
  b.rows = make_score_batch(rows, pad_id);
  const int64_t n = static_cast<int64_t>(count);
  b.shared_prefixes = pair_prefix_groups(rows);
  b.better = torch::arange(n, torch::kLong);
  b.worse = torch::arange(n, 2 * n, torch::kLong);
  b.margin = torch::tensor(margins, torch::kFloat);
  return b;
}

// Rankings [begin, begin + count) of `order`: each response one row, its comparisons gathered.
ComparisonBatch make_ranking_batch(const std::vector<TokenizedRanking>& rankings,
                                   const std::vector<int64_t>& order, size_t begin, size_t count,
                                   int64_t pad_id) {
  std::vector<const std::vector<int64_t>*> rows;
  std::vector<int64_t> better, worse;
  std::vector<float> weight;
  std::vector<std::vector<int64_t>> ranking_rows;
  ComparisonBatch b;
  for (size_t i = begin; i < begin + count; ++i) {
    const auto& ranking = rankings[static_cast<size_t>(order[i])];
    const int64_t first_row = static_cast<int64_t>(rows.size());
    ranking_rows.emplace_back();
    for (const auto& response : ranking.responses) {
      ranking_rows.back().push_back(static_cast<int64_t>(rows.size()));
      rows.push_back(&response);
      b.tokens += static_cast<int64_t>(response.size());
    }
    const auto comparisons = ranking_comparisons(ranking.ranks);
    for (const auto& c : comparisons) {
      better.push_back(first_row + c.better);
      worse.push_back(first_row + c.worse);
      weight.push_back(1.0f / static_cast<float>(comparisons.size()));
    }
  }
  b.rows = make_score_batch(rows, pad_id);
  b.shared_prefixes = common_prefix_groups(rows, ranking_rows);
  b.better = torch::tensor(better, torch::kLong);
  b.worse = torch::tensor(worse, torch::kLong);
  b.margin = torch::zeros({static_cast<int64_t>(better.size())}, torch::kFloat);
  b.weight = torch::tensor(weight, torch::kFloat);
  return b;
}

torch::Tensor ComparisonBatch::scores(TransformerImpl& model, bool share_prefixes,
                                      bool* packed) const {
  return raw_scores(model, rows, share_prefixes ? shared_prefixes : std::vector<PrefixGroup>(),
                    packed);
}

void PairTotals::add(const torch::Tensor& chosen_r, const torch::Tensor& rejected_r,
                     const torch::Tensor& margin_r) {
  auto c = chosen_r.detach().to(torch::kDouble).cpu(),
       r = rejected_r.detach().to(torch::kDouble).cpu();
  loss += -F::logsigmoid(c - r - margin_r.to(torch::kDouble).cpu()).sum().item<double>();
  correct += (c > r).sum().item<double>();
  margin += (c - r).sum().item<double>();
  chosen += c.sum().item<double>();
  rejected += r.sum().item<double>();
  pairs += c.size(0);
}

void PairTotals::reduce(const dist::Group& group) {
  auto sums = group.sum({loss, correct, margin, chosen, rejected, static_cast<double>(pairs)});
  loss = sums[0], correct = sums[1], margin = sums[2], chosen = sums[3], rejected = sums[4];
  pairs = static_cast<int64_t>(sums[5]);
}

RewardEvalResult PairTotals::result() const {
  RewardEvalResult out;
  const double n = std::max<int64_t>(1, pairs);
  out.pairs = pairs;
  out.accuracy = correct / n;
  out.loss = loss / n;
  out.margin = margin / n;
  out.chosen_reward = chosen / n;
  out.rejected_reward = rejected / n;
  return out;
}

RewardEvalResult evaluate_examples(TransformerImpl& model, const RewardExamples& examples,
                                   int64_t pad_id, int64_t micro_batch, int64_t max_batches,
                                   double offset, bool use_margin, bool bf16, bool share_prefixes,
                                   const dist::Group& group) {
  check(micro_batch >= 1, "evaluate_pairs: micro_batch must be at least 1");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto order = identity_order(examples.size());
  const auto device = model.parameters().front().device();
  PairTotals totals;
  int64_t batch_index = 0;
  for (size_t begin = 0; begin < examples.size();
       begin += static_cast<size_t>(micro_batch), ++batch_index) {
    if (max_batches > 0 && batch_index >= max_batches) break;
    if (batch_index % group.size() != group.rank()) continue;  // another rank's batch
    const size_t count = std::min(examples.size() - begin, static_cast<size_t>(micro_batch));
    auto batch = examples.batch(order, begin, count, pad_id, use_margin);
    torch::Tensor scores;
    {
      compat::AutocastGuard cast(bf16, device);
      scores = batch.scores(model, share_prefixes).cpu() - offset;
    }
    totals.add(scores.index_select(0, batch.better), scores.index_select(0, batch.worse),
               batch.margin);
  }
  if (was_training) model.train();
  totals.reduce(group);
  return totals.result();
}

RewardEvalResult evaluate_pairs(TransformerImpl& model, const std::vector<PreferencePair>& pairs,
                                int64_t pad_id, int64_t micro_batch, int64_t max_batches,
                                double offset, bool use_margin, bool bf16,
                                const dist::Group& group) {
  RewardExamples examples;
  examples.pairs = pairs;
  return evaluate_examples(model, examples, pad_id, micro_batch, max_batches, offset, use_margin,
                           bf16, /*share_prefixes=*/true, group);
}

RewardEvalResult evaluate_rankings(TransformerImpl& model,
                                   const std::vector<TokenizedRanking>& rankings, int64_t pad_id,
                                   int64_t micro_batch, int64_t max_batches, double offset,
                                   bool bf16, const dist::Group& group) {
  RewardExamples examples;
  examples.rankings = rankings;
  examples.listwise = true;
  return evaluate_examples(model, examples, pad_id, micro_batch, max_batches, offset,
                           /*use_margin=*/false, bf16, /*share_prefixes=*/true, group);
}

RewardEvalResult evaluate_reward_model(const std::string& model_dir, const std::string& data_path,
                                       const std::string& format, const std::string& template_name,
                                       int64_t max_seq_len) {
  RewardModel rm = load_reward_model(model_dir);
  Tokenizer tok(tokenizer_path_in(model_dir));
  tok.check_matches(rm.model->config, model_dir);
  PreferenceDataOptions o;
  o.path = data_path;
  o.format = format;
  o.template_name = !template_name.empty()               ? template_name
                    : !rm.metadata.template_name.empty() ? rm.metadata.template_name
                                                         : "chatml";
  o.max_seq_len = max_seq_len > 0               ? max_seq_len
                  : rm.metadata.max_seq_len > 0 ? rm.metadata.max_seq_len
                                                : rm.model->config.max_position_embeddings;
  check(o.max_seq_len <= rm.model->config.max_position_embeddings,
        "max_seq_len " + std::to_string(o.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(rm.model->config.max_position_embeddings));
  const int64_t pad_id =
      rm.model->config.pad_token_id >= 0 ? rm.model->config.pad_token_id : reward_pad_id(tok);
  if (is_ranking_format(o.format)) {
    RankingStats stats;
    auto rankings = load_rankings(o, tok, &stats);
    auto result = evaluate_rankings(*rm.model, rankings, pad_id, /*micro_batch=*/8,
                                    /*max_batches=*/0, rm.metadata.offset);
    result.data = as_preference_stats(stats);
    return result;
  }
  PreferenceStats stats;
  auto pairs = load_preference_pairs(o, tok, &stats);
  auto result = evaluate_pairs(*rm.model, pairs, pad_id, /*micro_batch=*/8, /*max_batches=*/0,
                               rm.metadata.offset);
  result.data = stats;
  return result;
}

}  // namespace tiller
