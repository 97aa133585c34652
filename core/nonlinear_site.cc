#include "core/nonlinear_site.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/evaluate.h"
#include "core/metrics.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

// Where a method takes its input from the accumulator of the layer before (I-BERT's softmax and
// GELU) and that accumulator's scale is unknown (the layer before is float, or its grids give no
// single scale per output), a symmetric 16-bit grid stands in: fine enough that the kernel's own
// arithmetic, not this grid, sets the error.
constexpr int kAccumulatorBits = 16;

// Whether `method` computes `op` on the accumulator itself rather than on a requantized input.
bool TakesAccumulator(NonlinearMethod method, NonlinearOp op) {
  return method == NonlinearMethod::kIbert && op != NonlinearOp::kLayerNorm;
}

int64_t SymmetricQmax(int bits) { return (int64_t{1} << (bits - 1)) - 1; }

double SymmetricStep(const torch::Tensor& x, int64_t qmax) {
  const double bound = x.abs().max().item<double>();
  return bound > 0 ? bound / static_cast<double>(qmax) : 1.0;
}

IntTensor ToIntegers(const torch::Tensor& x, const torch::Tensor& step, int64_t qmax) {
  auto scale = step.to(x.device(), torch::kFloat64);
  auto values = at::clamp(at::round(x.to(torch::kFloat64) / scale), -qmax, qmax).to(torch::kInt64);
  return {values, scale};
}

torch::Tensor Scalar(double v, const torch::Device& device) {
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kFloat64).device(device));
}

}  // namespace

StatusOr<LayerNormParams> LayerNormParamsOf(const ViTModel& model, const Site& site) {
  if (site.kind != SiteKind::kNonlinear || NonlinearOpOf(site.name) != NonlinearOp::kLayerNorm) {
    return InvalidArgumentError("site " + site.name + " is not a LayerNorm");
  }
  const auto& t = model.tensors();
  auto w = t.find(site.name + ".weight"), b = t.find(site.name + ".bias");
  if (w == t.end() || b == t.end()) {
    return NotFoundError("LayerNorm site " + site.name + " has no affine in the model");
  }
  return LayerNormParams{w->second, b->second, model.config().layer_norm_eps};
}

torch::Tensor FloatNonlinear(NonlinearOp op, const torch::Tensor& x, const LayerNormParams* ln) {
  switch (op) {
    case NonlinearOp::kSoftmax:
      return x.softmax(-1);
    case NonlinearOp::kGelu:
      return at::gelu(x);
    case NonlinearOp::kLayerNorm:
      return at::layer_norm(x, {x.size(-1)}, ln->weight, ln->bias, ln->eps);
  }
  return x;
}

std::vector<NonlinearMethod> IntegerMethodsFor(NonlinearOp op) {
  std::vector<NonlinearMethod> out;
  for (NonlinearMethod m :
       {NonlinearMethod::kIbert, NonlinearMethod::kFqvit, NonlinearMethod::kIvit}) {
    if (NonlinearMethodHasOp(m, op)) out.push_back(m);
  }
  return out;
}

StatusOr<NonlinearSiteState> FitNonlinearSite(const Site& site, const NonlinearQuant& config,
                                              const torch::Tensor& x, const LayerNormParams* ln) {
  NonlinearSiteState s;
  s.op = NonlinearOpOf(site.name);
  s.config = config;
  if (!config.quantized()) return s;
  if (config.bits < 4 || config.bits > 8) {
    return InvalidArgumentError("site " + site.name + ": nonlinear bits must be 4..8");
  }
  if (!NonlinearMethodHasOp(config.method, s.op)) {
    return InvalidArgumentError("site " + site.name + ": " + ToString(config.method) + " has no " +
                                ToString(s.op) + " kernel");
  }
  if (s.op == NonlinearOp::kLayerNorm && ln == nullptr) {
    return InvalidArgumentError("site " + site.name + ": a LayerNorm needs its affine");
  }
  return GuardTorch("fit non-linear site", [&]() -> StatusOr<NonlinearSiteState> {
    auto xf = x.to(torch::kFloat32);
    s.input_qmax = SymmetricQmax(config.bits);
    s.input_step = SymmetricStep(xf, s.input_qmax);
    s.accumulator_step = SymmetricStep(xf, SymmetricQmax(kAccumulatorBits));
    // The output grids: unsigned `bits`, min-max of the float op's output on calibration values.
    auto fit_output = [&](const torch::Tensor& y) {
      const double lo = std::min(0.0, y.min().item<double>());
      const double hi = std::max(0.0, y.max().item<double>());
      const int64_t levels = (int64_t{1} << config.bits) - 1;
      s.out_step = hi > lo ? (hi - lo) / static_cast<double>(levels) : 1.0;
      s.out_zero_point = std::clamp<int64_t>(std::llround(-lo / s.out_step), 0, levels);
    };
    if (s.op == NonlinearOp::kLayerNorm && config.method == NonlinearMethod::kFqvit) {
      s.ptf = FitPtf(xf, config.bits);
      fit_output(FloatNonlinear(s.op, DequantizePtf(QuantizePtf(xf, *s.ptf)), ln));
    }
    if (s.op == NonlinearOp::kGelu && config.method == NonlinearMethod::kIbert) {
      fit_output(FloatNonlinear(s.op, xf, ln));  // I-BERT requantizes i-GELU's int32 output
    }
    return s;
  });
}

torch::Tensor ApplyNonlinearSite(const NonlinearSiteState& s, const torch::Tensor& x,
                                 const LayerNormParams* ln,
                                 const torch::Tensor& accumulator_scale) {
  if (!s.config.quantized()) return FloatNonlinear(s.op, x, ln);
  const int bits = s.config.bits;
  const auto device = x.device();
  if (s.ptf) {
    return PtfLayerNorm(QuantizePtf(x.to(torch::kFloat32), *s.ptf), ln->weight, ln->bias,
                        s.out_step, s.out_zero_point, bits)
        .Dequantize()
        .to(x.dtype());
  }
  IntTensor in;
  if (!TakesAccumulator(s.config.method, s.op)) {
    in = ToIntegers(x, Scalar(s.input_step, device), s.input_qmax);
  } else if (accumulator_scale.defined()) {
    // The accumulator's own integers (a bias or Swin's position bias added at its scale): no
    // clamp, it is as wide as it needs to be.
    auto scale = accumulator_scale.to(device, torch::kFloat64);
    in = {at::round(x.to(torch::kFloat64) / scale).to(torch::kInt64), scale};
  } else {
    in = ToIntegers(x, Scalar(s.accumulator_step, device), SymmetricQmax(kAccumulatorBits));
  }
  NonlinearOutput out;
  switch (s.op) {
    case NonlinearOp::kSoftmax:
      out = s.config.method == NonlinearMethod::kIbert   ? IBertSoftmax(in, bits)
            : s.config.method == NonlinearMethod::kFqvit ? LogIntSoftmax(in, bits)
                                                         : Shiftmax(in, bits);
      break;
    case NonlinearOp::kGelu:
      if (s.config.method == NonlinearMethod::kIbert) {
        auto y = IBertGelu(in).Dequantize();
        auto codes =
            at::clamp(at::round(y / s.out_step) + s.out_zero_point, 0, (int64_t{1} << bits) - 1);
        return ((codes - s.out_zero_point) * s.out_step).to(x.dtype());
      }
      out = ShiftGelu(in, bits);
      break;
    case NonlinearOp::kLayerNorm:
      out = s.config.method == NonlinearMethod::kIbert ? IBertLayerNorm(in, ln->weight, ln->bias)
                                                       : IvitLayerNorm(in, ln->weight, ln->bias);
      break;
  }
  return out.Dequantize().to(x.dtype());
}

double NonlinearInputSqnr(int bits, const torch::Tensor& x) {
  c10::InferenceMode guard;
  const int64_t qmax = SymmetricQmax(bits);
  auto xf = x.to(torch::kFloat32);
  auto in = ToIntegers(xf, Scalar(SymmetricStep(xf, qmax), xf.device()), qmax);
  return SqnrDb(xf, in.Dequantize());
}

StatusOr<std::map<std::string, QuantConfig>> ChooseMixedNonlinear(const ViTModel& model,
                                                                  const torch::Tensor& calib_images,
                                                                  int bits) {
  if (bits < 4 || bits > 8) return InvalidArgumentError("nonlinear bits must be 4..8");
  std::map<std::string, QuantConfig> chosen;
  QS_ASSIGN_OR_RETURN(torch::Tensor input,
                      GuardTorch("mixed non-linear", [&]() -> StatusOr<torch::Tensor> {
                        return calib_images.to(model.device(), torch::kFloat32);
                      }));
  // Segment by segment, so only one segment's inputs are held at a time.
  for (int64_t segment = 0; segment < model.num_segments(); ++segment) {
    SiteInputs inputs;
    QS_ASSIGN_OR_RETURN(input, CaptureSegmentInputs(model, segment, input, &inputs, true));
    for (const Site* site : model.SegmentSites(segment)) {
      if (site->kind != SiteKind::kNonlinear) continue;
      std::vector<SiteCandidate> candidates;
      for (NonlinearMethod m : IntegerMethodsFor(NonlinearOpOf(site->name))) {
        QuantConfig c;
        c.nonlinear = {m, bits};
        candidates.push_back({c, ToString(m)});
      }
      SiteData data{inputs[site->name], torch::Tensor()};
      const auto results = EvaluateSite(model, *site, candidates, &data);
      size_t best = 0;
      for (size_t i = 0; i < results.size(); ++i) {
        if (!results[i].ok()) {
          return InternalError("site " + site->name + ": " + results[i].error);
        }
        // The input SQNR is the same for every method here, so the least D is the highest
        // output SQNR; strict > keeps the earlier method on ties.
        if (results[i].sqnr_db > results[best].sqnr_db) best = i;
      }
      chosen[site->name] = candidates[best].config;
    }
  }
  return chosen;
}

}  // namespace qs::core
