#include "core/training.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace qs::core {

torch::Tensor RoundSte(const torch::Tensor& v) { return v + (v.round() - v).detach(); }

SeededBatches::SeededBatches(int64_t n, int64_t batch, uint64_t seed)
    : n_(n), batch_(std::min(batch, n)), cursor_(n), rng_(seed), order_(n) {
  for (int64_t i = 0; i < n; ++i) order_[i] = i;
}

torch::Tensor SeededBatches::Next(const torch::Device& device) {
  std::vector<int64_t> pick;
  pick.reserve(batch_);
  while (static_cast<int64_t>(pick.size()) < batch_) {
    if (cursor_ == n_) {
      for (int64_t i = n_ - 1; i > 0; --i) {
        std::swap(order_[i], order_[static_cast<int64_t>(rng_() % static_cast<uint64_t>(i + 1))]);
      }
      cursor_ = 0;
    }
    pick.push_back(order_[cursor_++]);
  }
  return torch::tensor(pick, torch::kLong).to(device);
}

Adam::Adam(std::vector<torch::Tensor> params) : params_(std::move(params)) {
  for (const auto& p : params_) {
    m_.push_back(torch::zeros_like(p));
    v_.push_back(torch::zeros_like(p));
  }
}

void Adam::ZeroGrad() {
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
}

void Adam::Step(const std::vector<double>& lrs) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double bc1 = 1 - std::pow(0.9, steps_), bc2 = 1 - std::pow(0.999, steps_);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    auto g = params_[i].grad();
    m_[i].mul_(0.9).add_(g, 0.1);
    v_[i].mul_(0.999).addcmul_(g, g, 0.001);
    params_[i].addcdiv_(m_[i] / bc1, (v_[i] / bc2).sqrt_().add_(1e-8), -lrs[i]);
  }
}

}  // namespace qs::core
