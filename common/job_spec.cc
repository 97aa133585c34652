#include "common/job_spec.h"

#include <iterator>
#include <set>

#include "common/enum_names.h"
#include "common/file_util.h"
#include "common/json_fields.h"

namespace qs {
namespace {

using nlohmann::json;

constexpr std::pair<const char*, BudgetKind> kBudgets[] = {
    {"avg_weight_bits", BudgetKind::kAvgWeightBits},
    {"model_bytes", BudgetKind::kModelBytes},
    {"bops", BudgetKind::kBops},
};
constexpr std::pair<const char*, RankingMetric> kMetrics[] = {
    {"noise_ratio", RankingMetric::kNoiseRatio},
    {"mse", RankingMetric::kMse},
    {"mae", RankingMetric::kMae},
    {"nuclear", RankingMetric::kNuclear},
};

StatusOr<RankingMetric> ParseMetric(const std::string& s) {
  return ParseEnum(s, "ranking metric", kMetrics);
}

Status Section(const json& j, const char* key, bool required, const json** out) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) return InvalidArgumentError(std::string("missing section '") + key + "'");
    static const json kEmpty = json::object();
    *out = &kEmpty;
    return OkStatus();
  }
  if (!it->is_object()) return InvalidArgumentError(std::string("'") + key + "' must be an object");
  *out = &*it;
  return OkStatus();
}

Status ReadBits(const json& v, int* out, int min_bits) {
  if (!v.is_number_integer()) return InvalidArgumentError("bit-width must be an integer");
  // Checked before narrowing: 4294967300 must not pass as 4.
  const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= 8
                                               : v.get<int64_t>() >= 0 && v.get<int64_t>() <= 8;
  if (!in_range || (v.get<int64_t>() != 0 && v.get<int64_t>() < min_bits)) {
    return InvalidArgumentError("bit-width " + v.dump() + " is outside " +
                                std::to_string(min_bits) + "..8");
  }
  *out = static_cast<int>(v.get<int64_t>());
  return OkStatus();
}

template <typename E, typename Parse>
auto EnumReader(Parse parse) {
  return [parse](const json& v, E* out) -> Status {
    if (!v.is_string()) return InvalidArgumentError("expected a string");
    QS_ASSIGN_OR_RETURN(*out, parse(v.get<std::string>()));
    return OkStatus();
  };
}

// The fields of a weight config the reconstruction tier takes from the spec.
constexpr const char* kReconstructionFields[] = {
    "method", "recon_iterations", "recon_batch", "recon_lr", "recon_act_lr",
    "recon_round_weight", "recon_warmup", "recon_beta_start", "recon_beta_end", "recon_seed",
    "recon_init", "mgrq_block_weight", "mgrq_global_weight", "mgrq_local_weight", "mgrq_global_distance",
    "mgrq_local_distance"};

StatusOr<WeightQuant> ReconstructionTierFromJson(const json& j) {
  auto fail = [](const Status& s) { return s.WithContext("field 'reconstruction'"); };
  if (!j.is_object()) return InvalidArgumentError("field 'reconstruction' must be an object");
  if (!j.contains("method")) {
    return InvalidArgumentError("field 'reconstruction': missing 'method' (brecq or mgrq)");
  }
  Status s = CheckKeys(j, std::set<std::string>(std::begin(kReconstructionFields),
                                                std::end(kReconstructionFields)),
                       "reconstruction");
  if (!s.ok()) return fail(s);
  auto w = WeightQuantFromJson(j);
  if (!w.ok()) return fail(w.status());
  if (!IsReconstructionMethod(w->method)) {
    return InvalidArgumentError("field 'reconstruction': method must be brecq or mgrq");
  }
  QuantConfig probe;
  probe.weight = *w;
  probe.weight.bits = 4;
  s = ValidateQuantConfig(probe, SiteKind::kLinear);
  if (!s.ok()) return fail(s);
  return *w;
}

json ReconstructionTierToJson(const WeightQuant& w) {
  WeightQuant probe = w;
  probe.bits = 4;
  const json all = ToJson(probe);
  json out = json::object();
  for (const char* key : kReconstructionFields) {
    if (all.contains(key)) out[key] = all[key];
  }
  return out;
}

Status ParseSearch(const json& j, CandidateSpace* space) {
  QS_RETURN_IF_ERROR(CheckKeys(j,
                               {"weight_methods", "weight_bits", "weight_granularities",
                                "group_size", "weight_calibrators", "activation_bits",
                                "activation_calibrators", "softmax_quantizers", "reparam",
                                "nonlinear_methods", "nonlinear_bits", "reconstruction", "skip",
                                "pin"},
                               "search"));
  QS_RETURN_IF_ERROR(ReadArrayField<WeightMethod>(
      j, "weight_methods", EnumReader<WeightMethod>(ParseWeightMethod), &space->weight_methods));
  for (WeightMethod m : space->weight_methods) {
    if (IsReconstructionMethod(m)) {
      return InvalidArgumentError(std::string("field 'weight_methods': ") + ToString(m) +
                                  " trains whole blocks, so no candidate measures it; ask for "
                                  "it as the reconstruction tier: \"reconstruction\": "
                                  "{\"method\": \"" + ToString(m) + "\"}");
    }
  }
  if (j.contains("reconstruction")) {
    QS_ASSIGN_OR_RETURN(space->reconstruction, ReconstructionTierFromJson(j["reconstruction"]));
  }
  QS_RETURN_IF_ERROR(ReadArrayField<int>(
      j, "weight_bits", [](const json& v, int* b) { return ReadBits(v, b, 2); },
      &space->weight_bits));
  QS_RETURN_IF_ERROR(ReadArrayField<Granularity>(j, "weight_granularities",
                                                 EnumReader<Granularity>(ParseGranularity),
                                                 &space->weight_granularities));
  for (auto g : space->weight_granularities) {
    if (g == Granularity::kPerHead) {
      return InvalidArgumentError("field 'weight_granularities': per_head is not a weight option");
    }
  }
  QS_RETURN_IF_ERROR(ReadField(j, "group_size", &space->group_size));
  if (space->group_size < 1) return InvalidArgumentError("field 'group_size' must be >= 1");
  QS_RETURN_IF_ERROR(ReadArrayField<RangeCalibrator>(
      j, "weight_calibrators", EnumReader<RangeCalibrator>(ParseRangeCalibrator),
      &space->weight_calibrators));
  for (auto c : space->weight_calibrators) {
    if (c == RangeCalibrator::kLiu) {
      return InvalidArgumentError(
          "field 'weight_calibrators': liu is an attention-matmul calibrator; search linear "
          "layers with Liu et al. through weight_methods: [\"liu\"]");
    }
  }
  QS_RETURN_IF_ERROR(ReadArrayField<int>(
      j, "activation_bits", [](const json& v, int* b) { return ReadBits(v, b, 2); },
      &space->activation_bits));
  QS_RETURN_IF_ERROR(ReadArrayField<RangeCalibrator>(
      j, "activation_calibrators", EnumReader<RangeCalibrator>(ParseRangeCalibrator),
      &space->activation_calibrators));
  QS_RETURN_IF_ERROR(ReadArrayField<ActivationQuantizer>(
      j, "softmax_quantizers", EnumReader<ActivationQuantizer>(ParseActivationQuantizer),
      &space->softmax_quantizers));
  QS_RETURN_IF_ERROR(ReadArrayField<bool>(
      j, "reparam",
      [](const json& v, bool* on) -> Status {
        if (!v.is_boolean()) return InvalidArgumentError("expected true or false");
        *on = v.get<bool>();
        return OkStatus();
      },
      &space->reparam));
  QS_RETURN_IF_ERROR(ReadArrayField<NonlinearMethod>(
      j, "nonlinear_methods", EnumReader<NonlinearMethod>(ParseNonlinearMethod),
      &space->nonlinear_methods));
  QS_RETURN_IF_ERROR(ReadArrayField<int>(
      j, "nonlinear_bits",
      [](const json& v, int* b) -> Status {
        QS_RETURN_IF_ERROR(ReadBits(v, b, 4));
        if (*b == 0) return InvalidArgumentError("bit-width 0 is outside 4..8");
        return OkStatus();
      },
      &space->nonlinear_bits));
  if (j.contains("skip")) {
    QS_RETURN_IF_ERROR(ReadField(j, "skip", &space->skip));
  }
  if (j.contains("pin")) {
    if (!j["pin"].is_object()) return InvalidArgumentError("field 'pin' must be an object");
    for (const auto& item : j["pin"].items()) space->pin[item.key()] = item.value();
  }
  return OkStatus();
}

// "compute": where the model side runs and in which precision it keeps activations.
Status ParseCompute(const json& j, JobSpec* spec) {
  QS_RETURN_IF_ERROR(CheckKeys(j, {"device", "capture_dtype"}, "compute"));
  QS_RETURN_IF_ERROR(ReadField(j, "device", &spec->device));
  QS_RETURN_IF_ERROR(ReadField(j, "capture_dtype", &spec->capture_dtype));
  if (spec->device != "auto" && spec->device != "cpu" && spec->device != "cuda") {
    return InvalidArgumentError("field 'device' must be \"auto\", \"cpu\" or \"cuda\", got \"" +
                                spec->device + "\"");
  }
  if (spec->capture_dtype != "float32" && spec->capture_dtype != "float16") {
    return InvalidArgumentError("field 'capture_dtype' must be \"float32\" or \"float16\", got \"" +
                                spec->capture_dtype + "\"");
  }
  return OkStatus();
}

}  // namespace

const char* ToString(BudgetKind v) { return EnumName(v, kBudgets); }
const char* ToString(RankingMetric v) { return EnumName(v, kMetrics); }

namespace {

// "balanced" or "uniform", when the section names one.
Status ReadSampling(const json& section, std::string* sampling) {
  QS_RETURN_IF_ERROR(ReadField(section, "sampling", sampling));
  if (*sampling != "balanced" && *sampling != "uniform") {
    return InvalidArgumentError("'sampling' must be \"balanced\" or \"uniform\", got \"" +
                                *sampling + "\"");
  }
  return OkStatus();
}

// A data source with its path made absolute against the spec's folder; named datasets
// ("fashion-mnist:...") stay as they are, "imagefolder:"/"filelist:" keep their prefix.
std::string ResolveSourcePath(const std::string& spec_path, const std::string& source) {
  if (source.empty() || source.rfind("fashion-mnist:", 0) == 0) return source;
  for (const char* prefix : {"imagefolder:", "filelist:"}) {
    const std::string p = prefix;
    if (source.rfind(p, 0) == 0) return p + ResolveRelativeTo(spec_path, source.substr(p.size()));
  }
  return ResolveRelativeTo(spec_path, source);
}

// The calibration, validation and test sections, sources resolved against the spec's folder.
Status ParseDataSections(const json& j, const std::string& spec_path, JobSpec* out) {
  auto fail = [](const Status& s, const char* section) {
    return s.WithContext(std::string("spec ") + section);
  };
  JobSpec& spec = *out;
  const json* section = nullptr;
  Status s;
  if (!(s = Section(j, "calibration", false, &section)).ok()) return fail(s, "");
  s = CheckKeys(*section, {"source", "count", "seed", "sampling"}, "calibration");
  if (s.ok()) s = ReadField(*section, "source", &spec.calibration_source);
  if (s.ok()) s = ReadField(*section, "count", &spec.calibration_count);
  if (s.ok()) s = ReadField(*section, "seed", &spec.seed);
  if (s.ok()) s = ReadSampling(*section, &spec.calibration_sampling);
  if (s.ok() && spec.calibration_count < 1) s = InvalidArgumentError("'count' must be >= 1");
  if (!s.ok()) return fail(s, "calibration");

  const std::pair<const char*, std::tuple<std::string*, int64_t*, std::string*>> held_out[] = {
      {"validation", {&spec.validation_source, &spec.validation_limit, &spec.validation_sampling}},
      {"test", {&spec.test_source, &spec.test_limit, &spec.test_sampling}}};
  for (const auto& [name, fields] : held_out) {
    auto [source, limit, sampling] = fields;
    if (!(s = Section(j, name, false, &section)).ok()) return fail(s, "");
    s = CheckKeys(*section, {"source", "limit", "sampling"}, name);
    if (s.ok()) s = ReadField(*section, "source", source);
    if (s.ok()) s = ReadField(*section, "limit", limit);
    if (s.ok()) s = ReadSampling(*section, sampling);
    if (s.ok() && *limit < 0) s = InvalidArgumentError("'limit' must be >= 0");
    if (s.ok() && std::string(name) == "test" && !section->empty() && source->empty()) {
      s = InvalidArgumentError("missing field 'source'");
    }
    if (!s.ok()) return fail(s, name);
  }
  for (std::string* src : {&spec.calibration_source, &spec.validation_source, &spec.test_source}) {
    *src = ResolveSourcePath(spec_path, *src);
  }
  return OkStatus();
}

}  // namespace

StatusOr<JobSpec> ParseJobSpec(const json& j, const std::string& spec_path) {
  auto fail = [](const Status& s, const char* section) {
    return s.WithContext(std::string("spec ") + section);
  };
  Status s = CheckKeys(
      j, {"model", "calibration", "validation", "test", "search", "objective", "accuracy",
          "compute"},
      "the spec");
  if (!s.ok()) return fail(s, "");
  JobSpec spec;
  spec.spec_path = spec_path;
  const json* section = nullptr;

  if (!(s = Section(j, "model", true, &section)).ok()) return fail(s, "");
  if (!(s = CheckKeys(*section, {"config", "weights"}, "model")).ok()) return fail(s, "model");
  for (const char* key : {"config", "weights"}) {
    if (!section->contains(key)) {
      return InvalidArgumentError(std::string("spec model: missing field '") + key + "'");
    }
  }
  if (!(s = ReadField(*section, "config", &spec.model_config)).ok()) return fail(s, "model");
  if (!(s = ReadField(*section, "weights", &spec.model_weights)).ok()) return fail(s, "model");
  spec.model_config = ResolveRelativeTo(spec_path, spec.model_config);
  spec.model_weights = ResolveRelativeTo(spec_path, spec.model_weights);

  if (!(s = ParseDataSections(j, spec_path, &spec)).ok()) return s;

  if (!(s = Section(j, "search", false, &section)).ok()) return fail(s, "");
  if (!(s = ParseSearch(*section, &spec.space)).ok()) return fail(s, "search");

  if (!(s = Section(j, "objective", true, &section)).ok()) return fail(s, "");
  s = CheckKeys(*section, {"avg_weight_bits", "model_bytes", "bops", "metric"}, "objective");
  int budgets = 0;
  for (const auto& [name, kind] : kBudgets) {
    if (!s.ok() || !section->contains(name)) continue;
    ++budgets;
    spec.budget_kind = kind;
    if (!(*section)[name].is_number()) {
      s = InvalidArgumentError(std::string("'") + name + "' must be a number");
    } else {
      spec.budget = (*section)[name].get<double>();
    }
  }
  if (s.ok() && budgets != 1) {
    s = InvalidArgumentError("give exactly one budget: avg_weight_bits, model_bytes or bops");
  }
  if (s.ok() && !(spec.budget > 0 && spec.budget < 1e18)) {
    s = InvalidArgumentError("the budget must be a positive finite number below 1e18");
  }
  if (s.ok()) s = ReadEnumField(*section, "metric", ParseMetric, &spec.metric);
  if (!s.ok()) return fail(s, "objective");

  if (!(s = Section(j, "accuracy", false, &section)).ok()) return fail(s, "");
  s = CheckKeys(*section,
                {"max_abs_top1_drop", "max_rel_top1_drop", "max_validations", "refine"},
                "accuracy");
  if (s.ok()) s = ReadField(*section, "max_abs_top1_drop", &spec.max_abs_top1_drop);
  if (s.ok()) s = ReadField(*section, "max_rel_top1_drop", &spec.max_rel_top1_drop);
  if (s.ok()) s = ReadField(*section, "max_validations", &spec.max_validations);
  if (s.ok()) s = ReadField(*section, "refine", &spec.refine_validation);
  if (s.ok() && section->contains("max_abs_top1_drop") && !(spec.max_abs_top1_drop >= 0)) {
    s = InvalidArgumentError("'max_abs_top1_drop' must be >= 0 (a fraction of top-1)");
  }
  if (s.ok() && section->contains("max_rel_top1_drop") &&
      !(spec.max_rel_top1_drop >= 0 && spec.max_rel_top1_drop <= 1)) {
    s = InvalidArgumentError("'max_rel_top1_drop' must be in [0, 1]");
  }
  if (s.ok() && spec.max_validations < 1) s = InvalidArgumentError("'max_validations' must be >= 1");
  if (!s.ok()) return fail(s, "accuracy");

  if (!(s = Section(j, "compute", false, &section)).ok()) return fail(s, "");
  if (!(s = ParseCompute(*section, &spec)).ok()) return fail(s, "compute");
  return spec;
}

StatusOr<JobSpec> LoadJobSpec(const std::string& path) {
  QS_ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  auto spec = ParseJobSpec(j, path);
  if (!spec.ok()) return spec.status().WithContext(path);
  return spec;
}

json ToJson(const JobSpec& spec) {
  auto names = [](const auto& values) {
    json a = json::array();
    for (const auto& v : values) a.push_back(ToString(v));
    return a;
  };
  json pin = json::object();
  for (const auto& [site, config] : spec.space.pin) pin[site] = config;
  json objective = {{ToString(spec.budget_kind), spec.budget}, {"metric", ToString(spec.metric)}};
  json accuracy = {{"max_validations", spec.max_validations},
                   {"refine", spec.refine_validation}};
  json search = {{"weight_methods", names(spec.space.weight_methods)},
                 {"weight_bits", spec.space.weight_bits},
                 {"weight_granularities", names(spec.space.weight_granularities)},
                 {"group_size", spec.space.group_size},
                 {"weight_calibrators", names(spec.space.weight_calibrators)},
                 {"activation_bits", spec.space.activation_bits},
                 {"activation_calibrators", names(spec.space.activation_calibrators)},
                 {"softmax_quantizers", names(spec.space.softmax_quantizers)},
                 {"skip", spec.space.skip},
                 {"pin", pin}};
  // Only when asked for: specs without it keep the text they always had.
  if (spec.space.reparam != std::vector<bool>{false}) search["reparam"] = spec.space.reparam;
  if (spec.space.nonlinear_methods != std::vector<NonlinearMethod>{NonlinearMethod::kFloat}) {
    search["nonlinear_methods"] = names(spec.space.nonlinear_methods);
  }
  if (!spec.space.nonlinear_bits.empty()) search["nonlinear_bits"] = spec.space.nonlinear_bits;
  if (spec.space.reconstruction) {
    search["reconstruction"] = ReconstructionTierToJson(*spec.space.reconstruction);
  }
  if (spec.max_abs_top1_drop >= 0) accuracy["max_abs_top1_drop"] = spec.max_abs_top1_drop;
  if (spec.max_rel_top1_drop >= 0) accuracy["max_rel_top1_drop"] = spec.max_rel_top1_drop;
  return json{
      {"model", {{"config", spec.model_config}, {"weights", spec.model_weights}}},
      {"calibration",
       {{"source", spec.calibration_source},
        {"count", spec.calibration_count},
        {"seed", spec.seed},
        {"sampling", spec.calibration_sampling}}},
      {"validation",
       {{"source", spec.validation_source},
        {"limit", spec.validation_limit},
        {"sampling", spec.validation_sampling}}},
      {"test",
       spec.test_source.empty()
           ? json::object()
           : json{{"source", spec.test_source},
                  {"limit", spec.test_limit},
                  {"sampling", spec.test_sampling}}},
      {"search", search},
      {"objective", objective},
      {"accuracy", accuracy},
      {"compute", {{"device", spec.device}, {"capture_dtype", spec.capture_dtype}}},
  };
}

Recipe ApplyReconstructionTier(const Recipe& recipe, const JobSpec& spec) {
  if (!spec.space.reconstruction) return recipe;
  const WeightQuant& tier = *spec.space.reconstruction;
  auto apply = [&](WeightQuant* w) {
    if (!w->quantized()) return;
    WeightQuant next = tier;
    // Reconstruction refines the chosen method's rounding where it can start from it.
    const bool startable = w->method == WeightMethod::kRtn || w->method == WeightMethod::kGptq ||
                           w->method == WeightMethod::kErq;
    next.recon_init = startable ? w->method : WeightMethod::kRtn;
    next.bits = w->bits;
    next.granularity = w->granularity;
    next.group_size = w->group_size;
    next.calibrator = w->calibrator;
    next.symmetric = w->symmetric;
    next.percentile = w->percentile;
    next.gptq_damp = w->gptq_damp;
    next.gptq_block_size = w->gptq_block_size;
    next.gptq_act_order = w->gptq_act_order;
    next.gptq_static_groups = w->gptq_static_groups;
    next.erq_aqer_lambda = w->erq_aqer_lambda;
    next.erq_aqer_lambda_pooled = w->erq_aqer_lambda_pooled;
    next.erq_wqer_lambda = w->erq_wqer_lambda;
    next.erq_wqer_iterations = w->erq_wqer_iterations;
    *w = next;
  };
  Recipe out = recipe;
  apply(&out.linear_default.weight);
  for (auto& [site, config] : out.sites) {
    if (!spec.space.pin.count(site)) apply(&config.weight);
  }
  return out;
}

}  // namespace qs
