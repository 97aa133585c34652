#include "core/evaluate.h"

#include <chrono>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

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
                             const std::vector<torch::Tensor>& inputs, const std::string& key) {
  const auto start = std::chrono::steady_clock::now();
  Evaluation e;
  e.key = key;
  e.site = site.name;
  const size_t needed = site.kind == SiteKind::kLinear ? 1 : 2;
  StatusOr<SiteResult> r = InternalError("missing inputs");
  if (inputs.size() != needed) {
    r = InvalidArgumentError("site " + site.name + " has no captured inputs");
  } else {
    c10::InferenceMode guard;
    if (site.kind == SiteKind::kLinear) {
      const std::string bias_name = site.weight.substr(0, site.weight.size() - 6) + "bias";
      auto bias = model.tensors().count(bias_name) ? model.tensor(bias_name) : torch::Tensor();
      auto weight = model.tensor(site.weight).reshape({model.tensor(site.weight).size(0), -1});
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
