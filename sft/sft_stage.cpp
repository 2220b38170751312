#include "sft/sft_stage.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/data/batching.h"
#include "common/dist/process_group.h"
#include "common/dist/tensor_parallel.h"
#include "common/io/checkpoint.h"
#include "common/io/hf_dir.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/lm_loss.h"
#include "common/train/metrics.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/precision.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/interrupt.h"

namespace tiller {

// ---------------------------------------------------------------------------------------------
// Config

namespace {

// The vocabulary the stage's tokenizer has, when it can be known before running (a tokenizer
// file, or one to be trained with a given size); -1 otherwise.
int64_t known_tokenizer_vocab(const SftStageConfig& c) {
  if (!c.tokenizer_corpus.empty()) return c.tokenizer_vocab_size;
  if (!c.tokenizer.empty() && path_exists(c.tokenizer)) {
    try {
      return Tokenizer(c.tokenizer).vocab_size();
    } catch (const Error&) {
      return -1;  // reported when the stage loads it
    }
  }
  return -1;
}

// Contradictions between the tokenizer and the model, found before anything runs: a
// model.vocab_size or an init directory's vocabulary that is not the tokenizer's.
void check_vocabulary_agrees(const SftStageConfig& c, const std::string& path,
                             ConfigErrors& errors) {
  const int64_t tokenizer_vocab = known_tokenizer_vocab(c);
  if (tokenizer_vocab < 0) return;
  if (c.model_fields.contains("vocab_size") &&
      c.model_fields["vocab_size"].get<int64_t>() != tokenizer_vocab)
    errors.add(path + ".model.vocab_size",
               std::to_string(c.model_fields["vocab_size"].get<int64_t>()) +
                   " contradicts the tokenizer's " + std::to_string(tokenizer_vocab) + " pieces");
  if (!c.init.empty() && c.init[0] != '@' && path_exists(c.init + "/config.json")) {
    try {
      const auto config = read_json_file(c.init + "/config.json");
      // Only a well-formed vocab_size is compared here: any other (a string, a config.json that
      // is not an object) is reported when the stage loads the model, not thrown as a json error.
      const auto vocab = config.find("vocab_size");
      const int64_t model_vocab =
          vocab != config.end() && vocab->is_number_integer() ? vocab->get<int64_t>() : -1;
      if (model_vocab >= 0 && tokenizer_vocab != model_vocab)
        errors.add(path + ".tokenizer", "the tokenizer's " + std::to_string(tokenizer_vocab) +
                                            " pieces contradict the vocab_size of " + c.init +
                                            " (" + std::to_string(model_vocab) + ")");
    } catch (const Error&) {
      // an unreadable config.json is reported when the stage loads the model
    }
  }
}

}  // namespace

SftStageConfig parse_sft_stage(const StageEntry& entry, ConfigErrors& errors) {
  SftStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  c.pretrain = r.string("type", "") == "pretrain";
  c.init = r.string("init", c.pretrain ? "" : "@base");
  if (r.has("model")) {
    ConfigReader model(r.object("model"), r.path_of("model"), errors);
    c.model_shape = model.string("shape", "stories260k");
    for (const char* key :
         {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
          "num_attention_heads", "num_key_value_heads", "max_position_embeddings"}) {
      if (model.has(key)) c.model_fields[key] = model.integer(key, 0);
    }
  }
  if (r.raw("tokenizer").is_object()) {
    ConfigReader tok(r.object("tokenizer"), r.path_of("tokenizer"), errors);
    c.tokenizer_corpus = tok.required_string("train");
    c.tokenizer_vocab_size = tok.integer("vocab_size", 512);
    tok.require(c.tokenizer_vocab_size >= 260, "vocab_size",
                "must be at least 260 (byte fallback)");
    if (!c.tokenizer_corpus.empty() && !path_exists(c.tokenizer_corpus))
      errors.add(tok.path_of("train"), "file " + c.tokenizer_corpus + " does not exist");
  } else {
    c.tokenizer = r.string("tokenizer", "");
  }
  if (c.init.empty()) {
    r.require(!c.model_shape.empty(), "model",
              "a stage without init trains from scratch and needs \"model\"");
    r.require(!c.tokenizer.empty() || !c.tokenizer_corpus.empty(), "tokenizer",
              "a stage without init needs a tokenizer.model path or {\"train\": corpus, "
              "\"vocab_size\": N}");
  } else {
    r.require(c.model_shape.empty(), "model", "give either init or model, not both");
  }
  if (!c.tokenizer.empty() && !path_exists(c.tokenizer))
    errors.add(r.path_of("tokenizer"), "file " + c.tokenizer + " does not exist");
  check_vocabulary_agrees(c, entry.path, errors);

  {
    ConfigReader d(r.object("data"), r.path_of("data"), errors);
    c.data.path = d.required_string("train");
    c.val_path = d.string("val", "");
    c.data.format = d.string("format", c.pretrain ? "text" : "messages");
    c.data.template_name = d.string("template", "chatml");
    c.val_fraction = d.number("val_fraction", c.val_path.empty() ? 0.1 : 0.0);
    c.data.skip_bad_lines = d.boolean("skip_bad_lines", false);
    c.data.train_on_prompt = d.boolean("train_on_prompt", c.pretrain);
    c.packing = d.boolean("packing", true);
    c.data.max_records = d.integer("max_records", -1);
    if (c.pretrain)
      d.one_of("format", c.data.format, {"text"});
    else
      d.one_of("format", c.data.format, {"messages", "prompt_completion", "alpaca"});
    d.one_of("template", c.data.template_name, {"chatml", "llama2", "alpaca", "plain"});
    d.require(c.val_fraction >= 0 && c.val_fraction < 1, "val_fraction", "must be in [0, 1)");
    if (!c.data.path.empty() && !path_exists(c.data.path))
      errors.add(d.path_of("train"), "file " + c.data.path + " does not exist");
    if (!c.val_path.empty() && !path_exists(c.val_path))
      errors.add(d.path_of("val"), "file " + c.val_path + " does not exist");
  }
  c.train = parse_train_config(r.object("train"), r.path_of("train"), errors);
  c.data.max_seq_len = c.train.max_seq_len;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Loop

namespace {

struct DataPosition {
  int64_t epoch = 0;
  int64_t row = 0;    // next row of the epoch's plan
  double tokens = 0;  // tokens trained on so far (padding excluded), every rank's
};

// Mean loss per target token over (up to max_batches of) the validation rows; the batches are
// dealt round-robin to the data-parallel ranks and the sums reduced.
double validation_loss(TransformerImpl& model, const std::vector<Example>& examples,
                       const std::vector<Row>& rows, const BatchingOptions& batching,
                       int64_t pad_id, int64_t micro_batch, int64_t max_batches, bool bf16,
                       const dist::Group& group) {
  torch::NoGradGuard no_grad;
  model.eval();
  double total = 0, targets = 0;
  int64_t batch_index = 0;
  for (int64_t begin = 0; begin < static_cast<int64_t>(rows.size());
       begin += micro_batch, ++batch_index) {
    if (max_batches > 0 && batch_index >= max_batches) break;
    if (batch_index % group.size() != group.rank()) continue;
    const int64_t count = std::min<int64_t>(micro_batch, static_cast<int64_t>(rows.size()) - begin);
    auto batch = make_batch(examples, rows, begin, count, batching, pad_id);
    compat::AutocastGuard cast(bf16, model.parameters().front().device());
    total += lm_loss_sum(model, batch).item<double>();
    targets += static_cast<double>(batch.target_count);
  }
  const auto sums = group.sum({total, targets});
  model.train();
  return sums[1] > 0 ? sums[0] / sums[1] : std::nan("");
}

Transformer build_model(const Recipe& recipe, const SftStageConfig& c,
                        std::string* tokenizer_path) {
  if (!c.init.empty()) {
    const std::string dir = resolve_model_reference(recipe, c.init);
    *tokenizer_path = c.tokenizer.empty() ? tokenizer_path_in(dir) : c.tokenizer;
    return load_hf_model(dir, /*num_labels=*/0);
  }
  *tokenizer_path = c.tokenizer;
  if (!c.tokenizer_corpus.empty()) {
    const std::string dir = recipe.stage_dir(c.name) + "/tokenizer";
    *tokenizer_path = dir + "/tokenizer.model";
    if (dist::is_main() && !path_exists(*tokenizer_path)) {
      std::printf("[%s] training a %lld-piece tokenizer on %s\n", c.name.c_str(),
                  (long long)c.tokenizer_vocab_size, c.tokenizer_corpus.c_str());
      train_tokenizer(c.tokenizer_corpus, c.tokenizer_vocab_size, dir);
    }
    dist::world().barrier();  // the other ranks read the tokenizer rank 0 trained
  }
  ModelConfig config = builtin_shape(c.model_shape);
  Tokenizer tok(*tokenizer_path);
  config.vocab_size = tok.vocab_size();
  config.bos_token_id = tok.bos_id();
  config.eos_token_id = tok.eos_id();
  nlohmann::json fields = model_config_to_hf_json(config);
  // The shape's head_dim follows from its own width and heads; overridden ones derive it anew.
  fields.erase("head_dim");
  for (auto it = c.model_fields.begin(); it != c.model_fields.end(); ++it)
    fields[it.key()] = it.value();
  config = model_config_from_hf_json(fields, "stage " + c.name + " model");
  Transformer model(config);
  model->init_weights(recipe.run.seed);
  return model;
}

}  // namespace

nlohmann::json run_sft_stage(const Recipe& recipe, const SftStageConfig& c) {
  const std::string stage_dir = recipe.stage_dir(c.name);
  const std::string checkpoints = stage_dir + "/checkpoints";
  const TrainConfig& t = c.train;
  torch::manual_seed(recipe.run.seed);
  const torch::Device device(recipe.run.device);

  std::string tokenizer_path;
  Transformer model = build_model(recipe, c, &tokenizer_path);
  Tokenizer tok(tokenizer_path);
  tok.check_matches(model->config, c.init.empty() ? "built from " + c.model_shape : c.init);
  check(t.max_seq_len <= model->config.max_position_embeddings,
        "stage " + c.name + ": train.max_seq_len " + std::to_string(t.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(model->config.max_position_embeddings));
  // Tensor parallel: every rank built the same full model; each keeps its shard of it.
  const dist::Layout layout = dist::layout();
  const dist::Group& tp = layout.tensor;
  model->shard_for_tensor_parallel(tp);
  if (!tp.single())
    std::printf(
        "[%s] tensor parallel: model sharded over %d ranks (%d heads, %lld MLP units, "
        "%lld vocabulary rows each)\n",
        c.name.c_str(), tp.size(), static_cast<int>(model->config.num_attention_heads / tp.size()),
        (long long)(model->config.intermediate_size / tp.size()),
        (long long)(model->config.vocab_size / tp.size()));
  model->to(device);
  model->train();
  model->model->activation_checkpointing = t.activation_checkpointing;
  const bool bf16 = use_bf16(t.precision, device);

  // Data
  DataStats stats, val_stats;
  std::vector<Example> all, train, val;
  if (c.pretrain) {
    all = load_text_examples(c.data.path, tok, t.max_seq_len, c.data.skip_bad_lines, &stats);
  } else {
    all = load_sft_examples(c.data, tok, &stats);
  }
  if (!c.val_path.empty()) {
    train = std::move(all);
    SftDataOptions vo = c.data;
    vo.path = c.val_path;
    vo.max_records = -1;
    val = c.pretrain ? load_text_examples(c.val_path, tok, t.max_seq_len, c.data.skip_bad_lines,
                                          &val_stats)
                     : load_sft_examples(vo, tok, &val_stats);
  } else if (c.val_fraction > 0) {
    split_validation(all, c.val_fraction, recipe.run.seed, &train, &val);
  } else {
    train = std::move(all);
  }
  std::printf(
      "[%s] data: %lld records -> %lld train / %lld validation examples, %lld truncated, "
      "%lld dropped, %lld bad lines skipped\n",
      c.name.c_str(), (long long)stats.records, (long long)train.size(), (long long)val.size(),
      (long long)stats.truncated, (long long)stats.dropped,
      (long long)(stats.skipped + val_stats.skipped));

  BatchingOptions batching;
  batching.max_seq_len = t.max_seq_len;
  batching.packing = c.packing;
  batching.seed = recipe.run.seed;
  batching.rows_per_batch = t.micro_batch_size;
  const std::vector<Row> val_rows = val.empty() ? std::vector<Row>{} : plan_in_order(val, batching);

  // Data parallel: each rank takes an equal slice of every global batch of t.batch_size rows; the
  // ranks of a tensor-parallel group share a slice.
  const dist::Group& dp = layout.data;
  const int64_t local_rows = t.per_rank_batch(c.name, dp, "rows");

  // Optimizer, and resume
  ParallelOptions parallel = t.parallel_options();
  parallel.tensor_parallel = tp;
  for (auto& [name, p] : model->local_weights())
    if (!tp.single() && TransformerImpl::sharded_dim(name) >= 0)
      parallel.tensor_parallel_shards.push_back(p);
  ParallelAdamW optimizer(*model, t.optimizer(), dp, parallel);
  CheckpointParts parts{{{"model", model.get()}}, {{"optimizer", &optimizer}}};
  int64_t step = 0;
  NonFiniteGuard guard(c.name, checkpoints, t.max_nonfinite_steps);
  guard.set_spike_filter(t.loss_spike_zscore, t.loss_spike_window);
  DataPosition position;
  auto state = load_latest_checkpoint(checkpoints, parts);
  if (!state.is_null()) {
    step = state.at("step").get<int64_t>();
    position.epoch = state.at("epoch").get<int64_t>();
    position.row = state.at("row").get<int64_t>();
    position.tokens = state.value("tokens_trained", 0.0);
    guard.restore(state);
    std::printf("[%s] resumed from %s/step-%lld\n", c.name.c_str(), checkpoints.c_str(),
                (long long)step);
  }
  // Step step's record was logged before its checkpoint: lines after it are a killed attempt's.
  const int64_t first_unlogged = state.is_null() ? 0 : step + 1;
  MetricsLog metrics(stage_dir, first_unlogged);
  Progress progress(step, t.steps);
  std::vector<Row> epoch_rows = plan_epoch(train, batching, position.epoch);
  check(!epoch_rows.empty(), "stage " + c.name + ": no training rows");

  auto save = [&](int64_t at_step) {
    nlohmann::json s = {{"step", at_step},
                        {"epoch", position.epoch},
                        {"row", position.row},
                        {"tokens_trained", position.tokens}};
    s.update(guard.to_json());
    save_checkpoint(checkpoints, parts, s, t.keep_checkpoints);
  };
  auto evaluate = [&]() {
    return val_rows.empty() ? std::nan("")
                            : validation_loss(*model, val, val_rows, batching, tok.pad_id(),
                                              t.micro_batch_size, t.eval_batches, bf16, dp);
  };

  double first_val_loss = std::nan(""), last_val_loss = std::nan(""), last_loss = std::nan("");
  if (step == 0 && !val_rows.empty()) {
    first_val_loss = evaluate();
    metrics.log({{"step", 0}, {"val_loss", first_val_loss}, {"val_ppl", std::exp(first_val_loss)}});
    std::printf("[%s] step 0/%lld  val_loss %.4f\n", c.name.c_str(), (long long)t.steps,
                first_val_loss);
  }

  while (step < t.steps) {
    const auto started = std::chrono::steady_clock::now();
    const double lr = learning_rate(t.schedule_options(), step);
    optimizer.set_learning_rate(lr);

    // The step's rows, continuing into the next epoch's plan when this one runs out.
    std::vector<Row> rows;
    while (static_cast<int64_t>(rows.size()) < t.batch_size) {
      if (position.row >= static_cast<int64_t>(epoch_rows.size())) {
        ++position.epoch;
        position.row = 0;
        epoch_rows = plan_epoch(train, batching, position.epoch);
      }
      rows.push_back(epoch_rows[position.row++]);
    }
    auto batch =
        make_batch(train, rows, dp.rank() * local_rows, local_rows, batching, tok.pad_id());
    const double local_tokens = batch.segment_ids.ge(0).sum().item<double>();
    const auto counts = dp.sum({static_cast<double>(batch.target_count), local_tokens});
    const double total_targets = std::max(1.0, counts[0]);

    optimizer.zero_grad();
    double loss_sum = 0;
    for (int64_t begin = 0; begin < local_rows; begin += t.micro_batch_size) {
      auto micro = batch.slice(begin, std::min(t.micro_batch_size, local_rows - begin));
      torch::Tensor loss;
      {
        compat::AutocastGuard cast(bf16, device);
        loss = lm_loss_sum(*model, micro);
      }
      (loss / total_targets).backward();
      loss_sum += loss.item<double>();
    }
    const double loss = dp.sum(loss_sum) / total_targets;
    const double grad_norm = optimizer.reduce_gradients_and_clip(t.grad_clip);
    if (guard.accept(loss, grad_norm, step + 1)) {
      optimizer.step();
    } else {
      optimizer.zero_grad();
    }
    ++step;
    last_loss = loss;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double tokens_per_s = counts[1] / std::max(seconds, 1e-9);
    position.tokens += counts[1];

    nlohmann::json record = {{"step", step},
                             {"loss", loss},
                             {"lr", lr},
                             {"tokens_per_s", tokens_per_s},
                             {"grad_norm", grad_norm},
                             {"skipped_steps", guard.skipped()},
                             {"spike_skipped_steps", guard.spikes_skipped()}};
    const bool eval_now =
        !val_rows.empty() && ((t.eval_every > 0 && step % t.eval_every == 0) || step == t.steps);
    if (eval_now) {
      last_val_loss = evaluate();
      record["val_loss"] = last_val_loss;
      record["val_ppl"] = std::exp(last_val_loss);
    }
    if (step % t.log_every == 0 || step == t.steps || eval_now) {
      metrics.log(record);
      std::map<std::string, double> shown = {{"loss", loss}, {"lr", lr}};
      if (eval_now) shown["val_loss"] = last_val_loss;
      std::printf("[%s] %s\n", c.name.c_str(), progress.line(step, shown, tokens_per_s).c_str());
      std::fflush(stdout);
    }
    const bool save_now =
        (t.checkpoint_every > 0 && step % t.checkpoint_every == 0) || step == t.steps;
    if (save_now) save(step);
    stop_if_interrupted(c.name, step, save_now, [&] { save(step); });
  }

  SaveOptions options;
  options.tokenizer_path = tokenizer_path;
  model->to(torch::kCPU);
  const auto weights = model->named_weights();  // full weights: gathered on every rank under TP
  if (dist::is_main())
    save_hf_model(model->config, weights, stage_output_dir(recipe, c.name), options);
  nlohmann::json summary = {{"stage", c.name},
                            {"type", c.pretrain ? "pretrain" : "sft"},
                            {"steps", step},
                            {"final_loss", last_loss},
                            {"tokens_trained", position.tokens},
                            {"max_seq_len", t.max_seq_len},
                            {"lr", t.lr},
                            {"batch_size", t.batch_size},
                            {"skipped_steps", guard.skipped()},
                            {"train_examples", train.size()},
                            {"val_examples", val.size()},
                            {"truncated", stats.truncated}};
  if (!std::isnan(first_val_loss)) summary["initial_val_loss"] = first_val_loss;
  if (!std::isnan(last_val_loss)) summary["final_val_loss"] = last_val_loss;
  if (!dp.single()) summary["data_parallel_ranks"] = dp.size();
  if (!tp.single()) summary["tensor_parallel_ranks"] = tp.size();
  summary["optimizer_state_bytes_per_rank"] = optimizer.state_bytes_per_rank();
  const std::string state_line = optimizer.describe_state_per_rank();
  std::printf("[%s] %s\n", c.name.c_str(), state_line.c_str());
  if (dist::is_main()) mark_stage_complete(recipe, c.name, summary);
  dist::world().barrier();  // the next stage, on every rank, reads what rank 0 wrote
  std::printf("[%s] done: %s\n", c.name.c_str(), stage_output_dir(recipe, c.name).c_str());
  return summary;
}

}  // namespace tiller
