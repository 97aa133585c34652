#include "common/quant_config.h"

#include <cmath>

#include <cctype>

#include "common/enum_names.h"
#include "common/json_fields.h"
#include "common/strings.h"

namespace qs {
namespace {

using nlohmann::json;

constexpr std::pair<const char*, Granularity> kGranularities[] = {
    {"per_tensor", Granularity::kPerTensor},
    {"per_channel", Granularity::kPerChannel},
    {"per_group", Granularity::kPerGroup},
    {"per_head", Granularity::kPerHead},
};
constexpr std::pair<const char*, RangeCalibrator> kCalibrators[] = {
    {"minmax", RangeCalibrator::kMinMax},
    {"percentile", RangeCalibrator::kPercentile},
    {"omse", RangeCalibrator::kOmse},
    {"mae", RangeCalibrator::kMae},
    {"liu", RangeCalibrator::kLiu},
};
constexpr std::pair<const char*, ActivationQuantizer> kQuantizers[] = {
    {"uniform", ActivationQuantizer::kUniform},
    {"log2", ActivationQuantizer::kLog2},
    {"log_sqrt2", ActivationQuantizer::kLogSqrt2},
    {"twin_uniform", ActivationQuantizer::kTwinUniform},
};
constexpr std::pair<const char*, WeightMethod> kWeightMethods[] = {
    {"rtn", WeightMethod::kRtn},
    {"gptq", WeightMethod::kGptq},
    {"erq", WeightMethod::kErq},
    {"liu", WeightMethod::kLiu},
    {"repapq", WeightMethod::kRepapq},
    {"brecq", WeightMethod::kBrecq},
    {"mgrq", WeightMethod::kMgrq},
};

constexpr std::pair<const char*, NonlinearMethod> kNonlinearMethods[] = {
    {"float", NonlinearMethod::kFloat},
    {"ibert", NonlinearMethod::kIbert},
    {"fqvit", NonlinearMethod::kFqvit},
    {"ivit", NonlinearMethod::kIvit},
};
constexpr std::pair<const char*, NonlinearOp> kNonlinearOps[] = {
    {"softmax", NonlinearOp::kSoftmax},
    {"gelu", NonlinearOp::kGelu},
    {"layernorm", NonlinearOp::kLayerNorm},
};

json NonlinearToJson(const NonlinearQuant& n) {
  if (!n.quantized()) return json{{"method", "float"}};
  return json{{"method", ToString(n.method)}, {"bits", n.bits}};
}

StatusOr<NonlinearQuant> NonlinearFromJson(const json& j) {
  QS_RETURN_IF_ERROR(CheckKeys(j, {"method", "bits"}, "nonlinear"));
  NonlinearQuant n;
  QS_RETURN_IF_ERROR(ReadEnumField(j, "method", ParseNonlinearMethod, &n.method));
  QS_RETURN_IF_ERROR(ReadField(j, "bits", &n.bits));
  return n;
}

json WeightToJson(const WeightQuant& w) {
  if (!w.quantized()) return json{{"bits", 0}};
  json j{{"method", ToString(w.method)},
         {"bits", w.bits},
         {"granularity", ToString(w.granularity)},
         {"calibrator", ToString(w.calibrator)},
         {"symmetric", w.symmetric}};
  if (w.granularity == Granularity::kPerGroup) j["group_size"] = w.group_size;
  if (w.calibrator == RangeCalibrator::kPercentile) j["percentile"] = w.percentile;
  if (w.method == WeightMethod::kGptq) {
    j["gptq_damp"] = w.gptq_damp;
    j["gptq_block_size"] = w.gptq_block_size;
    j["gptq_act_order"] = w.gptq_act_order;
    j["gptq_static_groups"] = w.gptq_static_groups;
  }
  if (w.method == WeightMethod::kErq) {
    j["erq_aqer_lambda"] = w.erq_aqer_lambda;
    j["erq_aqer_lambda_pooled"] = w.erq_aqer_lambda_pooled;
    j["erq_wqer_lambda"] = w.erq_wqer_lambda;
    j["erq_wqer_iterations"] = w.erq_wqer_iterations;
  }
  if (w.method == WeightMethod::kLiu) {
    j["liu_alpha"] = w.liu_alpha;
    j["liu_beta"] = w.liu_beta;
    j["liu_grid"] = w.liu_grid;
    j["liu_rounds"] = w.liu_rounds;
    j["liu_bias_correction"] = w.liu_bias_correction;
  }
  if (w.method == WeightMethod::kRepapq) {
    j["repapq_iterations"] = w.repapq_iterations;
    j["repapq_batch"] = w.repapq_batch;
    j["repapq_lr"] = w.repapq_lr;
  }
  if (IsReconstructionMethod(w.method)) {
    j["recon_iterations"] = w.recon_iterations;
    j["recon_batch"] = w.recon_batch;
    j["recon_lr"] = w.recon_lr;
    j["recon_act_lr"] = w.recon_act_lr;
    j["recon_round_weight"] = w.recon_round_weight;
    j["recon_warmup"] = w.recon_warmup;
    j["recon_beta_start"] = w.recon_beta_start;
    j["recon_beta_end"] = w.recon_beta_end;
    j["recon_seed"] = w.recon_seed;
    j["recon_init"] = ToString(w.recon_init);
  }
  if (w.method == WeightMethod::kMgrq) {
    j["mgrq_block_weight"] = w.mgrq_block_weight;
    j["mgrq_global_weight"] = w.mgrq_global_weight;
    j["mgrq_local_weight"] = w.mgrq_local_weight;
    j["mgrq_global_distance"] = w.mgrq_global_distance;
    j["mgrq_local_distance"] = w.mgrq_local_distance;
  }
  return j;
}

json ActivationToJson(const ActivationQuant& a) {
  if (!a.quantized()) return json{{"bits", 0}};
  json j{{"bits", a.bits},
         {"quantizer", ToString(a.quantizer)},
         {"granularity", ToString(a.granularity)},
         {"calibrator", ToString(a.calibrator)},
         {"symmetric", a.symmetric}};
  if (a.calibrator == RangeCalibrator::kPercentile) j["percentile"] = a.percentile;
  return j;
}

StatusOr<WeightQuant> WeightFromJson(const json& j) {
  QS_RETURN_IF_ERROR(CheckKeys(
      j, {"method", "bits", "granularity", "group_size", "calibrator", "symmetric", "percentile",
          "gptq_damp", "gptq_block_size", "gptq_act_order", "gptq_static_groups",
          "erq_aqer_lambda", "erq_aqer_lambda_pooled", "erq_wqer_lambda", "erq_wqer_iterations",
          "liu_alpha", "liu_beta", "liu_grid", "liu_rounds", "liu_bias_correction",
          "repapq_iterations", "repapq_batch", "repapq_lr", "recon_iterations", "recon_batch",
          "recon_lr", "recon_act_lr", "recon_round_weight", "recon_warmup", "recon_beta_start",
          "recon_beta_end", "recon_seed", "recon_init", "mgrq_block_weight", "mgrq_global_weight",
          "mgrq_local_weight", "mgrq_global_distance", "mgrq_local_distance"},
      "weight"));
  WeightQuant w;
  QS_RETURN_IF_ERROR(ReadEnumField(j, "method", ParseWeightMethod, &w.method));
  QS_RETURN_IF_ERROR(ReadField(j, "bits", &w.bits));
  QS_RETURN_IF_ERROR(ReadEnumField(j, "granularity", ParseGranularity, &w.granularity));
  QS_RETURN_IF_ERROR(ReadField(j, "group_size", &w.group_size));
  QS_RETURN_IF_ERROR(ReadEnumField(j, "calibrator", ParseRangeCalibrator, &w.calibrator));
  QS_RETURN_IF_ERROR(ReadField(j, "symmetric", &w.symmetric));
  QS_RETURN_IF_ERROR(ReadField(j, "percentile", &w.percentile));
  QS_RETURN_IF_ERROR(ReadField(j, "gptq_damp", &w.gptq_damp));
  QS_RETURN_IF_ERROR(ReadField(j, "gptq_block_size", &w.gptq_block_size));
  QS_RETURN_IF_ERROR(ReadField(j, "gptq_act_order", &w.gptq_act_order));
  QS_RETURN_IF_ERROR(ReadField(j, "gptq_static_groups", &w.gptq_static_groups));
  QS_RETURN_IF_ERROR(ReadField(j, "erq_aqer_lambda", &w.erq_aqer_lambda));
  QS_RETURN_IF_ERROR(ReadField(j, "erq_aqer_lambda_pooled", &w.erq_aqer_lambda_pooled));
  QS_RETURN_IF_ERROR(ReadField(j, "erq_wqer_lambda", &w.erq_wqer_lambda));
  QS_RETURN_IF_ERROR(ReadField(j, "erq_wqer_iterations", &w.erq_wqer_iterations));
  QS_RETURN_IF_ERROR(ReadField(j, "liu_alpha", &w.liu_alpha));
  QS_RETURN_IF_ERROR(ReadField(j, "liu_beta", &w.liu_beta));
  QS_RETURN_IF_ERROR(ReadField(j, "liu_grid", &w.liu_grid));
  QS_RETURN_IF_ERROR(ReadField(j, "liu_rounds", &w.liu_rounds));
  QS_RETURN_IF_ERROR(ReadField(j, "liu_bias_correction", &w.liu_bias_correction));
  QS_RETURN_IF_ERROR(ReadField(j, "repapq_iterations", &w.repapq_iterations));
  QS_RETURN_IF_ERROR(ReadField(j, "repapq_batch", &w.repapq_batch));
  QS_RETURN_IF_ERROR(ReadField(j, "repapq_lr", &w.repapq_lr));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_iterations", &w.recon_iterations));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_batch", &w.recon_batch));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_lr", &w.recon_lr));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_act_lr", &w.recon_act_lr));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_round_weight", &w.recon_round_weight));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_warmup", &w.recon_warmup));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_beta_start", &w.recon_beta_start));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_beta_end", &w.recon_beta_end));
  QS_RETURN_IF_ERROR(ReadField(j, "recon_seed", &w.recon_seed));
  QS_RETURN_IF_ERROR(ReadEnumField(j, "recon_init", ParseWeightMethod, &w.recon_init));
  QS_RETURN_IF_ERROR(ReadField(j, "mgrq_block_weight", &w.mgrq_block_weight));
  QS_RETURN_IF_ERROR(ReadField(j, "mgrq_global_weight", &w.mgrq_global_weight));
  QS_RETURN_IF_ERROR(ReadField(j, "mgrq_local_weight", &w.mgrq_local_weight));
  QS_RETURN_IF_ERROR(ReadField(j, "mgrq_global_distance", &w.mgrq_global_distance));
  QS_RETURN_IF_ERROR(ReadField(j, "mgrq_local_distance", &w.mgrq_local_distance));
  return w;
}

StatusOr<ActivationQuant> ActivationFromJson(const json& j, const std::string& where) {
  QS_RETURN_IF_ERROR(CheckKeys(
      j, {"bits", "quantizer", "granularity", "calibrator", "symmetric", "percentile"}, where));
  ActivationQuant a;
  QS_RETURN_IF_ERROR(ReadField(j, "bits", &a.bits));
  QS_RETURN_IF_ERROR(ReadEnumField(j, "quantizer", ParseActivationQuantizer, &a.quantizer));
  QS_RETURN_IF_ERROR(ReadEnumField(j, "granularity", ParseGranularity, &a.granularity));
  QS_RETURN_IF_ERROR(ReadEnumField(j, "calibrator", ParseRangeCalibrator, &a.calibrator));
  QS_RETURN_IF_ERROR(ReadField(j, "symmetric", &a.symmetric));
  QS_RETURN_IF_ERROR(ReadField(j, "percentile", &a.percentile));
  return a;
}

Status ValidateBits(int bits, const std::string& where) {
  if (bits != 0 && (bits < 2 || bits > 8)) {
    return InvalidArgumentError(where + " bits must be 0 (float) or 2..8, got " +
                                std::to_string(bits));
  }
  return OkStatus();
}

Status ValidatePercentile(double p, const std::string& where) {
  if (!(p > 0.5 && p <= 1.0)) {
    return InvalidArgumentError(where + " percentile must be in (0.5, 1], got " +
                                std::to_string(p));
  }
  return OkStatus();
}

Status ValidateActivation(const ActivationQuant& a, const std::string& where) {
  QS_RETURN_IF_ERROR(ValidateBits(a.bits, where));
  QS_RETURN_IF_ERROR(ValidatePercentile(a.percentile, where));
  if (!a.quantized()) return OkStatus();
  if (a.granularity == Granularity::kPerGroup) {
    return InvalidArgumentError(where + " granularity per_group applies to weights only");
  }
  if (a.quantizer == ActivationQuantizer::kTwinUniform && a.bits < 3) {
    return InvalidArgumentError(where + " twin_uniform needs at least 3 bits");
  }
  return ValidatePercentile(a.percentile, where);
}

}  // namespace

const char* ToString(Granularity v) { return EnumName(v, kGranularities); }
const char* ToString(RangeCalibrator v) { return EnumName(v, kCalibrators); }
const char* ToString(ActivationQuantizer v) { return EnumName(v, kQuantizers); }
const char* ToString(WeightMethod v) { return EnumName(v, kWeightMethods); }
const char* ToString(SiteKind v) {
  switch (v) {
    case SiteKind::kLinear:
      return "linear";
    case SiteKind::kMatmul:
      return "matmul";
    case SiteKind::kNonlinear:
      return "nonlinear";
  }
  return "?";
}
const char* ToString(NonlinearOp v) { return EnumName(v, kNonlinearOps); }
const char* ToString(NonlinearMethod v) { return EnumName(v, kNonlinearMethods); }
StatusOr<NonlinearMethod> ParseNonlinearMethod(const std::string& s) {
  return ParseEnum(s, "non-linear method", kNonlinearMethods);
}

NonlinearOp NonlinearOpOf(const std::string& site_name) {
  if (EndsWith(site_name, "attn.softmax")) return NonlinearOp::kSoftmax;
  if (EndsWith(site_name, "mlp.act")) return NonlinearOp::kGelu;
  return NonlinearOp::kLayerNorm;
}

bool NonlinearMethodHasOp(NonlinearMethod method, NonlinearOp op) {
  return !(method == NonlinearMethod::kFqvit && op == NonlinearOp::kGelu);
}

StatusOr<Granularity> ParseGranularity(const std::string& s) {
  return ParseEnum(s, "granularity", kGranularities);
}
StatusOr<RangeCalibrator> ParseRangeCalibrator(const std::string& s) {
  return ParseEnum(s, "range calibrator", kCalibrators);
}
StatusOr<ActivationQuantizer> ParseActivationQuantizer(const std::string& s) {
  return ParseEnum(s, "activation quantizer", kQuantizers);
}
StatusOr<WeightMethod> ParseWeightMethod(const std::string& s) {
  return ParseEnum(s, "weight method", kWeightMethods);
}

bool IsReconstructionMethod(WeightMethod method) {
  return method == WeightMethod::kBrecq || method == WeightMethod::kMgrq;
}

bool WeightQuant::operator==(const WeightQuant& o) const {
  return WeightToJson(*this) == WeightToJson(o);
}
bool ActivationQuant::operator==(const ActivationQuant& o) const {
  return ActivationToJson(*this) == ActivationToJson(o);
}
bool QuantConfig::operator==(const QuantConfig& o) const {
  return weight == o.weight && activation == o.activation && activation_rhs == o.activation_rhs &&
         reparam == o.reparam && nonlinear == o.nonlinear;
}

namespace {

Status ValidateReconstructionFields(const WeightQuant& w) {
  auto bad = [](const std::string& what) { return InvalidArgumentError("weight " + what); };
  if (w.recon_iterations < 0 || w.recon_iterations > 1000000) {
    return bad("recon_iterations must be 0..1000000");
  }
  if (w.recon_batch < 1 || w.recon_batch > 65536) return bad("recon_batch must be 1..65536");
  if (!(w.recon_lr > 0 && w.recon_lr <= 1)) return bad("recon_lr must be in (0, 1]");
  if (!(w.recon_act_lr >= 0 && w.recon_act_lr <= 1)) return bad("recon_act_lr must be in [0, 1]");
  if (!(w.recon_round_weight >= 0 && w.recon_round_weight <= 1e6)) {
    return bad("recon_round_weight must be in [0, 1e6]");
  }
  if (!(w.recon_warmup >= 0 && w.recon_warmup < 1)) return bad("recon_warmup must be in [0, 1)");
  if (!(w.recon_beta_end >= 1 && w.recon_beta_start >= w.recon_beta_end &&
        w.recon_beta_start <= 1000)) {
    return bad("recon_beta_start and recon_beta_end need 1 <= end <= start <= 1000");
  }
  if (w.recon_seed < 0) return bad("recon_seed must be >= 0");
  if (w.recon_init != WeightMethod::kRtn && w.recon_init != WeightMethod::kGptq &&
      w.recon_init != WeightMethod::kErq) {
    return bad("recon_init must be rtn, gptq or erq");
  }
  for (double v : {w.mgrq_block_weight, w.mgrq_global_weight, w.mgrq_local_weight}) {
    if (!(v >= 0 && v <= 1e6)) return bad("mgrq loss weights must be in [0, 1e6]");
  }
  if (w.mgrq_global_distance != "kl" && w.mgrq_global_distance != "mse") {
    return bad("mgrq_global_distance must be \"kl\" or \"mse\"");
  }
  if (w.mgrq_local_distance != "moments" && w.mgrq_local_distance != "mse") {
    return bad("mgrq_local_distance must be \"moments\" or \"mse\"");
  }
  return OkStatus();
}

}  // namespace

Status ValidateQuantConfig(const QuantConfig& config, SiteKind kind) {
  const WeightQuant& w = config.weight;
  const NonlinearQuant& n = config.nonlinear;
  if (kind == SiteKind::kNonlinear) {
    if (w.quantized() || config.activation.quantized() || config.activation_rhs.quantized() ||
        config.reparam) {
      return InvalidArgumentError(
          "a non-linear site has no weight or activation quantizers of its own (its 'nonlinear' "
          "method and bits say how it computes)");
    }
    if (n.quantized() && (n.bits < 4 || n.bits > 8)) {
      return InvalidArgumentError("nonlinear bits must be 4..8, got " + std::to_string(n.bits));
    }
    return OkStatus();
  }
  if (n.quantized()) {
    return InvalidArgumentError(std::string("a ") + ToString(kind) +
                                " site has no non-linear method");
  }
  if (kind == SiteKind::kLinear) {
    QS_RETURN_IF_ERROR(ValidateBits(w.bits, "weight"));
    // Every field is checked whatever the method and bits: a value a method does not use is
    // still a mistake, and one rule for all fields means it is refused the same way everywhere.
    QS_RETURN_IF_ERROR(ValidatePercentile(w.percentile, "weight"));
    if (w.group_size < 0) return InvalidArgumentError("weight group_size must be >= 0");
    if (!(w.gptq_damp > 0 && w.gptq_damp < 1)) {
      return InvalidArgumentError("weight gptq_damp must be in (0, 1)");
    }
    if (w.gptq_block_size < 1) return InvalidArgumentError("weight gptq_block_size must be >= 1");
    if (!(w.erq_aqer_lambda > 0) || !(w.erq_aqer_lambda_pooled > 0) || !(w.erq_wqer_lambda > 0) ||
        !std::isfinite(w.erq_aqer_lambda) || !std::isfinite(w.erq_aqer_lambda_pooled) ||
        !std::isfinite(w.erq_wqer_lambda)) {
      return InvalidArgumentError("weight erq ridge lambdas must be positive and finite");
    }
    if (w.calibrator == RangeCalibrator::kLiu) {
      return InvalidArgumentError(
          "weight calibrator liu applies to attention-matmul operands; a linear layer's intervals "
          "are searched by the weight method liu");
    }
    if (w.erq_wqer_iterations < 0) {
      return InvalidArgumentError("weight erq_wqer_iterations must be >= 0");
    }
    if (!(w.liu_alpha > 0 && w.liu_alpha <= 1 && w.liu_beta >= 1 && w.liu_beta <= 10)) {
      return InvalidArgumentError("weight liu_alpha must be in (0, 1] and liu_beta in [1, 10]");
    }
    if (w.liu_grid < 2 || w.liu_grid > 10000) {
      return InvalidArgumentError("weight liu_grid must be 2..10000");
    }
    if (w.liu_rounds < 1 || w.liu_rounds > 10) {
      return InvalidArgumentError("weight liu_rounds must be 1..10");
    }
    if (w.repapq_iterations < 0 || w.repapq_iterations > 100000) {
      return InvalidArgumentError("weight repapq_iterations must be 0..100000");
    }
    if (w.repapq_batch < 1 || w.repapq_batch > 65536) {
      return InvalidArgumentError("weight repapq_batch must be 1..65536");
    }
    if (!(w.repapq_lr > 0 && w.repapq_lr <= 1)) {
      return InvalidArgumentError("weight repapq_lr must be in (0, 1]");
    }
    QS_RETURN_IF_ERROR(ValidateReconstructionFields(w));
    if (w.quantized()) {
      if (w.method == WeightMethod::kRepapq && w.granularity != Granularity::kPerChannel) {
        return InvalidArgumentError(
            "weight method repapq needs granularity per_channel (its affine folds into one scale "
            "per output channel)");
      }
      if (w.granularity == Granularity::kPerHead) {
        return InvalidArgumentError("weight granularity per_head is not supported");
      }
      if (w.granularity == Granularity::kPerGroup && w.group_size < 1) {
        return InvalidArgumentError("weight granularity per_group needs group_size >= 1");
      }
      if (w.method == WeightMethod::kGptq && w.gptq_act_order &&
          w.granularity == Granularity::kPerGroup && !w.gptq_static_groups) {
        return InvalidArgumentError(
            "weight gptq_act_order with per_group needs gptq_static_groups (groups must stay "
            "contiguous input columns)");
      }
    }
  } else if (w.quantized()) {
    return InvalidArgumentError("a matmul site has no weight to quantize");
  }
  QS_RETURN_IF_ERROR(ValidateActivation(config.activation, "activation"));
  if (kind == SiteKind::kLinear) {
    if (config.activation.quantizer != ActivationQuantizer::kUniform &&
        config.activation.quantizer != ActivationQuantizer::kTwinUniform &&
        config.activation.quantized()) {
      return InvalidArgumentError(std::string("activation quantizer ") +
                                  ToString(config.activation.quantizer) +
                                  " applies to post-softmax matmul operands only");
    }
    if (config.activation_rhs.quantized()) {
      return InvalidArgumentError("a linear site has no activation_rhs");
    }
    if (config.activation.quantized() && config.activation.calibrator == RangeCalibrator::kLiu) {
      return InvalidArgumentError(
          "activation calibrator liu applies to attention-matmul operands; a linear input's "
          "interval is searched by the weight method liu");
    }
  } else {
    QS_RETURN_IF_ERROR(ValidateActivation(config.activation_rhs, "activation_rhs"));
    for (const auto* a : {&config.activation, &config.activation_rhs}) {
      if (a->quantized() && a->calibrator == RangeCalibrator::kLiu &&
          a->quantizer != ActivationQuantizer::kUniform) {
        return InvalidArgumentError(std::string("calibrator liu searches uniform grids, not ") +
                                    ToString(a->quantizer));
      }
    }
  }
  return OkStatus();
}

json ToJson(const WeightQuant& weight) { return WeightToJson(weight); }
StatusOr<WeightQuant> WeightQuantFromJson(const json& j) { return WeightFromJson(j); }

json ToJson(const QuantConfig& config, SiteKind kind) {
  json j;
  if (kind == SiteKind::kNonlinear) {
    j["nonlinear"] = NonlinearToJson(config.nonlinear);
    return j;
  }
  if (kind == SiteKind::kLinear) {
    j["weight"] = WeightToJson(config.weight);
    j["activation"] = ActivationToJson(config.activation);
  } else {
    j["activation"] = ActivationToJson(config.activation);
    j["activation_rhs"] = ActivationToJson(config.activation_rhs);
  }
  // Only when set: configs without it keep the text (and the content keys) they always had.
  if (config.reparam) j["reparam"] = true;
  return j;
}

StatusOr<QuantConfig> QuantConfigFromJson(const json& j, SiteKind kind) {
  if (kind == SiteKind::kNonlinear) {
    QS_RETURN_IF_ERROR(CheckKeys(j, {"nonlinear"}, "non-linear site config"));
    QuantConfig config;
    if (j.contains("nonlinear")) {
      QS_ASSIGN_OR_RETURN(config.nonlinear, NonlinearFromJson(j["nonlinear"]));
    }
    QS_RETURN_IF_ERROR(ValidateQuantConfig(config, kind));
    return config;
  }
  if (kind == SiteKind::kLinear) {
    QS_RETURN_IF_ERROR(CheckKeys(j, {"weight", "activation", "reparam"}, "linear site config"));
  } else {
    QS_RETURN_IF_ERROR(
        CheckKeys(j, {"activation", "activation_rhs", "reparam"}, "matmul site config"));
  }
  QuantConfig config;
  if (j.contains("reparam")) {
    if (!j["reparam"].is_boolean()) return InvalidArgumentError("'reparam' must be true or false");
    config.reparam = j["reparam"].get<bool>();
  }
  if (j.contains("weight")) {
    QS_ASSIGN_OR_RETURN(config.weight, WeightFromJson(j["weight"]));
  }
  if (j.contains("activation")) {
    QS_ASSIGN_OR_RETURN(config.activation, ActivationFromJson(j["activation"], "activation"));
  }
  if (j.contains("activation_rhs")) {
    QS_ASSIGN_OR_RETURN(config.activation_rhs,
                        ActivationFromJson(j["activation_rhs"], "activation_rhs"));
  }
  QS_RETURN_IF_ERROR(ValidateQuantConfig(config, kind));
  return config;
}

ValueDomain OperandDomain(const std::string& site_name, SiteKind kind, int operand) {
  if (kind == SiteKind::kMatmul && operand == 0 && EndsWith(site_name, ".attn.av_matmul")) {
    return ValueDomain::kPostSoftmax;
  }
  if (kind == SiteKind::kLinear && EndsWith(site_name, ".mlp.fc2")) return ValueDomain::kPostGelu;
  return ValueDomain::kGeneral;
}

bool ReparamApplies(const std::string& site_name, SiteKind kind) {
  if (kind == SiteKind::kMatmul) return EndsWith(site_name, ".attn.av_matmul");
  return EndsWith(site_name, ".attn.qkv") || EndsWith(site_name, ".mlp.fc1");
}

Status CheckReparam(const QuantConfig& config, const std::string& site_name, SiteKind kind) {
  if (!config.reparam) return OkStatus();
  if (!ReparamApplies(site_name, kind)) {
    return InvalidArgumentError("reparam applies only to attn.qkv, mlp.fc1 and attn.av_matmul");
  }
  const ActivationQuant& a = config.activation;
  if (!a.quantized()) return OkStatus();
  // Reparameterization deploys one per-tensor uniform grid on the folded input, and log√2 on
  // post-softmax values: other choices for the same operand contradict it.
  if (kind == SiteKind::kLinear &&
      (a.quantizer != ActivationQuantizer::kUniform || a.granularity != Granularity::kPerTensor)) {
    return InvalidArgumentError(
        "reparam needs a per_tensor uniform activation (it calibrates per channel and folds the "
        "scales away)");
  }
  if (kind == SiteKind::kMatmul && a.quantizer != ActivationQuantizer::kUniform &&
      a.quantizer != ActivationQuantizer::kLogSqrt2) {
    return InvalidArgumentError(std::string("reparam quantizes post-softmax values with "
                                            "log_sqrt2, not ") +
                                ToString(a.quantizer));
  }
  return OkStatus();
}

Status CheckQuantizerSuitsDomain(const ActivationQuant& spec, ValueDomain domain,
                                 const std::string& where) {
  if (!spec.quantized()) return OkStatus();
  switch (spec.quantizer) {
    case ActivationQuantizer::kUniform:
      return OkStatus();
    case ActivationQuantizer::kLog2:
    case ActivationQuantizer::kLogSqrt2:
      if (domain == ValueDomain::kPostSoftmax) return OkStatus();
      return InvalidArgumentError(where + ": " + ToString(spec.quantizer) +
                                  " quantizes post-softmax values only");
    case ActivationQuantizer::kTwinUniform:
      if (domain != ValueDomain::kGeneral) return OkStatus();
      return InvalidArgumentError(where +
                                  ": twin_uniform quantizes post-softmax or post-GELU values only");
  }
  return InvalidArgumentError(where + ": unknown activation quantizer");
}

QuantConfig Recipe::Resolve(const std::string& site, SiteKind kind) const {
  auto it = sites.find(site);
  if (kind == SiteKind::kNonlinear) {
    if (it != sites.end()) return it->second;
    QuantConfig config = nonlinear_default;
    if (!NonlinearMethodHasOp(config.nonlinear.method, NonlinearOpOf(site))) {
      config.nonlinear = NonlinearQuant{};
    }
    return config;
  }
  QuantConfig config = it != sites.end()                ? it->second
                       : kind == SiteKind::kLinear ? linear_default
                                                   : matmul_default;
  if (!ReparamApplies(site, kind)) config.reparam = false;
  return config;
}

json RecipeToJson(const Recipe& recipe, const std::map<std::string, SiteKind>& site_kinds) {
  json sites = json::object();
  for (const auto& [name, config] : recipe.sites) {
    auto kind = site_kinds.find(name);
    sites[name] = ToJson(config, kind == site_kinds.end() ? SiteKind::kLinear : kind->second);
  }
  json j{{"format", kRecipeFormat},
         {"linear_default", ToJson(recipe.linear_default, SiteKind::kLinear)},
         {"matmul_default", ToJson(recipe.matmul_default, SiteKind::kMatmul)},
         {"sites", sites}};
  // Only when set: recipes with float non-linear sites keep the text they always had.
  if (recipe.nonlinear_default.nonlinear.quantized()) {
    j["nonlinear_default"] = ToJson(recipe.nonlinear_default, SiteKind::kNonlinear);
  }
  return j;
}

StatusOr<Recipe> RecipeFromJson(const json& j, const std::map<std::string, SiteKind>& site_kinds) {
  QS_RETURN_IF_ERROR(
      CheckKeys(j, {"format", "linear_default", "matmul_default", "nonlinear_default", "sites",
                    "search"},
                "recipe"));
  if (!j.contains("format") || j["format"] != kRecipeFormat) {
    return InvalidArgumentError(std::string("recipe: field 'format' must be \"") + kRecipeFormat +
                                "\"");
  }
  Recipe recipe;
  if (j.contains("linear_default")) {
    auto c = QuantConfigFromJson(j["linear_default"], SiteKind::kLinear);
    if (!c.ok()) return c.status().WithContext("recipe linear_default");
    recipe.linear_default = *c;
  }
  if (j.contains("matmul_default")) {
    auto c = QuantConfigFromJson(j["matmul_default"], SiteKind::kMatmul);
    if (!c.ok()) return c.status().WithContext("recipe matmul_default");
    recipe.matmul_default = *c;
  }
  if (j.contains("nonlinear_default")) {
    auto c = QuantConfigFromJson(j["nonlinear_default"], SiteKind::kNonlinear);
    if (!c.ok()) return c.status().WithContext("recipe nonlinear_default");
    recipe.nonlinear_default = *c;
  }
  if (j.contains("sites")) {
    if (!j["sites"].is_object()) return InvalidArgumentError("recipe: 'sites' must be an object");
    for (const auto& item : j["sites"].items()) {
      auto kind = site_kinds.find(item.key());
      if (kind == site_kinds.end()) {
        return InvalidArgumentError("recipe names site '" + item.key() +
                                    "', which the model does not have");
      }
      auto c = QuantConfigFromJson(item.value(), kind->second);
      if (!c.ok()) return c.status().WithContext("recipe site '" + item.key() + "'");
      if (kind->second == SiteKind::kNonlinear &&
          !NonlinearMethodHasOp(c->nonlinear.method, NonlinearOpOf(item.key()))) {
        return InvalidArgumentError("recipe site '" + item.key() + "': " +
                                    ToString(c->nonlinear.method) + " has no " +
                                    ToString(NonlinearOpOf(item.key())) + " kernel");
      }
      if (c->reparam && !ReparamApplies(item.key(), kind->second)) {
        return InvalidArgumentError("recipe site '" + item.key() +
                                    "': reparam applies only to attn.qkv, mlp.fc1 and "
                                    "attn.av_matmul sites");
      }
      recipe.sites[item.key()] = *c;
    }
  }
  return recipe;
}

StatusOr<Recipe> ParseUniformRecipe(const std::string& shorthand, bool quantize_edges,
                                    const std::vector<std::string>& edge_sites) {
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("recipe shorthand '" + shorthand + "': " + why +
                                " (expected w<bits>a<bits>[:method], e.g. w4a8:rtn)");
  };
  std::string body = shorthand;
  std::string method = "rtn";
  if (auto colon = body.find(':'); colon != std::string::npos) {
    method = body.substr(colon + 1);
    body = body.substr(0, colon);
  }
  if (body.empty() || body[0] != 'w') return bad("must start with 'w'");
  size_t a = body.find('a');
  if (a == std::string::npos) return bad("missing 'a<bits>' after the weight bits");
  if (a + 1 == body.size()) return bad("missing the activation bits after 'a'");
  auto parse_bits = [](const std::string& s, int* bits) {
    if (s == "f" || s == "32" || s == "16") {
      *bits = 0;
      return true;
    }
    if (s.size() != 1 || !std::isdigit(static_cast<unsigned char>(s[0]))) return false;
    *bits = s[0] - '0';
    return *bits >= 2 && *bits <= 8;
  };
  int wbits = 0, abits = 0;
  if (!parse_bits(body.substr(1, a - 1), &wbits)) return bad("weight bits must be 2..8 or 32");
  if (!parse_bits(body.substr(a + 1), &abits)) return bad("activation bits must be 2..8 or 32");

  Recipe recipe;
  auto wm = ParseWeightMethod(method);
  if (!wm.ok()) return bad(wm.status().message());
  recipe.linear_default.weight.method = *wm;
  if (*wm == WeightMethod::kRepapq) {
    recipe.linear_default.weight.calibrator = RangeCalibrator::kMae;
    recipe.linear_default.activation.calibrator = RangeCalibrator::kMae;
    recipe.matmul_default.activation.calibrator = RangeCalibrator::kMae;
    recipe.matmul_default.activation_rhs.calibrator = RangeCalibrator::kMae;
  }
  recipe.linear_default.weight.bits = wbits;
  recipe.linear_default.activation.bits = abits;
  recipe.matmul_default.activation.bits = abits;
  recipe.matmul_default.activation_rhs.bits = abits;
  if (!quantize_edges) {
    QuantConfig edge = recipe.linear_default;
    edge.weight.bits = wbits == 0 ? 0 : 8;
    edge.activation.bits = abits == 0 ? 0 : 8;
    for (const std::string& site : edge_sites) recipe.sites[site] = edge;
  }
  return recipe;
}

}  // namespace qs
