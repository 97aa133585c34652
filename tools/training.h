// What the fixture trainers share: AdamW, the learning-rate schedule and the
// augmentation.
#ifndef QS_TOOLS_TRAINING_H_
#define QS_TOOLS_TRAINING_H_

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/types.h>

#include <cmath>
#include <cstdlib>
#include <utility>
#include <vector>

namespace qs::tools {

// Adam with bias correction and decoupled weight decay (on the parameters
// marked in `decay`).
class AdamW {
 public:
  AdamW(std::vector<torch::Tensor> params, std::vector<bool> decay, double weight_decay)
      : params_(std::move(params)), decay_(std::move(decay)), weight_decay_(weight_decay) {
    for (const auto& p : params_) {
      m_.push_back(torch::zeros_like(p));
      v_.push_back(torch::zeros_like(p));
    }
  }
  void ZeroGrad() {
    for (auto& p : params_) p.mutable_grad() = torch::Tensor();
  }
  void Step(double lr) {
    c10::InferenceMode guard;
    const double bc1 = 1 - std::pow(kBeta1, steps_ + 1), bc2 = 1 - std::pow(kBeta2, steps_ + 1);
    for (size_t i = 0; i < params_.size(); ++i) {
      auto g = params_[i].grad();
      m_[i].mul_(kBeta1).add_(g, 1 - kBeta1);
      v_[i].mul_(kBeta2).addcmul_(g, g, 1 - kBeta2);
      if (decay_[i]) params_[i].mul_(1 - lr * weight_decay_);
      params_[i].addcdiv_(m_[i] / bc1, (v_[i] / bc2).sqrt_().add_(kEps), -lr);
    }
    ++steps_;
  }

 private:
  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  std::vector<torch::Tensor> params_, m_, v_;
  std::vector<bool> decay_;
  double weight_decay_;
  int64_t steps_ = 0;
};

// Linear warm-up over `warmup` steps, then cosine decay to zero at `total`.
inline double WarmupCosineLr(double base, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup) return base * (step + 1) / warmup;
  return 0.5 * base * (1 + std::cos(M_PI * (step - warmup) / std::max<int64_t>(1, total - warmup)));
}

// Light augmentation, one draw per batch: a random shift of up to 2 pixels and
// a random horizontal flip.
inline torch::Tensor AugmentBatch(const torch::Tensor& x) {
  int64_t dx = (std::rand() % 5) - 2, dy = (std::rand() % 5) - 2;
  auto out = at::roll(x, {dy, dx}, {2, 3});
  if (std::rand() % 2) out = out.flip({3});
  return out;
}

}  // namespace qs::tools

#endif  // QS_TOOLS_TRAINING_H_
