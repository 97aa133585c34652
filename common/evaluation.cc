#include "common/evaluation.h"

#include <cmath>
#include <limits>

#include "common/json_fields.h"

namespace qs {
namespace {

using nlohmann::json;

json Number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

Status ReadNumber(const json& j, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end()) return InvalidArgumentError(std::string("evaluation: missing '") + key + "'");
  if (it->is_null()) {
    *out = std::numeric_limits<double>::infinity();
    return OkStatus();
  }
  return ReadField(j, key, out);
}

}  // namespace

json ToJson(const Evaluation& e) {
  json j{{"key", e.key},
              {"site", e.site},
              {"sqnr_db", Number(e.sqnr_db)},
              {"mse", e.mse},
              {"mae", e.mae ? json(*e.mae) : json(nullptr)},
              {"cosine", e.cosine},
              {"noise_ratio", e.noise_ratio},
              {"weight_sqnr_db", Number(e.weight_sqnr_db)},
              {"seconds", e.seconds},
              {"error", e.error},
              {"error_code", e.ok() ? "" : StatusCodeName(e.error_code)}};
  // Only when measured: entries without it keep the text they always had.
  if (e.nuclear_error) j["nuclear_error"] = *e.nuclear_error;
  if (e.input_sqnr_db) j["input_sqnr_db"] = Number(*e.input_sqnr_db);
  return j;
}

StatusOr<Evaluation> EvaluationFromJson(const json& j) {
  Evaluation e;
  QS_RETURN_IF_ERROR(CheckKeys(j,
                               {"key", "site", "sqnr_db", "mse", "mae", "cosine", "noise_ratio",
                                "weight_sqnr_db", "seconds", "error", "error_code",
                                "nuclear_error", "input_sqnr_db"},
                               "evaluation"));
  QS_RETURN_IF_ERROR(ReadField(j, "key", &e.key));
  QS_RETURN_IF_ERROR(ReadField(j, "site", &e.site));
  QS_RETURN_IF_ERROR(ReadNumber(j, "sqnr_db", &e.sqnr_db));
  QS_RETURN_IF_ERROR(ReadNumber(j, "mse", &e.mse));
  if (j.contains("mae") && !j.at("mae").is_null()) {
    double mae = 0;
    QS_RETURN_IF_ERROR(ReadField(j, "mae", &mae));
    e.mae = mae;
  }
  if (j.contains("nuclear_error")) {
    double nuclear = 0;
    QS_RETURN_IF_ERROR(ReadField(j, "nuclear_error", &nuclear));
    e.nuclear_error = nuclear;
  }
  if (j.contains("input_sqnr_db")) {
    double in = 0;
    QS_RETURN_IF_ERROR(ReadNumber(j, "input_sqnr_db", &in));
    e.input_sqnr_db = in;
  }
  QS_RETURN_IF_ERROR(ReadNumber(j, "cosine", &e.cosine));
  QS_RETURN_IF_ERROR(ReadNumber(j, "noise_ratio", &e.noise_ratio));
  QS_RETURN_IF_ERROR(ReadNumber(j, "weight_sqnr_db", &e.weight_sqnr_db));
  QS_RETURN_IF_ERROR(ReadNumber(j, "seconds", &e.seconds));
  QS_RETURN_IF_ERROR(ReadField(j, "error", &e.error));
  if (!e.error.empty()) {
    // Entries written before codes were stored carry the code at the head of the message.
    std::string name = e.error.substr(0, e.error.find(':'));
    if (j.contains("error_code")) QS_RETURN_IF_ERROR(ReadField(j, "error_code", &name));
    const auto code = StatusCodeFromName(name);
    e.error_code = code && *code != StatusCode::kOk ? *code : StatusCode::kUnknown;
  }
  if (e.key.empty()) return InvalidArgumentError("evaluation: empty key");
  return e;
}

bool Plausible(const Evaluation& e) {
  if (!e.ok()) return true;  // a failure carries no numbers to check
  auto finite_non_negative = [](double v) { return std::isfinite(v) && v >= 0; };
  if (!finite_non_negative(e.mse) || !finite_non_negative(e.noise_ratio) ||
      !finite_non_negative(e.seconds)) {
    return false;
  }
  if (e.mae && !finite_non_negative(*e.mae)) return false;
  if (e.nuclear_error && !finite_non_negative(*e.nuclear_error)) return false;
  if (!std::isfinite(e.cosine) || e.cosine < -1.0001 || e.cosine > 1.0001) return false;
  // SQNR is +inf when lossless, never NaN; it must agree with the noise ratio it derives from.
  if (std::isnan(e.sqnr_db) || std::isnan(e.weight_sqnr_db)) return false;
  if (e.input_sqnr_db && std::isnan(*e.input_sqnr_db)) return false;
  if (e.noise_ratio > 0 && std::isfinite(e.sqnr_db) &&
      std::abs(e.sqnr_db + 10 * std::log10(e.noise_ratio)) > 1e-3 * (1 + std::abs(e.sqnr_db))) {
    return false;
  }
  return !e.site.empty();
}

std::optional<Evaluation> ParseStoredEvaluation(const std::string& stored, const std::string& key) {
  json j = json::parse(stored, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return std::nullopt;
  auto e = EvaluationFromJson(j);
  if (!e.ok() || e->key != key) return std::nullopt;
  if (!e->ok() && IsTransient(e->error_code)) return std::nullopt;
  // Numbers no measurement gives (a negative noise ratio would buy every site its cheapest
  // candidate) mark the entry as damaged.
  if (!Plausible(*e)) return std::nullopt;
  return *e;
}

double RankingLoss(const Evaluation& e, RankingMetric metric) {
  switch (metric) {
    case RankingMetric::kNoiseRatio:
      return e.noise_ratio;
    case RankingMetric::kMse:
      return e.mse;
    case RankingMetric::kMae:
      return e.mae ? *e.mae : std::numeric_limits<double>::quiet_NaN();
    case RankingMetric::kNuclear:
      return e.nuclear_error ? *e.nuclear_error : std::numeric_limits<double>::quiet_NaN();
  }
  return e.noise_ratio;
}

bool HasMetric(const Evaluation& e, RankingMetric metric) {
  if (!e.ok()) return true;
  if (metric == RankingMetric::kMae) return e.mae.has_value();
  if (metric == RankingMetric::kNuclear) return e.nuclear_error.has_value();
  return true;
}

}  // namespace qs
