#include "sft/sft_stage.h"

#include <cmath>
#include <cstdio>

#include "common/data/batching.h"
#include "common/data/shards.h"
#include "common/dist/process_group.h"
#include "common/dist/tensor_parallel.h"
#include "common/io/hf_dir.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/chat_template.h"  // chat_template_names
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/epoch_cursor.h"
#include "common/train/lm_loss.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/train/stage_loop.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "scaling/curve.h"

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

// data.format "shards": data.train is a prepared directory (tiller data prepare's) with a train
// split and maybe a val split, made with this stage's tokenizer (checked here when the tokenizer is
// a file; a trained one, or the init's, is checked when the stage loads the shards).
void check_shards_data(const SftStageConfig& c, ConfigReader& d, bool shard_val) {
  d.require(c.val_path.empty(), "val",
            "does not apply to format shards: the validation set is the prepared directory's val "
            "split (val-*.bin) when it has one, else data.val_fraction of the train chunks");
  d.require(!shard_val || c.val_fraction == 0, "val_fraction",
            c.data.path +
                " has a val split (val-00000.bin), which is the validation set; a "
                "fraction of train would be a second one: leave val_fraction out (or 0)");
  d.require(!d.has("skip_bad_lines"), "skip_bad_lines",
            "does not apply to format shards (the text was read when the shards were prepared)");
  if (c.data.path[0] == '@') return;  // a prepare stage's output: checked when the stage loads it
  if (!is_directory(c.data.path)) {
    d.require(false, "train",
              "format shards reads a prepared directory (tiller data prepare's output); " +
                  c.data.path + " is a file");
    return;
  }
  if (!has_shard_split(c.data.path, "train")) {
    d.require(false, "train",
              c.data.path +
                  " has no train-00000.bin: not a directory of token shards (tiller "
                  "data prepare writes one)");
    return;
  }
  try {
    const ShardHeader header = read_shard_header(c.data.path + "/train-00000.bin");
    if (!c.tokenizer.empty() && path_exists(c.tokenizer)) {
      const uint64_t fingerprint = tokenizer_fingerprint(Tokenizer(c.tokenizer));
      d.require(header.fingerprint == fingerprint, "train",
                c.data.path + "/train-00000.bin was made with another tokenizer (fingerprint " +
                    fingerprint_hex(header.fingerprint) + ", " + c.tokenizer + "'s " +
                    fingerprint_hex(fingerprint) + "): prepare the shards with this one");
    }
  } catch (const Error& e) {
    d.require(false, "train", e.what());
  }
}

}  // namespace

SftStageConfig parse_sft_stage(const StageEntry& entry, ConfigErrors& errors, bool pretrain) {
  SftStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  r.string("type", "");
  c.pretrain = pretrain;
  c.init = r.string("init", c.pretrain ? "" : "@base");
  if (r.has("model")) {
    ConfigReader model(r.object("model"), r.path_of("model"), errors);
    c.model_shape = model.string("shape", "stories260k");
    const auto& shapes = builtin_shape_names();
    model.one_of("shape", c.model_shape, {shapes.begin(), shapes.end()});
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
    // A model loaded from init keeps its vocabulary: a tokenizer trained here would be ignored.
    r.require(c.tokenizer_corpus.empty(), "tokenizer",
              "a tokenizer is trained ({\"train\": corpus}) only for a model from scratch; with "
              "init, give a tokenizer.model path or leave it out (the init's)");
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
    // Shards whose directory has a val split validate on it: no fraction of train by default.
    const bool shards = c.pretrain && c.data.format == "shards";
    const bool shard_val =
        shards && is_directory(c.data.path) && has_shard_split(c.data.path, "val");
    // "@stage": a prepare stage's output, which does not exist before the run; its validation
    // set is its own val split (prepare's validation_fraction), or val_fraction when given.
    const bool shard_reference = shards && c.data.path.size() > 1 && c.data.path[0] == '@';
    c.val_fraction =
        d.number("val_fraction", c.val_path.empty() && !shard_val && !shard_reference ? 0.1 : 0.0);
    c.data.skip_bad_lines = d.boolean("skip_bad_lines", false);
    c.data.train_on_prompt = d.boolean("train_on_prompt", c.pretrain);
    c.packing = d.boolean("packing", true);
    c.data.max_records = d.integer("max_records", -1);
    if (c.pretrain)
      d.one_of("format", c.data.format, {"text", "shards"});
    else
      d.one_of("format", c.data.format, {"messages", "prompt_completion", "alpaca"});
    d.one_of("template", c.data.template_name,
             std::set<std::string>(chat_template_names().begin(), chat_template_names().end()));
    d.require(c.val_fraction >= 0 && c.val_fraction < 1, "val_fraction", "must be in [0, 1)");
    d.require(c.val_path.empty() || !d.has("val_fraction"), "val_fraction",
              "give either data.val (a validation file) or data.val_fraction, not both");
    d.require(c.data.max_records == -1 || c.data.max_records >= 1, "max_records",
              "must be at least 1 (or -1: all)");
    // Pretraining reads plain text, every token trained: these would be accepted and ignored.
    if (c.pretrain)
      for (const char* key : {"template", "train_on_prompt", "max_records"})
        d.require(!d.has(key), key,
                  "does not apply to pretraining (plain text, every token trained, the whole "
                  "file read)");
    if (shard_reference)
      check_shards_data(c, d, shard_val);
    else if (!c.data.path.empty() && !path_exists(c.data.path))
      errors.add(d.path_of("train"), "file " + c.data.path + " does not exist");
    else if (shards && !c.data.path.empty())
      check_shards_data(c, d, shard_val);
    if (!c.val_path.empty() && !path_exists(c.val_path))
      errors.add(d.path_of("val"), "file " + c.val_path + " does not exist");
  }
  c.train = parse_train_config(r.object("train"), r.path_of("train"), errors);
  c.data.max_seq_len = c.train.max_seq_len;
  c.lora = read_lora_section(r, errors);
  r.require(!c.lora.enabled || !c.init.empty(), "lora",
            "LoRA adapts a model: give init (a base model), not a model from scratch");
  return c;
}

nlohmann::json sft_stated_values(const SftStageConfig& c) {
  nlohmann::json stated = nlohmann::json::object();
  if (!c.init.empty()) stated["init"] = c.init;
  if (!c.model_shape.empty()) {
    // The shape's fields, then those the recipe overrides (vocab_size: the tokenizer's).
    const ModelConfig shape = builtin_shape(c.model_shape);
    stated["model"] = {{"shape", c.model_shape},
                       {"hidden_size", shape.hidden_size},
                       {"intermediate_size", shape.intermediate_size},
                       {"num_hidden_layers", shape.num_hidden_layers},
                       {"num_attention_heads", shape.num_attention_heads},
                       {"num_key_value_heads", shape.num_key_value_heads},
                       {"max_position_embeddings", shape.max_position_embeddings}};
    stated["model"].update(c.model_fields);
  }
  if (!c.tokenizer_corpus.empty())
    stated["tokenizer"] = {{"train", c.tokenizer_corpus}, {"vocab_size", c.tokenizer_vocab_size}};
  else if (!c.tokenizer.empty())
    stated["tokenizer"] = c.tokenizer;
  nlohmann::json data = {{"train", c.data.path}, {"format", c.data.format}, {"packing", c.packing}};
  // Shards were read (and cleaned) when they were prepared: no lines to skip here.
  if (c.data.format != "shards") data["skip_bad_lines"] = c.data.skip_bad_lines;
  if (c.val_path.empty())
    data["val_fraction"] = c.val_fraction;
  else
    data["val"] = c.val_path;
  if (!c.pretrain) {
    data["template"] = c.data.template_name;
    data["train_on_prompt"] = c.data.train_on_prompt;
    data["max_records"] = c.data.max_records;
  }
  stated["data"] = data;
  stated["train"] = train_config_values(c.train);
  if (c.lora.enabled) stated["lora"] = lora_section_values(c.lora);
  return stated;
}

// ---------------------------------------------------------------------------------------------
// Set-up

namespace {

// Mean loss per target token over (up to max_batches of) the validation rows; the batches are
// dealt round-robin to the data-parallel ranks and the sums reduced.
double validation_loss(TransformerImpl& model, const ExampleSource& examples,
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

// The stage's model and tokenizer: built from scratch or loaded from init, checked against each
// other, sharded over the tensor-parallel group, on the device in training mode.
struct SftModel {
  Transformer model;
  std::string tokenizer_path;
  Tokenizer tokenizer;
};

SftModel set_up_model(const Recipe& recipe, const SftStageConfig& c,
                      const dist::Group& tensor_parallel, const torch::Device& device) {
  std::string tokenizer_path;
  Transformer model = build_model(recipe, c, &tokenizer_path);
  Tokenizer tokenizer(tokenizer_path);
  tokenizer.check_matches(model->config, c.init.empty() ? "built from " + c.model_shape : c.init);
  check(c.train.max_seq_len <= model->config.max_position_embeddings,
        "stage " + c.name + ": train.max_seq_len " + std::to_string(c.train.max_seq_len) +
            " exceeds the model's max_position_embeddings " +
            std::to_string(model->config.max_position_embeddings));
  // Tensor parallel: every rank built the same full model; each keeps its shard of it.
  model->shard_for_tensor_parallel(tensor_parallel);
  if (!tensor_parallel.single())
    std::printf(
        "[%s] tensor parallel: model sharded over %d ranks (%d heads, %lld MLP units, "
        "%lld vocabulary rows each)\n",
        c.name.c_str(), tensor_parallel.size(),
        static_cast<int>(model->config.num_attention_heads / tensor_parallel.size()),
        (long long)(model->config.intermediate_size / tensor_parallel.size()),
        (long long)(model->config.vocab_size / tensor_parallel.size()));
  apply_lora_section(*model, c.lora, c.init.empty() ? "" : resolve_model_reference(recipe, c.init),
                     recipe.run.seed, c.name);
  model->to(device);
  model->train();
  model->model->activation_checkpointing = c.train.activation_checkpointing;
  return {model, tokenizer_path, std::move(tokenizer)};
}

// The training and validation examples, and how they are cut into rows.
struct SftData {
  std::shared_ptr<const ExampleSource> train, val;  // val: empty without validation
  DataStats stats, val_stats;
  BatchingOptions batching;
  std::vector<Row> val_rows;  // the validation examples in order
};

std::vector<Example> load_examples(const SftStageConfig& c, const SftDataOptions& options,
                                   const Tokenizer& tokenizer, DataStats* stats) {
  return c.pretrain ? load_text_examples(options.path, tokenizer, c.train.max_seq_len,
                                         options.skip_bad_lines, stats)
                    : load_sft_examples(options, tokenizer, stats);
}

// Records read and tokenized in memory: SFT, and pretraining's text path.
void load_record_data(const Recipe& recipe, const SftStageConfig& c, const Tokenizer& tokenizer,
                      SftData& data) {
  std::vector<Example> all = load_examples(c, c.data, tokenizer, &data.stats);
  std::vector<Example> train, val;
  if (!c.val_path.empty()) {
    train = std::move(all);
    SftDataOptions val_options = c.data;
    val_options.path = c.val_path;
    val_options.max_records = -1;
    val = load_examples(c, val_options, tokenizer, &data.val_stats);
  } else if (c.val_fraction > 0) {
    split_validation(all, c.val_fraction, recipe.run.seed, &train, &val);
  } else {
    train = std::move(all);
  }
  std::printf(
      "[%s] data: %lld records -> %lld train / %lld validation examples, %lld truncated, "
      "%lld dropped, %lld bad lines skipped\n",
      c.name.c_str(), (long long)data.stats.records, (long long)train.size(), (long long)val.size(),
      (long long)data.stats.truncated, (long long)data.stats.dropped,
      (long long)(data.stats.skipped + data.val_stats.skipped));
  data.train = std::make_shared<const InMemoryExamples>(std::move(train));
  data.val = std::make_shared<const InMemoryExamples>(std::move(val));
}

// Pretraining from token shards: the train split's stream cut into chunks of max_seq_len, read
// through the maps as batches need them. Validation: the directory's val split (its chunks), or
// val_fraction of the train chunks split as the text path splits its own.
void load_shard_data(const Recipe& recipe, const SftStageConfig& c, const Tokenizer& tokenizer,
                     SftData& data) {
  const uint64_t fingerprint = tokenizer_fingerprint(tokenizer);
  const int64_t length = c.train.max_seq_len;
  const std::string dir =
      c.data.path[0] == '@' ? resolve_model_reference(recipe, c.data.path) : c.data.path;
  auto shards =
      std::make_shared<const TokenShards>(dir, "train", fingerprint, tokenizer.vocab_size());
  auto chunks = std::make_shared<const ShardChunks>(shards, length);
  check(chunks->size() > 0, dir + ": the train split's " + std::to_string(shards->token_count()) +
                                " tokens are fewer than max_seq_len (" + std::to_string(length) +
                                ")");
  std::string validation = "no validation";
  if (has_shard_split(dir, "val")) {
    check(c.val_fraction == 0,
          "stage " + c.name + ": data.val_fraction with " + dir + ", which has its own val split");
    auto val_shards =
        std::make_shared<const TokenShards>(dir, "val", fingerprint, tokenizer.vocab_size());
    data.val = std::make_shared<const ShardChunks>(val_shards, length);
    check(data.val->size() > 0,
          dir + ": the val split's " + std::to_string(val_shards->token_count()) +
              " tokens are fewer than max_seq_len (" + std::to_string(length) + ")");
    data.train = chunks;
    validation = "validation: the val split's " + std::to_string(val_shards->token_count()) +
                 " tokens in " + std::to_string(val_shards->document_count()) + " documents";
  } else if (c.val_fraction > 0) {
    ValidationSplit split = split_validation(chunks->size(), c.val_fraction, recipe.run.seed);
    data.train = std::make_shared<const ExampleSubset>(chunks, std::move(split.train));
    data.val = std::make_shared<const ExampleSubset>(chunks, std::move(split.validation));
    char fraction[32];
    std::snprintf(fraction, sizeof(fraction), "%g", c.val_fraction);
    validation = "validation: val_fraction " + std::string(fraction) + " of the chunks";
  } else {
    data.train = chunks;
  }
  if (!data.val) data.val = std::make_shared<const InMemoryExamples>(std::vector<Example>());
  data.stats.records = shards->document_count();
  data.stats.tokens = chunks->size() * length;
  std::printf(
      "[%s] data: shards %s: %lld tokens in %lld documents (%lld shards) -> %lld chunks of %lld "
      "tokens -> %lld train / %lld validation chunks (%s)\n",
      c.name.c_str(), dir.c_str(), (long long)shards->token_count(),
      (long long)shards->document_count(), (long long)shards->shards().size(),
      (long long)chunks->size(), (long long)length, (long long)data.train->size(),
      (long long)data.val->size(), validation.c_str());
}

SftData load_data(const Recipe& recipe, const SftStageConfig& c, const Tokenizer& tokenizer) {
  SftData data;
  if (c.pretrain && c.data.format == "shards")
    load_shard_data(recipe, c, tokenizer, data);
  else
    load_record_data(recipe, c, tokenizer, data);
  data.batching.max_seq_len = c.train.max_seq_len;
  data.batching.packing = c.packing;
  data.batching.seed = recipe.run.seed;
  data.batching.rows_per_batch = c.train.micro_batch_size;
  if (data.val->size() > 0) data.val_rows = plan_in_order(*data.val, data.batching);
  return data;
}

// The optimizer over this rank's weights (under tensor parallelism: its shards, which the
// gradient-norm reduction must know).
ParallelOptions parallel_options(TransformerImpl& model, const TrainConfig& train,
                                 const dist::Group& tensor_parallel) {
  ParallelOptions parallel = train.parallel_options();
  parallel.tensor_parallel = tensor_parallel;
  for (auto& [name, weight] : model.local_weights())
    if (!tensor_parallel.single() && TransformerImpl::sharded_dim(name) >= 0)
      parallel.tensor_parallel_shards.push_back(weight);
  return parallel;
}

// ---------------------------------------------------------------------------------------------
// Step

// One optimizer step over a global batch of rows, and the validation pass.
struct SftStepper {
  TransformerImpl& model;
  ParallelAdamW& optimizer;
  const TrainConfig& train;
  const SftData& data;
  const dist::Group& data_parallel;
  int64_t pad_id;
  int64_t local_rows;  // this rank's slice of every global batch
  bool bf16;

  StepReport step(const StepContext& context, const std::vector<Row>& rows) const {
    const double lr =
        set_scheduled_learning_rate(optimizer, train.schedule_options(), context.step);
    auto batch = make_batch(*data.train, rows, data_parallel.rank() * local_rows, local_rows,
                            data.batching, pad_id);
    const double local_tokens = batch.segment_ids.ge(0).sum().item<double>();
    const auto counts = data_parallel.sum({static_cast<double>(batch.target_count), local_tokens});
    const double total_targets = std::max(1.0, counts[0]);

    optimizer.zero_grad();
    double loss_sum = 0;
    const auto device = model.parameters().front().device();
    for (int64_t begin = 0; begin < local_rows; begin += train.micro_batch_size) {
      auto micro = batch.slice(begin, std::min(train.micro_batch_size, local_rows - begin));
      torch::Tensor loss;
      {
        compat::AutocastGuard cast(bf16, device);
        loss = lm_loss_sum(model, micro);
      }
      (loss / total_targets).backward();
      loss_sum += loss.item<double>();
    }
    const double loss = data_parallel.sum(loss_sum) / total_targets;
    const double grad_norm =
        apply_update(optimizer, context.guard, loss, train.grad_clip, context.step + 1);
    StepReport report;
    report.record = {{"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}};
    report.shown = {{"loss", loss}, {"lr", lr}};
    report.tokens = counts[1];
    return report;
  }

  double validation() const {
    return validation_loss(model, *data.val, data.val_rows, data.batching, pad_id,
                           train.micro_batch_size, train.eval_batches, bf16, data_parallel);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Run

nlohmann::json run_sft_stage(const Recipe& recipe, const SftStageConfig& c) {
  const TrainConfig& train = c.train;
  StageLoop loop(
      recipe, c.name, loop_schedule(train),
      scaling::train_forecaster(train, recipe.run.seed, c.name, recipe.stage_dir(c.name)));
  const dist::Layout layout = dist::layout();
  SftModel built = set_up_model(recipe, c, layout.tensor, loop.device());
  TransformerImpl& model = *built.model;
  const SftData data = load_data(recipe, c, built.tokenizer);
  // Data parallel: each rank takes an equal slice of every global batch of train.batch_size
  // rows; the ranks of a tensor-parallel group share a slice.
  const int64_t local_rows = train.per_rank_batch(c.name, layout.data, "rows");
  ParallelAdamW optimizer(model, train.optimizer(), layout.data,
                          parallel_options(model, train, layout.tensor));

  EpochCursor<Row> rows(
      [&](int64_t epoch) { return plan_epoch(*data.train, data.batching, epoch); });
  double tokens_trained = 0;  // padding excluded, every rank's
  loop.resume({{{"model", &model}}, {{"optimizer", &optimizer}}}, [&](const nlohmann::json& state) {
    rows.seek(state.at("epoch").get<int64_t>(), state.at("row").get<int64_t>());
    tokens_trained = state.value("tokens_trained", 0.0);
  });
  check(!rows.current().empty(), "stage " + c.name + ": no training rows");

  const SftStepper stepper{model,       optimizer,
                           train,       data,
                           layout.data, built.tokenizer.pad_id(),
                           local_rows,  use_bf16(train.precision, loop.device())};
  double first_val_loss = std::nan(""), last_val_loss = std::nan(""), last_loss = std::nan("");
  StageSteps steps;
  steps.step = [&](const StepContext& context) {
    StepReport report = stepper.step(context, rows.take(train.batch_size));
    last_loss = report.record["loss"].get<double>();
    tokens_trained += report.tokens;
    return report;
  };
  if (!data.val_rows.empty())
    steps.evaluate = [&](int64_t at) {
      const double loss = stepper.validation();
      (at == 0 ? first_val_loss : last_val_loss) = loss;
      StepReport report;
      report.record = {{"val_loss", loss}, {"val_ppl", std::exp(loss)}};
      report.shown = {{"val_loss", loss}};
      return report;
    };
  steps.state = [&] {
    return nlohmann::json{
        {"epoch", rows.epoch()}, {"row", rows.index()}, {"tokens_trained", tokens_trained}};
  };
  loop.run(steps);

  nlohmann::json summary = {{"steps", loop.step()},
                            {"final_loss", last_loss},
                            {"tokens_trained", tokens_trained},
                            {"max_seq_len", train.max_seq_len},
                            {"lr", train.lr},
                            {"batch_size", train.batch_size},
                            {"skipped_steps", loop.guard().skipped()},
                            {"train_examples", data.train->size()},
                            {"val_examples", data.val->size()},
                            {"truncated", data.stats.truncated}};
  if (!std::isnan(first_val_loss)) summary["initial_val_loss"] = first_val_loss;
  if (!std::isnan(last_val_loss)) summary["final_val_loss"] = last_val_loss;
  if (!layout.data.single()) summary["data_parallel_ranks"] = layout.data.size();
  if (!layout.tensor.single()) summary["tensor_parallel_ranks"] = layout.tensor.size();
  loop.report_optimizer_state(optimizer, summary);
  return loop.finish(summary, [&](const std::string& final_dir) {
    SaveOptions options;
    options.tokenizer_path = built.tokenizer_path;
    built.model->to(torch::kCPU);
    if (has_lora(*built.model)) {  // merged weights and adapter/ (no tensor parallelism)
      if (dist::is_main()) save_hf_model(*built.model, final_dir, options);
      return;
    }
    const auto weights = built.model->named_weights();  // full weights: gathered under TP
    if (dist::is_main()) save_hf_model(built.model->config, weights, final_dir, options);
  });
}

// ---------------------------------------------------------------------------------------------
// Registry entry

StageType sft_stage_type(bool pretrain) {
  StageType type = typed_stage_type<SftStageConfig>(
      [pretrain](const StageEntry& entry, ConfigErrors& errors) {
        return parse_sft_stage(entry, errors, pretrain);
      },
      run_sft_stage);
  type.stated_defaults = [](const std::any& config) {
    return sft_stated_values(std::any_cast<const SftStageConfig&>(config));
  };
  type.tensor_parallel = true;
  type.description = pretrain ? "pretraining: next-token loss on every token"
                              : "instruction SFT: next-token loss on the responses";
  type.data_parallel_error = [](const std::any& config, int ranks) {
    return std::any_cast<const SftStageConfig&>(config).train.batch_division_error(ranks);
  };
  type.batch_layout = [](const std::any& config, int ranks) {
    const int64_t batch = std::any_cast<const SftStageConfig&>(config).train.batch_size;
    return "global batch " + std::to_string(batch) + " rows = " + std::to_string(ranks) +
           " ranks x " + std::to_string(batch / ranks);
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    return std::vector<SummaryRow>{
        {stage + ": validation loss", summary.value("final_val_loss", nlohmann::json())}};
  };
  type.report_figures = {"final_loss", "final_val_loss", "steps"};
  type.report_charts = {{"loss", "Loss (train and validation)", {"loss", "val_loss"}},
                        {"lr", "Learning rate", {"lr"}},
                        {"grad_norm", "Gradient norm (log scale)", {"grad_norm"}, true},
                        {"tokens_per_s", "Throughput (tokens/s)", {"tokens_per_s"}}};
  type.report_charts.push_back(scaling::forecast_chart());
  type.sweepable = true;
  return type;
}

}  // namespace tiller
