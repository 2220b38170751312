#include "reward/reward_stage.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>  // std::exchange

#include "common/data/batching.h"  // seeded_permutation
#include "common/io/hf_dir.h"
#include "common/io/reward_model_dir.h"
#include "common/model/reward_model.h"
#include "common/model/shared_prefix.h"  // prefix_sharing_note
#include "common/recipe/preference_data_section.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/epoch_cursor.h"
#include "common/train/pairwise_reward.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/train/stage_loop.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "scaling/curve.h"

namespace tiller {

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
    const PreferenceDataSection section = read_preference_data_section(d);
    c.data = section.data;
    c.val_path = section.val_path;
    c.val_fraction = section.val_fraction;
  }
  {
    ConfigReader l(r.object("loss"), r.path_of("loss"), errors);
    c.use_margin = l.boolean("use_margin", true);
    c.center_coef = l.number("center_coef", 0.0);
    l.require(c.center_coef >= 0 && std::isfinite(c.center_coef), "center_coef", "must be >= 0");
    if (l.has("rankings")) {
      c.ranking_loss = l.string("rankings", c.ranking_loss);
      l.one_of("rankings", c.ranking_loss, {"instructgpt", "pairs"});
      l.require(is_ranking_format(c.data.format), "rankings",
                "applies to the ranking formats (data.format ranking or oasst) only");
    }
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
  c.share_prefixes = r.boolean("share_prefixes", c.share_prefixes);
  c.train = parse_train_config(r.object("train"), r.path_of("train"), errors);
  c.data.max_seq_len = c.train.max_seq_len;
  c.lora = read_lora_section(r, errors);
  train_score_head_whole(c.lora);  // the score head is new (or a reward model's own)
  return c;
}

nlohmann::json reward_stated_values(const RewardStageConfig& c) {
  const nlohmann::json data = preference_data_section_values({c.data, c.val_path, c.val_fraction});
  nlohmann::json loss = {{"use_margin", c.use_margin}, {"center_coef", c.center_coef}};
  if (is_ranking_format(c.data.format)) loss["rankings"] = c.ranking_loss;
  nlohmann::json stated = {{"init", c.init},
                           {"data", data},
                           {"loss", loss},
                           {"normalize", {{"reference", c.normalize_reference}}},
                           {"share_prefixes", c.share_prefixes},
                           {"train", train_config_values(c.train)}};
  if (c.lora.enabled) stated["lora"] = lora_section_values(c.lora);
  return stated;
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
  apply_lora_section(*model, c.lora, init_dir, recipe.run.seed, c.name);
  model->to(device);
  model->train();
  model->model->activation_checkpointing = c.train.activation_checkpointing;
  return {model, tokenizer_path, std::move(tokenizer), pad_id};
}

struct RewardData {
  RewardExamples train, val;
  bool from_rankings = false;                     // data.format ranking or oasst
  PreferenceStats stats, val_stats;               // the pair formats' loading figures
  RankingStats ranking_stats, val_ranking_stats;  // the ranking formats'
};

RewardData load_pair_data(const Recipe& recipe, const RewardStageConfig& c,
                          const Tokenizer& tokenizer) {
  SplitPairs split =
      load_split_pairs({c.data, c.val_path, c.val_fraction}, tokenizer, recipe.run.seed);
  RewardData data;
  data.train.pairs = std::move(split.train);
  data.val.pairs = std::move(split.val);
  data.stats = split.stats;
  data.val_stats = split.val_stats;
  const PreferenceStats& s = data.stats;
  const PreferenceStats& v = data.val_stats;
  std::printf(
      "[%s] data: %lld records -> %lld train / %lld validation pairs; dropped %lld identical, "
      "%lld with a prompt over %lld tokens; %lld sequences truncated; %lld bad lines skipped\n",
      c.name.c_str(), (long long)s.records, (long long)data.train.size(),
      (long long)data.val.size(), (long long)(s.identical + v.identical),
      (long long)(s.prompt_too_long + v.prompt_too_long), (long long)c.train.max_seq_len,
      (long long)(s.truncated + v.truncated), (long long)(s.skipped + v.skipped));
  return data;
}

// Rankings as examples: themselves ("instructgpt") or their pairs ("pairs"); the rankings stay
// either way, for the normalisation reference (their best responses).
RewardExamples ranking_examples(std::vector<TokenizedRanking> rankings, bool listwise) {
  RewardExamples examples;
  examples.listwise = listwise;
  if (!listwise)
    for (const auto& ranking : rankings)
      for (auto& pair : ranking_preference_pairs(ranking))
        examples.pairs.push_back(std::move(pair));
  examples.rankings = std::move(rankings);
  return examples;
}

// Rankings are split (or read) into train and validation before any expansion into pairs, so
// that both losses see the same validation comparisons.
RewardData load_ranking_data(const Recipe& recipe, const RewardStageConfig& c,
                             const Tokenizer& tokenizer) {
  RewardData data;
  data.from_rankings = true;
  SplitRankings split =
      load_split_rankings({c.data, c.val_path, c.val_fraction}, tokenizer, recipe.run.seed);
  data.ranking_stats = split.stats;
  data.val_ranking_stats = split.val_stats;
  const bool listwise = c.ranking_loss == "instructgpt";
  data.train = ranking_examples(std::move(split.train), listwise);
  data.val = ranking_examples(std::move(split.val), listwise);
  const RankingStats& s = data.ranking_stats;
  const RankingStats& v = data.val_ranking_stats;
  std::printf(
      "[%s] data: %lld records -> %lld train / %lld validation rankings (%lld / %lld "
      "comparisons, trained as %s); dropped %lld identical responses, %lld rankings without a "
      "comparison, %lld with a prompt over %lld tokens; left out %lld deleted OASST trees, %lld "
      "deleted and %lld unranked replies; %lld sequences truncated; %lld bad lines skipped\n",
      c.name.c_str(), (long long)s.records, (long long)data.train.rankings.size(),
      (long long)data.val.rankings.size(), (long long)data.train.comparisons(),
      (long long)data.val.comparisons(), listwise ? "rankings" : "pairs",
      (long long)(s.identical + v.identical), (long long)(s.no_comparison + v.no_comparison),
      (long long)(s.prompt_too_long + v.prompt_too_long), (long long)c.train.max_seq_len,
      (long long)(s.deleted_trees + v.deleted_trees),
      (long long)(s.deleted_messages + v.deleted_messages),
      (long long)(s.unranked_replies + v.unranked_replies), (long long)(s.truncated + v.truncated),
      (long long)(s.skipped + v.skipped));
  return data;
}

RewardData load_data(const Recipe& recipe, const RewardStageConfig& c, const Tokenizer& tokenizer) {
  RewardData data = is_ranking_format(c.data.format) ? load_ranking_data(recipe, c, tokenizer)
                                                     : load_pair_data(recipe, c, tokenizer);
  std::fflush(stdout);
  return data;
}

// The loading figures the summary states.
nlohmann::json data_summary(const RewardData& data) {
  if (!data.from_rankings) {
    const PreferenceStats& s = data.stats;
    const PreferenceStats& v = data.val_stats;
    return {{"train_pairs", data.train.size()},
            {"val_pairs", data.val.size()},
            {"dropped_identical", s.identical + v.identical},
            {"dropped_prompt_too_long", s.prompt_too_long + v.prompt_too_long},
            {"truncated_sequences", s.truncated + v.truncated}};
  }
  const RankingStats& s = data.ranking_stats;
  const RankingStats& v = data.val_ranking_stats;
  return {{"train_rankings", data.train.rankings.size()},
          {"val_rankings", data.val.rankings.size()},
          {"train_comparisons", data.train.comparisons()},
          {"val_comparisons", data.val.comparisons()},
          {"dropped_identical_responses", s.identical + v.identical},
          {"dropped_no_comparison", s.no_comparison + v.no_comparison},
          {"dropped_prompt_too_long", s.prompt_too_long + v.prompt_too_long},
          {"oasst_deleted_trees", s.deleted_trees + v.deleted_trees},
          {"oasst_deleted_messages", s.deleted_messages + v.deleted_messages},
          {"oasst_unranked_replies", s.unranked_replies + v.unranked_replies},
          {"truncated_sequences", s.truncated + v.truncated}};
}

// One optimizer step over a global batch of examples (pairs or rankings), and the validation
// pass.
struct RewardStepper {
  TransformerImpl& model;
  ParallelAdamW& optimizer;
  const RewardStageConfig& config;
  const RewardData& data;
  const dist::Group& data_parallel;
  int64_t pad_id;
  int64_t local_examples;  // this rank's slice of every global batch
  bool bf16;
  int64_t* responses_scored;          // sequences scored by training forwards so far, every rank's
  mutable bool told_sharing = false;  // prefix_sharing_note printed

  StepReport step(const StepContext& context, const std::vector<int64_t>& picked) const {
    const TrainConfig& train = config.train;
    const double lr =
        set_scheduled_learning_rate(optimizer, train.schedule_options(), context.step);
    optimizer.zero_grad();
    double loss_sum = 0;
    int64_t tokens = 0;
    PairTotals totals;
    const auto device = model.parameters().front().device();
    int64_t responses = 0, micro_batches = 0, packed_micro_batches = 0;
    const int64_t first = data_parallel.rank() * local_examples;
    for (int64_t begin = first; begin < first + local_examples; begin += train.micro_batch_size) {
      const int64_t count = std::min(train.micro_batch_size, first + local_examples - begin);
      auto batch = data.train.batch(picked, static_cast<size_t>(begin), static_cast<size_t>(count),
                                    pad_id, config.use_margin);
      torch::Tensor scores;  // [R]: one score per response
      bool packed = false;
      {
        compat::AutocastGuard cast(bf16, device);
        scores = batch.scores(model, config.share_prefixes, &packed).cpu();
      }
      ++micro_batches;
      packed_micro_batches += packed;
      auto better = scores.index_select(0, batch.better),
           worse = scores.index_select(0, batch.worse);
      auto loss = batch.weight.defined()
                      ? ranking_loss_sum(better, worse, batch.weight, config.center_coef)
                      : pairwise_loss_sum(better, worse, batch.margin, config.center_coef);
      (loss / static_cast<double>(train.batch_size)).backward();
      loss_sum += loss.item<double>();
      tokens += batch.tokens;
      responses += batch.responses();
      totals.add(better, worse, batch.margin);
    }
    const auto global = data_parallel.sum(
        {loss_sum, static_cast<double>(tokens), static_cast<double>(responses),
         static_cast<double>(micro_batches), static_cast<double>(packed_micro_batches)});
    *responses_scored += static_cast<int64_t>(global[2]);
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
                     {"grad_norm", grad_norm},
                     {"responses_scored", *responses_scored}};
    if (config.share_prefixes) {
      report.record["shared_prefix_batches"] = global[4] / std::max(1.0, global[3]);
      if (!std::exchange(told_sharing, true))
        std::printf("%s\n", prefix_sharing_note(config.name, static_cast<int64_t>(global[4]),
                                                static_cast<int64_t>(global[3]))
                                .c_str());
    }
    report.shown = {{"loss", loss}, {"acc", figures.accuracy}, {"lr", lr}};
    report.tokens = global[1];
    return report;
  }

  // The validation comparisons' figures with rewards less `offset` (`max_batches` 0: all).
  RewardEvalResult validation(double offset, int64_t max_batches) const {
    return evaluate_examples(model, data.val, pad_id, config.train.micro_batch_size, max_batches,
                             offset, config.use_margin, bf16, config.share_prefixes, data_parallel);
  }
};

// The chosen responses of pairs; of rankings, the best-ranked ones (all of a tie).
std::vector<std::vector<int64_t>> chosen_responses(const RewardExamples& examples) {
  std::vector<std::vector<int64_t>> chosen;
  if (examples.rankings.empty()) {
    for (const auto& pair : examples.pairs) chosen.push_back(pair.chosen);
    return chosen;
  }
  for (const auto& ranking : examples.rankings) {
    const int64_t best = *std::min_element(ranking.ranks.begin(), ranking.ranks.end());
    for (size_t i = 0; i < ranking.responses.size(); ++i)
      if (ranking.ranks[i] == best) chosen.push_back(ranking.responses[i]);
  }
  return chosen;
}

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
    reference = chosen_responses(c.normalize_reference == "val_chosen" ? data.val : data.train);
  } else if (c.normalize_reference != "none") {
    PreferenceDataOptions reference_options = c.data;
    reference_options.path = c.normalize_reference;
    reference_options.max_records = -1;
    RewardExamples file;
    if (is_ranking_format(c.data.format))
      file.rankings = load_rankings(reference_options, tokenizer, nullptr);
    else
      file.pairs = load_preference_pairs(reference_options, tokenizer, nullptr);
    reference = chosen_responses(file);
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
  StageLoop loop(
      recipe, c.name, loop_schedule(train),
      scaling::train_forecaster(train, recipe.run.seed, c.name, recipe.stage_dir(c.name)));
  RewardSetUp built = set_up_model(recipe, c, loop.device());
  TransformerImpl& model = *built.model;
  const RewardData data = load_data(recipe, c, built.tokenizer);
  check(c.normalize_reference != "val_chosen" || !data.val.empty(),
        "stage " + c.name +
            ": normalize.reference is val_chosen, but no validation pair is left "
            "of " +
            (c.val_path.empty() ? std::string("the split") : c.val_path) +
            "; name another reference (train_chosen, none or a file)");
  // Data parallel: each rank takes an equal slice of every global batch of batch_size examples.
  const dist::Group& data_parallel = dist::world();
  const int64_t local_examples =
      train.per_rank_batch(c.name, data_parallel, data.train.listwise ? "rankings" : "pairs");
  ParallelAdamW optimizer(model, train.optimizer(), data_parallel, train.parallel_options());

  EpochCursor<int64_t> examples(
      [&](int64_t epoch) { return epoch_order(data.train.size(), recipe.run.seed, epoch); });
  int64_t responses_scored = 0;
  loop.resume({{{"model", &model}}, {{"optimizer", &optimizer}}}, [&](const nlohmann::json& state) {
    examples.seek(state.at("epoch").get<int64_t>(), state.at("index").get<int64_t>());
    responses_scored = state.value("responses_scored", int64_t{0});  // 0 before it was kept
  });

  const RewardStepper stepper{model,
                              optimizer,
                              c,
                              data,
                              data_parallel,
                              built.pad_id,
                              local_examples,
                              use_bf16(train.precision, loop.device()),
                              &responses_scored};
  RewardEvalResult first_val, last_val;
  double last_loss = std::nan("");
  StageSteps steps;
  steps.step = [&](const StepContext& context) {
    StepReport report = stepper.step(context, examples.take(train.batch_size));
    last_loss = report.record["loss"].get<double>();
    return report;
  };
  if (!data.val.empty())
    steps.evaluate = [&](int64_t at) {
      const RewardEvalResult figures = stepper.validation(0.0, train.eval_batches);
      (at == 0 ? first_val : last_val) = figures;
      StepReport report;
      report.record = eval_json(figures, "val_");
      report.record["responses_scored"] = responses_scored;
      report.shown = {{"val_acc", figures.accuracy}, {"val_margin", figures.margin}};
      return report;
    };
  steps.state = [&] {
    return nlohmann::json{{"epoch", examples.epoch()},
                          {"index", examples.index()},
                          {"responses_scored", responses_scored}};
  };
  loop.run(steps);

  const RewardOffset normalised =
      normalisation_offset(model, c, data, built.tokenizer, built.pad_id);
  const double offset = normalised.offset;
  nlohmann::json summary = {{"steps", loop.step()},
                            {"final_loss", last_loss},
                            {"skipped_steps", loop.guard().skipped()},
                            {"responses_scored", responses_scored},
                            {"reward_offset", offset},
                            {"normalize_reference", c.normalize_reference},
                            {"normalize_reference_sequences", normalised.sequences}};
  summary.update(data_summary(data));
  if (data.from_rankings) summary["ranking_loss"] = c.ranking_loss;
  if (!data.val.empty()) {
    // Final validation figures with the offset applied (accuracy and margins do not change).
    const auto v = stepper.validation(offset, 0);
    summary.update(eval_json(v, "val_"));
    if (first_val.pairs > 0) summary["initial_val_accuracy"] = first_val.accuracy;
    std::printf(
        "[%s] validation (%lld comparisons): accuracy %.4f  loss %.4f  margin %.4f  chosen %.4f  "
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
  type.description =
      "a reward model: Bradley-Terry loss on preference pairs, InstructGPT's loss on rankings";
  type.data_parallel_error = [](const std::any& config, int ranks) {
    return std::any_cast<const RewardStageConfig&>(config).train.batch_division_error(ranks);
  };
  type.batch_layout = [](const std::any& config, int ranks) {
    const auto& c = std::any_cast<const RewardStageConfig&>(config);
    const bool listwise = is_ranking_format(c.data.format) && c.ranking_loss == "instructgpt";
    const int64_t batch = c.train.batch_size;
    return "global batch " + std::to_string(batch) + (listwise ? " rankings" : " pairs") + " = " +
           std::to_string(ranks) + " ranks x " + std::to_string(batch / ranks);
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
  type.report_charts.push_back(scaling::forecast_chart());
  return type;
}

}  // namespace tiller
