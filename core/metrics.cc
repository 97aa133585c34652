#include "core/metrics.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>

namespace qs::core {
namespace {

torch::Tensor F64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64); }

}  // namespace

double SqnrDb(const torch::Tensor& reference, const torch::Tensor& approx) {
  auto r = F64(reference);
  double signal = r.pow(2).sum().item<double>();
  double noise = (r - F64(approx)).pow(2).sum().item<double>();
  if (noise == 0) return std::numeric_limits<double>::infinity();
  if (signal == 0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

double Mse(const torch::Tensor& reference, const torch::Tensor& approx) {
  return (F64(reference) - F64(approx)).pow(2).mean().item<double>();
}

double Mae(const torch::Tensor& reference, const torch::Tensor& approx) {
  return (F64(reference) - F64(approx)).abs().mean().item<double>();
}

double Cosine(const torch::Tensor& reference, const torch::Tensor& approx) {
  auto a = F64(reference).flatten(), b = F64(approx).flatten();
  double na = a.norm().item<double>(), nb = b.norm().item<double>();
  if (na == 0 || nb == 0) return 0;
  return a.dot(b).item<double>() / (na * nb);
}

double OutputKl(const torch::Tensor& reference_logits, const torch::Tensor& logits) {
  auto p_log = at::log_softmax(F64(reference_logits), -1);
  auto q_log = at::log_softmax(F64(logits), -1);
  return (p_log.exp() * (p_log - q_log)).sum(-1).mean().item<double>();
}

double Top1(const torch::Tensor& logits, const torch::Tensor& labels) {
  if (logits.size(0) == 0) return 0;
  auto pred = logits.argmax(-1).to(torch::kCPU);
  return pred.eq(labels.to(torch::kCPU)).to(torch::kFloat64).mean().item<double>();
}

double Top1Agreement(const torch::Tensor& reference_logits, const torch::Tensor& logits) {
  if (logits.size(0) == 0) return 0;
  return reference_logits.argmax(-1)
      .eq(logits.argmax(-1))
      .to(torch::kFloat64)
      .mean()
      .item<double>();
}

}  // namespace qs::core
