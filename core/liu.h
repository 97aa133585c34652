// Liu et al. 2021, "Post-Training Quantization for Vision Transformer": per linear layer, the
// weight and input quantization intervals are searched for the highest Pearson correlation
// between the float and the quantized layer output, alternately (weight with the input fixed,
// then the input with the weight fixed), on a linear grid of multipliers of the min-max
// intervals; then the mean output shift the quantization leaves is moved into the bias. The
// attention ranking loss, which the paper adds at the q·kᵀ matmul, is here as a measure.
//
//   QS_ASSIGN_OR_RETURN(LiuSearch r, SearchLiuIntervals(x, nullptr, &base_input, w, b, spec));
#ifndef QS_CORE_LIU_H_
#define QS_CORE_LIU_H_

#include <optional>

#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"
#include "core/quantizer.h"

namespace qs::core {

// The Pearson correlation of two tensors taken as flat vectors (float64 sums): in [−1, 1]; 0 when
// either is constant.
double PearsonCorrelation(const torch::Tensor& a, const torch::Tensor& b);

// The ranking loss of Liu et al. over the last axis (one attention row per leading index):
// Σ_{j<k} max(0, θ − (Â_j − Â_k)·sign(A_j − A_k)), averaged over rows. With margin θ = 0 it is zero
// exactly when `approx` keeps every strict order of `reference`, and grows with each inversion
// and its size. O(rows · n²) memory in chunks of rows.
double RankingLoss(const torch::Tensor& reference, const torch::Tensor& approx, double margin);

// How many input rows (tokens) the search scores candidates on, at most: evenly spaced over the
// calibration rows. The bias correction uses all of them.
inline constexpr int64_t kLiuSearchRows = 2048;

struct LiuSearch {
  QuantizedWeight weight;                 // on the chosen grid; bias corrected when asked
  std::optional<UniformGrid> input_grid;  // the chosen input grid, when it was searched
  double weight_multiplier = 1;           // of the min-max weight scales
  double input_multiplier = 1;            // of the min-max input scales (1 when not searched)
  double pearson = 0;                     // of the chosen pair, on the search rows
};

// Searches `spec`'s weight interval (min-max grid of its bits, granularity and symmetry, scaled)
// for the linear layer (`weight` [m, n], `bias` [m] or undefined) on inputs `x` ([..., n], float,
// as the site receives them). With `base_input` (a min-max uniform grid fitted to x) the input
// interval is searched too; otherwise the layer sees `fixed_input_hat` (x quantized as the site
// fixed it, or x itself). INVALID_ARGUMENT for a float weight or a method other than liu.
StatusOr<LiuSearch> SearchLiuIntervals(const torch::Tensor& x, const torch::Tensor& fixed_input_hat,
                                       const UniformGrid* base_input, const torch::Tensor& weight,
                                       const torch::Tensor& bias, const WeightQuant& spec);

// The matmul form (calibrator liu on an attention-matmul operand): the intervals of the operands
// given a `*_base` grid (min-max, uniform) are searched alternately, left then right, each over
// the default multipliers (0.5..1.2, 100 points, and 1), the other operand as `*_fixed` gives it
// (its fitted quantizer's output, or its base grid at the chosen multiplier). The objective is
// the Pearson correlation of the product with the float product, minus, with `ranking` (q·kᵀ),
// the ranking loss at margin 0 per key pair (the mean inversion of attention scores). Scored on
// at most kLiuMatmulItems leading items (images), evenly spaced.
inline constexpr int64_t kLiuMatmulItems = 16;

// Whether a matmul operand's interval is Liu et al.'s to search (a quantized uniform grid with
// calibrator liu).
inline bool SearchedByLiu(const ActivationQuant& a) {
  return a.quantized() && a.quantizer == ActivationQuantizer::kUniform &&
         a.calibrator == RangeCalibrator::kLiu;
}

struct LiuMatmulSearch {
  std::optional<UniformGrid> lhs_grid, rhs_grid;  // for the operands that had a base grid
  double objective = 0;
};

StatusOr<LiuMatmulSearch> SearchLiuMatmulIntervals(const torch::Tensor& lhs,
                                                   const torch::Tensor& rhs,
                                                   const UniformGrid* lhs_base,
                                                   const UniformGrid* rhs_base,
                                                   const torch::Tensor& lhs_fixed,
                                                   const torch::Tensor& rhs_fixed, bool ranking);

}  // namespace qs::core

#endif  // QS_CORE_LIU_H_
