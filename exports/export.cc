#include "exports/export.h"

#include <algorithm>

#include "common/enum_names.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "core/quantized_format.h"
#include "core/safetensors.h"
#include "core/torch_status.h"
#include "exports/onnx_qdq.h"

namespace qs::exports {
namespace {

using nlohmann::json;

constexpr std::pair<const char*, ExportFormat> kFormats[] = {
    {"onnx-qdq", ExportFormat::kOnnxQdq},
    {"safetensors-fakequant", ExportFormat::kSafetensorsFakeQuant},
    {"safetensors-packed", ExportFormat::kSafetensorsPacked},
};

json FloatList(const torch::Tensor& t) {
  auto v = t.to(torch::kCPU, torch::kFloat64).contiguous().reshape({-1});
  const double* p = v.data_ptr<double>();
  return json(std::vector<double>(p, p + v.numel()));
}

json Shape(const torch::Tensor& t) { return json(t.sizes().vec()); }

json UniformEncoding(const core::UniformGrid& g) {
  return {{"bits", g.bits},
          {"symmetric", g.symmetric},
          {"qmin", g.qmin},
          {"qmax", g.qmax},
          {"scale", FloatList(g.scale)},
          {"zero_point", FloatList(g.zero_point)},
          {"shape", Shape(g.scale)}};
}

json ActivationEncoding(const core::ActivationQuantizerState& a) {
  const ActivationQuant& spec = a.spec();
  json e = {{"quantizer", ToString(spec.quantizer)}, {"bits", spec.bits}};
  switch (spec.quantizer) {
    case ActivationQuantizer::kUniform:
      e.update(UniformEncoding(a.uniform()));
      e["granularity"] = ToString(spec.granularity);
      break;
    case ActivationQuantizer::kLog2:
    case ActivationQuantizer::kLogSqrt2:
      e["scale"] = a.log_scale();
      break;
    case ActivationQuantizer::kTwinUniform:
      e["small_step"] = a.twin_small_step();
      e["large_step"] = a.twin_large_step();
      e["split"] = a.twin_split();
      break;
  }
  return e;
}

}  // namespace

StatusOr<ExportFormat> ParseExportFormat(const std::string& name) {
  return ParseEnum(name, "export format", kFormats);
}

const char* ToString(ExportFormat format) { return EnumName(format, kFormats); }

StatusOr<std::vector<ExportFormat>> ParseExportFormats(const std::string& list) {
  std::vector<ExportFormat> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = std::min(list.find(',', start), list.size());
    QS_ASSIGN_OR_RETURN(ExportFormat f, ParseExportFormat(list.substr(start, comma - start)));
    if (std::find(out.begin(), out.end(), f) != out.end()) {
      return InvalidArgumentError(std::string("export format ") + ToString(f) + " given twice");
    }
    out.push_back(f);
    start = comma + 1;
  }
  return out;
}

Status CheckExportable(const core::ViTConfig& config, const std::vector<ExportFormat>& formats) {
  const bool onnx =
      std::find(formats.begin(), formats.end(), ExportFormat::kOnnxQdq) != formats.end();
  if (onnx && (config.is_swin() || config.is_repvgg())) {
    return UnimplementedError("onnx-qdq exports ViT and DeiT models; this one is " +
                              config.architecture +
                              " (safetensors-fakequant and safetensors-packed take it)");
  }
  return OkStatus();
}

json ActivationEncodings(const core::QuantizedModel& quantized) {
  const core::ViTModel& model = quantized.float_model();
  json activations = json::object(), params = json::object(), nonlinear = json::object();
  for (const core::Site& site : model.sites()) {
    const core::QuantizedSite& q = quantized.sites().at(site.name);
    switch (site.kind) {
      case SiteKind::kLinear: {
        if (q.config.activation.quantized()) {
          activations[site.name] = {{"input", ActivationEncoding(q.input)}};
        }
        if (q.weight) {
          // Scales per output row and group ([out, groups]) of the weight viewed as [out, in].
          const WeightQuant& spec = q.config.weight;
          const core::UniformGrid grid = core::CompactWeightGrid(
              q.weight->grid, q.weight->codes.size(0),
              spec.granularity == Granularity::kPerGroup ? spec.group_size : 0);
          json w = UniformEncoding(grid);
          w["granularity"] = ToString(spec.granularity);
          w["method"] = ToString(spec.method);
          if (spec.granularity == Granularity::kPerGroup) w["group_size"] = spec.group_size;
          params[site.weight] = w;
        }
        break;
      }
      case SiteKind::kMatmul: {
        json e = json::object();
        if (q.config.activation.quantized()) e["lhs"] = ActivationEncoding(q.input);
        if (q.config.activation_rhs.quantized()) e["rhs"] = ActivationEncoding(q.input_rhs);
        if (!e.empty()) activations[site.name] = e;
        break;
      }
      case SiteKind::kNonlinear:
        if (q.config.nonlinear.quantized()) {
          nonlinear[site.name] = {{"method", ToString(q.config.nonlinear.method)},
                                  {"bits", q.config.nonlinear.bits}};
        }
        break;
      default:
        break;
    }
  }
  return {{"format", "qsearch.encodings.v1"},
          {"model_digest", model.Digest()},
          {"operands",
           {{"linear input", "x of x·Wᵀ + b, before the layer"},
            {"qk_matmul lhs", "q after the 1/sqrt(head_dim) scaling, [B, H, N, head_dim]"},
            {"qk_matmul rhs", "k transposed, [B, H, head_dim, N]"},
            {"av_matmul lhs", "the softmax output, [B, H, N, N]"},
            {"av_matmul rhs", "v, [B, H, N, head_dim]"},
            {"uniform",
             "x̂ = (clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point) · "
             "scale, scale and zero_point reshaped to `shape` (broadcast from the "
             "right); round half to even"}}},
          {"activation_encodings", activations},
          {"param_encodings", params},
          {"nonlinear", nonlinear}};
}

StatusOr<ExportResult> Export(const core::QuantizedModel& quantized, ExportFormat format,
                              const ExportOptions& options) {
  QS_RETURN_IF_ERROR(MakeDirectories(options.out_dir));
  const std::string dir = options.out_dir + "/";
  ExportResult result;
  result.summary = {{"format", ToString(format)}};
  switch (format) {
    case ExportFormat::kOnnxQdq: {
      QS_ASSIGN_OR_RETURN(OnnxExportSummary s, WriteQdqModel(quantized, dir + "model.onnx"));
      result.files = {"model.onnx"};
      result.summary["weight_qdq"] = s.weight_qdq;
      result.summary["activation_qdq"] = s.activation_qdq;
      result.summary["float_nonlinear_sites"] = s.float_nonlinear_sites;
      result.summary["float_activation_sites"] = s.float_activation_sites;
      return result;
    }
    case ExportFormat::kSafetensorsFakeQuant: {
      const json recipe = RecipeToJson(quantized.recipe(), quantized.float_model().SiteKinds());
      std::map<std::string, torch::Tensor> tensors = quantized.DeployedTensors();
      QS_RETURN_IF_ERROR(
          core::WriteSafetensors(dir + "model.safetensors", tensors, {{"format", "pt"}}));
      QS_RETURN_IF_ERROR(WriteFileAtomically(dir + "encodings.json",
                                             ActivationEncodings(quantized).dump(1) + "\n"));
      const json config = {
          {"format", "qsearch.quant_config.v1"},
          {"model_digest", quantized.float_model().Digest()},
          {"model_config", core::ToJson(quantized.float_model().config())},
          {"recipe_sha256", Sha256Hex(recipe.dump())},
          {"recipe", recipe},
          {"fitted_on", options.provenance},
          {"files", {{"weights", "model.safetensors"}, {"encodings", "encodings.json"}}}};
      QS_RETURN_IF_ERROR(WriteFileAtomically(dir + "quant_config.json", config.dump(1) + "\n"));
      result.files = {"model.safetensors", "encodings.json", "quant_config.json"};
      result.summary["tensors"] = tensors.size();
      return result;
    }
    case ExportFormat::kSafetensorsPacked:
      QS_RETURN_IF_ERROR(quantized.WriteWeights(dir + "weights.safetensors"));
      result.files = {"weights.safetensors"};
      return result;
  }
  return InternalError("unknown export format");
}

}  // namespace qs::exports
