#include "core/repapq.h"

#include <ATen/ATen.h>

#include "core/torch_status.h"

namespace qs::core {
namespace {

constexpr double kMinGamma = 0.25, kMaxGamma = 4.0;
constexpr int64_t kMaxRows = 65536;

// Weighted least squares of y on (z, 1) per column, weights w [T, C]: (γ, β).
std::pair<torch::Tensor, torch::Tensor> WeightedLine(const torch::Tensor& z, const torch::Tensor& y,
                                                     const torch::Tensor& w) {
  auto sw = w.sum(0), sz = (w * z).sum(0), sy = (w * y).sum(0);
  auto szz = (w * z * z).sum(0), szy = (w * z * y).sum(0);
  auto det = sw * szz - sz * sz;
  // A column whose z does not vary has no slope to fit: γ = 1, β the weighted mean shift.
  auto flat = det.abs() <= 1e-12 * (sw * szz).abs().clamp_min(1e-300);
  auto gamma = at::where(flat, torch::ones_like(det), (sw * szy - sz * sy) / det);
  gamma = gamma.clamp(kMinGamma, kMaxGamma);
  auto beta = (sy - gamma * sz) / sw;
  return {gamma, beta};
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> FitAffineL1(const torch::Tensor& z, const torch::Tensor& y,
                                                    int iterations) {
  auto z64 = z.to(torch::kFloat64), y64 = y.to(torch::kFloat64);
  auto [gamma, beta] = WeightedLine(z64, y64, torch::ones_like(z64));
  // Residuals below this floor weigh as if at it, so exact fits do not divide by zero.
  const double floor = 1e-6 * std::max(1e-12, y64.abs().mean().item<double>());
  for (int i = 0; i < iterations; ++i) {
    auto r = (gamma * z64 + beta - y64).abs().clamp_min(floor);
    std::tie(gamma, beta) = WeightedLine(z64, y64, r.reciprocal());
  }
  return {gamma.to(torch::kFloat32), beta.to(torch::kFloat32)};
}

QuantizedWeight FoldQprep(const torch::Tensor& codes, const torch::Tensor& bias,
                          const QprepAffine& affine) {
  QuantizedWeight q;
  q.grid = affine.grid;
  q.grid.scale = affine.grid.scale * affine.gamma.reshape(affine.grid.scale.sizes());
  q.codes = codes;
  q.dequantized = DequantizeCodes(codes, q.grid);
  q.bias = affine.gamma * bias + affine.beta;
  return q;
}

StatusOr<RepapqWeight> QuantizeRepapqWeight(const torch::Tensor& x, const torch::Tensor& x_hat,
                                            const torch::Tensor& weight, const torch::Tensor& bias,
                                            const WeightQuant& spec) {
  if (spec.method != WeightMethod::kRepapq || spec.granularity != Granularity::kPerChannel) {
    return InvalidArgumentError("repapq needs method repapq with per_channel weights");
  }
  if (!bias.defined()) {
    return InvalidArgumentError("repapq moves a shift into the bias, and this layer has none");
  }
  QS_ASSIGN_OR_RETURN(UniformGrid grid, FitWeightGrid(weight, spec));
  if (grid.scale.numel() != weight.size(0)) {
    return InternalError("repapq: expected one weight scale per output channel");
  }
  return GuardTorch("repapq", [&]() -> StatusOr<RepapqWeight> {
    RepapqWeight r;
    auto codes = QuantizeCodes(weight, grid);
    auto rows = x.reshape({-1, x.size(-1)}), rows_hat = x_hat.reshape({-1, x.size(-1)});
    if (rows.size(0) > kMaxRows) {
      auto pick = at::linspace(0, rows.size(0) - 1, kMaxRows, rows.options().dtype(torch::kFloat64))
                      .round()
                      .to(torch::kLong);
      rows = rows.index_select(0, pick);
      rows_hat = rows_hat.index_select(0, pick);
    }
    auto z = at::linear(rows_hat, DequantizeCodes(codes, grid), bias);
    auto y = at::linear(rows, weight, bias);
    auto [gamma, beta] = FitAffineL1(z, y);
    r.affine = {gamma, beta, grid};
    r.folded = FoldQprep(codes, bias, r.affine);
    return r;
  });
}

}  // namespace qs::core
