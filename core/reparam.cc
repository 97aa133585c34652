#include "core/reparam.h"

#include "common/strings.h"
#include "core/torch_status.h"

namespace qs::core {

torch::Tensor ScaleReparam::Apply(const torch::Tensor& x) const {
  return x / ratio.to(x.device()) - shift.to(x.device());
}

LinearFold ScaleReparam::FoldIntoLinear(const torch::Tensor& weight,
                                        const torch::Tensor& bias) const {
  LinearFold f;
  f.weight = weight * ratio.to(weight.device()).unsqueeze(0);
  // In float64: the shift of an outlier channel can be large against the bias it joins.
  auto moved = at::matmul(f.weight.to(torch::kFloat64), shift.to(weight.device(), torch::kFloat64));
  f.bias = (bias.defined() ? bias.to(torch::kFloat64) + moved : moved).to(weight.scalar_type());
  return f;
}

std::pair<torch::Tensor, torch::Tensor> ScaleReparam::FoldIntoLayerNorm(
    const torch::Tensor& gamma, const torch::Tensor& beta) const {
  auto r = ratio.to(gamma.device());
  return {gamma / r, beta / r - shift.to(beta.device())};
}

StatusOr<ReparamFit> FitScaleReparam(const torch::Tensor& x, const ActivationQuant& spec) {
  if (!spec.quantized() || spec.quantizer != ActivationQuantizer::kUniform) {
    return InvalidArgumentError("reparam needs a quantized uniform activation");
  }
  if (x.dim() < 1 || x.size(-1) < 1) return InvalidArgumentError("reparam needs channels");
  return GuardTorch("reparam", [&]() -> StatusOr<ReparamFit> {
    ReparamFit fit;
    GroupLayout per_channel{Granularity::kPerChannel, /*channel_axis=*/-1};
    QS_ASSIGN_OR_RETURN(fit.per_channel,
                        FitUniformGrid(x.detach().to(torch::kFloat32), per_channel,
                                       RangeOptions{spec.bits, spec.symmetric, spec.calibrator,
                                                    spec.percentile}));
    fit.per_channel.scale = fit.per_channel.scale.flatten();
    fit.per_channel.zero_point = fit.per_channel.zero_point.flatten();
    const auto& delta = fit.per_channel.scale;
    const auto& zero = fit.per_channel.zero_point;
    auto delta_mean = delta.mean();
    auto zero_mean = zero.mean().round();
    fit.reparam.ratio = delta / delta_mean;
    fit.reparam.shift = delta_mean * (zero_mean - zero);
    fit.per_tensor = fit.per_channel;
    fit.per_tensor.scale = delta_mean;
    fit.per_tensor.zero_point = zero_mean;
    return fit;
  });
}

ActivationQuant MatmulLhsSpec(const QuantConfig& config, const std::string& site_name) {
  ActivationQuant spec = config.activation;
  if (config.reparam && spec.quantized() && spec.quantizer == ActivationQuantizer::kUniform &&
      ReparamApplies(site_name, SiteKind::kMatmul)) {
    spec.quantizer = ActivationQuantizer::kLogSqrt2;
  }
  return spec;
}

std::string ReparamNorm(const std::string& site_name) {
  for (const auto& [site, norm] : {std::pair<std::string, std::string>{"attn.qkv", "norm1"},
                                   {"mlp.fc1", "norm2"}}) {
    if (EndsWith(site_name, "." + site)) {
      return site_name.substr(0, site_name.size() - site.size()) + norm;
    }
  }
  return "";
}

}  // namespace qs::core
