// Weight-only quantised matrices: int8 with one scale per output row, and 4-bit codes with a
// scale and a minimum per group of input columns; round-to-nearest, the exact dequantisation, and
// their layout in a quantised Hugging Face directory (docs/export.md, "Quantised directories").
//
// A quantised model is loaded with each quantised weight dequantised into its fp32 parameter (the
// LibTorch path computes with the quantised model's exact values) and the packed matrices kept
// beside it (TransformerImpl::quantized) for the fast decode step, which multiplies by them
// directly (common/rollout/quant_kernels.h).
#pragma once
#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace tiller {

// int8: w = q * scale, q in [-127, 127], one scale per row (group_size == cols).
// int4: w = q * scale + min, q in [0, 15], a scale and a minimum per group of group_size columns.
struct QuantizedMatrix {
  int bits = 8;
  int64_t rows = 0, cols = 0, group_size = 0;
  // int8: [rows, cols] kChar. int4: [rows, cols / 2] kByte; in each group of G columns, byte i
  // holds column i in its low four bits and column i + G/2 in its high four.
  torch::Tensor packed;
  torch::Tensor scales;  // [rows, cols / group_size] float
  torch::Tensor mins;    // [rows, cols / group_size] float, int4 only

  int64_t groups() const { return cols / group_size; }
  // Bytes read to multiply by it once: codes, scales and minimums.
  int64_t bytes() const;
};

// The codes of a matrix before packing: [rows, cols] int32, and the group parameters.
struct QuantizationCodes {
  torch::Tensor codes;
  torch::Tensor scales, mins;  // [rows, groups]; mins undefined for int8
};

// The parameters of one group of columns (columns: [rows, n] float) chosen for round to nearest:
// int8 symmetric absmax / 127; int4 from each row's minimum and maximum.
void group_parameters(int bits, const torch::Tensor& columns, torch::Tensor& scales,
                      torch::Tensor& mins);
// The codes of `columns` ([rows, n]) under one group's parameters ([rows] each), and the values
// they stand for.
torch::Tensor quantize_columns(int bits, const torch::Tensor& columns, const torch::Tensor& scales,
                               const torch::Tensor& mins);
torch::Tensor dequantize_columns(int bits, const torch::Tensor& codes, const torch::Tensor& scales,
                                 const torch::Tensor& mins);

QuantizedMatrix pack(int bits, int64_t group_size, const QuantizationCodes& codes);

// Round to nearest: weight [rows, cols] float. group_size: int8 ignores it (one group per row);
// int4 needs an even group size that divides cols (tiller::Error naming `name` otherwise).
QuantizedMatrix quantize_rtn(const torch::Tensor& weight, int bits, int64_t group_size,
                             const std::string& name);

// The float matrix [rows, cols] a quantised matrix stands for.
torch::Tensor dequantize(const QuantizedMatrix& matrix);

// How a quantised directory was made: config.json's "quantization_config".
struct QuantizationConfig {
  int bits = 8;                        // the scheme: most weights' bits
  int64_t group_size = 0;              // 4-bit weights' group; 0 without any
  std::string method = "rtn";          // "rtn" or "gptq"
  std::map<std::string, int> weights;  // each quantised weight's name (…weight) and bits
  nlohmann::json details;              // how it was made (stated, not read back)
};
nlohmann::json quantization_config_json(const QuantizationConfig& config);
// Reads config.json's "quantization_config" of `dir` (`where` names it in errors).
QuantizationConfig parse_quantization_config(const nlohmann::json& json, const std::string& where);
// One line for messages: "int4 gptq, groups of 128, 43 weights".
std::string describe(const QuantizationConfig& config);

// The packed matrices of a quantised model, by weight name ("model.layers.0.mlp.up_proj.weight").
struct QuantizedWeights {
  QuantizationConfig config;
  std::map<std::string, QuantizedMatrix> matrices;
  const QuantizedMatrix* find(const std::string& weight_name) const;
};

// The tensors a quantised weight is stored as in safetensors: NAME minus ".weight" plus
// ".qweight", ".scales" and (int4) ".mins".
std::map<std::string, torch::Tensor> stored_tensors(const std::string& weight_name,
                                                    const QuantizedMatrix& matrix);
// Takes the stored tensors of every weight in config.weights out of `tensors` (checked: present,
// shaped and typed as the scheme says, codes in range) and puts each weight's dequantised matrix
// in their place. Returns the packed matrices.
QuantizedWeights unpack_stored(std::map<std::string, torch::Tensor>& tensors,
                               const QuantizationConfig& config, const std::string& where);

}  // namespace tiller
