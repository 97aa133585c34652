#include "core/metrics.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include <ATen/ATen.h>

namespace qs::core {
namespace {

torch::Tensor F64(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat64); }

// Σ over [begin, end) of the four sums, four interleaved partial sums each (a fixed order, so
// every instruction set gives the same bits).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void SumRange(
    const float* y, const float* y_hat, int64_t n, double out[4], bool* finite) {
  double s[4][4] = {};
  bool ok = true;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int l = 0; l < 4; ++l) {
      const double a = y[i + l], b = y_hat[i + l], d = a - b;
      ok = ok && std::isfinite(b);
      s[0][l] += a * a;
      s[1][l] += d * d;
      s[2][l] += a * b;
      s[3][l] += std::fabs(d);
    }
  }
  for (; i < n; ++i) {
    const double a = y[i], b = y_hat[i], d = a - b;
    ok = ok && std::isfinite(b);
    s[0][0] += a * a;
    s[1][0] += d * d;
    s[2][0] += a * b;
    s[3][0] += std::fabs(d);
  }
  for (int k = 0; k < 4; ++k) out[k] = (s[k][0] + s[k][1]) + (s[k][2] + s[k][3]);
  *finite = ok;
}

}  // namespace

ErrorSums SumErrors(const torch::Tensor& reference, const torch::Tensor& approx) {
  ErrorSums sums;
  sums.count = approx.numel();
  if (reference.is_cpu() && approx.is_cpu() && reference.scalar_type() == torch::kFloat32 &&
      approx.scalar_type() == torch::kFloat32 && reference.sizes() == approx.sizes()) {
    auto y = reference.contiguous(), y_hat = approx.contiguous();
    double out[4];
    bool finite = true;
    SumRange(y.data_ptr<float>(), y_hat.data_ptr<float>(), y.numel(), out, &finite);
    sums.signal = out[0];
    sums.noise = out[1];
    sums.cross = out[2];
    sums.absolute = out[3];
    sums.finite = finite;
    return sums;
  }
  auto r = F64(reference), a = F64(approx), d = r - a;
  sums.finite = torch::isfinite(a).all().item<bool>();
  sums.signal = r.pow(2).sum().item<double>();
  sums.noise = d.pow(2).sum().item<double>();
  sums.cross = (r * a).sum().item<double>();
  sums.absolute = d.abs().sum().item<double>();
  return sums;
}

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
