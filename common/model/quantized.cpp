#include "common/model/quantized.h"

#include "common/util/error.h"

namespace tiller {

namespace {

std::string shape_string(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string stem(const std::string& weight_name) {
  const std::string suffix = ".weight";
  check(weight_name.size() > suffix.size() &&
            weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) == 0,
        "quantised weight name '" + weight_name + "' does not end in .weight");
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

}  // namespace

int64_t QuantizedMatrix::bytes() const {
  const int64_t parameters = scales.numel() + (mins.defined() ? mins.numel() : 0);
  return packed.numel() * packed.element_size() + parameters * 4;
}

void group_parameters(int bits, const torch::Tensor& columns, torch::Tensor& scales,
                      torch::Tensor& mins) {
  if (bits == 8) {
    scales = std::get<0>(columns.abs().max(1)) / 127.0;
    mins = torch::Tensor();
    return;
  }
  mins = std::get<0>(columns.min(1));
  scales = (std::get<0>(columns.max(1)) - mins) / 15.0;
}

torch::Tensor quantize_columns(int bits, const torch::Tensor& columns, const torch::Tensor& scales,
                               const torch::Tensor& mins) {
  // A zero scale (a constant group) keeps code 0, which stands for the value exactly.
  const auto safe = torch::where(scales > 0, scales, torch::ones_like(scales)).unsqueeze(1);
  if (bits == 8) return torch::round(columns / safe).clamp(-127, 127).to(torch::kInt);
  return torch::round((columns - mins.unsqueeze(1)) / safe).clamp(0, 15).to(torch::kInt);
}

torch::Tensor dequantize_columns(int bits, const torch::Tensor& codes, const torch::Tensor& scales,
                                 const torch::Tensor& mins) {
  const auto values = codes.to(torch::kFloat) * scales.unsqueeze(1);
  return bits == 8 ? values : values + mins.unsqueeze(1);
}

QuantizedMatrix pack(int bits, int64_t group_size, const QuantizationCodes& q) {
  QuantizedMatrix m;
  m.bits = bits;
  m.rows = q.codes.size(0);
  m.cols = q.codes.size(1);
  m.group_size = bits == 8 ? m.cols : group_size;
  m.scales = q.scales.to(torch::kFloat).contiguous();
  if (bits == 8) {
    m.packed = q.codes.to(torch::kChar).contiguous();
    return m;
  }
  m.mins = q.mins.to(torch::kFloat).contiguous();
  // [rows, groups, 2, G/2]: the low half of each group in the low bits, the high half above.
  const auto halves = q.codes.to(torch::kByte).view({m.rows, m.groups(), 2, group_size / 2});
  const auto low = halves.select(2, 0), high = halves.select(2, 1);
  m.packed = torch::bitwise_or(low, high * 16).reshape({m.rows, m.cols / 2}).contiguous();
  return m;
}

QuantizedMatrix quantize_rtn(const torch::Tensor& weight, int bits, int64_t group_size,
                             const std::string& name) {
  check(weight.dim() == 2,
        name + ": only matrices are quantised, got shape " + shape_string(weight.sizes()));
  check(bits == 8 || bits == 4, name + ": bits must be 8 or 4");
  const auto w = weight.detach().to(torch::kFloat).contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  const int64_t g = bits == 8 ? cols : group_size;
  check(bits == 8 || (g >= 2 && g % 2 == 0 && cols % g == 0),
        name + ": the group size " + std::to_string(g) + " does not divide its rows of " +
            std::to_string(cols) + " columns into even groups");
  const auto grouped = w.view({rows * (cols / g), g});
  QuantizationCodes q;
  group_parameters(bits, grouped, q.scales, q.mins);
  q.codes = quantize_columns(bits, grouped, q.scales, q.mins).view({rows, cols});
  q.scales = q.scales.view({rows, cols / g});
  if (bits == 4) q.mins = q.mins.view({rows, cols / g});
  return pack(bits, g, q);
}

torch::Tensor dequantize(const QuantizedMatrix& m) {
  torch::Tensor codes;
  if (m.bits == 8) {
    codes = m.packed.to(torch::kFloat);
  } else {
    const auto bytes = m.packed.view({m.rows, m.groups(), m.group_size / 2}).to(torch::kInt);
    codes = torch::stack({torch::bitwise_and(bytes, 15), torch::bitwise_right_shift(bytes, 4)}, 2)
                .to(torch::kFloat);  // [rows, groups, 2, G/2]
  }
  auto values = codes.reshape({m.rows, m.groups(), m.group_size}) * m.scales.unsqueeze(2);
  if (m.bits == 4) values = values + m.mins.unsqueeze(2);
  return values.reshape({m.rows, m.cols}).contiguous();
}

// ---------------------------------------------------------------------------------------------
// config.json's quantization_config

nlohmann::json quantization_config_json(const QuantizationConfig& c) {
  nlohmann::json j = {
      {"quant_method", "tiller"},
      {"bits", c.bits},
      {"group_size", c.group_size > 0 ? nlohmann::json(c.group_size) : nlohmann::json(-1)},
      {"method", c.method},
      {"weights", c.weights}};
  if (!c.details.is_null()) j["details"] = c.details;
  return j;
}

QuantizationConfig parse_quantization_config(const nlohmann::json& j, const std::string& where) {
  const std::string at = where + ": quantization_config";
  check(j.is_object(), at + " is not an object");
  check(j.value("quant_method", std::string()) == "tiller",
        at + ".quant_method is " +
            (j.contains("quant_method") ? j["quant_method"].dump() : "absent") +
            "; Tiller reads only the directories `tiller quantize` writes (\"tiller\")");
  QuantizationConfig c;
  check(j.contains("bits") && j["bits"].is_number_integer() && (j["bits"] == 8 || j["bits"] == 4),
        at + ".bits must be 8 or 4");
  c.bits = j["bits"].get<int>();
  check(j.contains("group_size") && j["group_size"].is_number_integer(),
        at + ".group_size must be an integer");
  c.group_size = std::max<int64_t>(0, j["group_size"].get<int64_t>());
  check(j.contains("method") && j["method"].is_string(), at + ".method must be a string");
  c.method = j["method"].get<std::string>();
  check(j.contains("weights") && j["weights"].is_object() && !j["weights"].empty(),
        at + ".weights must map each quantised weight to its bits");
  for (auto it = j["weights"].begin(); it != j["weights"].end(); ++it) {
    check(it->is_number_integer() && (*it == 8 || *it == 4),
          at + ".weights[\"" + it.key() + "\"] must be 8 or 4");
    c.weights[it.key()] = it->get<int>();
    if (*it == 4)
      check(c.group_size >= 2 && c.group_size % 2 == 0,
            at + ".group_size must be an even number of at least 2 for 4-bit weights");
  }
  if (j.contains("details")) c.details = j["details"];
  return c;
}

std::string describe(const QuantizationConfig& c) {
  std::string s = (c.bits == 8 ? "int8 " : "int4 ") + c.method;
  s += c.bits == 8 ? ", a scale per row" : ", groups of " + std::to_string(c.group_size);
  s += ", " + std::to_string(c.weights.size()) + " weights";
  for (const auto& [name, bits] : c.weights)
    if (bits != c.bits) s += "; " + name + " int" + std::to_string(bits);
  return s;
}

const QuantizedMatrix* QuantizedWeights::find(const std::string& weight_name) const {
  auto it = matrices.find(weight_name);
  return it == matrices.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------------------------
// Stored form

std::map<std::string, torch::Tensor> stored_tensors(const std::string& weight_name,
                                                    const QuantizedMatrix& m) {
  const std::string base = stem(weight_name);
  std::map<std::string, torch::Tensor> out = {{base + ".qweight", m.packed},
                                              {base + ".scales", m.scales}};
  if (m.bits == 4) out[base + ".mins"] = m.mins;
  return out;
}

QuantizedWeights unpack_stored(std::map<std::string, torch::Tensor>& tensors,
                               const QuantizationConfig& config, const std::string& where) {
  QuantizedWeights out;
  out.config = config;
  for (const auto& entry : config.weights) {
    // Not a structured binding: clang (C++17) does not let the lambda below capture one.
    const std::string& name = entry.first;
    const int bits = entry.second;
    const bool int8 = bits == 8;
    const std::string base = stem(name);
    auto take = [&](const std::string& suffix) {
      auto it = tensors.find(base + suffix);
      check(it != tensors.end(),
            where + ": quantised weight " + name + " has no tensor " + base + suffix);
      torch::Tensor t = it->second;
      tensors.erase(it);
      return t;
    };
    check(!tensors.count(name), where + ": " + name + " is stored both quantised and in full");
    QuantizedMatrix m;
    m.bits = bits;
    m.packed = take(".qweight").contiguous();
    m.scales = take(".scales").contiguous();
    if (!int8) m.mins = take(".mins").contiguous();
    const std::string what = where + ": " + base;
    check(m.packed.dim() == 2 && m.packed.scalar_type() == (int8 ? torch::kChar : torch::kByte),
          what + ".qweight must be a 2-D " + (int8 ? "I8" : "U8") + " tensor, got " +
              std::string(c10::toString(m.packed.scalar_type())) + " " +
              shape_string(m.packed.sizes()));
    m.rows = m.packed.size(0);
    m.cols = int8 ? m.packed.size(1) : 2 * m.packed.size(1);
    m.group_size = int8 ? m.cols : config.group_size;
    check(m.cols > 0 && m.cols % m.group_size == 0, what + ": rows of " + std::to_string(m.cols) +
                                                        " columns do not divide into groups of " +
                                                        std::to_string(m.group_size));
    const std::vector<int64_t> group_shape = {m.rows, m.groups()};
    auto check_parameters = [&](const torch::Tensor& t, const char* suffix) {
      check(t.scalar_type() == torch::kFloat && t.sizes() == torch::IntArrayRef(group_shape),
            what + suffix + " must be F32 " + shape_string(group_shape) + ", got " +
                std::string(c10::toString(t.scalar_type())) + " " + shape_string(t.sizes()));
      check(torch::isfinite(t).all().item<bool>(), what + suffix + " holds a non-finite value");
    };
    check_parameters(m.scales, ".scales");
    if (!int8) check_parameters(m.mins, ".mins");
    if (int8)
      check(m.packed.min().item<int>() >= -127,
            what + ".qweight holds -128, outside the symmetric range [-127, 127]");
    tensors[name] = dequantize(m);
    out.matrices.emplace(name, std::move(m));
  }
  return out;
}

}  // namespace tiller
