// RepAPQ (Zhang et al., arXiv 2402.16121): post-training quantization for reparameterized models.
// Three parts, all here or in core/across_block.h:
//  - MAE instead of MSE to choose quantization ranges (the calibrator `mae`, which the repapq
//    shorthand selects for weights and activations);
//  - Quantization-Protecting Reparameterization (QPRep): a per-output-channel affine
//    y = γ·(x̂·Ŵᵀ + b) + β after the merged layer, fitted during calibration and folded exactly
//    into the per-channel weight scales (γ·s; the integer codes do not change) and the bias
//    (γ·b + β);
//  - across-block calibration (core/across_block.h): the affines, weight scales and input scales
//    of a whole stage trained together against the float stage output with an MAE loss.
//
// At one site, with nothing downstream to supervise it, QuantizeRepapqWeight fits the affine to
// the site's own float output (least absolute deviations); QuantizeModel then refines it across
// blocks.
#ifndef QS_CORE_REPAPQ_H_
#define QS_CORE_REPAPQ_H_

#include <torch/types.h>

#include <utility>

#include "common/quant_config.h"
#include "common/status.h"
#include "core/quantizer.h"

namespace qs::core {

// The QPRep affine of one layer and the weight grid it multiplies (before the fold).
struct QprepAffine {
  torch::Tensor gamma;  // [out], positive
  torch::Tensor beta;   // [out]
  UniformGrid grid;     // the weight grid the codes are on; the fold scales it by γ
};

// γ and β per column minimizing Σ_t |γ·z[t, c] + β − y[t, c]| (z, y: [T, C]) by iteratively
// reweighted least squares from the least-squares solution; γ is kept in [0.25, 4] (a column
// whose z is constant keeps γ = 1). Float64 inside; returns float32 [C] tensors.
std::pair<torch::Tensor, torch::Tensor> FitAffineL1(const torch::Tensor& z, const torch::Tensor& y,
                                                    int iterations = 20);

// The folded layer: the same codes on the grid scaled by γ per output row, dequantized, and the
// bias γ·b + β. Applying it equals applying γ·(x̂·Ŵᵀ + b) + β up to float rounding.
QuantizedWeight FoldQprep(const torch::Tensor& codes, const torch::Tensor& bias,
                          const QprepAffine& affine);

struct RepapqWeight {
  QuantizedWeight folded;  // what the model multiplies
  QprepAffine affine;      // what was folded, for the across-block refinement
};

// One linear layer under `spec` (method repapq, per_channel): the weight grid fitted by the
// spec's calibrator, codes by rounding, then the affine fitted so that the layer on its quantized
// input `x_hat` matches the float layer on `x` (rows of [..., in]; at most 65,536 evenly spaced
// rows are used). INVALID_ARGUMENT when the layer has no bias (β needs one) or the spec is not
// per_channel repapq.
StatusOr<RepapqWeight> QuantizeRepapqWeight(const torch::Tensor& x, const torch::Tensor& x_hat,
                                            const torch::Tensor& weight, const torch::Tensor& bias,
                                            const WeightQuant& spec);

}  // namespace qs::core

#endif  // QS_CORE_REPAPQ_H_
