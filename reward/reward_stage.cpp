#include "reward/reward_stage.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/data/batching.h"  // seeded_permutation
#include "common/io/checkpoint.h"
#include "common/io/hf_dir.h"
#include "common/model/reward_model.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/metrics.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/optimizer.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/interrupt.h"

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
// Loop

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

}  // namespace

nlohmann::json run_reward_stage(const Recipe& recipe, const RewardStageConfig& c) {
  check(recipe.run.tensor_parallel == 1, "stage " + c.name +
                                             ": reward stages do not support run.tensor_parallel " +
                                             std::to_string(recipe.run.tensor_parallel) +
                                             " yet; run them with run.tensor_parallel=1");
  const std::string stage_dir = recipe.stage_dir(c.name);
  const std::string checkpoints = stage_dir + "/checkpoints";
  const TrainConfig& t = c.train;
  torch::manual_seed(recipe.run.seed);
  const torch::Device device(recipe.run.device);

  // Model: the init's body with a scalar head (a fresh N(0, 1/(d+1)) head when the init is an LM).
  const std::string init_dir = resolve_model_reference(recipe, c.init);
  const std::string tokenizer_path = tokenizer_path_in(init_dir);
  Transformer model = load_hf_model(init_dir, /*num_labels=*/1);
  Tokenizer tok(tokenizer_path);
  tok.check_matches(model->config, c.init);
  check(t.max_seq_len <= model->config.max_position_embeddings,
        "stage " + c.name + ": train.max_seq_len " + std::to_string(t.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(model->config.max_position_embeddings));
  const int64_t pad_id = reward_pad_id(tok);
  model->config.pad_token_id = pad_id;
  model->to(device);
  model->train();
  model->model->activation_checkpointing = t.activation_checkpointing;
  const bool bf16 = use_bf16(t.precision, device);

  // Data
  PreferenceStats stats, val_stats;
  std::vector<PreferencePair> all = load_preference_pairs(c.data, tok, &stats), train, val;
  if (!c.val_path.empty()) {
    train = std::move(all);
    PreferenceDataOptions vo = c.data;
    vo.path = c.val_path;
    vo.max_records = -1;
    val = load_preference_pairs(vo, tok, &val_stats);
  } else if (c.val_fraction > 0) {
    split_preference_validation(all, c.val_fraction, recipe.run.seed, &train, &val);
  } else {
    train = std::move(all);
  }
  std::printf(
      "[%s] data: %lld records -> %lld train / %lld validation pairs; dropped %lld identical, "
      "%lld with a prompt over %lld tokens; %lld sequences truncated; %lld bad lines skipped\n",
      c.name.c_str(), (long long)stats.records, (long long)train.size(), (long long)val.size(),
      (long long)(stats.identical + val_stats.identical),
      (long long)(stats.prompt_too_long + val_stats.prompt_too_long), (long long)t.max_seq_len,
      (long long)(stats.truncated + val_stats.truncated),
      (long long)(stats.skipped + val_stats.skipped));
  std::fflush(stdout);

  // Data parallel: each rank takes an equal slice of every global batch of t.batch_size pairs.
  const dist::Group& dp = dist::world();
  const int64_t local_pairs = t.per_rank_batch(c.name, dp, "pairs");

  // Optimizer, and resume
  ParallelAdamW optimizer(*model, t.optimizer(), dp, t.parallel_options());
  CheckpointParts parts{{{"model", model.get()}}, {{"optimizer", &optimizer}}};
  int64_t step = 0, epoch = 0, index = 0;
  NonFiniteGuard guard(c.name, checkpoints, t.max_nonfinite_steps);
  guard.set_spike_filter(t.loss_spike_zscore, t.loss_spike_window);
  auto state = load_latest_checkpoint(checkpoints, parts);
  if (!state.is_null()) {
    step = state.at("step").get<int64_t>();
    epoch = state.at("epoch").get<int64_t>();
    index = state.at("index").get<int64_t>();
    guard.restore(state);
    std::printf("[%s] resumed from %s/step-%lld\n", c.name.c_str(), checkpoints.c_str(),
                (long long)step);
  }
  // Step step's record was logged before its checkpoint: lines after it are a killed attempt's.
  const int64_t first_unlogged = state.is_null() ? 0 : step + 1;
  MetricsLog metrics(stage_dir, first_unlogged);
  Progress progress(step, t.steps);
  std::vector<int64_t> order = epoch_order(train.size(), recipe.run.seed, epoch);

  auto save = [&](int64_t at_step) {
    nlohmann::json s = {{"step", at_step}, {"epoch", epoch}, {"index", index}};
    s.update(guard.to_json());
    save_checkpoint(checkpoints, parts, s, t.keep_checkpoints);
  };
  auto evaluate = [&]() {
    return evaluate_pairs(*model, val, pad_id, t.micro_batch_size, t.eval_batches, 0.0,
                          c.use_margin, bf16, dp);
  };

  RewardEvalResult first_val, last_val;
  if (step == 0 && !val.empty()) {
    first_val = evaluate();
    nlohmann::json record = eval_json(first_val, "val_");
    record["step"] = 0;
    metrics.log(record);
    std::printf("[%s] step 0/%lld  val_accuracy %.4f  val_loss %.4f  val_margin %.4f\n",
                c.name.c_str(), (long long)t.steps, first_val.accuracy, first_val.loss,
                first_val.margin);
  }

  double last_loss = std::nan("");
  RewardEvalResult last_train;
  while (step < t.steps) {
    const auto started = std::chrono::steady_clock::now();
    const double lr = learning_rate(t.schedule_options(), step);
    optimizer.set_learning_rate(lr);

    // The step's pairs, continuing into the next epoch's order when this one runs out.
    std::vector<int64_t> picked;
    while (static_cast<int64_t>(picked.size()) < t.batch_size) {
      if (index >= static_cast<int64_t>(order.size())) {
        ++epoch;
        index = 0;
        order = epoch_order(train.size(), recipe.run.seed, epoch);
      }
      picked.push_back(order[static_cast<size_t>(index++)]);
    }

    optimizer.zero_grad();
    double loss_sum = 0;
    int64_t tokens = 0;
    PairTotals totals;
    const int64_t first = dp.rank() * local_pairs;
    for (int64_t begin = first; begin < first + local_pairs; begin += t.micro_batch_size) {
      const int64_t count = std::min(t.micro_batch_size, first + local_pairs - begin);
      auto batch = make_pair_batch(train, picked, static_cast<size_t>(begin),
                                   static_cast<size_t>(count), pad_id, c.use_margin);
      torch::Tensor scores;
      {
        compat::AutocastGuard cast(bf16, device);
        scores = raw_scores(*model, batch.rows).cpu();
      }
      const int64_t p = batch.pairs;
      auto chosen = scores.narrow(0, 0, p), rejected = scores.narrow(0, p, p);
      auto loss = pairwise_loss_sum(chosen, rejected, batch.margin, c.center_coef);
      (loss / static_cast<double>(t.batch_size)).backward();
      loss_sum += loss.item<double>();
      tokens += batch.tokens;
      totals.add(chosen, rejected, batch.margin);
    }
    const auto global = dp.sum({loss_sum, static_cast<double>(tokens)});
    const double loss = global[0] / static_cast<double>(t.batch_size);
    totals.reduce(dp);
    const double grad_norm = optimizer.reduce_gradients_and_clip(t.grad_clip);
    if (guard.accept(loss, grad_norm, step + 1)) {
      optimizer.step();
    } else {
      optimizer.zero_grad();
    }
    ++step;
    last_loss = loss;
    last_train = totals.result();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double tokens_per_s = global[1] / std::max(seconds, 1e-9);

    nlohmann::json record = {{"step", step},
                             {"loss", loss},
                             {"accuracy", last_train.accuracy},
                             {"margin", last_train.margin},
                             {"chosen_reward", last_train.chosen_reward},
                             {"rejected_reward", last_train.rejected_reward},
                             {"lr", lr},
                             {"grad_norm", grad_norm},
                             {"tokens_per_s", tokens_per_s},
                             {"skipped_steps", guard.skipped()},
                             {"spike_skipped_steps", guard.spikes_skipped()}};
    const bool eval_now =
        !val.empty() && ((t.eval_every > 0 && step % t.eval_every == 0) || step == t.steps);
    if (eval_now) {
      last_val = evaluate();
      record.update(eval_json(last_val, "val_"));
    }
    if (step % t.log_every == 0 || step == t.steps || eval_now) {
      metrics.log(record);
      std::map<std::string, double> shown = {
          {"loss", loss}, {"acc", last_train.accuracy}, {"lr", lr}};
      if (eval_now) {
        shown["val_acc"] = last_val.accuracy;
        shown["val_margin"] = last_val.margin;
      }
      std::printf("[%s] %s\n", c.name.c_str(), progress.line(step, shown, tokens_per_s).c_str());
      std::fflush(stdout);
    }
    const bool save_now =
        (t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || step == t.steps;
    if (save_now) save(step);
    stop_if_interrupted(c.name, step, save_now, [&] { save(step); });
  }

  // Normalise: the reference set's mean reward becomes 0.
  model->eval();
  std::vector<std::vector<int64_t>> reference;
  if (c.normalize_reference == "val_chosen" || c.normalize_reference == "train_chosen") {
    for (const auto& p : c.normalize_reference == "val_chosen" ? val : train)
      reference.push_back(p.chosen);
  } else if (c.normalize_reference != "none") {
    PreferenceDataOptions ro = c.data;
    ro.path = c.normalize_reference;
    ro.max_records = -1;
    for (auto& p : load_preference_pairs(ro, tok, nullptr))
      reference.push_back(std::move(p.chosen));
  }
  const double offset = reference_mean(*model, reference, pad_id, 2 * t.micro_batch_size);
  std::printf("[%s] normalisation: offset %.6f (mean raw reward of %zu %s sequences)\n",
              c.name.c_str(), offset, reference.size(), c.normalize_reference.c_str());

  nlohmann::json summary = {
      {"stage", c.name},
      {"type", "reward"},
      {"steps", step},
      {"final_loss", last_loss},
      {"skipped_steps", guard.skipped()},
      {"train_pairs", train.size()},
      {"val_pairs", val.size()},
      {"dropped_identical", stats.identical + val_stats.identical},
      {"dropped_prompt_too_long", stats.prompt_too_long + val_stats.prompt_too_long},
      {"truncated_sequences", stats.truncated + val_stats.truncated},
      {"reward_offset", offset},
      {"normalize_reference", c.normalize_reference}};
  if (!val.empty()) {
    // Final validation figures with the offset applied (accuracy and margins do not change).
    const auto v =
        evaluate_pairs(*model, val, pad_id, t.micro_batch_size, 0, offset, c.use_margin, bf16, dp);
    summary.update(eval_json(v, "val_"));
    if (first_val.pairs > 0) summary["initial_val_accuracy"] = first_val.accuracy;
    std::printf(
        "[%s] validation (%lld pairs): accuracy %.4f  loss %.4f  margin %.4f  chosen %.4f  "
        "rejected %.4f\n",
        c.name.c_str(), (long long)v.pairs, v.accuracy, v.loss, v.margin, v.chosen_reward,
        v.rejected_reward);
  }

  SaveOptions options;
  options.tokenizer_path = tokenizer_path;
  model->to(torch::kCPU);
  const std::string final_dir = stage_output_dir(recipe, c.name);
  if (!dp.single()) summary["data_parallel_ranks"] = dp.size();
  summary["optimizer_state_bytes_per_rank"] = optimizer.state_bytes_per_rank();
  const std::string state_line = optimizer.describe_state_per_rank();
  std::printf("[%s] %s\n", c.name.c_str(), state_line.c_str());
  if (dist::is_main()) {
    save_hf_model(*model, final_dir, options);
    write_reward_metadata(final_dir, {offset, c.data.template_name, t.max_seq_len});
    mark_stage_complete(recipe, c.name, summary);
  }
  dist::world().barrier();  // the next stage, on every rank, reads what rank 0 wrote
  std::printf("[%s] done: %s\n", c.name.c_str(), final_dir.c_str());
  return summary;
}

}  // namespace tiller
