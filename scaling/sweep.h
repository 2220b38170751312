// Sweeps: a grid of recipe overrides (model width and depth, steps, learning rate, batch size...),
// one run per grid point, and one runs.jsonl row per finished point (N, D, C, validation loss)
// for `tiller scaling fit`. The CLI (cli/sweep_cmd) runs the points; this file holds what can be
// tested without running them.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace tiller::scaling {

// "--grid key=v1,v2,...": one recipe key and the values it takes. A linked axis
// "--grid k1:k2=a1:a2,b1:b2" sets several keys together (a model's width, MLP width and depth
// are one axis of shapes, not a cartesian product): each value has one part per key.
struct GridAxis {
  std::string key;                              // as given: "k1:k2" for a linked axis
  std::vector<std::string> keys;                // the keys it sets
  std::vector<std::string> values;              // as given: "a1:a2"
  std::vector<std::vector<std::string>> parts;  // per value, one part per key
};
GridAxis parse_grid_axis(const std::string& text);

// A point of the grid: its overrides ("key=value", one per axis) and a directory name made of
// its index and values ("p03_hidden_size=64_steps=200").
struct GridPoint {
  int64_t index = 0;
  std::vector<std::string> overrides;
  std::string name;
};
// Every combination, the first axis varying slowest; at most max_points (an error beyond).
std::vector<GridPoint> expand_grid(const std::vector<GridAxis>& axes, int64_t max_points = 10000);

// One runs.jsonl row from a finished point's stage directory (STAGE_DIR/complete.json,
// STAGE_DIR/final/config.json): N = non-embedding parameters, D = tokens trained, C = 6ND plus
// the attention term 6 * layers * context * width * D (Kaplan et al. 2020, context = the stage's
// max_seq_len), loss = the final validation loss; lr = the stage's train.lr, batch_size = its
// global train.batch_size (sequences per optimizer step) and batch_tokens = batch_size *
// max_seq_len (tokens per step, nominal), for `tiller scaling hparams`. Throws tiller::Error
// naming what is missing.
nlohmann::json sweep_record(const GridPoint& point, const std::string& stage_dir);

}  // namespace tiller::scaling
