// ERQ (Zhong et al., ICML 2024 / TPAMI 2025): two error-reduction steps per linear layer.
//
// Aqer: with the layer's activations quantized (X̄ = Q_a(X)), ridge regression moves the float
// weights and bias so X̄ reproduces the float output: W̃ ← W̃ + Δᵀ, Δ = (X̃ᵀX̃ + λ₁I)⁻¹X̃ᵀR with
// X̃ = [X̄, 1] and R = (X − X̄)Wᵀ.
// Wqer: in ⌈log₂ n⌉ rounds, quantize the first half of the still-float columns (rounding refined
// on the proxy eᵀCe, C = μμᵀ + Σ of their inputs) and let ridge regression on the remaining
// columns absorb that half's error: Δ_R = −(X̃_RᵀX̃_R + λ₂I)⁻¹X̃_RᵀX̃_S E_Sᵀ.
//
//   QS_ASSIGN_OR_RETURN(LinearParams p, ReduceActivationError(w, b, x, x_hat, 1000));
//   QS_ASSIGN_OR_RETURN(QuantizedWeight q, ReduceWeightError(p, x_hat, spec));
#ifndef QS_CORE_ERQ_H_
#define QS_CORE_ERQ_H_

#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"
#include "core/quantizer.h"

namespace qs::core {

struct LinearParams {
  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;    // [out], or undefined for a layer without bias
};

// (A + λI)⁻¹B for symmetric positive semi-definite A ([k, k]) and B ([k, m]) by Cholesky in
// float64. FAILED_PRECONDITION if A + λI does not factor.
StatusOr<torch::Tensor> RidgeSolve(const torch::Tensor& a, const torch::Tensor& b, double lambda);

// Aqer. `x` is the layer's float input and `x_hat` its quantized version ([..., in] each). Returns
// the updated float weight and bias; a layer without bias keeps none and only W moves. When
// x_hat == x the residual is zero and the layer comes back unchanged.
StatusOr<LinearParams> ReduceActivationError(const LinearParams& layer, const torch::Tensor& x,
                                             const torch::Tensor& x_hat, double lambda);

// Aqer from Gram blocks instead of the inputs: `quantized_gram` = X̄̃ᵀX̄̃ ((in + 1)², X̄̃ = [X̄, 1])
// and `quantized_cross` = X̄̃ᵀE ((in + 1) × in, E = X̄ − X), float64. The same solve as
// ReduceActivationError on the inputs the blocks come from (up to rounding).
StatusOr<LinearParams> ReduceActivationErrorFromGram(const LinearParams& layer,
                                                     const torch::Tensor& quantized_gram,
                                                     const torch::Tensor& quantized_cross,
                                                     double lambda);

// Wqer on the grid fitted to `layer.weight` under `spec` (fitted after Aqer, as ERQ re-calibrates).
// `x_hat` is the quantized input. Every returned weight lies on the grid; the bias (if the layer
// has one) absorbs error as a float column and is returned in `QuantizedWeight::bias`.
// `conv_layer` follows the reference code's convolution path (the patch embedding): each round
// quantizes the half of the float columns with the smallest rounding error, and λ₂ is 10×
// erq_wqer_lambda (1·coe instead of 0.1·coe).
StatusOr<QuantizedWeight> ReduceWeightError(const LinearParams& layer, const torch::Tensor& x_hat,
                                            const WeightQuant& spec, bool conv_layer = false);

// The same from the input's Gram matrix with a ones column appended, [X̃ᵀX̃] of size
// (in + 1)² (see AugmentedGram): Wqer needs nothing else of the inputs.
// `weight_grid`, when the caller has it, is FitWeightGrid(layer.weight, spec).
StatusOr<QuantizedWeight> ReduceWeightErrorFromGram(const LinearParams& layer,
                                                    const torch::Tensor& augmented_gram,
                                                    const WeightQuant& spec, bool conv_layer = false,
                                                    const UniformGrid* weight_grid = nullptr);

// X̃ᵀX̃ in float64 for X̃ = [x, 1] (x: [..., in] flattened to rows).
torch::Tensor AugmentedGram(const torch::Tensor& x);

}  // namespace qs::core

#endif  // QS_CORE_ERQ_H_
