// Benchmarks behind `tiller bench`: each prints a table, or JSON with --json. The reference they
// are compared against (eager PyTorch, the same shapes and steps) is bench/reference/.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "common/model/model_config.h"
#include "common/model/transformer.h"

namespace tiller::bench {

// This machine's ceilings, measured in the process that uses them.
struct Peak {
  double fp32_gflops = 0;  // torch::mm on square fp32 matrices
  double bf16_gflops = 0;  // the same in bf16 (oneDNN where the CPU has AVX-512 BF16 or AMX)
  double copy_gbps = 0;    // a large tensor copy, bytes read + bytes written per second
};

// The matmul GFLOP/s at size x size on `device`, fp32 or bf16 (the best of `repeats` after a
// warm-up).
double measure_matmul_gflops(int64_t size, bool bf16, int repeats,
                             const torch::Device& device = torch::kCPU);
// The copy bandwidth of a 256 MiB tensor on `device` (the best of `repeats` after a warm-up).
double measure_copy_gbps(int repeats, const torch::Device& device = torch::kCPU);

// --device checked: "cpu", "cuda" or "cuda:N", with one Error line (naming `command`) for
// another string, a LibTorch without CUDA, no GPU, or an index past the GPUs there are.
torch::Device bench_device(const std::string& text, const std::string& command);
// Waits for the work queued on `device` (CUDA's kernels run after their launch returns): called
// before every clock read of a timed section. Nothing on the CPU.
void synchronize(const torch::Device& device);
// "cpu", or the GPU's name as the driver reports it ("NVIDIA H200"; "unknown CUDA GPU" without
// the driver's NVML library).
std::string device_name(const torch::Device& device);

// A GPU's dense (no sparsity) matmul peaks as published, TFLOP/s; zeros for a GPU not listed.
struct GpuPeak {
  double bf16_tflops = 0;
  double fp32_tflops = 0;
  std::string source;  // where the figures come from
};
GpuPeak published_peak(const std::string& gpu_name);

struct GemmOptions {
  int64_t size = 2048;
  int repeats = 5;
  int threads = 0;  // 0: keep the process's setting (tiller --threads, default all cores)
  std::string device = "cpu";
  bool json = false;
};
void run_gemm(const GemmOptions& options);

struct DecodeOptions {
  std::string model_dir;  // an HF directory, or empty to use `shape` with random weights
  std::string shape = "llama-15m";
  std::vector<int64_t> batches = {1, 16};
  int64_t prompt_tokens = 16;
  int64_t new_tokens = 64;
  std::string dtype = "fp32";  // the weights and KV cache: fp32 or bf16
  int repeats = 3;
  int threads = 0;
  // cpu, cuda or cuda:N. The fast decode step is CPU-only: on CUDA, decode goes through LibTorch.
  std::string device = "cpu";
  bool torch_decode = false;      // decode steps through LibTorch ops, never FastDecoder
  bool no_weight_panels = false;  // FastDecoder through BLAS only (SamplingOptions::weight_panels)
  // Rows also for these weight-only schemes (int8, int4), each quantised in memory by round to
  // nearest (tiller quantize's layout; the LM head as the scheme, int4 in groups of group_size),
  // measured alternately with the fp32 rows in one run.
  std::vector<std::string> quantize;
  int64_t group_size = 32;
  bool json = false;
};

// Measures prefill and decode tokens/s of the generator at each batch size, and how close decode
// comes to the bound that reading the weights and the KV cache once per step sets.
void run_decode(const DecodeOptions& options);

struct GroupsOptions {
  std::string model_dir;  // an HF directory, or empty to use `shape` with random weights
  std::string shape = "llama-15m";
  int64_t prompts = 4;
  int64_t group = 8;  // samples per prompt
  int64_t prompt_tokens = 128;
  int64_t new_tokens = 32;
  int repeats = 2;
  int threads = 0;
  bool torch_decode = false;  // decode steps through LibTorch ops, never FastDecoder
  bool json = false;
};

// GRPO's group sampling both ways in one run: generate_groups (each prompt prefilled once, its
// KV cache repeated `group` times) against generate on each prompt repeated `group` times;
// seconds for the prefill and for the whole generation, and their ratios.
void run_groups(const GroupsOptions& options);

struct PairsOptions {
  std::string model_dir;  // an HF directory, or empty to use `shape` with random weights
  std::string shape = "llama-15m";
  // Synthetic pairs (without --data): one prompt of prompt_tokens, two responses of 1/2 to all of
  // response_tokens tokens.
  int64_t prompt_tokens = 128;
  int64_t response_tokens = 64;
  // Or the first `pairs` of a preference file, read with the model directory's tokenizer.
  std::string data, format = "preference", template_name = "chatml";
  int64_t max_seq_len = 0;  // 0: the model's context
  int64_t pairs = 32;
  int64_t micro_batch = 8;  // pairs per forward
  int repeats = 2;
  int threads = 0;
  bool json = false;
};

// DPO's pair log-probs and a reward model's pair scores, forward and backward over the same
// pairs both ways in one run: each pair's common beginning computed once (share_prefixes)
// against one row per response; tokens/s of each, their ratio, and how many micro-batches the
// cost rule packed.
void run_pairs(const PairsOptions& options);

struct TrainOptions {
  std::string model_dir;
  std::string shape = "llama-15m";
  int64_t batch = 8;
  int64_t seq = 256;
  std::string dtype = "fp32";  // bf16: autocast with fp32 master weights, as the stages train
  int steps = 3;               // timed steps, after one warm-up step
  int threads = 0;
  std::string device = "cpu";  // cpu, cuda or cuda:N
  bool json = false;
};

// One SFT step (forward, backward, AdamW) on random tokens: tokens/s, model FLOPs utilisation
// and the step split into its parts. The peak is the matmul rate measured in the same process on
// a CPU; on a GPU the published dense peak of its model (published_peak), or the rate measured
// on it where the model is not listed.
void run_train(const TrainOptions& options);

struct PpoBenchOptions {
  std::string recipe;
  std::string shape;   // a built-in shape (with its own vocabulary) in place of the recipe's model
  int iterations = 2;  // timed iterations, after `warmup` untimed ones
  int warmup = 1;
  int64_t prompt_tokens = 16;
  int threads = 0;
  std::string device = "cpu";  // cpu, cuda or cuda:N: the four models and the rollouts
  bool sequential = false;     // never the actor's and critic's passes side by side
  bool json = false;
};

// PPO iterations with the recipe's shapes and settings on randomly initialised models (no trained
// checkpoints needed): seconds per iteration split into generate / scoring / training.
void run_ppo(const PpoBenchOptions& options);

struct GrpoBenchOptions {
  std::string recipe;
  int64_t group = 8;        // samples per prompt: the recipe's batch is batch / group prompts
  int64_t grpo_epochs = 1;  // GRPO's policy updates per batch (mu)
  int iterations = 2;       // timed iterations of each, after `warmup` untimed ones
  int warmup = 1;
  int64_t prompt_tokens = 16;
  int threads = 0;
  bool json = false;
};

// The recipe's PPO iteration (as run_ppo times it) beside a GRPO iteration on the same shapes:
// as many episodes, batch / group prompts each sampled `group` times, no critic, a k3 KL to a
// reference; seconds per phase for each and PPO's over GRPO's; and the same GRPO with one row per
// sample instead of each prompt computed once per micro-batch (GrpoOptions::share_prompts).
void run_grpo(const GrpoBenchOptions& options);

// Helpers shared by the benchmarks.
class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Parameters that take part in a matmul for each token: all but an input embedding that is only
// looked up (it counts once when tied to the LM head, which reads all of it).
int64_t matmul_parameters(const ModelConfig& config);

// The model of an HF directory, or `shape` with random weights when model_dir is empty, in eval
// mode; `label` names it in the output.
Transformer load_bench_model(const std::string& model_dir, const std::string& shape,
                             std::string& label);

// "fp32" or "bf16" checked; `flag_owner` names the command in the error.
void check_dtype(const std::string& dtype, const std::string& flag_owner);

// Sets the intra-op threads when `threads` > 0 (a bench's own --threads beats tiller --threads).
void apply_threads(int threads);

}  // namespace tiller::bench
