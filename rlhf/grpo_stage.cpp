#include "rlhf/grpo_stage.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/data/batching.h"  // seeded_permutation
#include "common/data/preference_data.h"
#include "common/dist/process_group.h"
#include "common/io/hf_dir.h"
#include "common/io/reward_model_dir.h"
#include "common/model/reward_model.h"
#include "common/recipe/stage_io.h"
#include "common/rollout/batch_layout.h"
#include "common/tokenizer/tokenizer.h"
#include "common/train/epoch_cursor.h"
#include "common/train/metrics.h"
#include "common/train/precision.h"
#include "common/train/stage_loop.h"
#include "common/util/clock.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "rlhf/ppo_math.h"

namespace tiller {

// ---------------------------------------------------------------------------------------------
// Config

namespace {

const std::set<std::string> kAlgorithms = {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp"};

// rollout: groups per batch, group size and sampling.
void read_rollout(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                  GrpoStageConfig& c) {
  ConfigReader g(json, path, errors);
  c.prompts_per_iteration = g.integer("prompts_per_iteration", c.prompts_per_iteration);
  c.grpo.group_size = g.integer("group_size", c.grpo.group_size);
  read_on_policy_sampling(g, "GRPO", c.grpo.sampling);
  g.require(c.prompts_per_iteration >= 1, "prompts_per_iteration", "must be at least 1");
  // A group of one has no group to be relative to (REINFORCE++ whitens over the batch instead).
  const int64_t least = c.grpo.algorithm == "reinforce_pp" ? 1 : 2;
  g.require(c.grpo.group_size >= least, "group_size",
            "must be at least " + std::to_string(least) + " for algorithm " + c.grpo.algorithm);
}

// grpo: the update, dynamic sampling and the overlong penalty; defaults follow the algorithm.
void read_update(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                 GrpoStageConfig& c) {
  ConfigReader p(json, path, errors);
  GrpoOptions& o = c.grpo;
  const bool dapo = o.algorithm == "dapo";
  const int64_t batch = c.prompts_per_iteration * o.group_size;
  o.epochs = p.integer("epochs", o.epochs);
  o.mini_batch_size = p.integer("mini_batch_size", batch);
  o.micro_batch_size = p.integer("micro_batch_size", std::min<int64_t>(8, o.mini_batch_size));
  o.clip_low = p.number("clip_low", o.clip_low);
  o.clip_high = p.number("clip_high", dapo ? 0.28 : o.clip_low);
  o.loss_aggregation = p.string("loss_aggregation", default_loss_aggregation(o.algorithm));
  o.share_prompts = p.boolean("share_prompts", o.share_prompts);
  c.dynamic_sampling = p.boolean("dynamic_sampling", dapo);
  c.max_sampling_rounds = p.integer("max_sampling_rounds", c.max_sampling_rounds);
  c.overlong_buffer =
      p.integer("overlong_buffer", dapo ? std::max<int64_t>(1, o.sampling.max_new_tokens / 4) : 0);
  c.overlong_penalty = p.number("overlong_penalty", c.overlong_penalty);
  p.require(o.epochs >= 1, "epochs", "must be at least 1");
  p.require(o.mini_batch_size >= 1 && batch % std::max<int64_t>(1, o.mini_batch_size) == 0,
            "mini_batch_size",
            "must be at least 1 and divide the batch of " + std::to_string(batch) +
                " episodes (rollout.prompts_per_iteration x group_size)");
  p.require(
      o.micro_batch_size >= 1 && o.mini_batch_size % std::max<int64_t>(1, o.micro_batch_size) == 0,
      "micro_batch_size", "must be at least 1 and divide mini_batch_size");
  p.require(o.clip_low > 0 && o.clip_low < 1, "clip_low", "must be in (0, 1)");
  p.require(o.clip_high > 0, "clip_high", "must be positive");
  p.one_of("loss_aggregation", o.loss_aggregation,
           {"token_mean", "sequence_mean", "sequence_sum_constant"});
  p.require(c.max_sampling_rounds >= 1, "max_sampling_rounds", "must be at least 1");
  p.require(c.overlong_buffer >= 0 && c.overlong_buffer <= o.sampling.max_new_tokens,
            "overlong_buffer", "must be in [0, rollout.max_new_tokens] (0: no overlong penalty)");
  p.require(c.overlong_penalty >= 0, "overlong_penalty", "must be >= 0");
}

void read_train(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                GrpoStageConfig& c) {
  ConfigReader t(json, path, errors);
  read_rl_train(t, c.train);
  c.lr = t.number("lr", c.lr);
  c.grpo.grad_clip = c.train.grad_clip;
  t.require(c.lr > 0 && c.lr < 1, "lr", "must be in (0, 1)");
}

void read_eval(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
               GrpoStageConfig& c) {
  ConfigReader e(json, path, errors);
  c.eval_prompts = e.integer("prompts", c.eval_prompts);
  c.eval_every = e.integer("every", c.eval_every);
  c.eval_samples = e.integer("samples", c.grpo.group_size);
  e.require(c.eval_prompts >= 0, "prompts", "must be >= 0 (0: no evaluation)");
  e.require(c.eval_every >= 0, "every", "must be >= 0 (0: before and after only)");
  e.require(c.eval_samples >= 1, "samples", "must be at least 1 (k of pass@k)");
}

}  // namespace

GrpoStageConfig parse_grpo_stage(const StageEntry& entry, ConfigErrors& errors) {
  GrpoStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  r.string("type", "");
  c.policy = r.string("policy", c.policy);
  c.reference = r.string("reference", c.policy);
  c.grpo.algorithm = r.string("algorithm", c.grpo.algorithm);
  r.one_of("algorithm", c.grpo.algorithm, kAlgorithms);
  read_prompt_data(r.object("data"), r.path_of("data"), errors, {"auto", "prompt_answer", "gsm8k"},
                   c.data);
  read_rollout(r.object("rollout"), r.path_of("rollout"), errors, c);
  c.rewards = parse_reward_functions(r.raw("rewards"), r.path_of("rewards"), errors);
  {
    ConfigReader k(r.object("kl"), r.path_of("kl"), errors);
    c.grpo.beta = k.number("beta", c.grpo.beta);
    k.require(c.grpo.beta >= 0 && std::isfinite(c.grpo.beta), "beta",
              "must be >= 0 (0: no KL term, no reference loaded)");
  }
  read_update(r.object("grpo"), r.path_of("grpo"), errors, c);
  read_train(r.object("train"), r.path_of("train"), errors, c);
  read_eval(r.object("eval"), r.path_of("eval"), errors, c);
  read_samples(r.object("samples"), r.path_of("samples"), errors, c.sample_every, c.sample_count);
  c.lora = read_lora_section(r, errors);
  if (c.reference == c.policy && c.grpo.needs_reference())
    refuse_modules_to_save_beside_switched_off_reference(c.lora, r, errors);
  return c;
}

nlohmann::json grpo_stated_defaults(const GrpoStageConfig& c) {
  const GrpoOptions& o = c.grpo;
  nlohmann::json train = rl_train_values(c.train);
  train["lr"] = c.lr;
  nlohmann::json stated = {
      {"policy", c.policy},
      {"reference", c.reference},
      {"algorithm", o.algorithm},
      {"data", prompt_data_values(c.data)},
      {"rollout",
       {{"prompts_per_iteration", c.prompts_per_iteration},
        {"group_size", o.group_size},
        {"max_new_tokens", o.sampling.max_new_tokens},
        {"temperature", o.sampling.temperature},
        {"top_k", o.sampling.top_k},
        {"top_p", o.sampling.top_p}}},
      {"rewards", reward_function_values(c.rewards)},
      {"kl", {{"beta", o.beta}}},
      {"grpo",
       {{"epochs", o.epochs},
        {"mini_batch_size", o.mini_batch_size},
        {"micro_batch_size", o.micro_batch_size},
        {"clip_low", o.clip_low},
        {"clip_high", o.clip_high},
        {"loss_aggregation", o.loss_aggregation},
        {"share_prompts", o.share_prompts},
        {"dynamic_sampling", c.dynamic_sampling},
        {"max_sampling_rounds", c.max_sampling_rounds},
        {"overlong_buffer", c.overlong_buffer},
        {"overlong_penalty", c.overlong_penalty}}},
      {"train", train},
      {"eval", {{"prompts", c.eval_prompts}, {"every", c.eval_every}, {"samples", c.eval_samples}}},
      {"samples", samples_values(c.sample_every, c.sample_count)}};
  if (c.lora.enabled) stated["lora"] = lora_section_values(c.lora);
  return stated;
}

// ---------------------------------------------------------------------------------------------
// Run

namespace {

// Type "model": a Tiller reward model scoring prompt + response + EOS, as PPO's scorer does.
class ModelReward : public RewardFunction {
 public:
  ModelReward(const Recipe& recipe, const RewardFunctionSpec& spec, const std::string& policy_dir,
              const torch::Device& device) {
    dir_ = resolve_model_reference(recipe, spec.options.at("model").get<std::string>());
    model_ = load_reward_model(dir_);
    check(read_file(tokenizer_path_in(dir_)) == read_file(tokenizer_path_in(policy_dir)),
          "reward " + spec.name + ": the reward model " + dir_ +
              " has a different tokenizer from the policy's; it scores the policy's tokens");
    const int64_t limit = spec.options.value("max_seq_len", int64_t{0});
    max_len_ = limit > 0                         ? limit
               : model_.metadata.max_seq_len > 0 ? model_.metadata.max_seq_len
                                                 : model_.model->config.max_position_embeddings;
    const Tokenizer tok(tokenizer_path_in(dir_));
    eos_ = tok.eos_id();
    pad_ = model_.model->config.pad_token_id >= 0 ? model_.model->config.pad_token_id
                                                  : reward_pad_id(tok);
    for (auto& p : model_.model->parameters()) p.requires_grad_(false);
    model_.model->eval();
    model_.model->to(device);
  }

  std::vector<double> score(const std::vector<ScoredEpisode>& episodes) override {
    std::vector<std::vector<int64_t>> sequences;
    for (const auto& e : episodes)
      sequences.push_back(reward_sequence(e.prompt_ids, e.response_ids, eos_, max_len_).tokens);
    c10::InferenceMode inference;
    return score_sequences(*model_.model, sequences, pad_, 8, model_.metadata.offset);
  }

 private:
  std::string dir_;
  RewardModel model_;
  int64_t max_len_ = 0, eos_ = 2, pad_ = 0;
};

// The prompts with their answers: a seeded hold-out for evaluation, the rest for training.
struct AnsweredSplit {
  std::vector<AnsweredPrompt> train, eval;
  std::vector<uint64_t> eval_seeds;
};

AnsweredSplit split_prompts(const GrpoStageConfig& c, const Tokenizer& tok, uint64_t seed) {
  PromptStats stats;
  const auto all = load_answered_prompts(c.data, tok, &stats);
  const int64_t usable = static_cast<int64_t>(all.size());
  check(c.eval_prompts < usable,
        "stage " + c.name + ": eval.prompts " + std::to_string(c.eval_prompts) +
            " holds out every one of the " + std::to_string(usable) + " usable prompts in " +
            c.data.path + ", leaving none to train on; lower eval.prompts");
  const int64_t unanswered = std::count_if(
      all.begin(), all.end(), [](const AnsweredPrompt& p) { return p.answer.empty(); });
  for (const auto& spec : c.rewards)
    check(spec.type != "math_answer" || unanswered == 0,
          "stage " + c.name + ": reward " + spec.name + " (math_answer) compares with reference " +
              "answers, and " + std::to_string(unanswered) + " of the prompts in " + c.data.path +
              " have none");
  const HeldOutSplit held_out = hold_out(usable, c.eval_prompts, seed);
  AnsweredSplit split;
  for (int64_t i : held_out.train) split.train.push_back(all[static_cast<size_t>(i)]);
  for (int64_t i : held_out.eval) split.eval.push_back(all[static_cast<size_t>(i)]);
  split.eval_seeds = held_out.eval_seeds;
  std::printf(
      "[%s] prompts: %lld records -> %zu train / %zu evaluation; %lld over %lld tokens dropped; "
      "%lld bad lines skipped\n",
      c.name.c_str(), (long long)stats.records, split.train.size(), split.eval.size(),
      (long long)stats.too_long, (long long)c.data.max_prompt_len, (long long)stats.skipped);
  return split;
}

// One sampling round's episodes as the reward functions see them, and their scores.
struct ScoredRound {
  GenerationBatch generation;
  std::vector<ScoredEpisode> episodes;
  RewardScores rewards;
  std::vector<double> overlong;  // the overlong penalty per episode (0 when off)
  torch::Tensor totals;          // [N] float: rewards.total + overlong
  int64_t group_size = 1;
};

// What a round's episodes say, for metrics: each function's scores, the accuracy (from the first
// math_answer function: its score 1 is right), all-equal groups.
struct RoundFigures {
  std::map<std::string, std::pair<double, double>> reward_mean_std;  // by function, and "total"
  double accuracy = std::nan("");
  double response_length = 0, eos_rate = 0, overlong_penalty = 0;
  int64_t groups = 0, all_equal_groups = 0;
};

std::pair<double, double> mean_std(const std::vector<double>& v) {
  const double mean = mean_of(v);
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  return {mean, v.size() > 1 ? std::sqrt(var / static_cast<double>(v.size() - 1)) : 0.0};
}

// The index of the first math_answer function, -1 without one.
int accuracy_function(const std::vector<RewardFunctionSpec>& specs) {
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].type == "math_answer") return static_cast<int>(i);
  return -1;
}

// What the stage does around the trainer: sampling rounds scored by the reward functions,
// dynamic sampling, evaluations with pass@k, samples.
struct GrpoRun {
  const GrpoStageConfig& c;
  const Tokenizer& tok;
  GrpoTrainer& trainer;
  RewardSet& rewards;
  const AnsweredSplit& prompts;
  std::string stage_dir;
  const dist::Group& data_parallel;
  int64_t no_signal_iterations = 0, short_batches = 0;
  bool warned_no_signal = false;

  // group_size responses to each of a round's prompts, scored. Under data parallel each rank
  // samples and scores its shard of the groups (shard_of; a row keeps the seed of its place in
  // the whole round), and every rank gets the whole round back, as one process would have it.
  ScoredRound score_round(const std::vector<const AnsweredPrompt*>& group_prompts,
                          const std::vector<uint64_t>& row_seeds, int64_t g) {
    const dist::Shard mine = dist::shard_of(static_cast<int64_t>(group_prompts.size()),
                                            data_parallel.rank(), data_parallel.size());
    const std::vector<const AnsweredPrompt*> my_prompts(
        group_prompts.begin() + mine.begin, group_prompts.begin() + mine.begin + mine.count);
    std::vector<std::vector<int64_t>> ids;
    for (const auto* p : my_prompts) ids.push_back(p->tokens);
    ScoredRound round;
    round.generation =
        trainer.sample(ids,
                       std::vector<uint64_t>(row_seeds.begin() + mine.begin * g,
                                             row_seeds.begin() + (mine.begin + mine.count) * g),
                       g);
    round.group_size = g;
    round.episodes = episodes_of(my_prompts, round.generation, g);
    round.rewards = rewards.score(round.episodes);
    round.overlong.assign(round.episodes.size(), 0.0);
    if (c.overlong_buffer > 0) {
      const auto lengths = round.generation.response_mask.sum(1).cpu();
      const auto penalty = grpo::overlong_penalty(lengths, c.grpo.sampling.max_new_tokens,
                                                  c.overlong_buffer, c.overlong_penalty);
      for (size_t i = 0; i < round.overlong.size(); ++i)
        round.overlong[i] = penalty[static_cast<int64_t>(i)].item<double>();
    }
    if (!data_parallel.single()) gather_round(round, group_prompts);
    std::vector<double> totals = round.rewards.total;
    for (size_t i = 0; i < totals.size(); ++i) totals[i] += round.overlong[i];
    round.totals = torch::tensor(totals, torch::kDouble).to(torch::kFloat);
    return round;
  }

  // The episodes of a generation's rows as the reward functions see them: row r answers
  // group_prompts[r / g].
  std::vector<ScoredEpisode> episodes_of(const std::vector<const AnsweredPrompt*>& group_prompts,
                                         const GenerationBatch& generation, int64_t g) const {
    const auto ended = generation.ended_with_eos.cpu();
    std::vector<std::string> prompt_texts;
    for (const auto* p : group_prompts) prompt_texts.push_back(tok.decode(p->tokens));
    std::vector<ScoredEpisode> episodes;
    for (int64_t row = 0; row < generation.batch(); ++row) {
      const AnsweredPrompt& p = *group_prompts[static_cast<size_t>(row / g)];
      ScoredEpisode e;
      e.prompt_ids = p.tokens;
      e.prompt = prompt_texts[static_cast<size_t>(row / g)];
      e.response_ids = generation.response(row);
      e.response = response_text(tok, e.response_ids);
      e.answer = p.answer;
      e.ended_with_eos = ended[row].item<bool>();
      episodes.push_back(std::move(e));
    }
    return episodes;
  }

  // Every rank's part of a round (its rows, their scores), in row order: the generation laid out
  // at the widest prompt and response of the whole round, as one process would sample it.
  void gather_round(ScoredRound& round, const std::vector<const AnsweredPrompt*>& group_prompts) {
    const int64_t total = static_cast<int64_t>(group_prompts.size()) * round.group_size;
    GenerationBatch& generation = round.generation;
    widen(
        generation,
        static_cast<int64_t>(data_parallel.max(static_cast<double>(generation.prompt_ids.size(1)))),
        static_cast<int64_t>(
            data_parallel.max(static_cast<double>(generation.response_ids.size(1)))),
        trainer.options().sampling.pad_id);
    for (torch::Tensor* t :
         {&generation.prompt_ids, &generation.prompt_mask, &generation.response_ids,
          &generation.response_mask, &generation.ended_with_eos})
      *t = dist::gather_rows(data_parallel, *t, total);
    if (generation.logprobs.defined())
      generation.logprobs = dist::gather_rows(data_parallel, generation.logprobs, total);
    // Each function's scores, the weighted sum and the overlong penalty: a row per episode.
    RewardScores& r = round.rewards;
    const int64_t local = static_cast<int64_t>(r.total.size());
    const int64_t functions = static_cast<int64_t>(r.by_name.size());
    auto columns = torch::empty({local, functions + 2}, torch::kDouble);
    auto column = columns.accessor<double, 2>();
    for (int64_t e = 0; e < local; ++e) {
      for (int64_t f = 0; f < functions; ++f)
        column[e][f] = r.by_name[static_cast<size_t>(f)][static_cast<size_t>(e)];
      column[e][functions] = r.total[static_cast<size_t>(e)];
      column[e][functions + 1] = round.overlong[static_cast<size_t>(e)];
    }
    const auto all = dist::gather_rows(data_parallel, columns, total).contiguous();
    const auto every = all.accessor<double, 2>();
    auto read = [&](int64_t f) {
      std::vector<double> values(static_cast<size_t>(total));
      for (int64_t e = 0; e < total; ++e) values[static_cast<size_t>(e)] = every[e][f];
      return values;
    };
    for (int64_t f = 0; f < functions; ++f) r.by_name[static_cast<size_t>(f)] = read(f);
    r.total = read(functions);
    round.overlong = read(functions + 1);
    round.episodes = episodes_of(group_prompts, generation, round.group_size);
  }

  RoundFigures figures(const ScoredRound& r) const {
    RoundFigures f;
    for (size_t i = 0; i < r.rewards.names.size(); ++i)
      f.reward_mean_std[r.rewards.names[i]] = mean_std(r.rewards.by_name[i]);
    std::vector<double> totals(r.totals.data_ptr<float>(),
                               r.totals.data_ptr<float>() + r.totals.numel());
    f.reward_mean_std["total"] = mean_std(totals);
    const int which = accuracy_function(rewards.specs());
    if (which >= 0) {
      std::vector<double> right;
      for (double s : r.rewards.by_name[static_cast<size_t>(which)]) right.push_back(s > 0.5);
      f.accuracy = mean_of(right);
    }
    f.response_length = r.generation.response_mask.sum(1).to(torch::kDouble).mean().item<double>();
    f.eos_rate = r.generation.ended_with_eos.to(torch::kDouble).mean().item<double>();
    f.overlong_penalty = mean_of(r.overlong);
    const auto signal = grpo::groups_with_signal(r.totals, r.group_size);
    f.groups = signal.numel();
    f.all_equal_groups = f.groups - signal.sum().item<int64_t>();
    return f;
  }

  // One iteration's batch: sampling rounds of prompts_per_iteration groups until as many groups
  // with signal are kept (dynamic sampling; else the first round, all of it). `first_round` gets
  // the first round as sampled (the policy as it is, before any group is dropped).
  struct Batch {
    GenerationBatch generation;
    torch::Tensor scores;
    int64_t groups = 0, rounds = 0, dropped_groups = 0;
  };
  Batch draw_batch(EpochCursor<int64_t>& cursor, uint64_t seed, int64_t iteration,
                   ScoredRound& first_round) {
    const int64_t g = trainer.options().group_size;
    const int64_t wanted = c.prompts_per_iteration;
    const int64_t rounds_allowed = c.dynamic_sampling ? c.max_sampling_rounds : 1;
    std::vector<GenerationBatch> batches;
    std::vector<std::vector<int64_t>> rows;
    std::vector<torch::Tensor> scores;
    Batch out;
    for (int64_t round = 0; round < rounds_allowed && out.groups < wanted; ++round) {
      std::vector<const AnsweredPrompt*> group_prompts;
      std::vector<uint64_t> row_seeds;
      for (int64_t index : cursor.take(wanted)) {
        for (int64_t k = 0; k < g; ++k)
          row_seeds.push_back(
              mix_seed({seed, static_cast<uint64_t>(iteration), static_cast<uint64_t>(round),
                        static_cast<uint64_t>(group_prompts.size() * g + k)}));
        group_prompts.push_back(&prompts.train[static_cast<size_t>(index)]);
      }
      ScoredRound scored = score_round(group_prompts, row_seeds, g);
      const auto signal = grpo::groups_with_signal(scored.totals, g);
      std::vector<int64_t> keep;
      for (int64_t group = 0; group < signal.numel() && out.groups < wanted; ++group) {
        if (c.dynamic_sampling && !signal[group].item<bool>()) {
          ++out.dropped_groups;
          continue;
        }
        for (int64_t k = 0; k < g; ++k) keep.push_back(group * g + k);
        ++out.groups;
      }
      ++out.rounds;
      scores.push_back(scored.totals.index_select(0, torch::tensor(keep, torch::kLong)));
      batches.push_back(scored.generation);
      rows.push_back(keep);
      if (round == 0) first_round = std::move(scored);
    }
    if (out.groups > 0) {
      out.generation = concat_rows(std::move(batches), rows, trainer.options().sampling.pad_id);
      out.scores = torch::cat(scores, 0);
    }
    return out;
  }

  void warn_no_signal(int64_t at, const Batch& batch) {
    const bool none =
        batch.groups == 0 || grpo::groups_with_signal(batch.scores, trainer.options().group_size)
                                     .sum()
                                     .item<int64_t>() == 0;
    if (!none) return;
    ++no_signal_iterations;
    if (warned_no_signal) return;
    warned_no_signal = true;
    std::fprintf(stderr,
                 "[%s] WARNING: at iteration %lld every group's responses scored the same (%s): "
                 "the advantages are all 0 and the policy learns nothing from the rewards%s.\n",
                 c.name.c_str(), (long long)at,
                 c.dynamic_sampling ? "even after grpo.max_sampling_rounds rounds" : "all-equal",
                 trainer.options().beta > 0 ? " (only the KL term moves it)" : "");
  }

  // Held-out prompts, eval_samples responses each (same seeds every time): pass@1 (the
  // accuracy), pass@k, the mean reward and the KL to the reference.
  nlohmann::json evaluate(int64_t at) {
    nlohmann::json out = nlohmann::json::object();
    if (prompts.eval.empty()) return out;
    GrpoOptions o = trainer.options();
    const int64_t k = c.eval_samples;
    std::vector<const AnsweredPrompt*> group_prompts;
    std::vector<uint64_t> row_seeds;
    for (size_t i = 0; i < prompts.eval.size(); ++i) {
      group_prompts.push_back(&prompts.eval[i]);
      for (int64_t j = 0; j < k; ++j)
        row_seeds.push_back(mix_seed({prompts.eval_seeds[i], static_cast<uint64_t>(j)}));
    }
    const ScoredRound r = score_round(group_prompts, row_seeds, k);
    const RoundFigures f = figures(r);
    out["eval_reward"] = f.reward_mean_std.at("total").first;
    out["eval_response_length"] = f.response_length;
    out["eval_eos_rate"] = f.eos_rate;
    const int which = accuracy_function(rewards.specs());
    if (which >= 0) {
      const auto& scores = r.rewards.by_name[static_cast<size_t>(which)];
      std::vector<double> pass_k;
      for (size_t p = 0; p < group_prompts.size(); ++p) {
        int64_t right = 0;
        for (int64_t j = 0; j < k; ++j) right += scores[p * static_cast<size_t>(k) + j] > 0.5;
        pass_k.push_back(grpo::pass_at_k(k, right, k));
      }
      out["eval_accuracy"] = f.accuracy;
      out["eval_pass_at_k"] = mean_of(pass_k);
    }
    auto [policy, ref] = trainer.logprobs(r.generation);
    if (ref.defined()) {
      const auto mask = r.generation.response_mask.to(torch::kFloat);
      out["eval_kl_k1"] = (ppo::kl_k1(policy, ref) * mask).sum(1).mean().item<double>();
    }
    log_samples(r, at);
    std::printf("[%s] evaluation at iteration %lld (%zu prompts x %lld): %s\n", c.name.c_str(),
                (long long)at, group_prompts.size(), (long long)k, out.dump().c_str());
    return out;
  }

  void log_samples(const ScoredRound& r, int64_t at) const {
    const int64_t count =
        std::min<int64_t>(c.sample_count, static_cast<int64_t>(r.episodes.size()));
    if (count > 0)
      std::printf("[%s] samples at iteration %lld (reward | prompt -> response | answer)\n",
                  c.name.c_str(), (long long)at);
    for (int64_t i = 0; i < count; ++i) {
      const ScoredEpisode& e = r.episodes[static_cast<size_t>(i)];
      const double total = r.totals[i].item<double>();
      std::printf("  %7.3f | %s -> %s | %s\n", total, one_line(e.prompt, 40).c_str(),
                  one_line(e.response, 60).c_str(), one_line(e.answer, 12).c_str());
      nlohmann::json line = {{"iteration", at},        {"prompt", e.prompt},
                             {"response", e.response}, {"answer", e.answer},
                             {"reward", total},        {"ended_with_eos", e.ended_with_eos}};
      for (size_t f = 0; f < r.rewards.names.size(); ++f)
        line["rewards"][r.rewards.names[f]] = r.rewards.by_name[f][static_cast<size_t>(i)];
      if (dist::is_main()) append_jsonl(stage_dir + "/samples.jsonl", line);
    }
  }
};

// One iteration's metrics record and progress-line figures.
StepReport iteration_report(const RoundFigures& f, const GrpoRun::Batch& batch,
                            const GrpoLearnStats& learned, double lr, double seconds_sample) {
  StepReport report;
  nlohmann::json& m = report.record;
  for (const auto& [name, ms] : f.reward_mean_std) {
    m["reward_" + name] = ms.first;
    m["reward_" + name + "_std"] = ms.second;
  }
  if (!std::isnan(f.accuracy)) m["accuracy"] = f.accuracy;
  m["all_equal_group_fraction"] =
      static_cast<double>(f.all_equal_groups) / static_cast<double>(std::max<int64_t>(1, f.groups));
  m["sampling_rounds"] = batch.rounds;
  m["dropped_groups"] = batch.dropped_groups;
  m["groups_trained"] = batch.groups;
  m["response_length"] = f.response_length;
  m["eos_rate"] = f.eos_rate;
  m["overlong_penalty"] = f.overlong_penalty;
  m["policy_loss"] = learned.policy_loss;
  m["kl_k3"] = learned.kl;
  m["clipfrac_low"] = learned.clipfrac_low;
  m["clipfrac_high"] = learned.clipfrac_high;
  m["entropy"] = learned.entropy;
  m["grad_norm"] = learned.grad_norm;
  m["lr"] = lr;
  m["seconds_sample"] = seconds_sample;
  m["seconds_train"] = learned.seconds;
  report.shown = {{"reward", f.reward_mean_std.at("total").first},
                  {"len", f.response_length},
                  {"kl", learned.kl},
                  {"equal", m["all_equal_group_fraction"].get<double>()}};
  if (!std::isnan(f.accuracy)) report.shown["acc"] = f.accuracy;
  report.tokens = batch.groups > 0 ? batch.generation.response_mask.sum().item<double>() : 0;
  report.seconds = seconds_sample + learned.seconds;
  return report;
}

// Why `ranks` data-parallel ranks cannot share the rounds' groups, or "".
std::string grpo_data_parallel_error(const GrpoStageConfig& c, int64_t ranks) {
  if (c.prompts_per_iteration < ranks)
    return "rollout.prompts_per_iteration " + std::to_string(c.prompts_per_iteration) +
           " cannot be shared by " + std::to_string(ranks) +
           " data-parallel ranks (each samples whole groups)";
  return eval_prompts_share_error(c.eval_prompts, c.eval_prompts, ranks);
}

nlohmann::json grpo_summary(const GrpoStageConfig& c, const nlohmann::json& initial,
                            const nlohmann::json& last, const AnsweredSplit& prompts,
                            const GrpoRun& run, int64_t iterations, int64_t skipped) {
  nlohmann::json summary = {
      {"algorithm", c.grpo.algorithm},         {"iterations", iterations},
      {"train_prompts", prompts.train.size()}, {"eval_prompts", prompts.eval.size()},
      {"eval_samples", c.eval_samples},        {"skipped_updates", skipped}};
  if (run.no_signal_iterations > 0) {
    summary["no_signal_iterations"] = run.no_signal_iterations;
    std::fprintf(stderr,
                 "[%s] WARNING: %lld iterations had no group whose rewards differed (no signal)\n",
                 c.name.c_str(), (long long)run.no_signal_iterations);
  }
  for (const auto& [key, name] :
       {std::pair{"eval_accuracy", "accuracy"}, std::pair{"eval_pass_at_k", "pass_at_k"},
        std::pair{"eval_reward", "reward"}, std::pair{"eval_kl_k1", "kl"},
        std::pair{"eval_response_length", "response_length"}}) {
    if (initial.contains(key)) summary[std::string(name) + "_initial"] = initial[key];
    if (last.contains(key)) summary[std::string(name) + "_final"] = last[key];
  }
  return summary;
}

}  // namespace

nlohmann::json run_grpo_stage(const Recipe& recipe, const GrpoStageConfig& c) {
  StageLoop loop(recipe, c.name, c.train.loop(c.eval_every));
  // Data parallel: each rank samples, scores and trains on its share of every round's groups.
  const dist::Group& data_parallel = dist::world();
  const auto ranks = static_cast<int64_t>(data_parallel.size());
  const std::string layout_error = grpo_data_parallel_error(c, ranks);
  check(layout_error.empty(), "stage " + c.name + ": " + layout_error);
  if (!data_parallel.single())
    std::printf("[%s] data parallel: %lld ranks share each round of %lld groups of %lld\n",
                c.name.c_str(), (long long)ranks, (long long)c.prompts_per_iteration,
                (long long)c.grpo.group_size);
  const uint64_t seed = recipe.run.seed;
  const std::string policy_dir = resolve_model_reference(recipe, c.policy);
  const std::string tokenizer_path = tokenizer_path_in(policy_dir);
  const Tokenizer tok(tokenizer_path);
  Transformer actor = load_causal_lm(policy_dir, "policy");
  apply_lora_section(*actor, c.lora, policy_dir, recipe.run.seed, c.name);
  tok.check_matches(actor->config, c.policy);
  check(c.data.max_prompt_len + c.grpo.sampling.max_new_tokens <=
            actor->config.max_position_embeddings,
        "stage " + c.name +
            ": data.max_prompt_len + rollout.max_new_tokens exceeds the policy's context of " +
            std::to_string(actor->config.max_position_embeddings));
  Transformer reference{nullptr};
  if (c.grpo.needs_reference() && has_lora(*actor) && c.reference == c.policy) {
    reference = actor;  // the policy with its adapters switched off: no second copy
  } else if (c.grpo.needs_reference()) {
    reference = load_causal_lm(resolve_model_reference(recipe, c.reference), "reference",
                               QuantizedModels::load_frozen);
    reference->eval();
    reference->to(loop.device());
  }
  actor->to(loop.device());
  actor->train();
  RewardSet rewards(c.rewards, [&](const RewardFunctionSpec& spec) {
    return std::unique_ptr<RewardFunction>(
        new ModelReward(recipe, spec, policy_dir, loop.device()));
  });
  const AnsweredSplit prompts = split_prompts(c, tok, seed);

  GrpoOptions options = c.grpo;
  options.sampling.eos_id = tok.eos_id();
  options.sampling.pad_id = reward_pad_id(tok);
  options.bf16 = use_bf16(c.train.precision, loop.device());
  ParallelAdamW optimizer(*actor, c.train.optimizer(c.lr), dist::world(), c.train.parallel);
  GrpoTrainer trainer(options, *actor, reference ? reference.get() : nullptr, optimizer,
                      data_parallel);
  EpochCursor<int64_t> cursor([&](int64_t epoch) {
    return seeded_permutation(static_cast<int64_t>(prompts.train.size()),
                              mix_seed({seed, kTrainStream, static_cast<uint64_t>(epoch)}));
  });
  nlohmann::json initial_eval, last_eval;
  loop.resume({{{"policy", actor.get()}}, {{"optimizer", &optimizer}}},
              [&](const nlohmann::json& state) {
                cursor.seek(state.at("prompt_epoch").get<int64_t>(),
                            state.at("prompt_index").get<int64_t>());
                initial_eval = state.value("initial_eval", nlohmann::json());
              });
  last_eval = initial_eval;
  GrpoRun run{c, tok, trainer, rewards, prompts, loop.stage_dir(), data_parallel};
  if (dist::is_main())
    truncate_jsonl_from(loop.stage_dir() + "/samples.jsonl", "iteration", loop.first_unlogged());

  StageSteps steps;
  steps.step = [&](const StepContext& context) {
    const int64_t iteration = context.step;
    const double lr = set_scheduled_learning_rate(optimizer, c.train.schedule_for(c.lr), iteration);
    const auto started = Clock::now();
    ScoredRound first_round;
    const GrpoRun::Batch batch = run.draw_batch(cursor, seed, iteration, first_round);
    run.warn_no_signal(iteration + 1, batch);
    const bool samples_now = c.sample_every > 0 && (iteration + 1) % c.sample_every == 0;
    if (samples_now && !context.evaluates_after) run.log_samples(first_round, iteration + 1);
    GrpoLearnStats learned;
    const double seconds_sample = seconds_since(started);
    if (batch.groups > 0) {
      const GroupBatch prepared = trainer.prepare(batch.generation, batch.scores);
      learned = trainer.learn(prepared,
                              mix_seed({seed, kShuffleStream, static_cast<uint64_t>(iteration)}),
                              &context.guard, iteration + 1);
    }
    return iteration_report(run.figures(first_round), batch, learned, lr, seconds_sample);
  };
  steps.evaluate = [&](int64_t at) {
    StepReport report;
    report.record = run.evaluate(at);
    if (at == 0) initial_eval = report.record;
    last_eval = report.record;
    return report;
  };
  steps.state = [&] {
    return nlohmann::json{{"prompt_epoch", cursor.epoch()},
                          {"prompt_index", cursor.index()},
                          {"initial_eval", initial_eval}};
  };
  loop.run(steps);

  nlohmann::json summary =
      grpo_summary(c, initial_eval, last_eval, prompts, run, loop.step(), loop.guard().skipped());
  if (!data_parallel.single()) summary["data_parallel_ranks"] = ranks;
  return loop.finish(summary, [&](const std::string& final_dir) {
    actor->to(torch::kCPU);
    if (!dist::is_main()) return;
    SaveOptions save_options;
    save_options.tokenizer_path = tokenizer_path;
    save_hf_model(*actor, final_dir, save_options);
  });
}

// ---------------------------------------------------------------------------------------------
// Registry entry

StageType grpo_stage_type() {
  StageType type = typed_stage_type<GrpoStageConfig>(parse_grpo_stage, run_grpo_stage);
  type.description = "online RL with verifiable rewards: GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++";
  type.stated_defaults = [](const std::any& config) {
    return grpo_stated_defaults(std::any_cast<const GrpoStageConfig&>(config));
  };
  type.data_parallel_error = [](const std::any& config, int ranks) {
    return grpo_data_parallel_error(std::any_cast<const GrpoStageConfig&>(config), ranks);
  };
  type.batch_layout = [](const std::any& config, int ranks) {
    const auto& c = std::any_cast<const GrpoStageConfig&>(config);
    return "rounds of " + std::to_string(c.prompts_per_iteration) + " groups of " +
           std::to_string(c.grpo.group_size) + " shared by " + std::to_string(ranks) + " ranks";
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    auto get = [&](const char* key) { return summary.value(key, nlohmann::json()); };
    const std::string k = std::to_string(summary.value("eval_samples", int64_t{0}));
    return std::vector<SummaryRow>{
        {stage + ": held-out accuracy (pass@1) before", get("accuracy_initial")},
        {stage + ": held-out accuracy (pass@1) after", get("accuracy_final")},
        {stage + ": pass@" + k + " before", get("pass_at_k_initial")},
        {stage + ": pass@" + k + " after", get("pass_at_k_final")},
        {stage + ": mean reward before", get("reward_initial")},
        {stage + ": mean reward after", get("reward_final")},
        {stage + ": final KL to the reference (nats/response)", get("kl_final")}};
  };
  type.report_figures = {"accuracy_initial", "accuracy_final", "pass_at_k_initial",
                         "pass_at_k_final",  "reward_initial", "reward_final",
                         "kl_final"};
  type.report_charts = {
      {"reward", "Reward (weighted sum)", {"reward_total"}},
      {"accuracy", "Accuracy (training groups) and held-out pass@1", {"accuracy", "eval_accuracy"}},
      {"pass_at_k", "Held-out pass@k", {"eval_pass_at_k"}},
      {"all_equal", "Groups with all-equal rewards", {"all_equal_group_fraction"}},
      {"kl", "KL to the reference (k3, per token)", {"kl_k3"}},
      {"clipfrac", "Clipped tokens (low, high)", {"clipfrac_low", "clipfrac_high"}},
      {"entropy", "Entropy", {"entropy"}},
      {"response_length", "Response length (tokens)", {"response_length"}},
      {"seconds", "Seconds per iteration", {"seconds_sample", "seconds_train"}}};
  type.step_name = "iteration";
  return type;
}

}  // namespace tiller
