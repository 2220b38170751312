#include "common/model/shared_prefix.h"

#include <algorithm>

#include "common/model/attention_mask.h"
#include "common/model/to_device.h"
#include "common/util/error.h"

namespace tiller {

LayerCost layer_cost(const ModelConfig& c) {
  const double width = static_cast<double>(c.hidden_size);
  const double query_width = static_cast<double>(c.num_attention_heads * c.resolved_head_dim());
  const double kv_width = static_cast<double>(c.num_key_value_heads * c.resolved_head_dim());
  return {2 * width * query_width + 2 * width * kv_width +
              3 * width * static_cast<double>(c.intermediate_size),
          2 * query_width};
}

std::vector<PrefixGroup> common_prefix_groups(
    const std::vector<const std::vector<int64_t>*>& sequences,
    const std::vector<std::vector<int64_t>>& candidates) {
  std::vector<PrefixGroup> groups;
  for (const std::vector<int64_t>& rows : candidates) {
    if (rows.size() < 2) continue;
    const std::vector<int64_t>& first = *sequences.at(static_cast<size_t>(rows.front()));
    size_t prefix = first.size();
    for (int64_t row : rows) {
      const std::vector<int64_t>& other = *sequences.at(static_cast<size_t>(row));
      const auto ends = std::mismatch(first.begin(), first.begin() + prefix, other.begin(),
                                      other.begin() + std::min(prefix, other.size()));
      prefix = static_cast<size_t>(ends.first - first.begin());
    }
    if (prefix >= 1) groups.push_back({rows, static_cast<int64_t>(prefix)});
  }
  return groups;
}

std::vector<PrefixGroup> pair_prefix_groups(
    const std::vector<const std::vector<int64_t>*>& sequences) {
  const auto pairs = static_cast<int64_t>(sequences.size() / 2);
  std::vector<std::vector<int64_t>> candidates;
  for (int64_t i = 0; i < pairs; ++i) candidates.push_back({i, pairs + i});
  return common_prefix_groups(sequences, candidates);
}

namespace {

// One packed sequence: its rows in order after `prefix` tokens they share. A row in no group is a
// pack of its own whose prefix is the whole row.
struct Pack {
  std::vector<int64_t> rows;
  int64_t prefix = 0, length = 0;
};

std::vector<Pack> lay_out(const std::vector<int64_t>& lengths,
                          const std::vector<PrefixGroup>& groups) {
  const auto n = static_cast<int64_t>(lengths.size());
  std::vector<bool> grouped(lengths.size(), false);
  std::vector<Pack> packs;
  for (const PrefixGroup& g : groups) {
    Pack pack{g.rows, g.prefix, g.prefix};
    for (int64_t row : g.rows) {
      check(row >= 0 && row < n && !grouped[static_cast<size_t>(row)],
            "hidden_sharing_prefixes: a group names a row outside the batch or in another group");
      check(g.prefix >= 1 && g.prefix <= lengths[static_cast<size_t>(row)],
            "hidden_sharing_prefixes: a group's prefix is longer than one of its rows");
      grouped[static_cast<size_t>(row)] = true;
      pack.length += lengths[static_cast<size_t>(row)] - g.prefix;
    }
    packs.push_back(std::move(pack));
  }
  for (int64_t row = 0; row < n; ++row)
    if (!grouped[static_cast<size_t>(row)])
      packs.push_back(
          {{row}, lengths[static_cast<size_t>(row)], lengths[static_cast<size_t>(row)]});
  return packs;
}

// Packs side by side in rows of at most `row_length` slots: longest first, each into the first row
// with room (first-fit decreasing), so that short packs fill what long ones leave.
struct PackedRow {
  std::vector<size_t> packs;
  int64_t length = 0;
};

std::vector<PackedRow> fill_rows(const std::vector<Pack>& packs, int64_t row_length) {
  std::vector<size_t> longest_first(packs.size());
  for (size_t i = 0; i < packs.size(); ++i) longest_first[i] = i;
  std::stable_sort(longest_first.begin(), longest_first.end(),
                   [&](size_t a, size_t b) { return packs[a].length > packs[b].length; });
  std::vector<PackedRow> rows;
  for (size_t pack : longest_first) {
    auto room = std::find_if(rows.begin(), rows.end(), [&](const PackedRow& row) {
      return row.length + packs[pack].length <= row_length;
    });
    if (room == rows.end()) room = rows.insert(rows.end(), PackedRow());
    room->packs.push_back(pack);
    room->length += packs[pack].length;
  }
  return rows;
}

int64_t longest_row(const std::vector<PackedRow>& rows) {
  int64_t most = 0;
  for (const PackedRow& r : rows) most = std::max(most, r.length);
  return most;
}

// The query-key pairs the fused kernel visits in a causal sequence of `length`: each query's keys
// from the first to itself.
double triangle(double length) {
  return length * length / 2;
}

// ... in a pack: the prefix's triangle, and each row's remainder over the prefix and itself (the
// kernel skips the other rows' keys, which none of a block's queries see).
double pack_pairs(const Pack& pack, const std::vector<int64_t>& lengths) {
  const auto prefix = static_cast<double>(pack.prefix);
  double pairs = triangle(prefix);
  for (int64_t row : pack.rows) {
    const double rest = static_cast<double>(lengths[static_cast<size_t>(row)]) - prefix;
    pairs += rest * prefix + triangle(rest);
  }
  return pairs;
}

// The layers' multiply-adds: every slot's projections over `slots` (padded rows), and attention
// over `pairs` query-key pairs.
double layers_cost(const LayerCost& cost, double slots, double pairs) {
  return slots * cost.per_token + pairs * cost.per_pair;
}

// The packs in rows, or none where they count more than kLeastPackedShare of the padded batch's
// multiply-adds.
std::vector<PackedRow> rows_that_pay(const ModelConfig& config, const std::vector<int64_t>& lengths,
                                     const std::vector<Pack>& packs) {
  const LayerCost cost = layer_cost(config);
  const int64_t width = lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end());
  int64_t longest_pack = 0;
  double packed_pairs = 0, padded_pairs = 0;
  for (const Pack& p : packs) {
    longest_pack = std::max(longest_pack, p.length);
    packed_pairs += pack_pairs(p, lengths);
  }
  for (int64_t length : lengths) padded_pairs += triangle(static_cast<double>(length));
  std::vector<PackedRow> rows = fill_rows(packs, std::max(width, longest_pack));
  const double packed =
      layers_cost(cost, static_cast<double>(rows.size()) * static_cast<double>(longest_row(rows)),
                  packed_pairs);
  const double padded = layers_cost(
      cost, static_cast<double>(lengths.size()) * static_cast<double>(width), padded_pairs);
  if (packed > kLeastPackedShare * padded) rows.clear();
  return rows;
}

// The real tokens of each row of a right-padded mask (checked to be right-padded).
std::vector<int64_t> row_lengths(const torch::Tensor& mask) {
  const auto cpu = mask.to(torch::kCPU, torch::kLong).contiguous();
  const auto m = cpu.accessor<int64_t, 2>();
  std::vector<int64_t> lengths;
  for (int64_t r = 0; r < m.size(0); ++r) {
    int64_t length = 0;
    while (length < m.size(1) && m[r][length] != 0) ++length;
    for (int64_t j = length; j < m.size(1); ++j)
      check(m[r][j] == 0, "hidden_sharing_prefixes: the batch is not right-padded");
    lengths.push_back(length);
  }
  return lengths;
}

}  // namespace

int64_t prefix_packed_rows(const ModelConfig& config, const std::vector<int64_t>& row_lengths,
                           const std::vector<PrefixGroup>& groups) {
  if (groups.empty()) return 0;
  return static_cast<int64_t>(
      rows_that_pay(config, row_lengths, lay_out(row_lengths, groups)).size());
}

PackedOutputs packed_outputs(const torch::Tensor& slots, int64_t rows, int64_t length) {
  const auto wanted = slots.to(torch::kCPU, torch::kLong).contiguous();
  const auto slot = wanted.accessor<int64_t, 1>();
  std::vector<std::vector<int64_t>> columns(static_cast<size_t>(rows));
  std::vector<int64_t> index_in_row(static_cast<size_t>(wanted.size(0)));
  std::vector<int64_t> listed(static_cast<size_t>(rows * length), -1);  // a slot's index in its row
  for (int64_t i = 0; i < wanted.size(0); ++i) {
    auto& list = columns[static_cast<size_t>(slot[i] / length)];
    auto& index = listed[static_cast<size_t>(slot[i])];
    if (index < 0) {
      index = static_cast<int64_t>(list.size());
      list.push_back(slot[i] % length);
    }
    index_in_row[static_cast<size_t>(i)] = index;
  }
  size_t most = 1;
  for (const auto& list : columns) most = std::max(most, list.size());
  const auto count = static_cast<int64_t>(most);
  PackedOutputs out{torch::zeros({rows, count}, torch::kLong),
                    torch::empty({wanted.size(0)}, torch::kLong)};
  auto positions = out.positions.accessor<int64_t, 2>();
  for (int64_t k = 0; k < rows; ++k) {
    const auto& list = columns[static_cast<size_t>(k)];
    for (size_t j = 0; j < most; ++j)
      positions[k][static_cast<int64_t>(j)] = list.empty() ? 0 : list[std::min(j, list.size() - 1)];
  }
  auto landing = out.landing.accessor<int64_t, 1>();
  for (int64_t i = 0; i < wanted.size(0); ++i)
    landing[i] = slot[i] / length * count + index_in_row[static_cast<size_t>(i)];
  return out;
}

torch::Tensor hidden_sharing_prefixes(TransformerImpl& model, const torch::Tensor& ids,
                                      const torch::Tensor& mask,
                                      const std::vector<PrefixGroup>& groups, bool* packed,
                                      const torch::Tensor& output_positions) {
  if (packed != nullptr) *packed = false;
  const auto device = model.parameters().front().device();
  const int64_t n = ids.size(0), width = ids.size(1);
  const auto device_ids = to_device(ids, device);
  const auto padded = [&] {
    const auto device_mask = to_device(mask, device);
    return model.hidden(
        device_ids, positions_from_mask(device_mask),
        causal_mask(device_mask.to(torch::kBool), width), nullptr,
        output_positions.defined() ? to_device(output_positions, device) : output_positions);
  };
  // Without groups, the batch as it is (padded on either side; no lengths read on the host).
  if (groups.empty()) return padded();
  const std::vector<int64_t> lengths = row_lengths(mask);
  const std::vector<Pack> packs = lay_out(lengths, groups);
  const std::vector<PackedRow> rows = rows_that_pay(model.config, lengths, packs);
  if (rows.empty()) return padded();
  if (packed != nullptr) *packed = true;
  const auto count = static_cast<int64_t>(rows.size()), length = longest_row(rows);
  // source: the batch slot (row * width + position) each packed slot holds, -1 on padding;
  // group: the pack it belongs to within its row (-1 on padding).
  auto source = torch::full({count, length}, -1, torch::kLong);
  auto group = torch::full({count, length}, -1, torch::kLong);
  auto segment = torch::full({count, length}, -1, torch::kLong);
  auto positions = torch::zeros({count, length}, torch::kLong);
  // slot: the packed slot (packed row * length + column) holding each batch slot; padding reads
  // slot 0.
  auto slot = torch::zeros({n * width}, torch::kLong);
  auto src = source.accessor<int64_t, 2>(), grp = group.accessor<int64_t, 2>(),
       seg = segment.accessor<int64_t, 2>(), pos = positions.accessor<int64_t, 2>();
  auto at = slot.accessor<int64_t, 1>();
  for (int64_t k = 0; k < count; ++k) {
    int64_t column = 0;
    for (size_t index = 0; index < rows[static_cast<size_t>(k)].packs.size(); ++index) {
      const Pack& pack = packs[rows[static_cast<size_t>(k)].packs[index]];
      const int64_t first_row = pack.rows.front();
      const auto place = [&](int64_t row, int64_t j, int64_t segment_id) {
        src[k][column] = row * width + j;
        grp[k][column] = static_cast<int64_t>(index);
        seg[k][column] = segment_id;
        pos[k][column] = j;
        ++column;
      };
      const int64_t prefix_start = column;
      for (int64_t j = 0; j < pack.prefix; ++j) {
        for (int64_t row : pack.rows) at[row * width + j] = k * length + prefix_start + j;
        place(first_row, j, 0);
      }
      for (size_t member = 0; member < pack.rows.size(); ++member) {
        const int64_t row = pack.rows[member];
        for (int64_t j = pack.prefix; j < lengths[static_cast<size_t>(row)]; ++j) {
          at[row * width + j] = k * length + column;
          place(row, j, static_cast<int64_t>(member) + 1);
        }
      }
    }
  }
  source = to_device(source, device);
  const auto packed_ids =
      device_ids.reshape(-1).index_select(0, source.clamp_min(0).view(-1)).view({count, length});
  const auto packed_mask =
      grouped_prefix_mask(to_device(group, device), to_device(segment, device), source.ge(0));
  if (!output_positions.defined()) {
    const auto hidden = model.hidden(packed_ids, to_device(positions, device), packed_mask);
    return hidden.reshape({count * length, hidden.size(2)})
        .index_select(0, to_device(slot, device))
        .view({n, width, hidden.size(2)});
  }
  // The wanted batch positions, as slots of the packed rows.
  const auto wanted = output_positions.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t per_row = wanted.size(1);
  const auto want = wanted.accessor<int64_t, 2>();
  auto slots = torch::empty({n * per_row}, torch::kLong);
  auto wanted_slot = slots.accessor<int64_t, 1>();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < per_row; ++i) wanted_slot[r * per_row + i] = at[r * width + want[r][i]];
  const PackedOutputs outputs = packed_outputs(slots, count, length);
  const auto hidden = model.hidden(packed_ids, to_device(positions, device), packed_mask, nullptr,
                                   to_device(outputs.positions, device));
  return hidden.reshape({-1, hidden.size(2)})
      .index_select(0, to_device(outputs.landing, device))
      .view({n, per_row, hidden.size(2)});
}

std::string prefix_sharing_note(const std::string& stage, int64_t packed, int64_t batches) {
  const std::string its =
      " of its " + std::to_string(batches) + (batches == 1 ? " micro-batch" : " micro-batches");
  const std::string head = "[" + stage + "] share_prefixes: the first step packed ";
  const std::string follow = " (shared_prefix_batches in metrics.jsonl follows it)";
  if (packed == 0)
    return head + "none" + its +
           ": their rows begin alike for too few tokens to save a twentieth of the layers' work, "
           "so each row is computed whole" +
           follow;
  return head + std::to_string(packed) + its + ", computing the beginnings their rows share once" +
         follow;
}

}  // namespace tiller
