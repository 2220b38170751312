#include "common/io/reward_model_dir.h"

#include "common/io/hf_dir.h"  // load_hf_model
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

RewardModel load_reward_model(const std::string& dir) {
  RewardModel rm;
  rm.model = load_hf_model(dir, /*num_labels=*/-1, QuantizedModels::load_frozen);
  check(rm.model->config.num_labels == 1,
        dir + ": not a reward model (num_labels " + std::to_string(rm.model->config.num_labels) +
            "; expected a ...ForSequenceClassification with num_labels 1)");
  rm.metadata = read_reward_metadata(dir);
  return rm;
}

int64_t reward_pad_id(const Tokenizer& tok) {
  if (tok.pad_id() != tok.eos_id()) return tok.pad_id();
  check(tok.bos_id() != 0 && tok.eos_id() != 0 && tok.vocab_size() > 0,
        tok.path() +
            ": no pad token, and id 0 is BOS or EOS; cannot choose a pad id distinct from EOS");
  return 0;
}

}  // namespace tiller
