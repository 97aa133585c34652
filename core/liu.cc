#include "core/liu.h"

#include <cmath>
#include <vector>

#include "core/torch_status.h"

namespace qs::core {
namespace {

// The candidate multipliers: a linear grid over [alpha, beta], with 1 (the min-max interval)
// among them, so the search never ends below its starting point.
std::vector<double> Multipliers(const WeightQuant& spec) {
  std::vector<double> out;
  bool one = false;
  for (int i = 0; i < spec.liu_grid; ++i) {
    const double m = spec.liu_alpha + (spec.liu_beta - spec.liu_alpha) * i / (spec.liu_grid - 1);
    one = one || m == 1.0;
    out.push_back(m);
  }
  if (!one) out.push_back(1.0);
  return out;
}

// `keep` evenly spaced indices of `count` (undefined when there are no more than that): the
// searches score candidates on a bounded, fixed sample.
torch::Tensor EvenlySpaced(int64_t count, int64_t keep, const torch::Device& device) {
  if (count <= keep) return torch::Tensor();
  return torch::linspace(0, count - 1, keep, torch::kFloat64)
      .round()
      .to(torch::kLong)
      .to(device);
}

// Tries every multiplier with `score` and keeps one that beats `*best` (the first of equals).
template <typename Score>
void TryMultipliers(const std::vector<double>& multipliers, Score score, double* best,
                    double* chosen) {
  for (double m : multipliers) {
    const double s = score(m);
    if (s > *best) {
      *best = s;
      *chosen = m;
    }
  }
}

UniformGrid Scaled(const UniformGrid& grid, double multiplier) {
  UniformGrid g = grid;
  g.scale = grid.scale * multiplier;
  return g;
}

}  // namespace

double PearsonCorrelation(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.detach().flatten().to(torch::kFloat64);
  auto y = b.detach().flatten().to(torch::kFloat64);
  x = x - x.mean();
  y = y - y.mean();
  const double sx = x.pow(2).sum().item<double>(), sy = y.pow(2).sum().item<double>();
  if (!(sx > 0) || !(sy > 0)) return 0;
  return (x * y).sum().item<double>() / std::sqrt(sx * sy);
}

double RankingLoss(const torch::Tensor& reference, const torch::Tensor& approx, double margin) {
  const int64_t n = reference.size(-1);
  auto ref = reference.detach().reshape({-1, n}).to(torch::kFloat64);
  auto app = approx.detach().reshape({-1, n}).to(torch::kFloat64);
  const int64_t rows = ref.size(0);
  if (rows == 0 || n < 2) return 0;
  auto upper = torch::ones({n, n}, torch::kBool).triu(1);  // pairs j < k
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 22) / (n * n));
  double total = 0;
  for (int64_t start = 0; start < rows; start += chunk) {
    const int64_t len = std::min(chunk, rows - start);
    auto r = ref.narrow(0, start, len), q = app.narrow(0, start, len);
    auto order = (r.unsqueeze(2) - r.unsqueeze(1)).sign();
    auto gap = q.unsqueeze(2) - q.unsqueeze(1);
    // Ties in the reference (sign 0) ask nothing of the order.
    auto hinge = (margin - gap * order).clamp_min(0).masked_fill(order == 0, 0);
    total += hinge.masked_select(upper.expand({len, n, n})).sum().item<double>();
  }
  return total / static_cast<double>(rows);
}

StatusOr<LiuSearch> SearchLiuIntervals(const torch::Tensor& x, const torch::Tensor& fixed_input_hat,
                                       const UniformGrid* base_input, const torch::Tensor& weight,
                                       const torch::Tensor& bias, const WeightQuant& spec) {
  if (!spec.quantized() || spec.method != WeightMethod::kLiu) {
    return InvalidArgumentError("the liu interval search needs a quantized liu weight");
  }
  if (base_input == nullptr && !fixed_input_hat.defined()) {
    return InvalidArgumentError("the liu interval search needs the input's grid or its values");
  }
  return GuardTorch("liu", [&]() -> StatusOr<LiuSearch> {
    const int64_t n = weight.size(1);
    auto rows = x.reshape({-1, n}).to(torch::kFloat32);
    auto rows_hat = base_input ? torch::Tensor() : fixed_input_hat.reshape({-1, n});
    // The rows the candidates are scored on: evenly spaced, all of them when few.
    const torch::Tensor pick = EvenlySpaced(rows.size(0), kLiuSearchRows, rows.device());
    auto sample = pick.defined() ? rows.index_select(0, pick) : rows;
    auto sample_hat = rows_hat.defined() && pick.defined() ? rows_hat.index_select(0, pick)
                                                           : rows_hat;
    const auto reference = at::linear(sample, weight, bias);

    WeightQuant minmax = spec;
    minmax.calibrator = RangeCalibrator::kMinMax;
    QS_ASSIGN_OR_RETURN(UniformGrid base_weight, FitWeightGrid(weight, minmax));
    LiuSearch best;
    auto input_at = [&](double m) {
      return base_input ? FakeQuantize(sample, Scaled(*base_input, m)) : sample_hat;
    };
    auto score = [&](double wm, const torch::Tensor& in) {
      const QuantizedWeight q = QuantizeOnGrid(weight, Scaled(base_weight, wm));
      return PearsonCorrelation(reference, at::linear(in, q.dequantized, bias));
    };
    const std::vector<double> multipliers = Multipliers(spec);
    best.pearson = score(1.0, input_at(1.0));
    for (int round = 0; round < spec.liu_rounds; ++round) {
      const auto in = input_at(best.input_multiplier);
      TryMultipliers(multipliers, [&](double m) { return score(m, in); }, &best.pearson,
                     &best.weight_multiplier);
      if (!base_input) break;
      TryMultipliers(multipliers, [&](double m) { return score(best.weight_multiplier, input_at(m)); },
                     &best.pearson, &best.input_multiplier);
    }
    best.weight = QuantizeOnGrid(weight, Scaled(base_weight, best.weight_multiplier));
    if (base_input) best.input_grid = Scaled(*base_input, best.input_multiplier);
    if (spec.liu_bias_correction) {
      // The expected output shift over every calibration row goes into the bias.
      auto in = base_input ? FakeQuantize(rows, *best.input_grid) : rows_hat;
      auto shift = (at::linear(rows, weight) - at::linear(in, best.weight.dequantized))
                       .to(torch::kFloat64)
                       .mean(0);
      auto b = bias.defined() ? bias.to(torch::kFloat64) : torch::zeros_like(shift);
      best.weight.bias = (b + shift).to(torch::kFloat32);
    }
    return best;
  });
}

StatusOr<LiuMatmulSearch> SearchLiuMatmulIntervals(const torch::Tensor& lhs,
                                                   const torch::Tensor& rhs,
                                                   const UniformGrid* lhs_base,
                                                   const UniformGrid* rhs_base,
                                                   const torch::Tensor& lhs_fixed,
                                                   const torch::Tensor& rhs_fixed, bool ranking) {
  if ((lhs_base == nullptr && !lhs_fixed.defined()) ||
      (rhs_base == nullptr && !rhs_fixed.defined())) {
    return InvalidArgumentError("the liu matmul search needs each operand's grid or values");
  }
  return GuardTorch("liu matmul", [&]() -> StatusOr<LiuMatmulSearch> {
    const torch::Tensor pick = EvenlySpaced(lhs.size(0), kLiuMatmulItems, lhs.device());
    auto take = [&](const torch::Tensor& t) {
      return t.defined() && pick.defined() ? t.index_select(0, pick) : t;
    };
    const auto a = take(lhs), b = take(rhs), a_fixed = take(lhs_fixed), b_fixed = take(rhs_fixed);
    const auto reference = at::matmul(a, b);
    const double pairs = 0.5 * static_cast<double>(reference.size(-1) * (reference.size(-1) - 1));
    auto objective = [&](const torch::Tensor& a_hat, const torch::Tensor& b_hat) {
      const auto out = at::matmul(a_hat, b_hat);
      double score = PearsonCorrelation(reference, out);
      if (ranking && pairs > 0) score -= RankingLoss(reference, out, 0.0) / pairs;
      return score;
    };
    WeightQuant defaults;  // the multiplier grid's defaults
    const std::vector<double> multipliers = Multipliers(defaults);
    double lhs_m = 1, rhs_m = 1;
    auto a_at = [&](double m) { return lhs_base ? FakeQuantize(a, Scaled(*lhs_base, m)) : a_fixed; };
    auto b_at = [&](double m) { return rhs_base ? FakeQuantize(b, Scaled(*rhs_base, m)) : b_fixed; };
    LiuMatmulSearch best;
    best.objective = objective(a_at(1), b_at(1));
    if (lhs_base) {
      const auto b_hat = b_at(rhs_m);
      TryMultipliers(multipliers, [&](double m) { return objective(a_at(m), b_hat); },
                     &best.objective, &lhs_m);
    }
    if (rhs_base) {
      const auto a_hat = a_at(lhs_m);
      TryMultipliers(multipliers, [&](double m) { return objective(a_hat, b_at(m)); },
                     &best.objective, &rhs_m);
    }
    if (lhs_base) best.lhs_grid = Scaled(*lhs_base, lhs_m);
    if (rhs_base) best.rhs_grid = Scaled(*rhs_base, rhs_m);
    return best;
  });
}

}  // namespace qs::core
