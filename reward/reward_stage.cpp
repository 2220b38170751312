#include "reward/reward_stage.h"

#include <cmath>
#include <cstdio>

#include "common/data/batching.h"  // seeded_permutation
#include "common/io/hf_dir.h"
#include "common/model/reward_model.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/epoch_cursor.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/train/stage_loop.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace F = torch::nn::functional;

// ---------------------------------------------------------------------------------------------
// Config

RewardStageConfig parse_reward_stage(const StageEntry& entry, ConfigErrors& errors) {
  RewardStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  r.string("type", "");
  c.init = r.required_string("init");
  {
    ConfigReader d(r.object("data"), r.path_of("data"), errors);
    c.data.path = d.required_string("train");
    c.val_path = d.string("val", "");
    c.data.format = d.string("format", "preference");
    c.data.template_name = d.string("template", "chatml");
    c.val_fraction = d.number("val_fraction", c.val_path.empty() ? 0.1 : 0.0);
    c.data.skip_bad_lines = d.boolean("skip_bad_lines", false);
    c.data.max_records = d.integer("max_records", -1);
    d.one_of("format", c.data.format, {"preference", "hh"});
    d.one_of("template", c.data.template_name, {"chatml", "llama2", "alpaca", "plain"});
    d.require(c.val_fraction >= 0 && c.val_fraction < 1, "val_fraction", "must be in [0, 1)");
    d.require(c.val_path.empty() || c.val_fraction == 0, "val_fraction",
              "give either data.val or data.val_fraction, not both");
    d.require(c.data.max_records == -1 || c.data.max_records >= 1, "max_records",
              "must be at least 1 (or -1: all)");
    if (!c.data.path.empty() && !path_exists(c.data.path))
      errors.add(d.path_of("train"), "file " + c.data.path + " does not exist");
    if (!c.val_path.empty() && !path_exists(c.val_path))
      errors.add(d.path_of("val"), "file " + c.val_path + " does not exist");
  }
  {
    ConfigReader l(r.object("loss"), r.path_of("loss"), errors);
    c.use_margin = l.boolean("use_margin", true);
    c.center_coef = l.number("center_coef", 0.0);
    l.require(c.center_coef >= 0 && std::isfinite(c.center_coef), "center_coef", "must be >= 0");
  }
  const bool has_val = !c.val_path.empty() || c.val_fraction > 0;
  {
    ConfigReader n(r.object("normalize"), r.path_of("normalize"), errors);
    c.normalize_reference = n.string("reference", has_val ? "val_chosen" : "train_chosen");
    const std::string& ref = c.normalize_reference;
    if (ref == "val_chosen") {
      n.require(has_val, "reference",
                "\"val_chosen\" needs validation data (data.val or data.val_fraction)");
    } else if (ref != "train_chosen" && ref != "none" && !path_exists(ref)) {
      errors.add(n.path_of("reference"), "'" + ref +
                                             "' is neither val_chosen, train_chosen, none nor an "
                                             "existing preference file");
    }
  }
  c.train = parse_train_config(r.object("train"), r.path_of("train"), errors);
  c.data.max_seq_len = c.train.max_seq_len;
  return c;
}

nlohmann::json reward_stated_values(const RewardStageConfig& c) {
  nlohmann::json data = {{"train", c.data.path},
                         {"format", c.data.format},
                         {"template", c.data.template_name},
                         {"skip_bad_lines", c.data.skip_bad_lines},
                         {"max_records", c.data.max_records}};
  if (c.val_path.empty())
    data["val_fraction"] = c.val_fraction;
  else
    data["val"] = c.val_path;
  return {{"init", c.init},
          {"data", data},
          {"loss", {{"use_margin", c.use_margin}, {"center_coef", c.center_coef}}},
          {"normalize", {{"reference", c.normalize_reference}}},
          {"train", train_config_values(c.train)}};
}

// ---------------------------------------------------------------------------------------------
// Loss and evaluation

torch::Tensor pairwise_loss_sum(const torch::Tensor& chosen, const torch::Tensor& rejected,
                                const torch::Tensor& margin, double center_coef) {
  TORCH_CHECK(
      chosen.dim() == 1 && chosen.sizes() == rejected.sizes() && chosen.sizes() == margin.sizes(),
      "pairwise_loss_sum: chosen, rejected and margin must be [P] alike");
  auto loss = -F::logsigmoid(chosen - rejected - margin).sum();
  if (center_coef > 0) loss = loss + center_coef * (chosen + rejected).pow(2).sum();
  return loss;
}

namespace {

// Pairs [begin, begin + count) of `order` as one forward batch: chosen rows first, then rejected.
struct PairBatch {
  ScoreBatch rows;
  torch::Tensor margin;  // [P]
  int64_t pairs = 0;
  int64_t tokens = 0;
};

PairBatch make_pair_batch(const std::vector<PreferencePair>& pairs,
                          const std::vector<int64_t>& order, size_t begin, size_t count,
                          int64_t pad_id, bool use_margin) {
  std::vector<const std::vector<int64_t>*> rows;
  std::vector<float> margins;
  PairBatch b;
  for (size_t i = begin; i < begin + count; ++i)
    rows.push_back(&pairs[static_cast<size_t>(order[i])].chosen);
  for (size_t i = begin; i < begin + count; ++i) {
    const auto& p = pairs[static_cast<size_t>(order[i])];
    rows.push_back(&p.rejected);
    margins.push_back(use_margin ? static_cast<float>(p.margin) : 0.0f);
    b.tokens += static_cast<int64_t>(p.chosen.size() + p.rejected.size());
  }
  b.rows = make_score_batch(rows, pad_id);
  b.margin = torch::tensor(margins, torch::kFloat);
  b.pairs = static_cast<int64_t>(count);
  return b;
}

// Running sums of a set of pairs' figures.
struct PairTotals {
  double loss = 0, correct = 0, margin = 0, chosen = 0, rejected = 0;
  int64_t pairs = 0;
  void add(const torch::Tensor& chosen_r, const torch::Tensor& rejected_r,
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
  // Sums over the ranks of a data-parallel group.
  void reduce(const dist::Group& group) {
    auto sums = group.sum({loss, correct, margin, chosen, rejected, static_cast<double>(pairs)});
    loss = sums[0], correct = sums[1], margin = sums[2], chosen = sums[3], rejected = sums[4];
    pairs = static_cast<int64_t>(sums[5]);
  }
  RewardEvalResult result() const {
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
};

std::vector<int64_t> identity_order(size_t n) {
  std::vector<int64_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int64_t>(i);
  return order;
}

}  // namespace

RewardEvalResult evaluate_pairs(TransformerImpl& model, const std::vector<PreferencePair>& pairs,
                                int64_t pad_id, int64_t micro_batch, int64_t max_batches,
                                double offset, bool use_margin, bool bf16,
                                const dist::Group& group) {
  check(micro_batch >= 1, "evaluate_pairs: micro_batch must be at least 1");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const auto order = identity_order(pairs.size());
  const auto device = model.parameters().front().device();
  PairTotals totals;
  int64_t batch_index = 0;
  for (size_t begin = 0; begin < pairs.size();
       begin += static_cast<size_t>(micro_batch), ++batch_index) {
    if (max_batches > 0 && batch_index >= max_batches) break;
    if (batch_index % group.size() != group.rank()) continue;  // another rank's batch
    const size_t count = std::min(pairs.size() - begin, static_cast<size_t>(micro_batch));
    auto batch = make_pair_batch(pairs, order, begin, count, pad_id, use_margin);
    torch::Tensor scores;
    {
      compat::AutocastGuard cast(bf16, device);
      scores = raw_scores(model, batch.rows).cpu() - offset;
    }
    const int64_t p = batch.pairs;
    totals.add(scores.narrow(0, 0, p), scores.narrow(0, p, p), batch.margin);
  }
  if (was_training) model.train();
  totals.reduce(group);
  return totals.result();
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
  PreferenceStats stats;
  auto pairs = load_preference_pairs(o, tok, &stats);
  const int64_t pad_id =
      rm.model->config.pad_token_id >= 0 ? rm.model->config.pad_token_id : reward_pad_id(tok);
  auto result = evaluate_pairs(*rm.model, pairs, pad_id, /*micro_batch=*/8, /*max_batches=*/0,
                               rm.metadata.offset);
  result.data = stats;
  return result;
}

// ---------------------------------------------------------------------------------------------
// Set-up

namespace {

std::vector<int64_t> epoch_order(size_t n, uint64_t seed, int64_t epoch) {
  return seeded_permutation(static_cast<int64_t>(n),
                            seed * 0x100000001b3ull + static_cast<uint64_t>(epoch) + 1);
}

nlohmann::json eval_json(const RewardEvalResult& r, const std::string& prefix) {
  return {{prefix + "accuracy", r.accuracy},
          {prefix + "loss", r.loss},
          {prefix + "margin", r.margin},
          {prefix + "chosen_reward", r.chosen_reward},
          {prefix + "rejected_reward", r.rejected_reward}};
}

// Mean raw score of the reference sequences (the normalisation offset).
double reference_mean(TransformerImpl& model, const std::vector<std::vector<int64_t>>& reference,
                      int64_t pad_id, int64_t micro_batch) {
  const auto scores = score_sequences(model, reference, pad_id, micro_batch);
  double sum = 0;
  for (double s : scores) sum += s;
  return scores.empty() ? 0.0 : sum / static_cast<double>(scores.size());
}

// The init's body with a scalar head (a fresh N(0, 1/(d+1)) head when the init is an LM), its
// tokenizer, on the device in training mode.
struct RewardSetUp {
  Transformer model;
  std::string tokenizer_path;
  Tokenizer tokenizer;
  int64_t pad_id;
};

RewardSetUp set_up_model(const Recipe& recipe, const RewardStageConfig& c,
                         const torch::Device& device) {
  const std::string init_dir = resolve_model_reference(recipe, c.init);
  const std::string tokenizer_path = tokenizer_path_in(init_dir);
  Transformer model = load_hf_model(init_dir, /*num_labels=*/1);
  Tokenizer tokenizer(tokenizer_path);
  tokenizer.check_matches(model->config, c.init);
  check(c.train.max_seq_len <= model->config.max_position_embeddings,
        "stage " + c.name + ": train.max_seq_len " + std::to_string(c.train.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(model->config.max_position_embeddings));
  const int64_t pad_id = reward_pad_id(tokenizer);
  model->config.pad_token_id = pad_id;
  model->to(device);
  model->train();
  model->model->activation_checkpointing = c.train.activation_checkpointing;
  return {model, tokenizer_path, std::move(tokenizer), pad_id};
}

struct RewardData {
  std::vector<PreferencePair> train, val;
  PreferenceStats stats, val_stats;
};

RewardData load_data(const Recipe& recipe, const RewardStageConfig& c, const Tokenizer& tokenizer) {
  RewardData data;
  std::vector<PreferencePair> all = load_preference_pairs(c.data, tokenizer, &data.stats);
  if (!c.val_path.empty()) {
    data.train = std::move(all);
    PreferenceDataOptions val_options = c.data;
    val_options.path = c.val_path;
    val_options.max_records = -1;
    data.val = load_preference_pairs(val_options, tokenizer, &data.val_stats);
  } else if (c.val_fraction > 0) {
    split_preference_validation(all, c.val_fraction, recipe.run.seed, &data.train, &data.val);
  } else {
    data.train = std::move(all);
  }
  const PreferenceStats& s = data.stats;
  const PreferenceStats& v = data.val_stats;
  std::printf(
      "[%s] data: %lld records -> %lld train / %lld validation pairs; dropped %lld identical, "
      "%lld with a prompt over %lld tokens; %lld sequences truncated; %lld bad lines skipped\n",
      c.name.c_str(), (long long)s.records, (long long)data.train.size(),
      (long long)data.val.size(), (long long)(s.identical + v.identical),
      (long long)(s.prompt_too_long + v.prompt_too_long), (long long)c.train.max_seq_len,
      (long long)(s.truncated + v.truncated), (long long)(s.skipped + v.skipped));
  std::fflush(stdout);
  return data;
}

// One optimizer step over a global batch of pairs, and the validation pass.
struct RewardStepper {
  TransformerImpl& model;
  ParallelAdamW& optimizer;
  const RewardStageConfig& config;
  const RewardData& data;
  const dist::Group& data_parallel;
  int64_t pad_id;
  int64_t local_pairs;  // this rank's slice of every global batch
  bool bf16;

  StepReport step(const StepContext& context, const std::vector<int64_t>& picked) const {
    const TrainConfig& train = config.train;
    const double lr =
        set_scheduled_learning_rate(optimizer, train.schedule_options(), context.step);
    optimizer.zero_grad();
    double loss_sum = 0;
    int64_t tokens = 0;
    PairTotals totals;
    const auto device = model.parameters().front().device();
    const int64_t first = data_parallel.rank() * local_pairs;
    for (int64_t begin = first; begin < first + local_pairs; begin += train.micro_batch_size) {
      const int64_t count = std::min(train.micro_batch_size, first + local_pairs - begin);
      auto batch = make_pair_batch(data.train, picked, static_cast<size_t>(begin),
                                   static_cast<size_t>(count), pad_id, config.use_margin);
      torch::Tensor scores;
      {
        compat::AutocastGuard cast(bf16, device);
        scores = raw_scores(model, batch.rows).cpu();
      }
      const int64_t pairs = batch.pairs;
      auto chosen = scores.narrow(0, 0, pairs), rejected = scores.narrow(0, pairs, pairs);
      auto loss = pairwise_loss_sum(chosen, rejected, batch.margin, config.center_coef);
      (loss / static_cast<double>(train.batch_size)).backward();
      loss_sum += loss.item<double>();
      tokens += batch.tokens;
      totals.add(chosen, rejected, batch.margin);
    }
    const auto global = data_parallel.sum({loss_sum, static_cast<double>(tokens)});
    const double loss = global[0] / static_cast<double>(train.batch_size);
    totals.reduce(data_parallel);
    const double grad_norm =
        apply_update(optimizer, context.guard, loss, train.grad_clip, context.step + 1);
    const RewardEvalResult figures = totals.result();
    StepReport report;
    report.record = {{"loss", loss},
                     {"accuracy", figures.accuracy},
                     {"margin", figures.margin},
                     {"chosen_reward", figures.chosen_reward},
                     {"rejected_reward", figures.rejected_reward},
                     {"lr", lr},
                     {"grad_norm", grad_norm}};
    report.shown = {{"loss", loss}, {"acc", figures.accuracy}, {"lr", lr}};
    report.tokens = global[1];
    return report;
  }

  // The validation pairs' figures with rewards less `offset` (`max_batches` 0: all of them).
  RewardEvalResult validation(double offset, int64_t max_batches) const {
    return evaluate_pairs(model, data.val, pad_id, config.train.micro_batch_size, max_batches,
                          offset, config.use_margin, bf16, data_parallel);
  }
};

// The normalisation offset and how many chosen responses it is the mean raw reward of.
struct RewardOffset {
  double offset = 0;
  int64_t sequences = 0;
};

RewardOffset normalisation_offset(TransformerImpl& model, const RewardStageConfig& c,
                                  const RewardData& data, const Tokenizer& tokenizer,
                                  int64_t pad_id) {
  model.eval();
  std::vector<std::vector<int64_t>> reference;
  if (c.normalize_reference == "val_chosen" || c.normalize_reference == "train_chosen") {
    for (const auto& pair : c.normalize_reference == "val_chosen" ? data.val : data.train)
      reference.push_back(pair.chosen);
  } else if (c.normalize_reference != "none") {
    PreferenceDataOptions reference_options = c.data;
    reference_options.path = c.normalize_reference;
    reference_options.max_records = -1;
    for (auto& pair : load_preference_pairs(reference_options, tokenizer, nullptr))
      reference.push_back(std::move(pair.chosen));
  }
  const double offset = reference_mean(model, reference, pad_id, 2 * c.train.micro_batch_size);
  std::printf("[%s] normalisation: offset %.6f (mean raw reward of %zu %s sequences)\n",
              c.name.c_str(), offset, reference.size(), c.normalize_reference.c_str());
  return {offset, static_cast<int64_t>(reference.size())};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Run

nlohmann::json run_reward_stage(const Recipe& recipe, const RewardStageConfig& c) {
  require_no_tensor_parallel(recipe, c.name, "reward");
  const TrainConfig& train = c.train;
  StageLoop loop(recipe, c.name, loop_schedule(train));
  RewardSetUp built = set_up_model(recipe, c, loop.device());
  TransformerImpl& model = *built.model;
  const RewardData data = load_data(recipe, c, built.tokenizer);
  check(c.normalize_reference != "val_chosen" || !data.val.empty(),
        "stage " + c.name +
            ": normalize.reference is val_chosen, but no validation pair is left "
            "of " +
            (c.val_path.empty() ? std::string("the split") : c.val_path) +
            "; name another reference (train_chosen, none or a file)");
  // Data parallel: each rank takes an equal slice of every global batch of batch_size pairs.
  const dist::Group& data_parallel = dist::world();
  const int64_t local_pairs = train.per_rank_batch(c.name, data_parallel, "pairs");
  ParallelAdamW optimizer(model, train.optimizer(), data_parallel, train.parallel_options());

  EpochCursor<int64_t> pairs(
      [&](int64_t epoch) { return epoch_order(data.train.size(), recipe.run.seed, epoch); });
  loop.resume({{{"model", &model}}, {{"optimizer", &optimizer}}}, [&](const nlohmann::json& state) {
    pairs.seek(state.at("epoch").get<int64_t>(), state.at("index").get<int64_t>());
  });

  const RewardStepper stepper{
      model,         optimizer,    c,           data,
      data_parallel, built.pad_id, local_pairs, use_bf16(train.precision, loop.device())};
  RewardEvalResult first_val, last_val;
  double last_loss = std::nan("");
  StageSteps steps;
  steps.step = [&](const StepContext& context) {
    StepReport report = stepper.step(context, pairs.take(train.batch_size));
    last_loss = report.record["loss"].get<double>();
    return report;
  };
  if (!data.val.empty())
    steps.evaluate = [&](int64_t at) {
      const RewardEvalResult figures = stepper.validation(0.0, train.eval_batches);
      (at == 0 ? first_val : last_val) = figures;
      StepReport report;
      report.record = eval_json(figures, "val_");
      report.shown = {{"val_acc", figures.accuracy}, {"val_margin", figures.margin}};
      return report;
    };
  steps.state = [&] { return nlohmann::json{{"epoch", pairs.epoch()}, {"index", pairs.index()}}; };
  loop.run(steps);

  const RewardOffset normalised =
      normalisation_offset(model, c, data, built.tokenizer, built.pad_id);
  const double offset = normalised.offset;
  nlohmann::json summary = {
      {"steps", loop.step()},
      {"final_loss", last_loss},
      {"skipped_steps", loop.guard().skipped()},
      {"train_pairs", data.train.size()},
      {"val_pairs", data.val.size()},
      {"dropped_identical", data.stats.identical + data.val_stats.identical},
      {"dropped_prompt_too_long", data.stats.prompt_too_long + data.val_stats.prompt_too_long},
      {"truncated_sequences", data.stats.truncated + data.val_stats.truncated},
      {"reward_offset", offset},
      {"normalize_reference", c.normalize_reference},
      {"normalize_reference_sequences", normalised.sequences}};
  if (!data.val.empty()) {
    // Final validation figures with the offset applied (accuracy and margins do not change).
    const auto v = stepper.validation(offset, 0);
    summary.update(eval_json(v, "val_"));
    if (first_val.pairs > 0) summary["initial_val_accuracy"] = first_val.accuracy;
    std::printf(
        "[%s] validation (%lld pairs): accuracy %.4f  loss %.4f  margin %.4f  chosen %.4f  "
        "rejected %.4f\n",
        c.name.c_str(), (long long)v.pairs, v.accuracy, v.loss, v.margin, v.chosen_reward,
        v.rejected_reward);
  }
  if (!data_parallel.single()) summary["data_parallel_ranks"] = data_parallel.size();
  loop.report_optimizer_state(optimizer, summary);
  return loop.finish(summary, [&](const std::string& final_dir) {
    SaveOptions options;
    options.tokenizer_path = built.tokenizer_path;
    built.model->to(torch::kCPU);
    if (!dist::is_main()) return;
    save_hf_model(model, final_dir, options);
    write_reward_metadata(final_dir, {offset, c.data.template_name, train.max_seq_len});
  });
}

// ---------------------------------------------------------------------------------------------
// Registry entry

StageType reward_stage_type() {
  StageType type = typed_stage_type<RewardStageConfig>(parse_reward_stage, run_reward_stage);
  type.stated_defaults = [](const std::any& config) {
    return reward_stated_values(std::any_cast<const RewardStageConfig&>(config));
  };
  type.description = "a reward model: Bradley-Terry loss on preference pairs";
  type.batch_layout = [](const std::any& config, int ranks) {
    const int64_t batch = std::any_cast<const RewardStageConfig&>(config).train.batch_size;
    return "global batch " + std::to_string(batch) + " pairs = " + std::to_string(ranks) +
           " ranks x " + std::to_string(batch / ranks);
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    return std::vector<SummaryRow>{
        {stage + ": RM validation accuracy", summary.value("val_accuracy", nlohmann::json())}};
  };
  type.report_figures = {"val_accuracy", "val_loss", "val_margin", "reward_offset", "steps"};
  type.report_charts = {
      {"loss", "Loss (train and validation)", {"loss", "val_loss"}},
      {"accuracy", "Pair accuracy", {"accuracy", "val_accuracy"}},
      {"margin", "Margin (chosen minus rejected)", {"margin", "val_margin"}},
      {"rewards", "Rewards of chosen and rejected", {"chosen_reward", "rejected_reward"}},
      {"lr", "Learning rate", {"lr"}}};
  return type;
}

}  // namespace tiller
