// A small L-BFGS minimiser for smooth (or C¹, like the Huber loss) objectives of a few variables,
// with a line search that keeps to the strong Wolfe conditions. Torch-free.
#pragma once
#include <cmath>
#include <functional>
#include <vector>

namespace tiller::scaling {

// Returns f(x) and writes its gradient into `gradient` (already sized like x).
using Objective =
    std::function<double(const std::vector<double>& x, std::vector<double>& gradient)>;

struct LbfgsOptions {
  int memory = 10;  // correction pairs kept
  int max_iterations = 1000;
  // Stops when max |gradient| <= gradient_tolerance, when one iteration lowers f by no more
  // than value_tolerance * max(|f|, value_scale), or when f <= value_target (good enough).
  double gradient_tolerance = 1e-9;
  double value_tolerance = 1e-10;
  double value_scale = 1e-12;
  double value_target = -HUGE_VAL;
  int max_line_search_steps = 40;
};

struct LbfgsResult {
  std::vector<double> x;
  double value = 0;
  int iterations = 0;
  int evaluations = 0;
  bool converged =
      false;  // stopped by a tolerance rather than by max_iterations or a failed search
};

LbfgsResult minimize_lbfgs(const Objective& objective, std::vector<double> x,
                           const LbfgsOptions& options = {});

}  // namespace tiller::scaling
