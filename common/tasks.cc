#include "common/tasks.h"

#include "common/enum_names.h"
#include "common/json_fields.h"
#include "common/sha256.h"

namespace qs {
namespace {

using nlohmann::json;

constexpr std::pair<const char*, TaskKind> kTaskKinds[] = {
    {"prepare", TaskKind::kPrepare},
    {"evaluate", TaskKind::kEvaluate},
    {"validate", TaskKind::kValidate},
    {"test", TaskKind::kTest},
    {"write_weights", TaskKind::kWriteWeights},
};

// Fails naming the first of `keys` that `j` lacks, then checks for keys beyond `keys` and
// `optional`.
Status RequireKeys(const json& j, const std::set<std::string>& keys, const char* what,
                   std::set<std::string> optional = {}) {
  if (!j.is_object()) return InvalidArgumentError(std::string(what) + " must be an object");
  for (const auto& k : keys) {
    if (!j.contains(k)) return InvalidArgumentError(std::string(what) + ": missing '" + k + "'");
  }
  optional.insert(keys.begin(), keys.end());
  return CheckKeys(j, optional, what);
}

std::map<std::string, SiteKind> SiteKinds(const std::vector<SiteInfo>& sites) {
  std::map<std::string, SiteKind> kinds;
  for (const auto& s : sites) kinds[s.name] = s.kind;
  return kinds;
}

json Session(const JobSpec& spec) {
  return {{"digest", SessionDigest(spec)}, {"spec", ToJson(spec)}};
}

}  // namespace

const char* ToString(TaskKind kind) { return EnumName(kind, kTaskKinds); }

json ToJson(const ModelFacts& f) {
  json sites = json::array();
  for (const auto& s : f.sites) {
    sites.push_back({{"name", s.name},
                     {"kind", ToString(s.kind)},
                     {"weight_params", s.weight_params},
                     {"macs", s.macs},
                     {"num_heads", s.num_heads},
                     {"input_width", s.input_width}});
  }
  return {{"model_digest", f.model_digest},
          {"calibration_digest", f.calibration_digest},
          {"sites", sites},
          {"fp32_top1", f.fp32_top1},
          {"fp32_eval_seconds", f.fp32_eval_seconds},
          {"fp32_calibration_seconds", f.fp32_calibration_seconds},
          {"validation_images", f.validation_images},
          {"calibration_images", f.calibration_images},
          {"device", f.device}};
}

StatusOr<ModelFacts> ModelFactsFromJson(const json& j) {
  ModelFacts f;
  QS_RETURN_IF_ERROR(RequireKeys(j,
                                 {"model_digest", "calibration_digest", "sites", "fp32_top1",
                                  "fp32_eval_seconds", "fp32_calibration_seconds",
                                  "validation_images", "calibration_images", "device"},
                                 "model facts"));
  QS_RETURN_IF_ERROR(ReadField(j, "model_digest", &f.model_digest));
  QS_RETURN_IF_ERROR(ReadField(j, "calibration_digest", &f.calibration_digest));
  QS_RETURN_IF_ERROR(ReadField(j, "fp32_top1", &f.fp32_top1));
  QS_RETURN_IF_ERROR(ReadField(j, "fp32_eval_seconds", &f.fp32_eval_seconds));
  QS_RETURN_IF_ERROR(ReadField(j, "fp32_calibration_seconds", &f.fp32_calibration_seconds));
  QS_RETURN_IF_ERROR(ReadField(j, "validation_images", &f.validation_images));
  QS_RETURN_IF_ERROR(ReadField(j, "calibration_images", &f.calibration_images));
  QS_RETURN_IF_ERROR(ReadField(j, "device", &f.device));
  if (!j.at("sites").is_array()) return InvalidArgumentError("model facts: 'sites' must be an array");
  for (const auto& s : j.at("sites")) {
    SiteInfo site;
    std::string kind;
    QS_RETURN_IF_ERROR(RequireKeys(s, {"name", "kind", "weight_params", "macs"}, "site",
                                   {"num_heads", "input_width"}));
    QS_RETURN_IF_ERROR(ReadField(s, "name", &site.name));
    QS_RETURN_IF_ERROR(ReadField(s, "kind", &kind));
    QS_RETURN_IF_ERROR(ReadField(s, "weight_params", &site.weight_params));
    QS_RETURN_IF_ERROR(ReadField(s, "macs", &site.macs));
    // Facts written before these two keys existed keep the defaults (one head, width unknown).
    if (s.contains("num_heads")) QS_RETURN_IF_ERROR(ReadField(s, "num_heads", &site.num_heads));
    if (s.contains("input_width")) {
      QS_RETURN_IF_ERROR(ReadField(s, "input_width", &site.input_width));
    }
    if (site.num_heads < 1 || site.input_width < 0 || site.weight_params < 0 || site.macs < 0) {
      return InvalidArgumentError("site " + site.name + ": counts out of range");
    }
    if (kind != "linear" && kind != "matmul" && kind != "nonlinear") {
      return InvalidArgumentError("site " + site.name + ": unknown kind '" + kind + "'");
    }
    site.kind = kind == "linear"   ? SiteKind::kLinear
                : kind == "matmul" ? SiteKind::kMatmul
                                   : SiteKind::kNonlinear;
    f.sites.push_back(site);
  }
  return f;
}

json ToJson(const ValidationResult& v) {
  return {{"top1", v.top1},
          {"top1_agreement", v.top1_agreement},
          {"output_kl", v.output_kl},
          {"seconds", v.seconds},
          {"reconstruction_seconds", v.reconstruction_seconds}};
}

StatusOr<ValidationResult> ValidationResultFromJson(const json& j) {
  ValidationResult v;
  QS_RETURN_IF_ERROR(
      RequireKeys(j, {"top1", "top1_agreement", "output_kl", "seconds"}, "validation result",
                  {"reconstruction_seconds"}));
  QS_RETURN_IF_ERROR(ReadField(j, "top1", &v.top1));
  QS_RETURN_IF_ERROR(ReadField(j, "top1_agreement", &v.top1_agreement));
  QS_RETURN_IF_ERROR(ReadField(j, "output_kl", &v.output_kl));
  QS_RETURN_IF_ERROR(ReadField(j, "seconds", &v.seconds));
  // Optional: results saved before the reconstruction tier existed lack it.
  QS_RETURN_IF_ERROR(ReadField(j, "reconstruction_seconds", &v.reconstruction_seconds));
  return v;
}

json ToJson(const TestResult& t) {
  return {{"measured", t.measured}, {"source", t.source},   {"images", t.images},
          {"top1", t.top1},         {"fp32_top1", t.fp32_top1}, {"seconds", t.seconds}};
}

StatusOr<TestResult> TestResultFromJson(const json& j) {
  TestResult t;
  QS_RETURN_IF_ERROR(RequireKeys(
      j, {"measured", "source", "images", "top1", "fp32_top1", "seconds"}, "test result"));
  QS_RETURN_IF_ERROR(ReadField(j, "measured", &t.measured));
  QS_RETURN_IF_ERROR(ReadField(j, "source", &t.source));
  QS_RETURN_IF_ERROR(ReadField(j, "images", &t.images));
  QS_RETURN_IF_ERROR(ReadField(j, "top1", &t.top1));
  QS_RETURN_IF_ERROR(ReadField(j, "fp32_top1", &t.fp32_top1));
  QS_RETURN_IF_ERROR(ReadField(j, "seconds", &t.seconds));
  return t;
}

std::string SessionDigest(const JobSpec& spec) {
  json j = ToJson(spec);
  // The candidate space, objective and criterion choose among results; they load nothing.
  for (const char* k : {"search", "objective", "accuracy"}) j.erase(k);
  return Sha256Hex(j.dump());
}

json PrepareRequest(const JobSpec& spec) {
  return {{"kind", ToString(TaskKind::kPrepare)}, {"session", Session(spec)}};
}

json EvaluateRequest(const JobSpec& spec, const SitePlan& site,
                     const std::vector<std::string>& keys, const std::vector<size_t>& which,
                     bool measure_mae) {
  json candidates = json::array();
  for (size_t j : which) {
    candidates.push_back({{"key", keys[j]},
                          {"config", ToJson(site.candidates[j].config, site.site.kind)}});
  }
  return {{"kind", ToString(TaskKind::kEvaluate)},
          {"session", Session(spec)},
          {"site", site.site.name},
          {"candidates", candidates},
          {"measure_mae", measure_mae}};
}

json RecipeRequest(TaskKind kind, const JobSpec& spec, const Recipe& recipe,
                   const std::vector<SiteInfo>& sites, const std::string& path) {
  json j = {{"kind", ToString(kind)},
            {"session", Session(spec)},
            {"recipe", RecipeToJson(recipe, SiteKinds(sites))}};
  if (kind == TaskKind::kWriteWeights) j["path"] = path;
  return j;
}

StatusOr<TaskRequest> ParseTaskRequest(const std::string& payload) {
  const json j = json::parse(payload, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("task payload is not a JSON object");
  TaskRequest r;
  std::string kind;
  if (!j.contains("kind")) return InvalidArgumentError("task payload: missing 'kind'");
  QS_RETURN_IF_ERROR(ReadField(j, "kind", &kind));
  QS_ASSIGN_OR_RETURN(r.kind, ParseEnum(kind, "task kind", kTaskKinds));
  std::set<std::string> keys = {"kind", "session"};
  switch (r.kind) {
    case TaskKind::kPrepare:
      break;
    case TaskKind::kEvaluate:
      keys.insert({"site", "candidates", "measure_mae"});
      break;
    case TaskKind::kValidate:
    case TaskKind::kTest:
      keys.insert("recipe");
      break;
    case TaskKind::kWriteWeights:
      keys.insert({"recipe", "path"});
      break;
  }
  QS_RETURN_IF_ERROR(RequireKeys(j, keys, "task payload"));
  const json& session = j.at("session");
  QS_RETURN_IF_ERROR(RequireKeys(session, {"digest", "spec"}, "task session"));
  QS_ASSIGN_OR_RETURN(r.spec, ParseJobSpec(session.at("spec"), ""));
  QS_RETURN_IF_ERROR(ReadField(session, "digest", &r.session));
  if (r.session != SessionDigest(r.spec)) {
    return InvalidArgumentError("task session: digest does not match its spec");
  }
  if (r.kind == TaskKind::kEvaluate) {
    QS_RETURN_IF_ERROR(ReadField(j, "site", &r.site));
    QS_RETURN_IF_ERROR(ReadField(j, "measure_mae", &r.measure_mae));
    if (!j.at("candidates").is_array()) {
      return InvalidArgumentError("task payload: 'candidates' must be an array");
    }
    for (const auto& c : j.at("candidates")) {
      QS_RETURN_IF_ERROR(RequireKeys(c, {"key", "config"}, "candidate"));
      std::string key;
      QS_RETURN_IF_ERROR(ReadField(c, "key", &key));
      r.candidates.emplace_back(key, c.at("config"));
    }
  }
  if (j.contains("recipe")) r.recipe = j.at("recipe");
  QS_RETURN_IF_ERROR(ReadField(j, "path", &r.path));
  return r;
}

std::string TaskIdFor(const json& payload) {
  return payload.value("kind", "task") + ":" + Sha256Hex(payload.dump()).substr(0, 32);
}

}  // namespace qs
