// The DPO family of preference losses, over per-sequence log-probabilities of a batch of pairs:
// one formula per `loss.type`, each as its paper states it and as TRL names and computes it.
// Pure tensor arithmetic (no model), so that each loss is checked against a hand computation.
//
// Notation, per pair i (all [P] tensors):
//   pc, pr  policy log-probabilities of the chosen / rejected response, summed over its tokens
//   rc, rr  the reference model's, likewise (the reference-free losses do not read them)
//   nc, nr  response token counts; the mean log-probability of a side is p / n
//   h = (pc - pr) - (rc - rr)   the implicit reward margin in nats (TRL's "logits")
//   b = beta, e = label_smoothing, g = gamma
//
//   sigmoid  DPO (Rafailov et al. 2023, eq. 7); with e > 0 conservative DPO (Mitchell 2023):
//            -(1 - e) log s(b h) - e log s(-b h)
//   robust   robust DPO (Chowdhury et al. 2024, eq. 8), unbiased under label-flip rate e:
//            (-(1 - e) log s(b h) + e log s(-b h)) / (1 - 2e)
//   hinge    SLiC (Zhao et al. 2023): max(0, 1 - b h)
//   ipo      IPO (Azar et al. 2023, eq. 17): (h' - 1 / (2 b))^2, where h' is h computed from mean
//            log-probabilities (pc/nc etc.), as TRL's DPOTrainer does for loss_type "ipo"
//   simpo    SimPO (Meng et al. 2024, eq. 6; TRL's CPOTrainer loss_type "simpo"), no reference:
//            -(1 - e) log s(b (pc/nc - pr/nr) - g) - e log s(-(b (pc/nc - pr/nr) - g))
//   orpo     ORPO (Hong et al. 2024, eq. 6-7; TRL's ORPOTrainer), no reference, with b as its
//            lambda: -pc/nc - b log s(log odds(pc/nc) - log odds(pr/nr)),
//            log odds(m) = m - log(1 - exp(m))
//
// Any loss but orpo (which has its own) may add an SFT term, RPO's NLL on the chosen response
// (Pang et al. 2024; TRL's rpo_alpha): + sft_weight * (-pc / nc). TRL's rpo term averages over
// all chosen tokens of a batch; here it is each pair's mean, so that micro-batches accumulate
// exactly (sum the per-pair losses, divide by the step's pair count).
//
// Implicit rewards (TRL's rewards/chosen, rewards/rejected): b (pc - rc) and b (pr - rr) for the
// reference losses (ipo: of the mean log-probabilities, the quantities its loss compares); b pc/nc
// and b pr/nr for simpo and orpo.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace tiller {

struct PreferenceLossOptions {
  std::string type = "sigmoid";  // sigmoid, robust, hinge, ipo, simpo, orpo
  double beta = 0.1;
  double label_smoothing = 0.0;  // sigmoid, robust, simpo
  double gamma = 0.0;            // simpo: the target reward margin
  double sft_weight = 0.0;       // every type but orpo: weight of the NLL on chosen (RPO)
};

// The loss types, in the order the docs list them.
const std::vector<std::string>& preference_loss_types();
// Whether `type` compares the policy with a reference model (sigmoid, robust, hinge, ipo).
bool loss_uses_reference(const std::string& type);
// Whether `type` reads the label_smoothing option (sigmoid, robust, simpo).
bool loss_uses_label_smoothing(const std::string& type);

// A batch of pairs' log-probabilities, [P] each (float or double; all on one device).
struct PairLogProbs {
  torch::Tensor policy_chosen, policy_rejected;        // summed over the response tokens
  torch::Tensor reference_chosen, reference_rejected;  // likewise; undefined when not used
  torch::Tensor chosen_tokens, rejected_tokens;        // response token counts (>= 1)
};

struct PreferenceLoss {
  torch::Tensor loss;              // [P] per pair, the SFT term included (autograd on)
  torch::Tensor chosen_rewards;    // [P] implicit rewards (detached)
  torch::Tensor rejected_rewards;  // [P]
  torch::Tensor nll;               // [P] -pc/nc (detached); undefined unless sft_weight > 0 or orpo
};

// The per-pair loss of `options.type` and the implicit rewards. Throws tiller::Error on an
// unknown type or a missing reference.
PreferenceLoss preference_loss(const PairLogProbs& logps, const PreferenceLossOptions& options);

}  // namespace tiller
