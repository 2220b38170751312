#include "dpo/dpo_stage.h"

#include <sys/resource.h>

#include <cmath>
#include <cstdio>
#include <utility>  // std::exchange

#include "common/data/batching.h"  // seeded_permutation
#include "common/data/ranking_data.h"
#include "common/dist/process_group.h"
#include "common/io/hf_dir.h"
#include "common/model/shared_prefix.h"  // prefix_sharing_note
#include "common/recipe/preference_data_section.h"
#include "common/recipe/stage_io.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/chat_template.h"  // chat_template_names
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/epoch_cursor.h"
#include "common/train/precision.h"
#include "common/train/stage_loop.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "dpo/pair_log_probs.h"
#include "dpo/reference_cache.h"
#include "scaling/curve.h"

namespace tiller {

// ---------------------------------------------------------------------------------------------
// Config

namespace {

// A key the chosen loss does not use: refused with one line, and marked read so that it is not
// also reported as unknown.
void refuse_unused(ConfigReader& r, const std::string& key, const std::string& why) {
  if (!r.has(key)) return;
  r.raw(key);
  r.require(false, key, why);
}

// TRL's defaults: beta 0.1 (DPOTrainer, ORPOTrainer's lambda), 2.0 and gamma 0.5 for SimPO
// (CPOTrainer's simpo_gamma).
void read_loss(ConfigReader& l, PreferenceLossOptions& o) {
  o.type = l.string("type", "sigmoid");
  l.one_of("type", o.type, {"sigmoid", "robust", "hinge", "ipo", "simpo", "orpo"});
  o.beta = l.number("beta", o.type == "simpo" ? 2.0 : 0.1);
  l.require(o.beta > 0 && std::isfinite(o.beta), "beta", "must be positive");
  if (loss_uses_label_smoothing(o.type)) {
    o.label_smoothing = l.number("label_smoothing", 0.0);
    l.require(o.label_smoothing >= 0 && o.label_smoothing < 0.5, "label_smoothing",
              "must be in [0, 0.5)");
  } else {
    refuse_unused(l, "label_smoothing",
                  "is not used by loss '" + o.type + "' (only sigmoid, robust and simpo)");
  }
  if (o.type == "simpo") {
    o.gamma = l.number("gamma", 0.5);
    l.require(std::isfinite(o.gamma), "gamma", "must be a finite number");
  } else {
    refuse_unused(l, "gamma", "is SimPO's target margin; loss '" + o.type + "' does not use it");
  }
  if (o.type != "orpo") {
    o.sft_weight = l.number("sft_weight", 0.0);
    l.require(o.sft_weight >= 0 && std::isfinite(o.sft_weight), "sft_weight", "must be >= 0");
  } else {
    refuse_unused(l, "sft_weight", "orpo has its own NLL term on the chosen response");
  }
}

// reference: {"model": "@sft" or a directory (default: the policy's initial weights), "mode":
// "cache" or "live", "chunk_pairs": N}; refused whole for the reference-free losses.
void read_reference(ConfigReader& r, DpoStageConfig& c, ConfigErrors& errors) {
  if (!loss_uses_reference(c.loss.type)) {
    refuse_unused(r, "reference",
                  "loss '" + c.loss.type + "' is reference-free; remove the reference section");
    return;
  }
  ConfigReader f(r.object("reference"), r.path_of("reference"), errors);
  c.reference = f.string("model", "");
  c.reference_mode = f.string("mode", "cache");
  f.one_of("mode", c.reference_mode, {"cache", "live"});
  if (c.reference_mode == "cache") {
    c.cache_chunk_pairs = f.integer("chunk_pairs", c.cache_chunk_pairs);
    f.require(c.cache_chunk_pairs >= 1, "chunk_pairs", "must be at least 1");
  } else {
    refuse_unused(f, "chunk_pairs", "is the cache's; mode 'live' keeps no cache");
  }
}

// eval: {"prompts": FILE, "format", "template", "max_prompt_len", "count", "max_new_tokens",
// "temperature"} and the top-level ground_truth rule it judges the samples by.
void read_sample_eval(ConfigReader& r, DpoStageConfig& c, ConfigErrors& errors) {
  DpoSampleEval& s = c.sample_eval;
  s.ground_truth = parse_ground_truth(r.raw("ground_truth"), r.path_of("ground_truth"), errors);
  ConfigReader e(r.object("eval"), r.path_of("eval"), errors);
  s.prompts.path = e.string("prompts", "");
  if (s.prompts.path.empty()) {
    if (s.ground_truth.enabled())
      errors.add(r.path_of("ground_truth"),
                 "judges sampled responses; give eval.prompts, the prompts to sample from");
    return;
  }
  s.prompts.format = e.string("format", "auto");
  s.prompts.template_name = e.string("template", c.data.template_name);
  s.prompts.max_prompt_len = e.integer("max_prompt_len", 64);
  s.count = e.integer("count", s.count);
  s.max_new_tokens = e.integer("max_new_tokens", s.max_new_tokens);
  s.temperature = e.number("temperature", s.temperature);
  e.one_of("format", s.prompts.format, {"auto", "prompt", "messages", "alpaca", "hh"});
  e.one_of("template", s.prompts.template_name,
           std::set<std::string>(chat_template_names().begin(), chat_template_names().end()));
  e.require(s.prompts.max_prompt_len >= 1, "max_prompt_len", "must be at least 1");
  e.require(s.count >= 1, "count", "must be at least 1");
  e.require(s.max_new_tokens >= 1, "max_new_tokens", "must be at least 1");
  e.require(s.temperature > 0, "temperature", "must be > 0 (the KL is of the sampled policy)");
  if (!path_exists(s.prompts.path))
    errors.add(e.path_of("prompts"), "file " + s.prompts.path + " does not exist");
}

}  // namespace

DpoStageConfig parse_dpo_stage(const StageEntry& entry, ConfigErrors& errors) {
  DpoStageConfig c;
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
    read_loss(l, c.loss);
  }
  read_reference(r, c, errors);
  read_sample_eval(r, c, errors);
  c.share_prefixes = r.boolean("share_prefixes", c.share_prefixes);
  c.train = parse_train_config(r.object("train"), r.path_of("train"), errors);
  c.data.max_seq_len = c.train.max_seq_len;
  c.lora = read_lora_section(r, errors);
  // The cache is computed before the first step, while the modules to save are still the base's.
  if (c.reference.empty() && c.reference_mode == "live")
    refuse_modules_to_save_beside_switched_off_reference(c.lora, r, errors);
  return c;
}

nlohmann::json dpo_stated_defaults(const DpoStageConfig& c) {
  const PreferenceLossOptions& o = c.loss;
  nlohmann::json loss = {{"type", o.type}, {"beta", o.beta}};
  if (loss_uses_label_smoothing(o.type)) loss["label_smoothing"] = o.label_smoothing;
  if (o.type == "simpo") loss["gamma"] = o.gamma;
  if (o.type != "orpo") loss["sft_weight"] = o.sft_weight;
  const nlohmann::json data = preference_data_section_values({c.data, c.val_path, c.val_fraction});
  nlohmann::json stated = {{"init", c.init},
                           {"data", data},
                           {"loss", loss},
                           {"train", train_config_values(c.train)},
                           {"share_prefixes", c.share_prefixes}};
  if (loss_uses_reference(o.type)) {
    stated["reference"] = {{"model", c.reference.empty() ? c.init : c.reference},
                           {"mode", c.reference_mode}};
    if (c.reference_mode == "cache") stated["reference"]["chunk_pairs"] = c.cache_chunk_pairs;
  }
  const DpoSampleEval& s = c.sample_eval;
  if (!s.prompts.path.empty())
    stated["eval"] = {{"prompts", s.prompts.path},
                      {"format", s.prompts.format},
                      {"template", s.prompts.template_name},
                      {"max_prompt_len", s.prompts.max_prompt_len},
                      {"count", s.count},
                      {"max_new_tokens", s.max_new_tokens},
                      {"temperature", s.temperature}};
  if (s.ground_truth.enabled()) stated["ground_truth"] = ground_truth_values(s.ground_truth);
  if (c.lora.enabled) stated["lora"] = lora_section_values(c.lora);
  return stated;
}

// ---------------------------------------------------------------------------------------------
// Set-up

namespace {

void freeze(TransformerImpl& model, const torch::Device& device) {
  for (auto& p : model.parameters()) p.requires_grad_(false);
  model.eval();
  model.to(device);
}

struct DpoPolicy {
  Transformer model;
  std::string init_dir, tokenizer_path;
  Tokenizer tokenizer;
  int64_t pad_id;
};

DpoPolicy set_up_policy(const Recipe& recipe, const DpoStageConfig& c,
                        const torch::Device& device) {
  const std::string init_dir = resolve_model_reference(recipe, c.init);
  Transformer model = load_causal_lm(init_dir, "policy");
  const std::string tokenizer_path = tokenizer_path_in(init_dir);
  Tokenizer tokenizer(tokenizer_path);
  tokenizer.check_matches(model->config, c.init);
  check(c.train.max_seq_len <= model->config.max_position_embeddings,
        "stage " + c.name + ": train.max_seq_len " + std::to_string(c.train.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(model->config.max_position_embeddings));
  apply_lora_section(*model, c.lora, init_dir, recipe.run.seed, c.name);
  model->to(device);
  model->train();
  model->model->activation_checkpointing = c.train.activation_checkpointing;
  const int64_t pad_id = tokenizer.pad_id() >= 0 ? tokenizer.pad_id() : 0;
  return {model, init_dir, tokenizer_path, std::move(tokenizer), pad_id};
}

// The reference model's directory: the policy's initial weights unless the recipe names one.
std::string reference_dir(const Recipe& recipe, const DpoStageConfig& c,
                          const std::string& init_dir) {
  return c.reference.empty() ? init_dir : resolve_model_reference(recipe, c.reference);
}

DpoData load_pair_data(const Recipe& recipe, const DpoStageConfig& c, const Tokenizer& tokenizer) {
  SplitPairs split =
      load_split_pairs({c.data, c.val_path, c.val_fraction}, tokenizer, recipe.run.seed);
  return {std::move(split.train), std::move(split.val), split.stats, split.val_stats};
}

// Every ranking's comparisons, ranking by ranking, as unweighted pairs (docs/recipes.md says why).
std::vector<PreferencePair> all_pairs(const std::vector<TokenizedRanking>& rankings) {
  std::vector<PreferencePair> pairs;
  for (const auto& ranking : rankings)
    for (auto& pair : ranking_preference_pairs(ranking)) pairs.push_back(std::move(pair));
  return pairs;
}

// Rankings (format "ranking" or "oasst") trained as all their pairs. The validation split is of
// whole rankings, so that no ranking has pairs on both sides of it.
DpoData load_ranking_data(const Recipe& recipe, const DpoStageConfig& c,
                          const Tokenizer& tokenizer) {
  SplitRankings split =
      load_split_rankings({c.data, c.val_path, c.val_fraction}, tokenizer, recipe.run.seed);
  const auto &train = split.train, &val = split.val;
  const RankingStats &stats = split.stats, &val_stats = split.val_stats;
  std::printf("[%s] rankings: %zu train / %zu validation, %lld responses, %lld comparisons\n",
              c.name.c_str(), train.size(), val.size(),
              (long long)(stats.responses + val_stats.responses),
              (long long)(stats.comparisons + val_stats.comparisons));
  DpoData data;
  data.train = all_pairs(train);
  data.val = all_pairs(val);
  data.stats = as_preference_stats(stats);
  data.val_stats = as_preference_stats(val_stats);
  return data;
}

}  // namespace

DpoData load_dpo_data(const Recipe& recipe, const DpoStageConfig& c, const Tokenizer& tokenizer) {
  DpoData data = is_ranking_format(c.data.format) ? load_ranking_data(recipe, c, tokenizer)
                                                  : load_pair_data(recipe, c, tokenizer);
  const PreferenceStats &s = data.stats, &v = data.val_stats;
  std::printf(
      "[%s] data: %lld records -> %zu train / %zu validation pairs; dropped %lld identical, "
      "%lld with a prompt over %lld tokens; %lld sequences truncated; %lld bad lines skipped\n",
      c.name.c_str(), (long long)s.records, data.train.size(), data.val.size(),
      (long long)(s.identical + v.identical), (long long)(s.prompt_too_long + v.prompt_too_long),
      (long long)c.train.max_seq_len, (long long)(s.truncated + v.truncated),
      (long long)(s.skipped + v.skipped));
  std::fflush(stdout);
  return data;
}

namespace {

// Where the reference log-probabilities come from while training: the cache (train and
// validation pairs, by index), a live model, or nowhere (reference-free losses).
struct ReferenceSource {
  ReferenceLogProbs train, val;
  Transformer live{nullptr};
  bool used = false;
};

// Builds (or reads) the cache with the reference model, then frees it: called before resume(),
// while the policy still holds its initial weights (the default reference).
ReferenceSource cached_reference(const Recipe& recipe, const DpoStageConfig& c, DpoPolicy& policy,
                                 const DpoData& data, const torch::Device& device) {
  ReferenceSource source;
  source.used = true;
  Transformer separate{nullptr};
  if (!c.reference.empty()) {
    separate = load_causal_lm(reference_dir(recipe, c, policy.init_dir), "reference",
                              QuantizedModels::load_frozen);
    policy.tokenizer.check_matches(separate->config, c.reference);
    freeze(*separate, device);
  }
  TransformerImpl& reference = separate ? *separate : *policy.model;
  const LoraSwitchedOff base_only(*policy.model);  // the policy as reference: its base
  ReferenceCacheOptions o;
  o.dir = recipe.stage_dir(c.name) + "/reference_logps";
  o.fingerprint = reference_fingerprint(reference, {&data.train, &data.val}, c.data.template_name,
                                        c.train.max_seq_len);
  o.stage = c.name;
  o.chunk_pairs = c.cache_chunk_pairs;
  o.micro_batch = c.train.micro_batch_size;
  o.pad_id = policy.pad_id;
  o.share_prefixes = c.share_prefixes;
  for (const auto* set : {&data.train, &data.val}) {
    if (set->empty()) continue;
    ReferenceCacheOptions part = o;
    part.dir += set == &data.train ? "/train" : "/val";
    ReferenceCacheBuild built = build_reference_cache(reference, *set, part);
    (set == &data.train ? source.train : source.val) = std::move(built.logps);
    std::printf(
        "[%s] reference log-probs of %zu %s pairs: %lld of %lld chunks computed, the "
        "rest read from %s\n",
        c.name.c_str(), set->size(), set == &data.train ? "train" : "validation",
        (long long)built.chunks_computed, (long long)built.chunks, part.dir.c_str());
  }
  std::fflush(stdout);
  return source;  // `separate`, the reference model, is freed here
}

ReferenceSource live_reference(const Recipe& recipe, const DpoStageConfig& c,
                               const DpoPolicy& policy, const torch::Device& device) {
  ReferenceSource source;
  source.used = true;
  if (c.reference.empty() && has_lora(*policy.model)) {
    source.live = policy.model;  // switched off in add_reference: no second copy of the weights
    return source;
  }
  source.live = load_causal_lm(reference_dir(recipe, c, policy.init_dir), "reference",
                               QuantizedModels::load_frozen);
  policy.tokenizer.check_matches(source.live->config, c.reference.empty() ? c.init : c.reference);
  freeze(*source.live, device);
  return source;
}

// Resident memory at its peak so far, MiB (Linux reports ru_maxrss in KiB).
double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Step and validation

namespace {

// Running sums of TRL's DPO metrics over a set of pairs.
struct PairMetrics {
  double loss = 0, chosen = 0, rejected = 0, correct = 0, logps_chosen = 0, logps_rejected = 0,
         nll = 0;
  int64_t pairs = 0;
  bool has_nll = false;
  // Micro-batches, and those computed behind the pairs' shared prefixes.
  int64_t micro_batches = 0, packed_micro_batches = 0;

  void add(const PreferenceLoss& l, const SideLogProbs& policy) {
    auto sum = [](const torch::Tensor& t) {
      return t.detach().to(torch::kDouble).sum().item<double>();
    };
    loss += sum(l.loss);
    chosen += sum(l.chosen_rewards);
    rejected += sum(l.rejected_rewards);
    correct += sum((l.chosen_rewards > l.rejected_rewards).to(torch::kDouble));
    logps_chosen += sum(policy.chosen);
    logps_rejected += sum(policy.rejected);
    if (l.nll.defined()) {
      nll += sum(l.nll);
      has_nll = true;
    }
    pairs += l.loss.size(0);
    ++micro_batches;
    packed_micro_batches += policy.packed;
  }

  void reduce(const dist::Group& group) {
    auto s = group.sum({loss, chosen, rejected, correct, logps_chosen, logps_rejected, nll,
                        static_cast<double>(pairs), static_cast<double>(micro_batches),
                        static_cast<double>(packed_micro_batches)});
    loss = s[0], chosen = s[1], rejected = s[2], correct = s[3];
    logps_chosen = s[4], logps_rejected = s[5], nll = s[6], pairs = static_cast<int64_t>(s[7]);
    micro_batches = static_cast<int64_t>(s[8]), packed_micro_batches = static_cast<int64_t>(s[9]);
  }

  // TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
  // logps/chosen, logps/rejected (summed response log-probs), loss, nll; `prefix` "eval_" for
  // the validation set, as TRL's evaluation logs them.
  nlohmann::json json(const std::string& prefix) const {
    const double n = static_cast<double>(std::max<int64_t>(1, pairs));
    nlohmann::json out = {{prefix + "loss", loss / n},
                          {prefix + "rewards/chosen", chosen / n},
                          {prefix + "rewards/rejected", rejected / n},
                          {prefix + "rewards/accuracies", correct / n},
                          {prefix + "rewards/margins", (chosen - rejected) / n},
                          {prefix + "logps/chosen", logps_chosen / n},
                          {prefix + "logps/rejected", logps_rejected / n}};
    if (has_nll) out[prefix + "nll"] = nll / n;
    return out;
  }
};

// One optimizer step over a global batch of pairs, and the validation pass.
struct DpoStepper {
  TransformerImpl& policy;
  ParallelAdamW& optimizer;
  const DpoStageConfig& config;
  const DpoData& data;
  const ReferenceSource& reference;
  const dist::Group& data_parallel;
  int64_t pad_id;
  int64_t local_pairs;  // this rank's slice of every global batch
  bool bf16;
  mutable bool told_sharing = false;  // prefix_sharing_note printed

  // The reference's log-probs of the slice's pairs (undefined for reference-free losses).
  void add_reference(const PairSlice& slice, const ReferenceLogProbs& cached,
                     PairLogProbs& logps) const {
    if (!reference.used) return;
    const auto options = logps.policy_chosen.options().requires_grad(false);
    if (reference.live) {
      torch::NoGradGuard no_grad;
      compat::AutocastGuard cast(bf16, options.device());
      const LoraSwitchedOff base_only(*reference.live.ptr());  // the policy itself, with LoRA
      const SideLogProbs r =
          pair_log_probs(*reference.live.ptr(), slice, pad_id, config.share_prefixes);
      logps.reference_chosen = r.chosen.to(options.dtype());
      logps.reference_rejected = r.rejected.to(options.dtype());
      return;
    }
    std::vector<double> chosen, rejected;
    for (size_t i = slice.begin; i < slice.begin + slice.count; ++i) {
      chosen.push_back(cached.chosen[static_cast<size_t>(slice.order[i])]);
      rejected.push_back(cached.rejected[static_cast<size_t>(slice.order[i])]);
    }
    logps.reference_chosen = torch::tensor(chosen, options.dtype(torch::kDouble)).to(options);
    logps.reference_rejected = torch::tensor(rejected, options.dtype(torch::kDouble)).to(options);
  }

  // The loss of one micro-batch (autograd as the caller's mode), added to `metrics`.
  torch::Tensor micro_loss(const PairSlice& slice, const ReferenceLogProbs& cached,
                           PairMetrics& metrics, int64_t* tokens) const {
    SideLogProbs policy_logps;
    {
      compat::AutocastGuard cast(bf16, policy.parameters().front().device());
      policy_logps = pair_log_probs(policy, slice, pad_id, config.share_prefixes);
    }
    PairLogProbs logps;
    logps.policy_chosen = policy_logps.chosen.to(torch::kFloat);
    logps.policy_rejected = policy_logps.rejected.to(torch::kFloat);
    logps.chosen_tokens = policy_logps.chosen_tokens;
    logps.rejected_tokens = policy_logps.rejected_tokens;
    add_reference(slice, cached, logps);
    const PreferenceLoss loss = preference_loss(logps, config.loss);
    metrics.add(loss, policy_logps);
    if (tokens) *tokens += policy_logps.tokens;
    return loss.loss.sum();
  }

  StepReport step(const StepContext& context, const std::vector<int64_t>& picked) const {
    const TrainConfig& train = config.train;
    const double lr =
        set_scheduled_learning_rate(optimizer, train.schedule_options(), context.step);
    optimizer.zero_grad();
    PairMetrics metrics;
    int64_t tokens = 0;
    const int64_t first = data_parallel.rank() * local_pairs;
    for (int64_t begin = first; begin < first + local_pairs; begin += train.micro_batch_size) {
      const int64_t count = std::min(train.micro_batch_size, first + local_pairs - begin);
      const PairSlice slice{data.train, picked, static_cast<size_t>(begin),
                            static_cast<size_t>(count)};
      // Each micro-batch's sum over the step's pair count: accumulation is exact.
      (micro_loss(slice, reference.train, metrics, &tokens) / static_cast<double>(train.batch_size))
          .backward();
    }
    metrics.reduce(data_parallel);
    const double loss = metrics.loss / static_cast<double>(train.batch_size);
    const double grad_norm =
        apply_update(optimizer, context.guard, loss, train.grad_clip, context.step + 1);
    StepReport report;
    report.record = metrics.json("");
    report.record["lr"] = lr;
    report.record["grad_norm"] = grad_norm;
    if (config.share_prefixes) {
      report.record["shared_prefix_batches"] =
          static_cast<double>(metrics.packed_micro_batches) /
          static_cast<double>(std::max<int64_t>(1, metrics.micro_batches));
      if (!std::exchange(told_sharing, true))
        std::printf("%s\n", prefix_sharing_note(config.name, metrics.packed_micro_batches,
                                                metrics.micro_batches)
                                .c_str());
    }
    report.shown = {
        {"loss", loss}, {"acc", report.record["rewards/accuracies"].get<double>()}, {"lr", lr}};
    report.tokens = data_parallel.sum(static_cast<double>(tokens));
    return report;
  }

  // The validation pairs' metrics (at most `max_batches` micro-batches; 0: all), dealt
  // round-robin to the data-parallel ranks.
  PairMetrics validation(int64_t max_batches) const {
    torch::NoGradGuard no_grad;
    policy.eval();
    const auto order = identity_order(data.val.size());
    const auto micro = static_cast<size_t>(config.train.micro_batch_size);
    PairMetrics metrics;
    int64_t batch_index = 0;
    for (size_t begin = 0; begin < data.val.size(); begin += micro, ++batch_index) {
      if (max_batches > 0 && batch_index >= max_batches) break;
      if (batch_index % data_parallel.size() != data_parallel.rank()) continue;
      const PairSlice slice{data.val, order, begin, std::min(micro, data.val.size() - begin)};
      micro_loss(slice, reference.val, metrics, nullptr);
    }
    policy.train();
    metrics.reduce(data_parallel);
    return metrics;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Sampling check

namespace {

std::string response_text(const Tokenizer& tok, std::vector<int64_t> response) {
  if (!response.empty() && response.back() == tok.eos_id()) response.pop_back();
  return tok.decode(response);
}

// The held-out prompts' responses from the initial policy and the trained one (the same seeds),
// their ground-truth rates, and the trained policy's KL to the reference on its own samples
// (k1: the mean over responses of the summed log-ratio, nats per response).
nlohmann::json sample_check(const Recipe& recipe, const DpoStageConfig& c, TransformerImpl& policy,
                            const DpoPolicy& built, const torch::Device& device) {
  const DpoSampleEval& s = c.sample_eval;
  PromptStats stats;
  auto prompts = load_prompts(s.prompts, built.tokenizer, &stats);
  if (static_cast<int64_t>(prompts.size()) > s.count) prompts.resize(static_cast<size_t>(s.count));
  SamplingOptions sampling;
  sampling.max_new_tokens = s.max_new_tokens;
  sampling.temperature = s.temperature;
  sampling.eos_id = built.tokenizer.eos_id();
  sampling.pad_id = built.pad_id;
  for (size_t i = 0; i < prompts.size(); ++i)
    sampling.row_seeds.push_back(recipe.run.seed * 0x9e3779b97f4a7c15ull + i + 1);
  auto rate = [&](const GenerationBatch& g) {
    double hits = 0;
    for (int64_t b = 0; b < g.batch(); ++b)
      hits += s.ground_truth.score(response_text(built.tokenizer, g.response(b)));
    return hits / static_cast<double>(std::max<int64_t>(1, g.batch()));
  };
  const std::string ref_dir = reference_dir(recipe, c, built.init_dir);
  Transformer initial = load_causal_lm(built.init_dir, "policy");
  freeze(*initial, device);
  Transformer reference = ref_dir == built.init_dir
                              ? initial
                              : load_causal_lm(ref_dir, "reference", QuantizedModels::load_frozen);
  freeze(*reference, device);
  policy.eval();
  const GenerationBatch before = generate(*initial, prompts, sampling);
  const GenerationBatch after = generate(policy, prompts, sampling);
  torch::Tensor kl;
  {
    torch::NoGradGuard no_grad;
    const auto ref_logprobs = response_logprobs(*reference, after, s.temperature);
    kl = (after.logprobs - ref_logprobs).sum(1).mean();
  }
  policy.train();
  nlohmann::json out = {{"kl_final", kl.item<double>()}, {"sample_prompts", prompts.size()}};
  if (s.ground_truth.enabled()) {
    out["ground_truth_initial"] = rate(before);
    out["ground_truth_final"] = rate(after);
    out["ground_truth_rule"] = s.ground_truth.describe();
  }
  std::printf("[%s] samples on %zu held-out prompts: %s\n", c.name.c_str(), prompts.size(),
              out.dump().c_str());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Run

nlohmann::json run_dpo_stage(const Recipe& recipe, const DpoStageConfig& c) {
  require_no_tensor_parallel(recipe, c.name, "dpo");
  const TrainConfig& train = c.train;
  StageLoop loop(
      recipe, c.name, loop_schedule(train),
      scaling::train_forecaster(train, recipe.run.seed, c.name, recipe.stage_dir(c.name)));
  DpoPolicy built = set_up_policy(recipe, c, loop.device());
  TransformerImpl& policy = *built.model;
  const DpoData data = load_dpo_data(recipe, c, built.tokenizer);
  const ReferenceSource reference = !loss_uses_reference(c.loss.type) ? ReferenceSource()
                                    : c.reference_mode == "live"
                                        ? live_reference(recipe, c, built, loop.device())
                                        : cached_reference(recipe, c, built, data, loop.device());
  const dist::Group& data_parallel = dist::world();
  const int64_t local_pairs = train.per_rank_batch(c.name, data_parallel, "pairs");
  ParallelAdamW optimizer(policy, train.optimizer(), data_parallel, train.parallel_options());

  EpochCursor<int64_t> pairs([&](int64_t epoch) {
    return seeded_permutation(
        static_cast<int64_t>(data.train.size()),
        recipe.run.seed * 0x100000001b3ull + static_cast<uint64_t>(epoch) + 1);
  });
  loop.resume({{{"model", &policy}}, {{"optimizer", &optimizer}}},
              [&](const nlohmann::json& state) {
                pairs.seek(state.at("epoch").get<int64_t>(), state.at("index").get<int64_t>());
              });

  const DpoStepper stepper{policy,       optimizer,   c,
                           data,         reference,   data_parallel,
                           built.pad_id, local_pairs, use_bf16(train.precision, loop.device())};
  nlohmann::json first_val, last_val;
  double last_loss = std::nan("");
  StageSteps steps;
  steps.step = [&](const StepContext& context) {
    StepReport report = stepper.step(context, pairs.take(train.batch_size));
    last_loss = report.record["loss"].get<double>();
    return report;
  };
  if (!data.val.empty())
    steps.evaluate = [&](int64_t at) {
      StepReport report;
      report.record = stepper.validation(train.eval_batches).json("eval_");
      (at == 0 ? first_val : last_val) = report.record;
      report.shown = {{"eval_acc", report.record["eval_rewards/accuracies"].get<double>()}};
      return report;
    };
  steps.state = [&] { return nlohmann::json{{"epoch", pairs.epoch()}, {"index", pairs.index()}}; };
  loop.run(steps);

  nlohmann::json summary = {
      {"steps", loop.step()},
      {"final_loss", last_loss},
      {"loss_type", c.loss.type},
      {"skipped_steps", loop.guard().skipped()},
      {"train_pairs", data.train.size()},
      {"val_pairs", data.val.size()},
      {"truncated_sequences", data.stats.truncated + data.val_stats.truncated}};
  if (reference.used) summary["reference_mode"] = c.reference_mode;
  if (!data.val.empty()) {
    summary.update(stepper.validation(0).json("eval_"));
    if (!first_val.empty())
      summary["initial_eval_rewards/accuracies"] = first_val["eval_rewards/accuracies"];
  }
  summary["peak_rss_mib"] = peak_rss_mib();  // training's peak, before the sampling check
  if (!c.sample_eval.prompts.path.empty())
    summary.update(sample_check(recipe, c, policy, built, loop.device()));
  if (!data_parallel.single()) summary["data_parallel_ranks"] = data_parallel.size();
  loop.report_optimizer_state(optimizer, summary);
  return loop.finish(summary, [&](const std::string& final_dir) {
    SaveOptions options;
    options.tokenizer_path = built.tokenizer_path;
    built.model->to(torch::kCPU);
    if (dist::is_main()) save_hf_model(policy, final_dir, options);
  });
}

// ---------------------------------------------------------------------------------------------
// Registry entry

StageType dpo_stage_type() {
  StageType type = typed_stage_type<DpoStageConfig>(parse_dpo_stage, run_dpo_stage);
  type.description =
      "direct preference optimisation: a policy trained on preference pairs (DPO, IPO, SLiC, "
      "robust DPO, SimPO, ORPO)";
  type.stated_defaults = [](const std::any& config) {
    return dpo_stated_defaults(std::any_cast<const DpoStageConfig&>(config));
  };
  type.data_parallel_error = [](const std::any& config, int ranks) {
    return std::any_cast<const DpoStageConfig&>(config).train.batch_division_error(ranks);
  };
  type.batch_layout = [](const std::any& config, int ranks) {
    const int64_t batch = std::any_cast<const DpoStageConfig&>(config).train.batch_size;
    return "global batch " + std::to_string(batch) + " pairs = " + std::to_string(ranks) +
           " ranks x " + std::to_string(batch / ranks);
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    auto get = [&](const char* key) { return summary.value(key, nlohmann::json()); };
    return std::vector<SummaryRow>{
        {stage + ": validation reward accuracy", get("eval_rewards/accuracies")},
        {"ground-truth rate, policy before " + stage, get("ground_truth_initial")},
        {"ground-truth rate, after " + stage, get("ground_truth_final")},
        {stage + ": KL to the reference (nats/response)", get("kl_final")}};
  };
  type.report_figures = {"eval_rewards/accuracies",
                         "eval_rewards/margins",
                         "eval_loss",
                         "ground_truth_initial",
                         "ground_truth_final",
                         "kl_final",
                         "steps"};
  type.report_charts = {
      {"loss", "Loss (train and validation)", {"loss", "eval_loss"}},
      {"accuracies",
       "Implicit-reward accuracy (train and validation)",
       {"rewards/accuracies", "eval_rewards/accuracies"}},
      {"margins", "Implicit-reward margin", {"rewards/margins", "eval_rewards/margins"}},
      {"rewards",
       "Implicit rewards of chosen and rejected",
       {"rewards/chosen", "rewards/rejected"}},
      {"logps", "Policy log-probs of chosen and rejected", {"logps/chosen", "logps/rejected"}},
      {"lr", "Learning rate", {"lr"}}};
  type.report_charts.push_back(scaling::forecast_chart());
  return type;
}

}  // namespace tiller
