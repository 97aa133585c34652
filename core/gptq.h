// GPTQ (Frantar et al. 2022): quantizes a linear layer's weight column by column, feeding each
// column's rounding error back into the columns not yet quantized through the inverse Hessian of
// the layer-output error, so ‖(W − Ŵ)Xᵀ‖² ends up far below round-to-nearest's.
//
//   torch::Tensor h = InputHessian(x_hat);                   // 2/N · XᵀX, float64
//   QS_ASSIGN_OR_RETURN(QuantizedWeight q, QuantizeWeightGptq(w, h, spec));
#ifndef QS_CORE_GPTQ_H_
#define QS_CORE_GPTQ_H_

#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"
#include "core/quantizer.h"

namespace qs::core {

// H = (2/N) Σ x xᵀ over the rows of `x` ([..., in] flattened to [N, in]), in float64.
torch::Tensor InputHessian(const torch::Tensor& x);

// tr((W − Ŵ) H (W − Ŵ)ᵀ): the layer-output squared error summed over rows when H = XᵀX
// (half of it for GPTQ's H = 2XᵀX/N, times N). Float64.
double HessianWeightedError(const torch::Tensor& weight, const torch::Tensor& approx,
                            const torch::Tensor& hessian);

// GPTQ with `spec`'s grid (bits, granularity, calibrator, symmetry) and hyper-parameters
// (gptq_damp, gptq_block_size, gptq_act_order, gptq_static_groups). Inputs whose H diagonal is 0
// are dead: their weight columns are zeroed. If H + λI is not positive definite the damping is
// raised tenfold, up to six times. INVALID_ARGUMENT for mismatched shapes; FAILED_PRECONDITION
// when no damping makes H factorable or the result is not finite. `weight_grid`, when the
// caller has it, is FitWeightGrid(weight, spec): used instead of fitting again unless some input
// is dead or groups are fitted as the columns update.
StatusOr<QuantizedWeight> QuantizeWeightGptq(const torch::Tensor& weight,
                                             const torch::Tensor& hessian, const WeightQuant& spec,
                                             const UniformGrid* weight_grid = nullptr);

// What GPTQ derives from the Hessian alone: the dead inputs, the column order (act-order) and
// the upper Cholesky factor of the damped inverse in that order. It depends on (H, damping,
// act-order) only, so every bit-width and granularity quantized against one H shares it.
struct GptqFactor {
  torch::Tensor dead;          // bool [in]: inputs whose H diagonal is 0
  bool any_dead = false;
  torch::Tensor order;         // column order (act-order), or undefined for the natural one
  torch::Tensor upper;         // U with (H + λI)⁻¹ = UᵀU, rows and columns in `order`
};
StatusOr<GptqFactor> FactorHessian(const torch::Tensor& hessian, double damp, bool act_order);
// GPTQ against a factor from FactorHessian(H, spec.gptq_damp, spec.gptq_act_order): the same
// result as QuantizeWeightGptq(weight, H, spec).
StatusOr<QuantizedWeight> QuantizeWeightGptq(const torch::Tensor& weight, const GptqFactor& factor,
                                             const WeightQuant& spec,
                                             const UniformGrid* weight_grid = nullptr);

// Upper Cholesky factor U of (H + λI)⁻¹ (so the inverse is UᵀU), with λ = damp · mean(diag H)
// raised tenfold on failure. Shared by GPTQ and tests. FAILED_PRECONDITION if it never factors.
StatusOr<torch::Tensor> DampedInverseCholesky(const torch::Tensor& hessian, double damp);

}  // namespace qs::core

#endif  // QS_CORE_GPTQ_H_
