#include "core/gptq.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

#include "core/kernel_choice.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

constexpr int kDampingRetries = 6;

// Fits a per-row grid on `columns` ([m, width]) and returns its scale and zero point as [m, 1].
StatusOr<std::pair<torch::Tensor, torch::Tensor>> FitColumns(const torch::Tensor& columns,
                                                             const WeightQuant& spec,
                                                             UniformGrid* grid) {
  WeightQuant per_row = spec;
  per_row.granularity = Granularity::kPerChannel;
  QS_ASSIGN_OR_RETURN(*grid, FitWeightGrid(columns.to(torch::kFloat32), per_row));
  return std::make_pair(grid->scale.reshape({-1, 1}), grid->zero_point.reshape({-1, 1}));
}

// The column grids GPTQ starts from, [m, n] on w's device: `weight_grid` (FitWeightGrid of the
// weight) or one fitted to `w` now; with dynamic groups, space the loop fills group by group
// (`grid` then carries only the code range).
Status InitialGrids(const torch::Tensor& w, const WeightQuant& spec, const UniformGrid* weight_grid,
                    UniformGrid* grid, torch::Tensor* scale, torch::Tensor* zero) {
  const int64_t m = w.size(0), n = w.size(1);
  const bool grouped = spec.granularity == Granularity::kPerGroup && spec.group_size < n;
  if (!grouped || spec.gptq_static_groups) {
    if (weight_grid != nullptr) {
      *grid = *weight_grid;
    } else {
      QS_ASSIGN_OR_RETURN(*grid, FitWeightGrid(w.to(torch::kFloat32), spec));
    }
    *scale = grid->scale.expand({m, n}).clone().to(w.device());
    *zero = grid->zero_point.expand({m, n}).clone().to(w.device());
    return OkStatus();
  }
  *scale = torch::empty({m, n}, w.options().dtype(torch::kFloat32));
  *zero = torch::empty({m, n}, w.options().dtype(torch::kFloat32));
  return FitColumns(w.narrow(1, 0, 1), spec, grid).status();  // qmin/qmax
}

// One step of GPTQ's column loop with tensor ops (any device): rounds column i of the block `w1`
// in float32 exactly as RTN does (so a diagonal H reproduces RTN bit for bit), records it in
// q[:, i1 + i] and its scaled error in err1[:, i], and spreads that error over the block's later
// columns through row i of U.
void QuantizeColumnWithTensorOps(torch::Tensor& w1, const torch::Tensor& u,
                                 const torch::Tensor& scale, const torch::Tensor& zero,
                                 const UniformGrid& grid, int64_t i1, int64_t i, torch::Tensor* q,
                                 torch::Tensor* err1) {
  const int64_t count = w1.size(1), col = i1 + i;
  auto u1 = u.narrow(0, i1, count).narrow(1, i1, count);
  auto column = w1.select(1, i).to(torch::kFloat32);
  auto s = scale.select(1, col), z = zero.select(1, col);
  auto deq = ((column / s).round() + z).clamp(grid.qmin, grid.qmax).sub(z).mul(s);
  q->select(1, col).copy_(deq);
  auto e = (w1.select(1, i) - deq.to(torch::kFloat64)) / u1[i][i];
  w1.narrow(1, i, count - i).sub_(e.unsqueeze(1) * u1.select(0, i).narrow(0, i, count - i));
  err1->select(1, i).copy_(e);
}

// row[j] −= e · u[j] for j in [0, count): a multiply then a subtract, as the tensor ops round.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) void
SubtractScaled(double* row, const double* u, double e, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const double product = e * u[j];
    row[j] -= product;
  }
}

// One step of GPTQ's column loop on CPU tensors, in plain loops (the tensor-op version below costs
// a dozen kernel launches per column): rounds column i of the block `w1` ([m, count], float64)
// in float32 exactly as RTN does, records it in q[:, i1 + i] and its scaled error in err1[:, i],
// and subtracts that error times row i of U from the block's later columns. Same arithmetic as
// the tensor ops, so the results are identical bit for bit.
void QuantizeColumnOnCpu(torch::Tensor& w1, const torch::Tensor& u, const torch::Tensor& scale,
                         const torch::Tensor& zero, const UniformGrid& grid, int64_t i1, int64_t i,
                         torch::Tensor* q, torch::Tensor* err1) {
  const int64_t m = w1.size(0), count = w1.size(1), n = u.size(0), col = i1 + i;
  double* w = w1.data_ptr<double>();
  double* qs = q->data_ptr<double>();
  double* es = err1->data_ptr<double>();
  const double* u_row = u.data_ptr<double>() + col * n + i1;  // U[col, i1 …]
  const float* s = scale.data_ptr<float>();
  const float* z = zero.data_ptr<float>();
  const float qmin = static_cast<float>(grid.qmin), qmax = static_cast<float>(grid.qmax);
  const double pivot = u_row[i];
  for (int64_t r = 0; r < m; ++r) {
    double* row = w + r * count;
    const float sr = s[r * n + col], zr = z[r * n + col];
    const float code = std::min(std::max(std::nearbyint(static_cast<float>(row[i]) / sr) + zr, qmin),
                                qmax);
    const double deq = static_cast<double>((code - zr) * sr);
    qs[r * n + col] = deq;
    const double e = (row[i] - deq) / pivot;
    SubtractScaled(row + i, u_row + i, e, count - i);
    es[r * count + i] = e;
  }
}

}  // namespace

torch::Tensor InputHessian(const torch::Tensor& x) {
  auto flat = x.reshape({-1, x.size(-1)}).to(torch::kFloat64);
  return flat.t().mm(flat).mul_(2.0 / std::max<int64_t>(1, flat.size(0)));
}

double HessianWeightedError(const torch::Tensor& weight, const torch::Tensor& approx,
                            const torch::Tensor& hessian) {
  auto d = (weight.to(torch::kFloat64) - approx.to(torch::kFloat64));
  return (d.mm(hessian.to(torch::kFloat64)) * d).sum().item<double>();
}

StatusOr<torch::Tensor> DampedInverseCholesky(const torch::Tensor& hessian, double damp) {
  return GuardTorch("gptq cholesky", [&]() -> StatusOr<torch::Tensor> {
    auto h = hessian.to(torch::kFloat64);
    const int64_t n = h.size(0);
    double lambda = damp * h.diagonal().mean().item<double>();
    if (!(lambda > 0)) lambda = damp;
    auto eye = torch::eye(n, h.options());
    for (int attempt = 0; attempt <= kDampingRetries; ++attempt, lambda *= 10) {
      auto [lower, info] = at::linalg_cholesky_ex(h + eye * lambda);
      if (info.item<int64_t>() != 0) continue;
      auto inverse = at::cholesky_inverse(lower);
      auto [upper, info2] = at::linalg_cholesky_ex(inverse, /*upper=*/true);
      if (info2.item<int64_t>() != 0 || !torch::isfinite(upper).all().item<bool>()) continue;
      return upper;
    }
    return FailedPreconditionError("the Hessian stays singular after " +
                                   std::to_string(kDampingRetries) + " tenfold damping raises");
  });
}

StatusOr<GptqFactor> FactorHessian(const torch::Tensor& hessian, double damp, bool act_order) {
  if (hessian.dim() != 2 || hessian.size(0) != hessian.size(1)) {
    return InvalidArgumentError("gptq: the Hessian must be square");
  }
  if (!(damp > 0)) return InvalidArgumentError("gptq: damping must be positive");
  return GuardTorch("gptq", [&]() -> StatusOr<GptqFactor> {
    GptqFactor f;
    auto h = hessian.to(torch::kFloat64).clone();
    // Dead inputs carry no signal: pin their Hessian diagonal (their weights are zeroed).
    f.dead = h.diagonal() == 0;
    f.any_dead = f.dead.any().item<bool>();
    if (f.any_dead) h.diagonal().masked_fill_(f.dead, 1.0);
    if (act_order) {
      f.order = std::get<1>(h.diagonal().sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
      h = h.index_select(0, f.order).index_select(1, f.order);
    }
    QS_ASSIGN_OR_RETURN(f.upper, DampedInverseCholesky(h, damp));
    return f;
  });
}

StatusOr<QuantizedWeight> QuantizeWeightGptq(const torch::Tensor& weight,
                                             const torch::Tensor& hessian, const WeightQuant& spec,
                                             const UniformGrid* weight_grid) {
  if (weight.dim() != 2) return InvalidArgumentError("gptq: weight must be 2-D [out, in]");
  const int64_t n = weight.size(1);
  if (hessian.dim() != 2 || hessian.size(0) != n || hessian.size(1) != n) {
    return InvalidArgumentError("gptq: Hessian must be [" + std::to_string(n) + ", " +
                                std::to_string(n) + "]");
  }
  QS_ASSIGN_OR_RETURN(GptqFactor factor,
                      FactorHessian(hessian, spec.gptq_damp, spec.gptq_act_order));
  return QuantizeWeightGptq(weight, factor, spec, weight_grid);
}

StatusOr<QuantizedWeight> QuantizeWeightGptq(const torch::Tensor& weight, const GptqFactor& factor,
                                             const WeightQuant& spec,
                                             const UniformGrid* weight_grid) {
  if (weight.dim() != 2) return InvalidArgumentError("gptq: weight must be 2-D [out, in]");
  const int64_t m = weight.size(0), n = weight.size(1);
  if (!factor.upper.defined() || factor.upper.size(0) != n) {
    return InvalidArgumentError("gptq: the Hessian factor does not match the weight's width");
  }
  if (spec.gptq_act_order != factor.order.defined()) {
    return InvalidArgumentError("gptq: the factor's column order does not match act_order");
  }
  if (spec.gptq_act_order && spec.granularity == Granularity::kPerGroup &&
      !spec.gptq_static_groups) {
    return InvalidArgumentError("gptq: act_order with per_group needs static groups");
  }
  if (spec.gptq_block_size < 1) return InvalidArgumentError("gptq: block size must be >= 1");
  return GuardTorch("gptq", [&]() -> StatusOr<QuantizedWeight> {
    auto w = weight.to(torch::kFloat64).clone();
    const bool any_dead = factor.any_dead;
    if (any_dead) w.index_put_({torch::indexing::Slice(), factor.dead.to(w.device())}, 0.0);

    // Per-column grid parameters, [m, n] in the original column order.
    UniformGrid grid;
    torch::Tensor scale, zero;
    const bool grouped = spec.granularity == Granularity::kPerGroup && spec.group_size < n;
    const int64_t g = grouped ? spec.group_size : n;
    QS_RETURN_IF_ERROR(InitialGrids(w, spec, any_dead ? nullptr : weight_grid, &grid, &scale, &zero));

    torch::Tensor inverse_perm;
    if (spec.gptq_act_order) {
      const auto perm = factor.order.to(w.device());
      inverse_perm = perm.argsort();
      w = w.index_select(1, perm);
      scale = scale.index_select(1, perm);
      zero = zero.index_select(1, perm);
    }
    torch::Tensor u = factor.upper.to(w.device());

    auto q = torch::zeros_like(w);
    const bool on_cpu = UseCpuKernel(w);
    if (on_cpu) {
      u = u.contiguous();
      scale = scale.contiguous();
      zero = zero.contiguous();
    }
    const int64_t block = spec.gptq_block_size;
    for (int64_t i1 = 0; i1 < n; i1 += block) {
      const int64_t count = std::min(block, n - i1), i2 = i1 + count;
      auto w1 = w.narrow(1, i1, count).clone().contiguous();
      auto err1 = torch::zeros_like(w1);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t col = i1 + i;
        if (grouped && !spec.gptq_static_groups && col % g == 0) {
          // Fit the group on its current values: columns inside this block carry every update
          // so far; columns past it still owe this block's pending update, applied here so the
          // result does not depend on the block size.
          const int64_t width = std::min(g, n - col);
          const int64_t inside = std::min(width, i2 - col);
          auto current = w1.narrow(1, i, inside);
          if (width > inside) {
            auto pending = err1.narrow(1, 0, i).mm(u.narrow(0, i1, i).narrow(1, i2, width - inside));
            current = at::cat({current, w.narrow(1, i2, width - inside) - pending}, 1);
          }
          QS_ASSIGN_OR_RETURN(auto params, FitColumns(current, spec, &grid));
          scale.narrow(1, col, width).copy_(params.first.expand({m, width}));
          zero.narrow(1, col, width).copy_(params.second.expand({m, width}));
        }
        if (on_cpu) {
          QuantizeColumnOnCpu(w1, u, scale, zero, grid, i1, i, &q, &err1);
        } else {
          QuantizeColumnWithTensorOps(w1, u, scale, zero, grid, i1, i, &q, &err1);
        }
      }
      if (i2 < n) w.narrow(1, i2, n - i2).sub_(err1.mm(u.narrow(0, i1, count).narrow(1, i2, n - i2)));
    }

    if (spec.gptq_act_order) {
      q = q.index_select(1, inverse_perm);
      scale = scale.index_select(1, inverse_perm);
      zero = zero.index_select(1, inverse_perm);
    }
    QuantizedWeight out;
    out.grid = grid;
    out.grid.scale = scale.to(torch::kFloat32);
    out.grid.zero_point = zero.to(torch::kFloat32);
    out.dequantized = q.to(torch::kFloat32);
    out.codes = QuantizeCodes(out.dequantized, out.grid);
    if (!torch::isfinite(out.dequantized).all().item<bool>()) {
      return FailedPreconditionError("gptq produced non-finite weights");
    }
    return out;
  });
}

}  // namespace qs::core
