// Quantizers: uniform grids (symmetric or affine; per tensor, channel, group or head) with range
// calibrators (min-max, percentile, OMSE and MAE shrink search), log2 and log√2 grids for
// post-softmax values, and PTQ4ViT's twin-uniform grids for post-softmax and post-GELU values.
//
// Fitting is separate from applying: a grid fitted on calibration data is then applied unchanged
// (static quantization), and applying it twice changes nothing (Q(Q(x)) == Q(x) bitwise).
//
//   QS_ASSIGN_OR_RETURN(UniformGrid g, FitWeightGrid(w, config.weight));
//   torch::Tensor w_hat = FakeQuantize(w, g);
#ifndef QS_CORE_QUANTIZER_H_
#define QS_CORE_QUANTIZER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include <torch/types.h>

#include "common/quant_config.h"
#include "common/status.h"

namespace qs::core {

// x̂ = (clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point) · scale. `scale` and
// `zero_point` (float32, integral values) broadcast against the tensor the grid was fitted on.
struct UniformGrid {
  torch::Tensor scale;
  torch::Tensor zero_point;
  int64_t qmin = 0;
  int64_t qmax = 0;
  int bits = 0;
  bool symmetric = true;
};

torch::Tensor FakeQuantize(const torch::Tensor& x, const UniformGrid& grid);
// Integer codes in [qmin, qmax] (int32) and their inverse.
torch::Tensor QuantizeCodes(const torch::Tensor& x, const UniformGrid& grid);
torch::Tensor DequantizeCodes(const torch::Tensor& codes, const UniformGrid& grid);

// Which elements of a tensor share one (scale, zero point).
struct GroupLayout {
  Granularity granularity = Granularity::kPerTensor;
  int64_t channel_axis = -1;  // kPerChannel: the axis whose entries each get a pair
  int64_t head_axis = -1;     // kPerHead: the axis holding heads (or heads × head_dim)
  int64_t num_heads = 1;      // kPerHead
  int64_t group_size = 0;     // kPerGroup (2-D weights): input columns per group; last may be short
};

struct RangeOptions {
  int bits = 8;
  bool symmetric = true;
  RangeCalibrator calibrator = RangeCalibrator::kMinMax;
  double percentile = 0.9999;
};

// Fits a uniform grid to `x` under `layout`. INVALID_ARGUMENT when the layout does not fit the
// tensor (axis out of range, heads that do not divide the axis). The OMSE and MAE searches try the
// min-max range first (factor 1), so their error is never above min-max's on the fitted tensor
// (above 2^21 elements they score candidates on a fixed stratified random sample of it). On CPU
// tensors the search is core/uniform_grid_cpu.h's kernel, which picks the same grid.
StatusOr<UniformGrid> FitUniformGrid(const torch::Tensor& x, const GroupLayout& layout,
                                     const RangeOptions& range);

// Fits the weight grid of a linear layer ([out, in]) as `spec` says: per_channel is per output
// row, per_group runs of `group_size` input columns within each row.
StatusOr<UniformGrid> FitWeightGrid(const torch::Tensor& weight, const WeightQuant& spec);

// Grids fitted to a model's float weights, by site and grid settings (bits, granularity, group
// size, calibrator, symmetry, percentile). RTN, GPTQ and weight-only ERQ at the same settings fit
// the same grid, and a search's validation reuses what its evaluation fitted. Thread-safe; the
// caller keeps one cache per model (a site name stands for its weight).
class WeightGridCache {
 public:
  // FitWeightGrid(weight, spec) for `site`'s float `weight`, fitted on the first request.
  StatusOr<std::shared_ptr<const UniformGrid>> Get(const std::string& site,
                                                   const torch::Tensor& weight,
                                                   const WeightQuant& spec);

 private:
  using Key = std::tuple<std::string, int, Granularity, int, RangeCalibrator, bool, double>;
  std::mutex mu_;
  std::map<Key, std::shared_ptr<const UniformGrid>> grids_;
};

// Round-to-nearest weight quantization on the fitted grid.
struct QuantizedWeight {
  UniformGrid grid;
  torch::Tensor codes;        // int32 [out, in], within [grid.qmin, grid.qmax]
  torch::Tensor dequantized;  // float32 [out, in], on the grid
  torch::Tensor bias;         // float32 [out] when the method also changed the bias (ERQ)
};
StatusOr<QuantizedWeight> QuantizeWeightRtn(const torch::Tensor& weight, const WeightQuant& spec);
// Round to nearest on a grid already fitted to `weight` (FitWeightGrid).
QuantizedWeight QuantizeOnGrid(const torch::Tensor& weight, const UniformGrid& grid);

// A fitted activation quantizer of any kind.
class ActivationQuantizerState {
 public:
  // Fits `spec` to calibration values `x`. `layout` gives the channel/head axes for uniform
  // grids. INVALID_ARGUMENT when the quantizer does not suit `domain` (log grids need
  // kPostSoftmax; twin-uniform needs kPostSoftmax or kPostGelu).
  static StatusOr<ActivationQuantizerState> Fit(const torch::Tensor& x, const ActivationQuant& spec,
                                                const GroupLayout& layout, ValueDomain domain);
  // A uniform quantizer on a grid fitted elsewhere (a reparameterized input's per-tensor grid).
  static ActivationQuantizerState FromUniformGrid(const ActivationQuant& spec, UniformGrid grid);
  // Fake-quantizes `x` with the fitted parameters. Float passthrough when spec.bits == 0.
  torch::Tensor Apply(const torch::Tensor& x) const;

  const ActivationQuant& spec() const { return spec_; }
  const UniformGrid& uniform() const { return uniform_; }
  // Log grids: the scale s (x̂ = s·2^−q or s·2^−q/2).
  double log_scale() const { return log_scale_; }
  // Twin-uniform: the small- and large-region steps; post-softmax values below
  // twin_split() use the small step.
  double twin_small_step() const { return twin_small_; }
  double twin_large_step() const { return twin_large_; }
  double twin_split() const { return twin_split_; }

 private:
  ActivationQuant spec_;
  ValueDomain domain_ = ValueDomain::kGeneral;
  UniformGrid uniform_;
  double log_scale_ = 1.0;
  double twin_small_ = 0, twin_large_ = 0, twin_split_ = 0;
};

// Log2 (sqrt2 = false) or log√2 fake quantization with scale s: x ≤ 0 and values whose exponent
// code would exceed 2^bits − 1 become 0.
torch::Tensor LogFakeQuantize(const torch::Tensor& x, double scale, int bits, bool sqrt2);

}  // namespace qs::core

#endif  // QS_CORE_QUANTIZER_H_
