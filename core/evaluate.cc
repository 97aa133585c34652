#include "core/evaluate.h"

#include <chrono>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "core/erq.h"
#include "core/gptq.h"
#include "core/metrics.h"
#include "core/quantize_model.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

class Recorder : public SiteHandler {
 public:
  torch::Tensor Linear(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                       const torch::Tensor& b) override {
    inputs_[s.name] = {x};
    return SiteHandler::Linear(s, x, w, b);
  }
  torch::Tensor Matmul(const Site& s, const torch::Tensor& a, const torch::Tensor& b) override {
    inputs_[s.name] = {a, b};
    return SiteHandler::Matmul(s, a, b);
  }
  SiteInputs& inputs() { return inputs_; }

 private:
  SiteInputs inputs_;
};

// The linear site's float weight ([out, in], the patch conv flattened) and bias (may be undefined).
std::pair<torch::Tensor, torch::Tensor> LinearParamsOf(const ViTModel& model, const Site& site) {
  const std::string bias_name = site.weight.substr(0, site.weight.size() - 6) + "bias";
  auto bias = model.tensors().count(bias_name) ? model.tensor(bias_name) : torch::Tensor();
  const auto& w = model.tensor(site.weight);
  return {w.reshape({w.size(0), -1}), bias};
}

// Weight-only evaluation from the augmented Gram matrix G = X̃ᵀX̃, X̃ = [X, 1].
Status EvaluateFromGram(const Site& site, const QuantConfig& config, const torch::Tensor& weight,
                        const torch::Tensor& bias, const torch::Tensor& x,
                        const torch::Tensor& augmented_gram, Evaluation* e) {
  QS_RETURN_IF_ERROR(ValidateQuantConfig(config, site.kind));
  const int64_t m = weight.size(0), n = weight.size(1);
  auto g = augmented_gram.to(torch::kFloat64);
  if (g.dim() != 2 || g.size(0) != n + 1 || g.size(1) != n + 1) {
    return InvalidArgumentError("the Gram matrix does not match the site's input width");
  }
  const double tokens = g[n][n].item<double>();
  QuantizedWeight q;
  const WeightQuant& spec = config.weight;
  if (!spec.quantized()) {
    q.dequantized = weight;
  } else if (spec.method == WeightMethod::kRtn) {
    QS_ASSIGN_OR_RETURN(q, QuantizeWeightRtn(weight, spec));
  } else if (spec.method == WeightMethod::kGptq) {
    auto h = g.narrow(0, 0, n).narrow(1, 0, n) * (2.0 / std::max(1.0, tokens));
    QS_ASSIGN_OR_RETURN(q, QuantizeWeightGptq(weight, h, spec));
  } else {
    // With float activations Aqer has nothing to absorb (X̄ = X), so ERQ is Wqer alone.
    QS_ASSIGN_OR_RETURN(q, ReduceWeightErrorFromGram(LinearParams{weight, bias}, g, spec,
                                                     site.name == "patch_embed.proj"));
  }
  auto zeros = torch::zeros({m, 1}, torch::kFloat64);
  auto b = bias.defined() ? bias.to(torch::kFloat64).unsqueeze(1) : zeros;
  auto b_hat = q.bias.defined() ? q.bias.to(torch::kFloat64).unsqueeze(1) : b;
  auto w_t = at::cat({weight.to(torch::kFloat64), b}, 1);
  auto w_hat = at::cat({q.dequantized.to(torch::kFloat64), b_hat}, 1);
  auto err = w_t - w_hat;
  auto quad = [&](const torch::Tensor& a, const torch::Tensor& c) {
    return (a.mm(g) * c).sum().item<double>();
  };
  const double signal = quad(w_t, w_t), noise = std::max(0.0, quad(err, err));
  const double cross = quad(w_t, w_hat), q2 = quad(w_hat, w_hat);
  if (!(signal > 0)) return FailedPreconditionError("the site's float output is zero");
  e->sqnr_db = noise == 0 ? std::numeric_limits<double>::infinity()
                          : 10.0 * std::log10(signal / noise);
  e->noise_ratio = noise / signal;
  e->mse = noise / (tokens * static_cast<double>(m));
  e->cosine = q2 > 0 ? cross / std::sqrt(signal * q2) : 0;
  e->weight_sqnr_db = spec.quantized() ? SqnrDb(weight, q.dequantized)
                                       : std::numeric_limits<double>::infinity();
  // MAE is no quadratic form: one pass of X̃ Eᵀ over the inputs.
  auto rows = x.reshape({-1, n}).to(torch::kFloat64);
  e->mae = (rows.mm(err.narrow(1, 0, n).t()) + err.select(1, n)).abs().mean().item<double>();
  return OkStatus();
}

}  // namespace

StatusOr<SiteInputs> CaptureSiteInputs(const ViTModel& model, const torch::Tensor& images) {
  QS_RETURN_IF_ERROR(model.Logits(images.narrow(0, 0, 0)).status());
  return GuardTorch("capture site inputs", [&]() -> StatusOr<SiteInputs> {
    c10::InferenceMode guard;
    Recorder recorder;
    model.Forward(images.to(model.tensor("head.weight").device(), torch::kFloat32), &recorder);
    return std::move(recorder.inputs());
  });
}

std::vector<SiteInfo> DescribeSites(const ViTModel& model) {
  const ViTConfig& c = model.config();
  const int64_t tokens = c.num_patches() + (model.tensors().count("cls_token") ? 1 : 0);
  std::vector<SiteInfo> out;
  for (const auto& site : model.sites()) {
    SiteInfo info{site.name, site.kind, 0, 0};
    if (site.kind == SiteKind::kLinear) {
      const auto& w = model.tensor(site.weight);
      info.weight_params = w.numel();
      const int64_t rows = site.name == "patch_embed.proj" ? c.num_patches()
                           : site.name == "head"           ? 1
                                                           : tokens;
      info.macs = rows * w.numel();
    } else {
      // Both attention matmuls: heads × tokens × tokens × head_dim.
      info.macs = c.num_heads * tokens * tokens * c.head_dim();
    }
    out.push_back(info);
  }
  return out;
}

Evaluation EvaluateCandidate(const ViTModel& model, const Site& site, const QuantConfig& config,
                             const std::vector<torch::Tensor>& inputs, const std::string& key,
                             const torch::Tensor& augmented_gram) {
  const auto start = std::chrono::steady_clock::now();
  Evaluation e;
  e.key = key;
  e.site = site.name;
  if (site.kind == SiteKind::kLinear && !config.activation.quantized() &&
      augmented_gram.defined() && inputs.size() == 1) {
    c10::InferenceMode guard;
    auto [weight, bias] = LinearParamsOf(model, site);
    Status s = GuardTorch("gram evaluation", [&]() -> Status {
      return EvaluateFromGram(site, config, weight, bias, inputs[0], augmented_gram, &e);
    });
    if (!s.ok()) e.error = s.ToString();
    e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return e;
  }
  const size_t needed = site.kind == SiteKind::kLinear ? 1 : 2;
  StatusOr<SiteResult> r = InternalError("missing inputs");
  if (inputs.size() != needed) {
    r = InvalidArgumentError("site " + site.name + " has no captured inputs");
  } else {
    c10::InferenceMode guard;
    if (site.kind == SiteKind::kLinear) {
      auto [weight, bias] = LinearParamsOf(model, site);
      r = QuantizeLinearSite(site, config, model.config().num_heads, inputs[0], weight, bias);
    } else {
      r = QuantizeMatmulSite(site, config, model.config().num_heads, inputs[0], inputs[1]);
    }
  }
  if (!r.ok()) {
    e.error = r.status().ToString();
  } else {
    auto result = GuardTorch("metrics", [&]() -> Status {
      if (!torch::isfinite(r->output).all().item<bool>()) {
        return FailedPreconditionError("quantized output is not finite");
      }
      if (r->report.sqnr_db == -std::numeric_limits<double>::infinity()) {
        return FailedPreconditionError("the site's float output is zero, so no SQNR exists");
      }
      e.sqnr_db = r->report.sqnr_db;
      e.mse = r->report.mse;
      e.mae = Mae(r->reference_output, r->output);
      e.cosine = Cosine(r->reference_output, r->output);
      e.noise_ratio = std::isinf(e.sqnr_db) ? 0.0 : std::pow(10.0, -e.sqnr_db / 10.0);
      e.weight_sqnr_db = r->report.weight_sqnr_db;
      return OkStatus();
    });
    if (!result.ok()) e.error = result.ToString();
  }
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return e;
}

}  // namespace qs::core
