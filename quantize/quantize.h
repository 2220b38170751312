// `tiller quantize`: a model directory to a weight-only quantised one (common/model/quantized.h),
// by round to nearest or by GPTQ over a calibration text (quantize/gptq.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "common/model/transformer.h"

namespace tiller {

struct QuantizeOptions {
  std::string model_dir, out_dir;
  std::string scheme = "int8";  // int8 (a scale per output row) | int4 (groups of group_size)
  int64_t group_size = 128;
  std::string method = "rtn";  // rtn | gptq
  // GPTQ's calibration: `samples` windows of `length` tokens from this text file.
  std::string calibration;
  int64_t samples = 128, length = 256;
  double damp = 0.01;
  std::string lm_head = "int8";     // int8 | int4 | keep (and the embedding, when tied)
  std::string embeddings = "keep";  // int8 | int4 | keep (untied models)
};

// Checks the options against the model, quantises and writes out_dir atomically. Returns the
// summary it also writes as out_dir/quantize.json: sizes, and each weight's relative weight error
// (and, for GPTQ, its relative output error on the calibration inputs beside round to nearest's).
nlohmann::json quantize_model(const QuantizeOptions& options, bool progress);

// Round to nearest in memory, as `tiller quantize --method rtn` with these options would write
// and the loader read back: each planned weight of `model` becomes its dequantised self, and
// model.quantized holds the packed matrices (bench decode's quantised rows, tests).
void quantize_in_place(TransformerImpl& model, const QuantizeOptions& options);

}  // namespace tiller
