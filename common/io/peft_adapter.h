// PEFT's LoRA adapter directories: adapter_config.json + adapter_model.safetensors, as
// peft.PeftModel.from_pretrained reads them and get_peft_model_state_dict writes them.
#pragma once
#include <string>

#include "common/io/hf_dir.h"  // QuantizedModels
#include "common/model/lora.h"
#include "common/model/transformer.h"

namespace tiller {

// Writes DIR/adapter_config.json and DIR/adapter_model.safetensors from `model`'s adapters
// (the files are written in place: callers write into a directory that is renamed into place).
void write_peft_adapter(TransformerImpl& model, const std::string& dir);

// Reads DIR/adapter_config.json into LoRA options. Refuses, with one line naming the file and the
// key, what Tiller does not run: another peft_type, DoRA, bias training, fan_in_fan_out,
// per-module rank or alpha patterns, layers_to_transform, unknown target modules.
LoraOptions read_peft_adapter_config(const std::string& dir);

// Attaches the adapter in DIR to `model` (its config's rank, alpha, targets) and loads its
// weights; base mismatches (shapes, vocabulary of a module to save) are one clear line.
void attach_peft_adapter(TransformerImpl& model, const std::string& dir);

// The HF model in `model_dir` with the adapter in `adapter_dir` attached (`tiller merge`, and
// `--adapter` of generate and eval); the model alone when adapter_dir is "". A base that does not
// match the adapter (shapes, vocabulary), like a bad adapter config, is one line naming both
// directories.
Transformer load_hf_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                       int64_t num_labels = -1,
                                       QuantizedModels quantized = QuantizedModels::refuse);

// Loads DIR's adapter weights into adapters already attached (a stage's lora.init_adapter): the
// adapter's rank, targets and modules to save must be the stage's.
void load_peft_adapter_weights(TransformerImpl& model, const std::string& dir);

}  // namespace tiller
