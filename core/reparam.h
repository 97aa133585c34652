// RepQ-ViT scale reparameterization of post-LayerNorm activations.
//
// The input of a linear layer that follows a LayerNorm is calibrated per channel (Δ_c, z_c),
// then the per-channel scales are folded away: with Δ̃ = mean Δ_c, z̃ = round(mean z_c),
// r_c = Δ_c / Δ̃ and δ_c = Δ̃·(z̃ − z_c), the LayerNorm emits x'_c = x_c / r_c − δ_c
// (γ_c ← γ_c / r_c, β_c ← β_c / r_c − δ_c) and the linear takes W'[:, c] = W[:, c]·r_c,
// b' = b + W'·δ. In float nothing changes; one per-tensor grid (Δ̃, z̃) on x' gives exactly the
// codes the per-channel grids give on x, so deployment needs only per-tensor quantizers. The
// weight is then quantized as W', which is what the deployed layer multiplies.
//
//   QS_ASSIGN_OR_RETURN(ReparamFit fit, FitScaleReparam(x, config.activation));
//   torch::Tensor x_folded = fit.reparam.Apply(x);
//   LinearFold f = fit.reparam.FoldIntoLinear(weight, bias);
#ifndef QS_CORE_REPARAM_H_
#define QS_CORE_REPARAM_H_

#include <string>
#include <utility>

#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"
#include "core/quantizer.h"

namespace qs::core {

struct LinearFold {
  torch::Tensor weight;  // [out, in], columns scaled by r
  torch::Tensor bias;    // [out], always defined (δ moves into it)
};

// The per-channel factors of one reparameterized input (float32 [C], on the input's device).
struct ScaleReparam {
  torch::Tensor ratio;  // r_c > 0
  torch::Tensor shift;  // δ_c

  // x'= x / r − δ along the last axis: what the folded LayerNorm outputs.
  torch::Tensor Apply(const torch::Tensor& x) const;
  // W' = W·diag(r), b' = b + W'·δ (an undefined `bias` counts as zero).
  LinearFold FoldIntoLinear(const torch::Tensor& weight, const torch::Tensor& bias) const;
  // γ' = γ / r, β' = β / r − δ.
  std::pair<torch::Tensor, torch::Tensor> FoldIntoLayerNorm(const torch::Tensor& gamma,
                                                            const torch::Tensor& beta) const;
};

struct ReparamFit {
  ScaleReparam reparam;
  UniformGrid per_channel;  // fitted on x, [C] scale and zero point
  UniformGrid per_tensor;   // (Δ̃, z̃): quantizes Apply(x) as per_channel quantizes x
};

// Calibrates `spec` (uniform, bits > 0) per channel of `x`'s last axis and derives the fold.
// INVALID_ARGUMENT when `spec` is not a quantized uniform activation or `x` has no channels.
StatusOr<ReparamFit> FitScaleReparam(const torch::Tensor& x, const ActivationQuant& spec);

// The quantizer of a matmul site's left operand: config.activation, on the log√2 grid where
// reparam applies (softmax·v) and a quantized uniform one was asked for.
ActivationQuant MatmulLhsSpec(const QuantConfig& config, const std::string& site_name);

// The LayerNorm whose output is the input of the reparameterizable linear site `site_name`
// ("blocks.3.attn.qkv" -> "blocks.3.norm1", "blocks.3.mlp.fc1" -> "blocks.3.norm2"); "" for
// other sites.
std::string ReparamNorm(const std::string& site_name);

}  // namespace qs::core

#endif  // QS_CORE_REPARAM_H_
