#include "core/erq.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/kernel_choice.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

// Rows of `x` ([..., in]) in float64, with a ones column appended when `with_bias`.
torch::Tensor Augmented(const torch::Tensor& x, bool with_bias) {
  auto flat = x.reshape({-1, x.size(-1)}).to(torch::kFloat64);
  if (!with_bias) return flat;
  return at::cat({flat, torch::ones({flat.size(0), 1}, flat.options())}, 1);
}

// Quantize-dequantize with an explicit rounding function, on the fixed grid.
torch::Tensor OnGrid(const torch::Tensor& scaled, const torch::Tensor& s, const torch::Tensor& z,
                     const UniformGrid& grid) {
  return (scaled + z).clamp(grid.qmin, grid.qmax).sub(z).mul(s);
}

// Wqer's rounding refinement, all rows at once with tensor ops (any device): move the coordinate
// with the largest gradient (pointing the same way as its error) to its other grid neighbour
// while eᵀCe decreases; a row stops at its first rejected move.
void RefineRoundingWithTensorOps(const torch::Tensor& c, const torch::Tensor& e_floor,
                                 const torch::Tensor& e_ceil, int iterations, torch::Tensor g,
                                 torch::Tensor* e_out) {
  torch::Tensor& e = *e_out;
  auto c_diag = c.diagonal();
  auto active = torch::ones({e.size(0)}, torch::TensorOptions().dtype(torch::kBool).device(e.device()));
  for (int it = 0; it < iterations; ++it) {
    auto candidates = (e * g > 0).logical_and(active.unsqueeze(1));
    auto has = candidates.any(1);
    if (!has.any().item<bool>()) break;
    auto j = at::where(candidates, g.abs(), torch::full_like(g, -1)).argmax(1, true);
    auto e_j = e.gather(1, j), g_j = g.gather(1, j);
    auto f_j = e_floor.gather(1, j), c_j = e_ceil.gather(1, j);
    auto target = e_j - g_j;
    auto v = at::where((target - f_j).abs() <= (target - c_j).abs(), f_j, c_j);
    auto delta = v - e_j;
    auto change = delta * g_j + delta * delta * c_diag.index_select(0, j.squeeze(1)).unsqueeze(1);
    auto accept = has.logical_and(change.squeeze(1) < 0);
    auto step = at::where(accept.unsqueeze(1), delta, torch::zeros_like(delta));
    e.scatter_add_(1, j, step);
    g += 2 * step * c.index_select(0, j.squeeze(1));
    active = accept;
  }
}

// Wqer's rounding refinement in plain loops over CPU tensors, row by row (rows never interact):
// while the row has a coordinate whose gradient points the same way as its error and the last
// move was accepted, move the one with the largest |gradient| (the first on ties) to whichever
// grid neighbour is nearer its Newton target, keeping the move only if eᵀCe decreases. The same
// arithmetic as the tensor-op loop in ReduceWeightErrorFromGram, so results agree bit for bit.
// e, e_floor, e_ceil, g: [m, k] float64; c: [k, k]. Updates e (and a private copy of g).
void RefineRoundingOnCpu(const torch::Tensor& c, const torch::Tensor& e_floor,
                         const torch::Tensor& e_ceil, int iterations, torch::Tensor g,
                         torch::Tensor* e) {
  const int64_t m = e->size(0), k = e->size(1);
  const double* cm = c.data_ptr<double>();
  const double* fl = e_floor.data_ptr<double>();
  const double* ce = e_ceil.data_ptr<double>();
  double* es = e->data_ptr<double>();
  double* gs = g.data_ptr<double>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      double* er = es + r * k;
      double* gr = gs + r * k;
      for (int it = 0; it < iterations; ++it) {
        int64_t j = -1;
        double best = -1;
        for (int64_t t = 0; t < k; ++t) {
          if (er[t] * gr[t] > 0 && std::fabs(gr[t]) > best) {
            best = std::fabs(gr[t]);
            j = t;
          }
        }
        if (j < 0) break;
        const double e_j = er[j], g_j = gr[j], f_j = fl[r * k + j], c_j = ce[r * k + j];
        const double target = e_j - g_j;
        const double v = std::fabs(target - f_j) <= std::fabs(target - c_j) ? f_j : c_j;
        const double delta = v - e_j;
        const double change = delta * g_j + delta * delta * cm[j * k + j];
        if (!(change < 0)) break;
        er[j] = e_j + delta;
        const double step2 = 2 * delta;
        const double* c_row = cm + j * k;
        for (int64_t t = 0; t < k; ++t) gr[t] += step2 * c_row[t];
      }
    }
  });
}

// The layer moved by Aqer's solution: W + Δ[:in]ᵀ, and b + Δ[in] when it has a bias.
LinearParams Shifted(const LinearParams& layer, const torch::Tensor& delta) {
  const int64_t n = layer.weight.size(1);
  LinearParams out;
  out.weight = (layer.weight.to(torch::kFloat64) + delta.narrow(0, 0, n).t()).to(torch::kFloat32);
  if (layer.bias.defined()) {
    out.bias = (layer.bias.to(torch::kFloat64) + delta.select(0, n)).to(torch::kFloat32);
  }
  return out;
}

}  // namespace

StatusOr<torch::Tensor> RidgeSolve(const torch::Tensor& a, const torch::Tensor& b, double lambda) {
  return GuardTorch("ridge solve", [&]() -> StatusOr<torch::Tensor> {
    auto a64 = a.to(torch::kFloat64);
    auto regularized = a64 + torch::eye(a64.size(0), a64.options()) * lambda;
    auto [lower, info] = at::linalg_cholesky_ex(regularized);
    if (info.item<int64_t>() != 0) {
      return FailedPreconditionError("ridge system is not positive definite (lambda " +
                                     std::to_string(lambda) + ")");
    }
    return at::cholesky_solve(b.to(torch::kFloat64), lower);
  });
}

StatusOr<LinearParams> ReduceActivationError(const LinearParams& layer, const torch::Tensor& x,
                                             const torch::Tensor& x_hat, double lambda) {
  if (layer.weight.dim() != 2 || x.dim() < 1 || x.sizes() != x_hat.sizes() ||
      x.size(-1) != layer.weight.size(1)) {
    return InvalidArgumentError("aqer: inputs do not match the weight's input width");
  }
  const bool has_bias = layer.bias.defined();
  return GuardTorch("aqer", [&]() -> StatusOr<LinearParams> {
    auto xt = Augmented(x_hat, has_bias);
    auto w64 = layer.weight.to(torch::kFloat64);
    // R = Y − X̃W̃ᵀ = (X − X̄)Wᵀ: the bias cancels.
    auto residual = (x - x_hat).reshape({-1, x.size(-1)}).to(torch::kFloat64).mm(w64.t());
    QS_ASSIGN_OR_RETURN(torch::Tensor delta, RidgeSolve(xt.t().mm(xt), xt.t().mm(residual), lambda));
    return Shifted(layer, delta);
  });
}

StatusOr<LinearParams> ReduceActivationErrorFromGram(const LinearParams& layer,
                                                     const torch::Tensor& quantized_gram,
                                                     const torch::Tensor& quantized_cross,
                                                     double lambda) {
  const int64_t n = layer.weight.dim() == 2 ? layer.weight.size(1) : -1;
  if (n < 1 || quantized_gram.dim() != 2 || quantized_gram.size(0) != n + 1 ||
      quantized_gram.size(1) != n + 1 || quantized_cross.dim() != 2 ||
      quantized_cross.size(0) != n + 1 || quantized_cross.size(1) != n) {
    return InvalidArgumentError("aqer: Gram blocks do not match the weight's input width");
  }
  return GuardTorch("aqer", [&]() -> StatusOr<LinearParams> {
    const int64_t k = layer.bias.defined() ? n + 1 : n;
    auto w64 = layer.weight.to(torch::kFloat64);
    // X̃ᵀR with R = (X − X̄)Wᵀ = −EWᵀ.
    auto rhs = -quantized_cross.to(torch::kFloat64).narrow(0, 0, k).mm(w64.t());
    QS_ASSIGN_OR_RETURN(torch::Tensor delta,
                        RidgeSolve(quantized_gram.to(torch::kFloat64).narrow(0, 0, k).narrow(1, 0, k),
                                   rhs, lambda));
    return Shifted(layer, delta);
  });
}

torch::Tensor AugmentedGram(const torch::Tensor& x) {
  auto xt = Augmented(x, /*with_bias=*/true);
  return xt.t().mm(xt);
}

StatusOr<QuantizedWeight> ReduceWeightError(const LinearParams& layer, const torch::Tensor& x_hat,
                                            const WeightQuant& spec, bool conv_layer) {
  if (layer.weight.dim() != 2 || x_hat.dim() < 1 || x_hat.size(-1) != layer.weight.size(1)) {
    return InvalidArgumentError("wqer: input width does not match the weight");
  }
  auto gram = GuardTorch("wqer gram", [&]() -> StatusOr<torch::Tensor> {
    return AugmentedGram(x_hat);
  });
  if (!gram.ok()) return gram.status();
  return ReduceWeightErrorFromGram(layer, *gram, spec, conv_layer);
}

StatusOr<QuantizedWeight> ReduceWeightErrorFromGram(const LinearParams& layer,
                                                    const torch::Tensor& augmented_gram,
                                                    const WeightQuant& spec, bool conv_layer,
                                                    const UniformGrid* weight_grid) {
  if (layer.weight.dim() != 2 || augmented_gram.dim() != 2 ||
      augmented_gram.size(0) != layer.weight.size(1) + 1 ||
      augmented_gram.size(1) != layer.weight.size(1) + 1) {
    return InvalidArgumentError("wqer: the Gram matrix does not match the weight's input width");
  }
  UniformGrid grid;
  if (weight_grid != nullptr) {
    grid = *weight_grid;
  } else {
    QS_ASSIGN_OR_RETURN(grid, FitWeightGrid(layer.weight, spec));
  }
  const bool has_bias = layer.bias.defined();
  return GuardTorch("wqer", [&]() -> StatusOr<QuantizedWeight> {
    const int64_t m = layer.weight.size(0), n = layer.weight.size(1);
    auto w = layer.weight.to(torch::kFloat64);
    if (has_bias) w = at::cat({w, layer.bias.to(torch::kFloat64).unsqueeze(1)}, 1);
    auto full = augmented_gram.to(torch::kFloat64);
    const double tokens = full[n][n].item<double>();  // the ones column's square: N
    if (!(tokens > 0)) return InvalidArgumentError("wqer: the Gram matrix holds no tokens");
    // Column means come from the ones column: Σ_t x_tj · 1 / N.
    const int64_t k = has_bias ? n + 1 : n;
    auto gram = full.narrow(0, 0, k).narrow(1, 0, k);
    auto mu = full[n].narrow(0, 0, k) / tokens;
    // Second moment of each column pair, C = μμᵀ + Σ (Σ unbiased), the proxy's matrix.
    auto outer = mu.unsqueeze(1) * mu.unsqueeze(0);
    auto moment = outer + (gram - outer * tokens) / std::max(1.0, tokens - 1);
    auto scale = grid.scale.expand({m, n}).to(torch::kFloat64);
    auto zero = grid.zero_point.expand({m, n}).to(torch::kFloat64);

    std::vector<int64_t> remaining(w.size(1));
    for (int64_t i = 0; i < w.size(1); ++i) remaining[i] = i;
    const double ridge_lambda = conv_layer ? 10 * spec.erq_wqer_lambda : spec.erq_wqer_lambda;
    while (remaining.size() > 1) {
      const size_t half = remaining.size() / 2;
      if (conv_layer) {
        // Weight columns by ascending total |rounding error| (ties by index); the bias column,
        // which has no rounding error, stays last.
        std::vector<int64_t> cols(remaining.begin(), remaining.end() - (has_bias ? 1 : 0));
        auto ci = torch::tensor(cols, torch::kLong).to(w.device());
        auto wc = w.index_select(1, ci);
        auto sc = scale.index_select(1, ci), zc = zero.index_select(1, ci);
        auto err = (OnGrid((wc / sc).round(), sc, zc, grid) - wc).abs().sum(0).to(torch::kCPU);
        std::vector<double> score(err.data_ptr<double>(), err.data_ptr<double>() + err.numel());
        std::vector<size_t> order(cols.size());
        for (size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return score[a] < score[b]; });
        std::vector<int64_t> sorted;
        for (size_t i : order) sorted.push_back(cols[i]);
        if (has_bias) sorted.push_back(remaining.back());
        remaining = sorted;
      }
      std::vector<int64_t> s_idx(remaining.begin(), remaining.begin() + half);
      std::vector<int64_t> r_idx(remaining.begin() + half, remaining.end());
      auto si = torch::tensor(s_idx, torch::kLong).to(w.device());
      auto ri = torch::tensor(r_idx, torch::kLong).to(w.device());
      // The bias column sits last and so is never in S.
      auto ws = w.index_select(1, si);
      auto s = scale.index_select(1, si), z = zero.index_select(1, si);
      auto scaled = ws / s;
      auto e = OnGrid(scaled.round(), s, z, grid) - ws;
      auto e_floor = OnGrid(scaled.floor(), s, z, grid) - ws;
      auto e_ceil = OnGrid(scaled.ceil(), s, z, grid) - ws;

      // Rounding refinement on the proxy eᵀCe (two implementations of one rule, above).
      auto c = moment.index_select(0, si).index_select(1, si);
      auto g = e.mm(c) * 2;
      if (UseCpuKernel(e)) {
        e = e.contiguous();
        RefineRoundingOnCpu(c.contiguous(), e_floor.contiguous(), e_ceil.contiguous(),
                            spec.erq_wqer_iterations, g.contiguous(), &e);
      } else {
        RefineRoundingWithTensorOps(c, e_floor, e_ceil, spec.erq_wqer_iterations, g, &e);
      }

      // Ridge compensation on the still-float columns, then commit S to the grid.
      auto rhs = gram.index_select(0, ri).index_select(1, si).mm(e.t());
      QS_ASSIGN_OR_RETURN(
          torch::Tensor comp,
          RidgeSolve(gram.index_select(0, ri).index_select(1, ri), rhs, ridge_lambda));
      w.index_copy_(1, ri, w.index_select(1, ri) - comp.t());
      w.index_copy_(1, si, ws + e);
      remaining = r_idx;
    }
    QuantizedWeight out;
    out.grid = grid;
    auto weight = w.narrow(1, 0, n).to(torch::kFloat32);
    // The last column (when there is no bias) is plainly rounded; the others are already on the
    // grid, and re-rounding them is exact.
    out.codes = QuantizeCodes(weight, grid);
    out.dequantized = DequantizeCodes(out.codes, grid);
    if (has_bias) out.bias = w.select(1, n).to(torch::kFloat32).contiguous();
    if (!torch::isfinite(out.dequantized).all().item<bool>() ||
        (has_bias && !torch::isfinite(out.bias).all().item<bool>())) {
      return FailedPreconditionError("wqer produced non-finite weights");
    }
    return out;
  });
}

}  // namespace qs::core
