// Resumable training checkpoints: models + optimizers + RNG + trainer state, written to
// step-N.tmp/, fsynced, renamed to step-N/, then `latest` replaced by rename. A crash at any
// instant leaves the previous checkpoint loadable.
//
// In a multi-process job every rank calls both: the save gathers sharded optimizer state (a
// collective) and rank 0 writes; every rank learns whether the write succeeded. Loading reads the
// same files on every rank, each keeping its shard.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/model/transformer.h"
#include "common/train/parallel_adamw.h"

namespace tiller {

// What a checkpoint holds, by name: models as safetensors, optimizers as serialized state.
struct CheckpointParts {
  std::vector<std::pair<std::string, TransformerImpl*>> models;
  std::vector<std::pair<std::string, ParallelAdamW*>> optimizers;
};

// Writes CHECKPOINTS/step-<step>/ with `state` (which must hold "step") and the parts; keeps the
// newest `keep` checkpoints. Throws tiller::Error (previous checkpoints intact) on failure.
void save_checkpoint(const std::string& checkpoints_dir, const CheckpointParts& parts,
                     const nlohmann::json& state, int64_t keep);

// Loads the checkpoint `latest` names into the parts; returns its state, or null json when
// the directory holds no checkpoint.
nlohmann::json load_latest_checkpoint(const std::string& checkpoints_dir,
                                      const CheckpointParts& parts);

// Reads every finished checkpoint in the directory without a model: each safetensors file parsed
// in full, each optimizer archive deserialized, state.json parsed, and `latest`, when present,
// naming one of them (a run killed before its first `latest` leaves finished checkpoints without
// one, which a resume ignores). Returns the steps found (ascending); throws tiller::Error naming
// the first bad file.
std::vector<int64_t> verify_checkpoints(const std::string& checkpoints_dir);

}  // namespace tiller
