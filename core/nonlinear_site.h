// Non-linear sites (Softmax, GELU, LayerNorm) computed by an integer-only method: the input grid
// fitted on calibration values, the kernel of core/integer_nonlinear.h applied on it, and the
// per-site choice among methods by SQNR difference (mixed non-linear quantization, Kim et al.
// 2024).
//
// What each method receives, as the three pipelines hand it over (`bits` is the width integer
// activations travel at between the ops):
//
//   op         I-BERT                          FQ-ViT                      I-ViT
//   softmax    the q·kᵀ accumulator            scores at `bits`            scores at `bits`
//   GELU       the fc1 accumulator; output     (no kernel)                 fc1 output at `bits`
//              requantized to `bits`
//   LayerNorm  residual at `bits`              residual at `bits` with     residual at `bits`
//                                              PTF; output at `bits`
//
// "At `bits`": a symmetric per-tensor min-max grid fitted on calibration values (FQ-ViT's PTF:
// per-channel power-of-two steps). The accumulator: with uniform per-tensor or per-head operands
// at q·kᵀ, and a uniform per-tensor input with a per-tensor or per-channel weight grid at fc1, the
// float result is exactly integers times the product of the scales (ApplyNonlinearSite's
// `accumulator_scale`); otherwise (the layer before float or on other grids, and the per-site
// evaluation) a symmetric 16-bit grid fitted on calibration values stands in. Softmax outputs are
// at `bits` by each kernel; LayerNorm outputs of I-BERT and I-ViT keep their integer precision.
// The next site's input quantizer takes every output as it takes any activation.
//
//   QS_ASSIGN_OR_RETURN(NonlinearSiteState s, FitNonlinearSite(site, config, x, &ln));
//   torch::Tensor y = ApplyNonlinearSite(s, x, &ln);
#ifndef QS_CORE_NONLINEAR_SITE_H_
#define QS_CORE_NONLINEAR_SITE_H_

#include <torch/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/quant_config.h"
#include "common/status.h"
#include "core/integer_nonlinear.h"
#include "core/vit.h"

namespace qs::core {

// A LayerNorm site's affine and epsilon (the float op uses eps; the integer ones have none).
struct LayerNormParams {
  torch::Tensor weight;
  torch::Tensor bias;
  double eps = 1e-6;
};

// The affine of the LayerNorm site `site` of `model` (INVALID_ARGUMENT for another op).
StatusOr<LayerNormParams> LayerNormParamsOf(const ViTModel& model, const Site& site);

// What calibration fixes at a non-linear site.
struct NonlinearSiteState {
  NonlinearOp op = NonlinearOp::kLayerNorm;
  NonlinearQuant config;
  // The symmetric per-tensor input grid at `bits`: step and largest code.
  double input_step = 1;
  int64_t input_qmax = 0;
  double accumulator_step = 1;  // the 16-bit stand-in for an unknown accumulator scale
  std::optional<PtfInput> ptf;  // FQ-ViT LayerNorm: the PTF input quantizer (codes unset)
  double out_step = 1;          // FQ-ViT LayerNorm, I-BERT GELU: the unsigned output grid
  int64_t out_zero_point = 0;
};

// Fits `config` at `site` on calibration inputs `x` (`ln`: the LayerNorm's affine, required for
// LayerNorm sites). INVALID_ARGUMENT when the method has no kernel for the op (FQ-ViT GELU) or
// bits are outside 4..8.
StatusOr<NonlinearSiteState> FitNonlinearSite(const Site& site, const NonlinearQuant& config,
                                              const torch::Tensor& x,
                                              const LayerNormParams* ln = nullptr);

// The site's output for input `x` (float32, same shape): the float op for a float config, else
// the method's kernel on the integer input. `accumulator_scale` (may be undefined): the scale the
// accumulator x comes from is on (q·kᵀ's for a softmax, fc1's for a GELU), broadcastable against
// x; only methods that take the accumulator use it.
torch::Tensor ApplyNonlinearSite(const NonlinearSiteState& state, const torch::Tensor& x,
                                 const LayerNormParams* ln = nullptr,
                                 const torch::Tensor& accumulator_scale = {});

// The float operator of `op`.
torch::Tensor FloatNonlinear(NonlinearOp op, const torch::Tensor& x, const LayerNormParams* ln);

// SQNR (dB) of the site's input on the reference grid of `bits` (symmetric per-tensor min-max),
// the same for every method at the site: the first term of the SQNR difference
// D = SQNR(in) − SQNR(out; method), so the least D is the highest output SQNR.
double NonlinearInputSqnr(int bits, const torch::Tensor& x);

// The integer methods with a kernel for `op`, in the fixed order ties are broken by.
std::vector<NonlinearMethod> IntegerMethodsFor(NonlinearOp op);

// The mixed choice per non-linear site: for every integer method with a kernel for the site's op,
// D = SQNR(in) − SQNR(out; method) on the float model's inputs over `calib_images`, and the method
// with the least D (the highest output SQNR), ties to the earlier method (I-BERT, FQ-ViT, I-ViT).
// Deterministic. Returns site → config, for recipe site entries.
StatusOr<std::map<std::string, QuantConfig>> ChooseMixedNonlinear(const ViTModel& model,
                                                                  const torch::Tensor& calib_images,
                                                                  int bits);

}  // namespace qs::core

#endif  // QS_CORE_NONLINEAR_SITE_H_
