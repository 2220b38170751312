#include "dpo/dpo_loss.h"

#include <algorithm>

#include "common/util/error.h"

namespace tiller {

namespace F = torch::nn::functional;

const std::vector<std::string>& preference_loss_types() {
  static const std::vector<std::string> types = {"sigmoid", "robust", "hinge",
                                                 "ipo",     "simpo",  "orpo"};
  return types;
}

bool loss_uses_reference(const std::string& type) {
  return type == "sigmoid" || type == "robust" || type == "hinge" || type == "ipo";
}

bool loss_uses_label_smoothing(const std::string& type) {
  return type == "sigmoid" || type == "robust" || type == "simpo";
}

namespace {

// -(1 - e) log s(x) - e log s(-x): DPO's loss, conservative when e > 0 (also SimPO's).
torch::Tensor smoothed_sigmoid_loss(const torch::Tensor& x, double e) {
  auto loss = -(1 - e) * F::logsigmoid(x);
  if (e > 0) loss = loss - e * F::logsigmoid(-x);
  return loss;
}

// log(p / (1 - p)) of a mean log-probability m = log p < 0.
torch::Tensor log_odds(const torch::Tensor& mean_logp) {
  return mean_logp - torch::log1p(-torch::exp(mean_logp));
}

}  // namespace

PreferenceLoss preference_loss(const PairLogProbs& in, const PreferenceLossOptions& o) {
  const std::string& type = o.type;
  check(std::find(preference_loss_types().begin(), preference_loss_types().end(), type) !=
            preference_loss_types().end(),
        "unknown preference loss '" + type + "'");
  const bool reference = loss_uses_reference(type);
  check(!reference || (in.reference_chosen.defined() && in.reference_rejected.defined()),
        "preference loss '" + type + "' needs the reference log-probabilities");
  const double b = o.beta, e = o.label_smoothing;
  const auto mean_chosen = in.policy_chosen / in.chosen_tokens;
  const auto mean_rejected = in.policy_rejected / in.rejected_tokens;

  PreferenceLoss out;
  if (reference) {
    // IPO compares mean log-probabilities (TRL divides all of them by the response length).
    const bool mean = type == "ipo";
    const auto chosen_ratio = mean ? mean_chosen - in.reference_chosen / in.chosen_tokens
                                   : in.policy_chosen - in.reference_chosen;
    const auto rejected_ratio = mean ? mean_rejected - in.reference_rejected / in.rejected_tokens
                                     : in.policy_rejected - in.reference_rejected;
    const auto h = chosen_ratio - rejected_ratio;
    if (type == "sigmoid") {
      out.loss = smoothed_sigmoid_loss(b * h, e);
    } else if (type == "robust") {
      out.loss = (-(1 - e) * F::logsigmoid(b * h) + e * F::logsigmoid(-b * h)) / (1 - 2 * e);
    } else if (type == "hinge") {
      out.loss = torch::relu(1 - b * h);
    } else {  // ipo
      out.loss = (h - 1 / (2 * b)).pow(2);
    }
    out.chosen_rewards = (b * chosen_ratio).detach();
    out.rejected_rewards = (b * rejected_ratio).detach();
  } else {
    if (type == "simpo") {
      out.loss = smoothed_sigmoid_loss(b * (mean_chosen - mean_rejected) - o.gamma, e);
    } else {  // orpo
      out.loss = -mean_chosen - b * F::logsigmoid(log_odds(mean_chosen) - log_odds(mean_rejected));
      out.nll = (-mean_chosen).detach();
    }
    out.chosen_rewards = (b * mean_chosen).detach();
    out.rejected_rewards = (b * mean_rejected).detach();
  }
  if (o.sft_weight > 0 && type != "orpo") {
    out.loss = out.loss - o.sft_weight * mean_chosen;
    out.nll = (-mean_chosen).detach();
  }
  return out;
}

}  // namespace tiller
