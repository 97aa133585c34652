#include "core/quantizer.h"

#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <vector>

#include <ATen/ATen.h>

#include "core/kernel_choice.h"
#include "core/uniform_grid_cpu.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

// Above this many elements, range searches score candidates on an evenly strided sample; the
// min/max that the candidates scale from still comes from every element.
constexpr int64_t kSearchSampleElements = 1 << 21;
// OMSE / MAE shrink search: factors 1.00, 0.99, ..., 0.11 of the min-max range.
constexpr int kShrinkSteps = 90;
// Relative difference below which two shrink factors' errors count as tied (see
// core/uniform_grid_cpu.h, which uses the same rule).
constexpr double kShrinkTieTolerance = kShrinkSearchTieTolerance;
// The minimum of exact GELU, bounding the negative region of post-GELU twin-uniform grids.
constexpr double kGeluMin = 0.16997;

int64_t NormalizeAxis(int64_t axis, int64_t dim) { return axis < 0 ? axis + dim : axis; }

// Reshapes `x` into [groups, elements] rows, one row per (scale, zero point).
StatusOr<torch::Tensor> ToRows(const torch::Tensor& x, const GroupLayout& layout) {
  switch (layout.granularity) {
    case Granularity::kPerTensor:
      return x.reshape({1, -1});
    case Granularity::kPerChannel: {
      int64_t axis = NormalizeAxis(layout.channel_axis, x.dim());
      if (axis < 0 || axis >= x.dim()) return InvalidArgumentError("channel axis out of range");
      return x.movedim(axis, 0).reshape({x.size(axis), -1});
    }
    case Granularity::kPerHead: {
      int64_t axis = NormalizeAxis(layout.head_axis, x.dim());
      if (axis < 0 || axis >= x.dim()) return InvalidArgumentError("head axis out of range");
      if (layout.num_heads < 1 || x.size(axis) % layout.num_heads != 0) {
        return InvalidArgumentError("per_head: " + std::to_string(layout.num_heads) +
                                    " heads do not divide an axis of size " +
                                    std::to_string(x.size(axis)));
      }
      return x.movedim(axis, 0).reshape({layout.num_heads, -1});
    }
    case Granularity::kPerGroup:
      return InvalidArgumentError("per_group applies to 2-D weights only");
  }
  return InternalError("unknown granularity");
}

// Broadcasts per-row values [groups] back to a shape that multiplies `x`.
torch::Tensor FromRows(const torch::Tensor& v, const torch::Tensor& x, const GroupLayout& layout) {
  if (layout.granularity == Granularity::kPerTensor) return v.reshape({});
  int64_t axis = NormalizeAxis(layout.granularity == Granularity::kPerChannel ? layout.channel_axis
                                                                              : layout.head_axis,
                               x.dim());
  torch::Tensor per_axis = v;
  if (v.size(0) != x.size(axis)) per_axis = v.repeat_interleave(x.size(axis) / v.size(0));
  std::vector<int64_t> shape(x.dim(), 1);
  shape[axis] = x.size(axis);
  return per_axis.reshape(shape);
}

void GridRange(int bits, bool symmetric, int64_t* qmin, int64_t* qmax) {
  if (symmetric) {
    *qmin = -(int64_t{1} << (bits - 1));
    *qmax = (int64_t{1} << (bits - 1)) - 1;
  } else {
    *qmin = 0;
    *qmax = (int64_t{1} << bits) - 1;
  }
}

// Per-row scale and zero point for the range [lo, hi].
void ScaleAndZero(const torch::Tensor& lo, const torch::Tensor& hi, int bits, bool symmetric,
                  torch::Tensor* scale, torch::Tensor* zero) {
  constexpr double kMinScale = 1e-8;
  if (symmetric) {
    auto amax = at::maximum(lo.abs(), hi.abs());
    *scale = (amax / static_cast<double>((int64_t{1} << (bits - 1)) - 1)).clamp_min(kMinScale);
    *zero = torch::zeros_like(*scale);
  } else {
    auto l = lo.clamp_max(0), h = hi.clamp_min(0);
    const double levels = static_cast<double>((int64_t{1} << bits) - 1);
    *scale = ((h - l) / levels).clamp_min(kMinScale);
    *zero = (-l / *scale).round().clamp(0, levels);
  }
}

torch::Tensor FakeQuantizeRaw(const torch::Tensor& x, const torch::Tensor& scale,
                              const torch::Tensor& zero, int64_t qmin, int64_t qmax) {
  return ((x / scale).round() + zero).clamp(qmin, qmax).sub(zero).mul(scale);
}

torch::Tensor RowError(const torch::Tensor& rows, const torch::Tensor& approx, bool absolute) {
  auto d = (rows - approx).to(torch::kFloat64);
  return absolute ? d.abs().sum(1) : d.pow(2).sum(1);
}

// The column indices SampleColumns keeps of `columns`: a stratified random sample, one index drawn
// uniformly from each of `keep` equal strata by a fixed-seed splitmix64, so it is the same on
// every run and platform, ascending, and costs O(keep) (a permutation of all columns cost
// seconds and gigabytes on ViT-B's 77M-value MLP activations). Remembered per (columns, keep).
torch::Tensor SampleIndex(int64_t columns, int64_t keep) {
  static std::mutex mu;
  static auto* drawn = new std::map<std::pair<int64_t, int64_t>, torch::Tensor>();
  std::lock_guard<std::mutex> lock(mu);
  auto& index = (*drawn)[{columns, keep}];
  if (!index.defined()) {
    index = torch::empty({keep}, torch::kLong);
    int64_t* out = index.data_ptr<int64_t>();
    uint64_t state = 0x5eed;
    for (int64_t i = 0; i < keep; ++i) {
      uint64_t z = (state += 0x9e3779b97f4a7c15ull);  // splitmix64
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      const int64_t begin = i * columns / keep, end = (i + 1) * columns / keep;
      out[i] = begin + static_cast<int64_t>(z % static_cast<uint64_t>(end - begin));
    }
  }
  return index;
}

// A fixed pseudo-random subset of columns (the same on every run). A plain stride could alias with
// the channel count of a flattened activation and skip whole channels; random offsets within
// strata do not.
torch::Tensor SampleColumns(const torch::Tensor& rows) {
  if (rows.numel() <= kSearchSampleElements) return rows;
  const int64_t keep = std::max<int64_t>(1, kSearchSampleElements / rows.size(0));
  return rows.index_select(1, SampleIndex(rows.size(1), keep).to(rows.device()));
}

// Per-row grid for rows [G, K] under `range`; returns scale and zero point of shape [G].
void FitRows(const torch::Tensor& rows, const RangeOptions& range, torch::Tensor* scale,
             torch::Tensor* zero) {
  int64_t qmin, qmax;
  GridRange(range.bits, range.symmetric, &qmin, &qmax);
  torch::Tensor lo, hi;
  if (range.calibrator == RangeCalibrator::kPercentile) {
    const auto& sample = rows;  // quantiles over every element
    const int64_t k = sample.size(1);
    int64_t k_hi = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(range.percentile * k)), 1, k);
    int64_t k_lo =
        std::clamp<int64_t>(static_cast<int64_t>(std::floor((1 - range.percentile) * k)) + 1, 1, k);
    hi = std::get<0>(sample.kthvalue(k_hi, 1));
    lo = std::get<0>(sample.kthvalue(k_lo, 1));
  } else {
    std::tie(lo, hi) = at::aminmax(rows, 1);
  }
  ScaleAndZero(lo, hi, range.bits, range.symmetric, scale, zero);
  if (range.calibrator != RangeCalibrator::kOmse && range.calibrator != RangeCalibrator::kMae) {
    return;
  }
  const bool absolute = range.calibrator == RangeCalibrator::kMae;
  auto sample = SampleColumns(rows).contiguous();
  // On the CPU an exact kernel replaces the loop below (core/uniform_grid_cpu.h).
  if (UseCpuKernel(sample) && sample.scalar_type() == torch::kFloat32 && torch::isfinite(sample).all().item<bool>()) {
    auto lo_c = lo.contiguous(), hi_c = hi.contiguous();
    auto s = torch::empty_like(lo_c), z = torch::empty_like(lo_c);
    ShrinkSearchRows(sample.data_ptr<float>(), sample.size(0), sample.size(1),
                     lo_c.data_ptr<float>(), hi_c.data_ptr<float>(),
                     ShrinkSearchSpec{range.bits, range.symmetric, absolute, kShrinkSteps},
                     s.data_ptr<float>(), z.data_ptr<float>());
    *scale = s;
    *zero = z;
    return;
  }
  auto best_err = RowError(sample, FakeQuantizeRaw(sample, scale->unsqueeze(1),
                                                   zero->unsqueeze(1), qmin, qmax),
                           absolute);
  for (int i = 1; i < kShrinkSteps; ++i) {
    const double f = 1.0 - 0.01 * i;
    torch::Tensor s, z;
    ScaleAndZero(lo * f, hi * f, range.bits, range.symmetric, &s, &z);
    auto err = RowError(sample, FakeQuantizeRaw(sample, s.unsqueeze(1), z.unsqueeze(1), qmin, qmax),
                        absolute);
    // Ties, up to summation-order noise, keep the wider range found first.
    auto better = err < best_err * (1 - kShrinkTieTolerance);
    *scale = at::where(better, s, *scale);
    *zero = at::where(better, z, *zero);
    best_err = at::where(better, err, best_err);
  }
}

double Quantile(const torch::Tensor& x, double p) {
  auto flat = SampleColumns(x.reshape({1, -1})).flatten();
  const int64_t k = flat.numel();
  int64_t kk = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(p * k)), 1, k);
  return std::get<0>(flat.kthvalue(kk)).item<double>();
}

double ErrorOf(const torch::Tensor& x, const torch::Tensor& approx, bool absolute) {
  auto d = (x - approx).to(torch::kFloat64);
  return (absolute ? d.abs().sum() : d.pow(2).sum()).item<double>();
}

torch::Tensor TwinSoftmax(const torch::Tensor& x, double small, double large, int64_t levels) {
  auto in_small = x < small * (levels - 0.5);
  auto q_small = (x / small).round().clamp(0, levels - 1) * small;
  auto q_large = (x / large).round().clamp(0, levels - 1) * large;
  return at::where(in_small, q_small, q_large);
}

torch::Tensor TwinGelu(const torch::Tensor& x, double neg_step, double pos_step, int64_t levels) {
  auto q_neg = (x / neg_step).round().clamp(-levels, 0) * neg_step;
  auto q_pos = (x / pos_step).round().clamp(0, levels - 1) * pos_step;
  return at::where(x < 0, q_neg, q_pos);
}

}  // namespace

torch::Tensor FakeQuantize(const torch::Tensor& x, const UniformGrid& grid) {
  // One pass on the CPU where the grid is per tensor or per last-dimension channel.
  const int64_t channels = x.dim() > 0 ? x.size(-1) : 1;
  const bool per_tensor = grid.scale.numel() == 1 && grid.zero_point.numel() == 1;
  const bool per_last = grid.scale.dim() > 0 && grid.scale.numel() == channels &&
                        grid.scale.size(-1) == channels && grid.zero_point.sizes() == grid.scale.sizes();
  if (UseCpuKernel(x) && x.scalar_type() == torch::kFloat32 && grid.scale.is_cpu() &&
      grid.scale.scalar_type() == torch::kFloat32 &&
      grid.zero_point.scalar_type() == torch::kFloat32 && (per_tensor || per_last)) {
    auto in = x.contiguous();
    auto scale = grid.scale.contiguous(), zero = grid.zero_point.contiguous();
    auto out = torch::empty_like(in);
    FakeQuantizeValues(in.data_ptr<float>(), in.numel(), scale.data_ptr<float>(),
                       zero.data_ptr<float>(), per_tensor ? 1 : channels,
                       static_cast<float>(grid.qmin), static_cast<float>(grid.qmax),
                       out.data_ptr<float>());
    return out;
  }
  return FakeQuantizeRaw(x, grid.scale, grid.zero_point, grid.qmin, grid.qmax);
}

torch::Tensor QuantizeCodes(const torch::Tensor& x, const UniformGrid& grid) {
  return ((x / grid.scale).round() + grid.zero_point)
      .clamp(grid.qmin, grid.qmax)
      .to(torch::kInt32);
}

torch::Tensor DequantizeCodes(const torch::Tensor& codes, const UniformGrid& grid) {
  return codes.to(torch::kFloat32).sub(grid.zero_point).mul(grid.scale);
}

StatusOr<UniformGrid> FitUniformGrid(const torch::Tensor& x, const GroupLayout& layout,
                                     const RangeOptions& range) {
  if (range.bits < 2 || range.bits > 8) {
    return InvalidArgumentError("bits must be 2..8, got " + std::to_string(range.bits));
  }
  if (x.numel() == 0) return InvalidArgumentError("cannot fit a grid to an empty tensor");
  return GuardTorch("fit uniform grid", [&]() -> StatusOr<UniformGrid> {
    auto xf = x.detach().to(torch::kFloat32);
    QS_ASSIGN_OR_RETURN(torch::Tensor rows, ToRows(xf, layout));
    torch::Tensor scale, zero;
    FitRows(rows, range, &scale, &zero);
    UniformGrid grid;
    grid.bits = range.bits;
    grid.symmetric = range.symmetric;
    GridRange(range.bits, range.symmetric, &grid.qmin, &grid.qmax);
    grid.scale = FromRows(scale, xf, layout);
    grid.zero_point = FromRows(zero, xf, layout);
    return grid;
  });
}

StatusOr<UniformGrid> FitWeightGrid(const torch::Tensor& weight, const WeightQuant& spec) {
  if (weight.dim() != 2) return InvalidArgumentError("weight must be 2-D [out, in]");
  RangeOptions range{spec.bits, spec.symmetric, spec.calibrator, spec.percentile};
  if (spec.granularity == Granularity::kPerTensor) {
    return FitUniformGrid(weight, GroupLayout{Granularity::kPerTensor}, range);
  }
  GroupLayout per_row{Granularity::kPerChannel, /*channel_axis=*/0};
  if (spec.granularity == Granularity::kPerChannel ||
      (spec.granularity == Granularity::kPerGroup && spec.group_size >= weight.size(1))) {
    return FitUniformGrid(weight, per_row, range);
  }
  if (spec.granularity != Granularity::kPerGroup || spec.group_size < 1) {
    return InvalidArgumentError(std::string("weight granularity ") + ToString(spec.granularity) +
                                " is not supported (group_size " +
                                std::to_string(spec.group_size) + ")");
  }
  // Groups of input columns; each group is fitted per output row and the parameters expanded to
  // the full [out, in] shape, so applying the grid needs no knowledge of the grouping.
  std::vector<torch::Tensor> scales, zeros;
  UniformGrid grid;
  for (int64_t start = 0; start < weight.size(1); start += spec.group_size) {
    int64_t width = std::min<int64_t>(spec.group_size, weight.size(1) - start);
    QS_ASSIGN_OR_RETURN(UniformGrid g,
                        FitUniformGrid(weight.narrow(1, start, width), per_row, range));
    scales.push_back(g.scale.expand({weight.size(0), width}));
    zeros.push_back(g.zero_point.expand({weight.size(0), width}));
    grid = g;
  }
  grid.scale = at::cat(scales, 1);
  grid.zero_point = at::cat(zeros, 1);
  return grid;
}

StatusOr<std::shared_ptr<const UniformGrid>> WeightGridCache::Get(const std::string& site,
                                                                   const torch::Tensor& weight,
                                                                   const WeightQuant& spec) {
  const Key key{site,           spec.bits,      spec.granularity, spec.group_size,
                spec.calibrator, spec.symmetric, spec.percentile};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = grids_.find(key);
    if (it != grids_.end()) return it->second;
  }
  // Fitted outside the lock; a concurrent fit of the same key gives the same grid.
  QS_ASSIGN_OR_RETURN(UniformGrid grid, FitWeightGrid(weight, spec));
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = grids_.emplace(key, std::make_shared<const UniformGrid>(std::move(grid)));
  return it->second;
}

StatusOr<QuantizedWeight> QuantizeWeightRtn(const torch::Tensor& weight, const WeightQuant& spec) {
  QS_ASSIGN_OR_RETURN(UniformGrid grid, FitWeightGrid(weight, spec));
  return GuardTorch("rtn", [&]() -> StatusOr<QuantizedWeight> {
    return QuantizeOnGrid(weight, grid);
  });
}

QuantizedWeight QuantizeOnGrid(const torch::Tensor& weight, const UniformGrid& grid) {
  QuantizedWeight q;
  q.grid = grid;
  q.codes = QuantizeCodes(weight, grid);
  q.dequantized = DequantizeCodes(q.codes, grid);
  return q;
}

torch::Tensor LogFakeQuantize(const torch::Tensor& x, double scale, int bits, bool sqrt2) {
  const double mult = sqrt2 ? 2.0 : 1.0;
  const double max_code = static_cast<double>((int64_t{1} << bits) - 1);
  auto ratio = (x / scale).clamp_min(std::numeric_limits<float>::min());
  auto code = (ratio.log2() * -mult).round().clamp_min(0);
  auto out = (code * (-1.0 / mult)).exp2() * scale;
  return at::where((x <= 0).logical_or(code > max_code), torch::zeros_like(out), out);
}

ActivationQuantizerState ActivationQuantizerState::FromUniformGrid(const ActivationQuant& spec,
                                                                 UniformGrid grid) {
  ActivationQuantizerState state;
  state.spec_ = spec;
  state.uniform_ = std::move(grid);
  return state;
}

StatusOr<ActivationQuantizerState> ActivationQuantizerState::Fit(const torch::Tensor& x,
                                                                 const ActivationQuant& spec,
                                                                 const GroupLayout& layout,
                                                                 ValueDomain domain) {
  ActivationQuantizerState state;
  state.spec_ = spec;
  state.domain_ = domain;
  if (!spec.quantized()) return state;
  if (spec.bits < 2 || spec.bits > 8) {
    return InvalidArgumentError("activation bits must be 2..8, got " + std::to_string(spec.bits));
  }
  QS_RETURN_IF_ERROR(CheckQuantizerSuitsDomain(spec, domain, "activation"));
  const bool absolute = spec.calibrator == RangeCalibrator::kMae;
  return GuardTorch("fit activation quantizer", [&]() -> StatusOr<ActivationQuantizerState> {
    auto xf = x.detach().to(torch::kFloat32);
    switch (spec.quantizer) {
      case ActivationQuantizer::kUniform: {
        QS_ASSIGN_OR_RETURN(
            state.uniform_,
            FitUniformGrid(xf, layout,
                           RangeOptions{spec.bits, spec.symmetric, spec.calibrator,
                                        spec.percentile}));
        return state;
      }
      case ActivationQuantizer::kLog2:
      case ActivationQuantizer::kLogSqrt2: {
        const bool sqrt2 = spec.quantizer == ActivationQuantizer::kLogSqrt2;
        double max = xf.max().item<double>();
        state.log_scale_ = max > 0 ? max : 1.0;
        if (spec.calibrator != RangeCalibrator::kMinMax) {
          // Scale search over upper quantiles, as RepQ-ViT/ERQ do for log√2.
          auto sample = SampleColumns(xf.reshape({1, -1})).flatten();
          double best = ErrorOf(sample, LogFakeQuantize(sample, state.log_scale_, spec.bits, sqrt2),
                                absolute);
          for (double p : {0.99999, 0.9999, 0.999}) {
            double s = Quantile(xf, p);
            if (!(s > 0)) continue;
            double err = ErrorOf(sample, LogFakeQuantize(sample, s, spec.bits, sqrt2), absolute);
            if (err < best) {
              best = err;
              state.log_scale_ = s;
            }
          }
        }
        return state;
      }
      case ActivationQuantizer::kTwinUniform: {
        const int64_t levels = int64_t{1} << (spec.bits - 1);
        auto sample = SampleColumns(xf.reshape({1, -1})).flatten();
        if (domain == ValueDomain::kPostSoftmax) {
          // Large step covers [0, 1]; the small one is 2^−m of it, m searched.
          const double large = 1.0 / static_cast<double>(levels - 1);
          double best = std::numeric_limits<double>::infinity();
          for (int m = 0; m < 20; ++m) {
            double small = large / static_cast<double>(int64_t{1} << m);
            double err = ErrorOf(sample, TwinSoftmax(sample, small, large, levels), absolute);
            if (err < best) {
              best = err;
              state.twin_small_ = small;
            }
          }
          state.twin_large_ = large;
          state.twin_split_ = state.twin_small_ * (levels - 0.5);
          return state;
        }
        if (domain == ValueDomain::kPostGelu) {
          // Negative region fixed by GELU's minimum; positive step searched around max/(L−½).
          const double neg = kGeluMin / static_cast<double>(levels);
          const double max = std::max(sample.max().item<double>(), 1e-6);
          const double base = max / (levels - 0.5);
          double best = ErrorOf(sample, TwinGelu(sample, neg, base, levels), absolute);
          state.twin_large_ = base;
          for (int i = 0; i <= 100; ++i) {
            double step = (0.01 + i * (1.2 - 0.01) / 100.0) * base;
            double err = ErrorOf(sample, TwinGelu(sample, neg, step, levels), absolute);
            if (err < best) {
              best = err;
              state.twin_large_ = step;
            }
          }
          state.twin_small_ = neg;
          return state;
        }
        return InternalError("twin_uniform: unchecked value domain");
      }
    }
    return InternalError("unknown activation quantizer");
  });
}

torch::Tensor ActivationQuantizerState::Apply(const torch::Tensor& x) const {
  if (!spec_.quantized()) return x;
  const int64_t levels = int64_t{1} << (spec_.bits - 1);
  switch (spec_.quantizer) {
    case ActivationQuantizer::kUniform:
      return FakeQuantize(x, uniform_);
    case ActivationQuantizer::kLog2:
      return LogFakeQuantize(x, log_scale_, spec_.bits, false);
    case ActivationQuantizer::kLogSqrt2:
      return LogFakeQuantize(x, log_scale_, spec_.bits, true);
    case ActivationQuantizer::kTwinUniform:
      return domain_ == ValueDomain::kPostSoftmax
                 ? TwinSoftmax(x, twin_small_, twin_large_, levels)
                 : TwinGelu(x, twin_small_, twin_large_, levels);
  }
  return x;
}

}  // namespace qs::core
