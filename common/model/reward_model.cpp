#include "common/model/reward_model.h"

#include "common/model/attention_mask.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {
const char* const kOffsetKey = "tiller_reward_offset";
const char* const kTemplateKey = "tiller_chat_template";
const char* const kMaxSeqLenKey = "tiller_max_seq_len";
}  // namespace

RewardMetadata read_reward_metadata(const std::string& dir) {
  const std::string path = dir + "/config.json";
  auto json = read_json_file(path);
  RewardMetadata m;
  if (json.contains(kOffsetKey)) {
    check(json[kOffsetKey].is_number(), path + ": " + kOffsetKey + " must be a number");
    m.offset = json[kOffsetKey].get<double>();
    check(std::isfinite(m.offset), path + ": " + kOffsetKey + " is not finite");
  }
  if (json.contains(kTemplateKey)) {
    check(json[kTemplateKey].is_string(), path + ": " + kTemplateKey + " must be a string");
    m.template_name = json[kTemplateKey].get<std::string>();
  }
  if (json.contains(kMaxSeqLenKey)) {
    check(json[kMaxSeqLenKey].is_number_integer() && json[kMaxSeqLenKey].get<int64_t>() >= 0,
          path + ": " + kMaxSeqLenKey + " must be a non-negative integer");
    m.max_seq_len = json[kMaxSeqLenKey].get<int64_t>();
  }
  return m;
}

void write_reward_metadata(const std::string& dir, const RewardMetadata& m) {
  const std::string path = dir + "/config.json";
  auto json = read_json_file(path);
  json[kOffsetKey] = m.offset;
  if (!m.template_name.empty()) json[kTemplateKey] = m.template_name;
  if (m.max_seq_len > 0) json[kMaxSeqLenKey] = m.max_seq_len;
  write_file_atomic(path, json.dump(2) + "\n");
}

ScoreBatch make_score_batch(const std::vector<const std::vector<int64_t>*>& sequences,
                            int64_t pad_id, bool left_pad) {
  check(!sequences.empty(), "make_score_batch: no sequences");
  int64_t length = 0;
  for (const auto* s : sequences) {
    check(!s->empty(), "make_score_batch: an empty sequence");
    length = std::max<int64_t>(length, static_cast<int64_t>(s->size()));
  }
  const int64_t n = static_cast<int64_t>(sequences.size());
  ScoreBatch b;
  b.input_ids = torch::full({n, length}, pad_id, torch::kLong);
  b.attention_mask = torch::zeros({n, length}, torch::kLong);
  auto ids = b.input_ids.accessor<int64_t, 2>();
  auto mask = b.attention_mask.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const auto& s = *sequences[static_cast<size_t>(i)];
    const int64_t start = left_pad ? length - static_cast<int64_t>(s.size()) : 0;
    for (size_t t = 0; t < s.size(); ++t) {
      ids[i][start + static_cast<int64_t>(t)] = s[t];
      mask[i][start + static_cast<int64_t>(t)] = 1;
    }
  }
  return b;
}

torch::Tensor raw_scores(TransformerImpl& model, const ScoreBatch& batch,
                         const std::vector<PrefixGroup>& shared_prefixes, bool* packed) {
  check(model.config.num_labels == 1, "raw_scores needs a single-label score head");
  // Each row's last real token, the one state the score head reads.
  const auto last = last_token_index(batch.attention_mask).unsqueeze(1);
  const auto hidden = hidden_sharing_prefixes(model, batch.input_ids, batch.attention_mask,
                                              shared_prefixes, packed, last);
  return model.score(hidden).view({-1}).to(torch::kFloat);
}

std::vector<double> score_sequences(TransformerImpl& model,
                                    const std::vector<std::vector<int64_t>>& sequences,
                                    int64_t pad_id, int64_t micro_batch, double offset) {
  check(micro_batch >= 1, "score_sequences: micro_batch must be at least 1");
  torch::NoGradGuard no_grad;
  std::vector<double> out;
  out.reserve(sequences.size());
  for (size_t begin = 0; begin < sequences.size(); begin += static_cast<size_t>(micro_batch)) {
    std::vector<const std::vector<int64_t>*> rows;
    for (size_t i = begin; i < std::min(sequences.size(), begin + static_cast<size_t>(micro_batch));
         ++i)
      rows.push_back(&sequences[i]);
    auto scores = raw_scores(model, make_score_batch(rows, pad_id)).cpu();
    for (int64_t i = 0; i < scores.size(0); ++i) out.push_back(scores[i].item<double>() - offset);
  }
  return out;
}

}  // namespace tiller
