#include "core/quantize_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "common/strings.h"
#include "core/across_block.h"
#include "core/block_reconstruction.h"
#include "core/erq.h"
#include "core/gptq.h"
#include "core/liu.h"
#include "core/metrics.h"
#include "core/quantized_format.h"
#include "core/safetensors.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The weight method of `spec`, fed with the inputs this site receives.
StatusOr<QuantizedWeight> QuantizeWeight(const Site& site, const torch::Tensor& x,
                                         const torch::Tensor& x_hat, const torch::Tensor& weight,
                                         const torch::Tensor& bias, const WeightQuant& spec,
                                         WeightGridCache* grids) {
  // The grid of the float weight, when given a cache (ERQ's Aqer moves the weight first).
  std::shared_ptr<const UniformGrid> grid;
  const bool conv = IsPatchEmbedding(site);
  const bool dynamic_groups = spec.granularity == Granularity::kPerGroup &&
                              spec.group_size < weight.size(1) && !spec.gptq_static_groups;
  if (IsReconstructionMethod(spec.method)) {
    // Block reconstruction starts from its init method's weights (core/block_reconstruction.h).
    WeightQuant init = spec;
    init.method = spec.recon_init;
    return QuantizeWeight(site, x, x_hat, weight, bias, init, grids);
  }
  const bool grid_of_weight = spec.method == WeightMethod::kRtn ||
                              (spec.method == WeightMethod::kGptq && !dynamic_groups) ||
                              (spec.method == WeightMethod::kErq && conv);
  if (grids != nullptr && grid_of_weight) {
    QS_ASSIGN_OR_RETURN(grid, grids->Get(site.name, weight, spec));
  }
  switch (spec.method) {
    case WeightMethod::kRtn:
      if (grid) return QuantizeOnGrid(weight, *grid);
      return QuantizeWeightRtn(weight, spec);
    case WeightMethod::kGptq:
      return QuantizeWeightGptq(weight, InputHessian(x_hat), spec, grid.get());
    case WeightMethod::kErq: {
      LinearParams layer{weight, bias};
      // ERQ leaves the patch-embedding convolution to Wqer alone, on its convolution path.
      if (!conv) {
        const double lambda = x.dim() == 2 ? spec.erq_aqer_lambda_pooled : spec.erq_aqer_lambda;
        QS_ASSIGN_OR_RETURN(layer, ReduceActivationError(layer, x, x_hat, lambda));
        return ReduceWeightError(layer, x_hat, spec, conv);
      }
      auto gram = GuardTorch("wqer gram", [&]() -> StatusOr<torch::Tensor> {
        return AugmentedGram(x_hat);
      });
      if (!gram.ok()) return gram.status();
      return ReduceWeightErrorFromGram(layer, *gram, spec, conv, grid.get());
    }
    case WeightMethod::kLiu:
    case WeightMethod::kRepapq:
      break;  // fitted with more than the weight (QuantizeLinearSite)
    case WeightMethod::kBrecq:
    case WeightMethod::kMgrq:
      break;  // started from their init method above
  }
  return InternalError("no weight quantization for method " + std::string(ToString(spec.method)));
}

// SQNR in dB from one pass of error sums (the large activations need no float64 copies).
double Sqnr(const torch::Tensor& reference, const torch::Tensor& approx) {
  const ErrorSums s = SumErrors(reference, approx);
  if (s.noise == 0) return kInf;
  if (s.signal == 0) return -kInf;
  return 10.0 * std::log10(s.signal / s.noise);
}

void SetOutputReport(const torch::Tensor& reference, const torch::Tensor& output, SiteReport* r) {
  const ErrorSums s = SumErrors(reference, output);
  r->sqnr_db = s.noise == 0 ? kInf : s.signal == 0 ? -kInf : 10.0 * std::log10(s.signal / s.noise);
  r->mse = s.noise / static_cast<double>(std::max<int64_t>(1, s.count));
}

// The first pass: fits every site in forward order and records how each fared.
class CalibratingHandler : public SiteHandler {
 public:
  CalibratingHandler(const ViTConfig& config, const Recipe& recipe, const QuantizeOptions& options)
      : config_(config), recipe_(recipe), options_(options) {}

  torch::Tensor Linear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias) override {
    if (!status_.ok()) return at::linear(x, weight, bias);
    auto r = QuantizeLinearSite(site, recipe_.Resolve(site.name, site.kind), site.num_heads, x,
                                weight, bias, options_);
    if (r.ok() && !AccumulatorConsumer(site.name).empty()) {
      accumulator_scales_[AccumulatorConsumer(site.name)] = AccumulatorScale(r->site);
    }
    return Keep(site, std::move(r), [&] { return at::linear(x, weight, bias); });
  }

  torch::Tensor Matmul(const Site& site, const torch::Tensor& lhs,
                       const torch::Tensor& rhs) override {
    if (!status_.ok()) return at::matmul(lhs, rhs);
    auto r = QuantizeMatmulSite(site, recipe_.Resolve(site.name, site.kind), site.num_heads,
                                lhs, rhs, options_);
    if (r.ok() && !AccumulatorConsumer(site.name).empty()) {
      accumulator_scales_[AccumulatorConsumer(site.name)] = AccumulatorScale(r->site);
    }
    return Keep(site, std::move(r), [&] { return at::matmul(lhs, rhs); });
  }

  torch::Tensor Softmax(const Site& site, const torch::Tensor& x) override {
    return Nonlinear(site, x, nullptr, accumulator_scales_[site.name]);
  }
  torch::Tensor Gelu(const Site& site, const torch::Tensor& x) override {
    return Nonlinear(site, x, nullptr, accumulator_scales_[site.name]);
  }
  torch::Tensor LayerNorm(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                          const torch::Tensor& bias, double eps) override {
    const LayerNormParams ln{weight, bias, eps};
    return Nonlinear(site, x, &ln, torch::Tensor());
  }

  const Status& status() const { return status_; }
  std::map<std::string, QuantizedSite>& sites() { return sites_; }
  std::vector<SiteReport>& reports() { return reports_; }

 private:
  // Records a site's result, or the first error (then the float op keeps the pass going).
  template <typename Fallback>
  torch::Tensor Keep(const Site& site, StatusOr<SiteResult> r, Fallback fallback) {
    if (!r.ok()) {
      if (status_.ok()) status_ = r.status().WithContext("site " + site.name);
      return fallback();
    }
    sites_[site.name] = std::move(r->site);
    if (options_.site_reports) reports_.push_back(r->report);
    return r->output;
  }

  torch::Tensor Nonlinear(const Site& site, const torch::Tensor& x, const LayerNormParams* ln,
                          const torch::Tensor& accumulator_scale) {
    auto fallback = [&] { return FloatNonlinear(NonlinearOpOf(site.name), x, ln); };
    if (!status_.ok()) return fallback();
    auto r = QuantizeNonlinearSite(site, recipe_.Resolve(site.name, site.kind), x, ln,
                                   accumulator_scale, options_);
    return Keep(site, std::move(r), fallback);
  }

  const ViTConfig& config_;
  const Recipe& recipe_;
  const QuantizeOptions& options_;
  Status status_;
  std::map<std::string, torch::Tensor> accumulator_scales_;
  std::map<std::string, QuantizedSite> sites_;
  std::vector<SiteReport> reports_;
};

}  // namespace

torch::Tensor FakeQuantHandler::Linear(const Site& site, const torch::Tensor& x,
                                      const torch::Tensor& weight, const torch::Tensor& bias) {
  const QuantizedSite& q = sites_.at(site.name);
  const std::string consumer = AccumulatorConsumer(site.name);
  if (!consumer.empty() && !accumulator_scales_.count(consumer)) {
    accumulator_scales_[consumer] = AccumulatorScale(q);
  }
  if (q.reparam) {
    const auto& w = q.weight ? q.weight->dequantized : q.folded.weight;
    const auto& b = q.weight && q.weight->bias.defined() ? q.weight->bias : q.folded.bias;
    return at::linear(q.input.Apply(q.reparam->Apply(x)), w.to(weight.device()),
                      b.to(weight.device()));
  }
  if (!q.weight) return at::linear(q.input.Apply(x), weight, bias);
  const auto& b = q.weight->bias.defined() ? q.weight->bias.to(bias.device()) : bias;
  return at::linear(q.input.Apply(x), q.weight->dequantized.to(weight.device()), b);
}

torch::Tensor FakeQuantHandler::Matmul(const Site& site, const torch::Tensor& lhs,
                                      const torch::Tensor& rhs) {
  const QuantizedSite& q = sites_.at(site.name);
  const std::string consumer = AccumulatorConsumer(site.name);
  if (!consumer.empty() && !accumulator_scales_.count(consumer)) {
    accumulator_scales_[consumer] = AccumulatorScale(q);
  }
  return at::matmul(q.input.Apply(lhs), q.input_rhs.Apply(rhs));
}

torch::Tensor FakeQuantHandler::Softmax(const Site& site, const torch::Tensor& x) {
  return ApplyNonlinearSite(*sites_.at(site.name).nonlinear, x, nullptr,
                            accumulator_scales_[site.name]);
}

torch::Tensor FakeQuantHandler::Gelu(const Site& site, const torch::Tensor& x) {
  return ApplyNonlinearSite(*sites_.at(site.name).nonlinear, x, nullptr,
                            accumulator_scales_[site.name]);
}

torch::Tensor FakeQuantHandler::LayerNorm(const Site& site, const torch::Tensor& x,
                                          const torch::Tensor& weight, const torch::Tensor& bias,
                                          double eps) {
  const LayerNormParams ln{weight, bias, eps};
  return ApplyNonlinearSite(*sites_.at(site.name).nonlinear, x, &ln);
}

namespace {

bool UniformAt(const ActivationQuantizerState& q, bool per_head_too) {
  const ActivationQuant& spec = q.spec();
  return spec.quantized() && spec.quantizer == ActivationQuantizer::kUniform &&
         (spec.granularity == Granularity::kPerTensor ||
          (per_head_too && spec.granularity == Granularity::kPerHead));
}

}  // namespace

torch::Tensor AccumulatorScale(const QuantizedSite& site) {
  if (site.nonlinear) return torch::Tensor();
  if (!site.weight) {
    // A matmul, whose right operand is fitted; a linear with a float weight has none, and no
    // integer accumulator either.
    if (!UniformAt(site.input, true) || !UniformAt(site.input_rhs, true)) return torch::Tensor();
    return site.input.uniform().scale.to(torch::kFloat64) *
           site.input_rhs.uniform().scale.to(torch::kFloat64);
  }
  if (!UniformAt(site.input, false)) return torch::Tensor();
  const torch::Tensor& w = site.weight->grid.scale;
  const int64_t rows = site.weight->codes.size(0);
  if (w.numel() != 1 && w.numel() != rows) return torch::Tensor();  // per group
  return site.input.uniform().scale.to(torch::kFloat64).reshape({-1}) *
         w.to(torch::kFloat64).reshape({-1});
}

std::string AccumulatorConsumer(const std::string& site) {
  auto replaced = [&](const std::string& suffix, const std::string& by) -> std::string {
    if (site.size() < suffix.size() ||
        site.compare(site.size() - suffix.size(), suffix.size(), suffix) != 0) {
      return "";
    }
    return site.substr(0, site.size() - suffix.size()) + by;
  };
  std::string out = replaced("attn.qk_matmul", "attn.softmax");
  return out.empty() ? replaced("mlp.fc1", "mlp.act") : out;
}

StatusOr<SiteResult> QuantizeNonlinearSite(const Site& site, const QuantConfig& config,
                                           const torch::Tensor& x, const LayerNormParams* ln,
                                           const torch::Tensor& accumulator_scale,
                                           const QuantizeOptions& options) {
  QS_RETURN_IF_ERROR(ValidateQuantConfig(config, site.kind));
  return GuardTorch("quantize", [&]() -> StatusOr<SiteResult> {
    SiteResult r;
    r.site.config = config;
    r.report = {site.name, site.kind, kInf, 0, kInf, kInf, kInf};
    QS_ASSIGN_OR_RETURN(r.site.nonlinear, FitNonlinearSite(site, config.nonlinear, x, ln));
    r.output = ApplyNonlinearSite(*r.site.nonlinear, x, ln, accumulator_scale);
    if (!options.site_reports) return r;
    const NonlinearOp op = NonlinearOpOf(site.name);
    r.reference_output = FloatNonlinear(op, x, ln);
    SetOutputReport(r.reference_output, r.output, &r.report);
    if (config.nonlinear.quantized()) {
      r.report.input_sqnr_db = NonlinearInputSqnr(config.nonlinear.bits, x);
    }
    return r;
  });
}

StatusOr<SiteResult> QuantizeLinearSite(const Site& site, const QuantConfig& config,
                                        int64_t num_heads, const torch::Tensor& x,
                                        const torch::Tensor& weight, const torch::Tensor& bias,
                                        const QuantizeOptions& options) {
  QS_RETURN_IF_ERROR(ValidateQuantConfig(config, site.kind));
  QS_RETURN_IF_ERROR(CheckReparam(config, site.name, site.kind));
  return GuardTorch("quantize", [&]() -> StatusOr<SiteResult> {
    SiteResult r;
    r.site.config = config;
    r.report = {site.name, site.kind, kInf, 0, kInf, kInf, kInf};
    // What the layer multiplies: the float input and layer, or their folded forms (reparam).
    torch::Tensor x_in = x, w = weight, b = bias;
    WeightGridCache* grids = options.weight_grids;
    if (config.reparam && config.activation.quantized()) {
      QS_ASSIGN_OR_RETURN(ReparamFit fit, FitScaleReparam(x, config.activation));
      r.site.folded = fit.reparam.FoldIntoLinear(weight, bias);
      x_in = fit.reparam.Apply(x);
      w = r.site.folded.weight;
      b = r.site.folded.bias;
      r.site.input = ActivationQuantizerState::FromUniformGrid(config.activation, fit.per_tensor);
      r.site.reparam = std::move(fit.reparam);
      grids = nullptr;  // the cache holds grids of float weights, not of folded ones
    } else {
      QS_ASSIGN_OR_RETURN(r.site.input, ActivationQuantizerState::Fit(
                                            x, config.activation,
                                            ActivationLayout(config.activation, site, num_heads),
                                            OperandDomain(site, 0)));
    }
    auto x_hat = r.site.input.Apply(x_in);
    torch::Tensor w_hat = w, b_hat = b;
    if (config.weight.quantized() && config.weight.method == WeightMethod::kLiu) {
      // Liu et al. search the input's interval too, where it is a plain uniform grid (a folded
      // input keeps the grid the fold gives it).
      const ActivationQuant& a = config.activation;
      std::optional<UniformGrid> base_input;
      if (a.quantized() && a.quantizer == ActivationQuantizer::kUniform && !r.site.reparam) {
        QS_ASSIGN_OR_RETURN(
            base_input, FitUniformGrid(x_in, ActivationLayout(a, site, num_heads),
                                       RangeOptions{a.bits, a.symmetric, RangeCalibrator::kMinMax}));
      }
      QS_ASSIGN_OR_RETURN(LiuSearch liu,
                          SearchLiuIntervals(x_in, x_hat, base_input ? &*base_input : nullptr, w,
                                             b, config.weight));
      if (liu.input_grid) {
        r.site.input = ActivationQuantizerState::FromUniformGrid(a, *liu.input_grid);
        x_hat = r.site.input.Apply(x_in);
      }
      r.site.weight = std::move(liu.weight);
    } else if (config.weight.quantized() && config.weight.method == WeightMethod::kRepapq) {
      QS_ASSIGN_OR_RETURN(RepapqWeight q, QuantizeRepapqWeight(x_in, x_hat, w, b, config.weight));
      r.site.weight = std::move(q.folded);
      r.site.qprep = std::move(q.affine);
    } else if (config.weight.quantized()) {
      QS_ASSIGN_OR_RETURN(r.site.weight,
                          QuantizeWeight(site, x_in, x_hat, w, b, config.weight, grids));
    }
    if (r.site.weight) {
      w_hat = r.site.weight->dequantized;
      if (r.site.weight->bias.defined()) b_hat = r.site.weight->bias;
      if (options.site_reports) r.report.weight_sqnr_db = SqnrDb(w, w_hat);
    }
    r.output = at::linear(x_hat, w_hat, b_hat);
    if (!options.site_reports) return r;
    if (config.activation.quantized()) r.report.input_sqnr_db = Sqnr(x_in, x_hat);
    r.reference_output = at::linear(x, weight, bias);
    SetOutputReport(r.reference_output, r.output, &r.report);
    return r;
  });
}

StatusOr<SiteResult> QuantizeMatmulSite(const Site& site, const QuantConfig& config,
                                        int64_t num_heads, const torch::Tensor& lhs,
                                        const torch::Tensor& rhs, const QuantizeOptions& options) {
  QS_RETURN_IF_ERROR(ValidateQuantConfig(config, site.kind));
  QS_RETURN_IF_ERROR(CheckReparam(config, site.name, site.kind));
  return GuardTorch("quantize", [&]() -> StatusOr<SiteResult> {
    SiteResult r;
    r.site.config = config;
    r.site.config.activation = MatmulLhsSpec(config, site.name);
    r.report = {site.name, site.kind, kInf, 0, kInf, kInf, kInf};
    QS_ASSIGN_OR_RETURN(
        r.site.input,
        ActivationQuantizerState::Fit(lhs, r.site.config.activation,
                                      ActivationLayout(r.site.config.activation, site, num_heads),
                                      OperandDomain(site, 0)));
    QS_ASSIGN_OR_RETURN(
        r.site.input_rhs,
        ActivationQuantizerState::Fit(rhs, config.activation_rhs,
                                      ActivationLayout(config.activation_rhs, site, num_heads),
                                      OperandDomain(site, 1)));
    const bool liu_lhs = SearchedByLiu(r.site.config.activation);
    const bool liu_rhs = SearchedByLiu(config.activation_rhs);
    if (liu_lhs || liu_rhs) {
      // Both operands' intervals searched together on the product (ranking loss at q·kᵀ); the
      // fitted grids (min-max for liu) are where the search starts.
      QS_ASSIGN_OR_RETURN(
          LiuMatmulSearch liu,
          SearchLiuMatmulIntervals(lhs, rhs, liu_lhs ? &r.site.input.uniform() : nullptr,
                                   liu_rhs ? &r.site.input_rhs.uniform() : nullptr,
                                   liu_lhs ? torch::Tensor() : r.site.input.Apply(lhs),
                                   liu_rhs ? torch::Tensor() : r.site.input_rhs.Apply(rhs),
                                   EndsWith(site.name, ".attn.qk_matmul")));
      if (liu.lhs_grid) {
        r.site.input =
            ActivationQuantizerState::FromUniformGrid(r.site.config.activation, *liu.lhs_grid);
      }
      if (liu.rhs_grid) {
        r.site.input_rhs =
            ActivationQuantizerState::FromUniformGrid(config.activation_rhs, *liu.rhs_grid);
      }
    }
    auto lhs_hat = r.site.input.Apply(lhs), rhs_hat = r.site.input_rhs.Apply(rhs);
    r.output = at::matmul(lhs_hat, rhs_hat);
    if (!options.site_reports) return r;
    if (config.activation.quantized()) r.report.input_sqnr_db = Sqnr(lhs, lhs_hat);
    if (config.activation_rhs.quantized()) r.report.rhs_sqnr_db = Sqnr(rhs, rhs_hat);
    r.reference_output = at::matmul(lhs, rhs);
    SetOutputReport(r.reference_output, r.output, &r.report);
    return r;
  });
}

GroupLayout ActivationLayout(const ActivationQuant& spec, const Site& site, int64_t num_heads) {
  GroupLayout layout;
  layout.granularity = spec.granularity;
  layout.channel_axis = -1;
  // Linear inputs are [..., heads × head_dim]; matmul operands are [B, heads, N, K].
  layout.head_axis = site.kind == SiteKind::kLinear ? -1 : 1;
  layout.num_heads = num_heads;
  return layout;
}

ValueDomain OperandDomain(const Site& site, int operand) {
  return OperandDomain(site.name, site.kind, operand);
}

SiteInfo DescribeSite(const ViTModel& model, const Site& site) {
  SiteInfo info{site.name, site.kind, 0, site.macs, site.num_heads, 0};
  if (site.kind == SiteKind::kLinear) {
    const torch::Tensor& weight = model.tensor(site.weight);
    info.weight_params = weight.numel();
    // The patch embedding's weight is a convolution's [out, C, p, p]; it sees C·p·p columns.
    info.input_width = weight.numel() / std::max<int64_t>(1, weight.size(0));
  }
  return info;
}

namespace {

// What the stage-by-stage pass must provide: whether some site of `model` is quantized by
// repapq with training steps to take, or by a block-reconstruction method; and whether MGRQ's
// global supervision needs the float logits.
struct StageTraining {
  bool any = false;
  bool float_logits = false;
};

StageTraining StageTrainingOf(const ViTModel& model, const Recipe& recipe) {
  StageTraining t;
  for (const Site& site : model.sites()) {
    if (site.kind != SiteKind::kLinear) continue;
    const WeightQuant& w = recipe.Resolve(site.name, site.kind).weight;
    if (!w.quantized()) continue;
    if ((w.method == WeightMethod::kRepapq && w.repapq_iterations > 0) ||
        IsReconstructionMethod(w.method)) {
      t.any = true;
    }
    if (w.method == WeightMethod::kMgrq && w.mgrq_global_weight > 0) {
      t.float_logits = true;
    }
  }
  return t;
}

}  // namespace

StatusOr<QuantizedModel> QuantizeModel(const ViTModel& model, const Recipe& recipe,
                                       const torch::Tensor& calib_images,
                                       const QuantizeOptions& options) {
  const auto kinds = model.SiteKinds();
  for (const auto& [name, config] : recipe.sites) {
    if (!kinds.count(name)) {
      return InvalidArgumentError("recipe names site '" + name + "', which the model lacks");
    }
  }
  if (calib_images.dim() != 4 || calib_images.size(0) == 0) {
    return InvalidArgumentError("calibration images must be a non-empty [N, C, H, W] batch");
  }
  for (const Site& site : model.sites()) {
    const QuantConfig config = recipe.Resolve(site.name, site.kind);
    QS_RETURN_IF_ERROR(CheckConfigSuitsSite(config, DescribeSite(model, site)));
    if (config.reparam && site.kind == SiteKind::kLinear &&
        !model.tensors().count(site.weight.substr(0, site.weight.size() - 6) + "bias")) {
      return InvalidArgumentError("site " + site.name +
                                  ": reparam moves a shift into the bias, and this layer has "
                                  "none (qkv_bias false)");
    }
  }
  // Shape errors surface through Logits' own check on a zero-cost call.
  QS_RETURN_IF_ERROR(model.Logits(calib_images.narrow(0, 0, 0)).status());
  return GuardTorch("quantize", [&]() -> StatusOr<QuantizedModel> {
    CalibratingHandler handler(model.config(), recipe, options);
    auto images = calib_images.to(model.device(), torch::kFloat32);
    const StageTraining training = StageTrainingOf(model, recipe);
    std::vector<StageReconstruction> reconstructions;
    if (!training.any) {
      c10::InferenceMode guard;
      model.Forward(images, &handler);
      QS_RETURN_IF_ERROR(handler.status());
    } else {
      // Stage by stage: calibrate the stage's sites on the quantized model's input, then train
      // its repapq sites (across-block calibration) or its brecq and mgrq sites (block
      // reconstruction) against the float model's stage output (no inference mode: training
      // needs autograd-capable tensors).
      torch::NoGradGuard no_grad;
      torch::Tensor x = images, x_float = images, float_logits;
      if (training.float_logits) float_logits = model.Forward(images);
      for (const auto& stage : StageRanges(model)) {
        const torch::Tensor stage_input = x;
        x = ForwardStage(model, stage, x, &handler);
        QS_RETURN_IF_ERROR(handler.status());
        const torch::Tensor target = ForwardStage(model, stage, x_float);
        bool trained = false;
        if (StageHasRepapq(model, stage, handler.sites())) {
          QS_RETURN_IF_ERROR(
              CalibrateAcrossBlocks(model, stage, stage_input, target, &handler.sites()).status());
          trained = true;
        }
        if (StageHasReconstruction(model, stage, handler.sites())) {
          QS_ASSIGN_OR_RETURN(
              StageReconstruction r,
              ReconstructStage(model, stage, {stage_input, target, x_float, float_logits},
                               &handler.sites()));
          if (options.on_reconstructed) options.on_reconstructed(r);
          reconstructions.push_back(std::move(r));
          trained = true;
        }
        if (trained) {
          FakeQuantHandler refined(handler.sites());
          x = ForwardStage(model, stage, stage_input, &refined);
        }
        x_float = target;
      }
    }
    QuantizedModel q;
    q.float_model_ = model;
    q.recipe_ = recipe;
    q.sites_ = std::move(handler.sites());
    q.reports_ = std::move(handler.reports());
    q.reconstructions_ = std::move(reconstructions);
    return q;
  });
}

StatusOr<torch::Tensor> QuantizedModel::Logits(const torch::Tensor& images,
                                               int64_t batch_size) const {
  FakeQuantHandler handler(sites_);
  return float_model_.Logits(images, &handler, batch_size);
}

std::map<std::string, torch::Tensor> QuantizedModel::DeployedTensors() const {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, t] : float_model_.tensors()) out[name] = t;
  auto replace = [&](const std::string& name, const torch::Tensor& t) {
    out[name] = t.to(torch::kCPU, torch::kFloat32).contiguous();
  };
  for (const auto& site : float_model_.sites()) {
    auto it = sites_.find(site.name);
    if (site.kind != SiteKind::kLinear || it == sites_.end()) continue;
    const QuantizedSite& q = it->second;
    const std::string bias_name = site.weight.substr(0, site.weight.size() - 6) + "bias";
    if (q.reparam) {
      // The folded LayerNorm affine, and the folded layer where the method left it float.
      const std::string norm = ReparamNorm(site.name);
      auto [gamma, beta] = q.reparam->FoldIntoLayerNorm(float_model_.tensor(norm + ".weight"),
                                                        float_model_.tensor(norm + ".bias"));
      replace(norm + ".weight", gamma);
      replace(norm + ".bias", beta);
      if (!q.weight) replace(site.weight, q.folded.weight);
      replace(bias_name, q.folded.bias);
    }
    if (!q.weight) continue;
    replace(site.weight,
            q.weight->dequantized.reshape(float_model_.tensor(site.weight).sizes()));
    // The method moved the bias (ERQ): the float tensor under its timm name is the new one.
    if (q.weight->bias.defined()) replace(bias_name, q.weight->bias);
  }
  return out;
}

Status QuantizedModel::WriteWeights(const std::string& path) const {
  std::map<std::string, torch::Tensor> out = DeployedTensors();
  nlohmann::json layout = nlohmann::json::object();
  for (const auto& site : float_model_.sites()) {
    auto it = sites_.find(site.name);
    if (site.kind != SiteKind::kLinear || it == sites_.end() || !it->second.weight) continue;
    const QuantizedSite& q = it->second;
    const WeightQuant& spec = q.config.weight;
    PackedWeightInput input{site.name, site.weight,
                            float_model_.tensor(site.weight).sizes().vec(), &*q.weight,
                            spec.granularity == Granularity::kPerGroup ? spec.group_size : 0};
    out.erase(site.weight);
    QS_RETURN_IF_ERROR(AddPackedWeight(input, &out, &layout));
  }
  const auto recipe_json = RecipeToJson(recipe_, float_model_.SiteKinds());
  return WriteSafetensors(path, out,
                          {{"format", kQuantizedFormat},
                           {"layout", layout.dump()},
                           {"recipe", recipe_json.dump()}});
}

}  // namespace qs::core
