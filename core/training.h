// What the post-training optimizers share (RepAPQ's across-block calibration, block
// reconstruction): mini-batches drawn by a fixed-seed permutation, and Adam on a list of tensors.
// Both are fully specified here (mt19937_64 and Fisher–Yates; the Adam update in place), so a run
// is repeatable on any platform with one seed.
#ifndef QS_CORE_TRAINING_H_
#define QS_CORE_TRAINING_H_

#include <torch/types.h>

#include <cstdint>
#include <random>
#include <vector>

namespace qs::core {

// Rounds forward; the gradient passes straight through.
torch::Tensor RoundSte(const torch::Tensor& v);

// Batches of `batch` indices into [0, n): a fresh permutation whenever one is used up.
class SeededBatches {
 public:
  SeededBatches(int64_t n, int64_t batch, uint64_t seed);
  // The next batch, as a kLong tensor on `device`.
  torch::Tensor Next(const torch::Device& device);

 private:
  int64_t n_, batch_, cursor_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;
};

// Adam (β₁ = 0.9, β₂ = 0.999, ε = 1e-8) over `params`, each with its own learning rate per step.
// Parameters without a gradient this step keep their value and moments.
class Adam {
 public:
  explicit Adam(std::vector<torch::Tensor> params);
  const std::vector<torch::Tensor>& params() const { return params_; }
  // Clears every parameter's gradient (before a backward pass).
  void ZeroGrad();
  // One update; `lrs` has one entry per parameter.
  void Step(const std::vector<double>& lrs);

 private:
  std::vector<torch::Tensor> params_, m_, v_;
  int steps_ = 0;
};

}  // namespace qs::core

#endif  // QS_CORE_TRAINING_H_
