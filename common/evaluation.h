// Evaluation: one candidate's measured numbers, stored under its candidate key.
//
// A candidate that fails (NaN, a singular solve) is an Evaluation with `error` set, not a crash:
// it is stored like any other result and simply never selected.
#ifndef QS_COMMON_EVALUATION_H_
#define QS_COMMON_EVALUATION_H_

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/job_spec.h"
#include "common/status.h"

namespace qs {

struct Evaluation {
  std::string key;
  std::string site;
  // Site output, quantized against float, on the calibration inputs of the float model.
  double sqnr_db = 0;        // +inf when lossless
  double mse = 0;
  std::optional<double> mae;  // measured only when the job ranks by MAE (it costs a pass)
  // Liu et al. 2021's mixed-precision sensitivity: the mean nuclear norm of the site's float
  // output matrices (a linear's [tokens, out] per image; the attention map per image and head at
  // softmax·v, the scores at q·kᵀ) times the squared output error per image. Measured only when
  // the job ranks by it.
  std::optional<double> nuclear_error;
  // Non-linear sites: SQNR of the input on the reference grid every method at those bits sees;
  // input_sqnr_db − sqnr_db is the SQNR difference (how many dB the op loses) the mixed
  // non-linear choice ranks by.
  std::optional<double> input_sqnr_db;
  double cosine = 1;
  double noise_ratio = 0;    // Σ(y − ŷ)² / Σy², i.e. 10^(−sqnr_db/10)
  double weight_sqnr_db = 0; // +inf for float weights and matmul sites
  double seconds = 0;        // wall time of this evaluation
  std::string error;         // non-empty: the candidate failed and why
  StatusCode error_code = StatusCode::kOk;  // with `error`: transient failures are never stored

  bool ok() const { return error.empty(); }
  // Records `s` (not OK) as the failure.
  void SetError(const Status& s) {
    error = s.ToString();
    error_code = s.code();
  }
};

// A whole quantized model measured on the validation set.
struct ValidationResult {
  double top1 = 0;            // fraction
  double top1_agreement = 0;  // with the float model's predictions
  double output_kl = 0;       // mean KL(float ‖ quantized) of the output distributions, nats
  double seconds = 0;         // quantization (calibration pass) plus evaluation
  double reconstruction_seconds = 0;  // of `seconds`, block reconstruction (brecq, mgrq sites)
};

// The returned recipe on the test set, which neither calibration nor the choice saw.
struct TestResult {
  bool measured = false;  // false when the job names no test set
  std::string source;     // the set, as drawn
  int64_t images = 0;
  double top1 = 0;        // fraction
  double fp32_top1 = 0;   // the float model's, on the same images
  double seconds = 0;     // the float and quantized passes
};

// JSON with +inf written as null.
nlohmann::json ToJson(const Evaluation& e);
StatusOr<Evaluation> EvaluationFromJson(const nlohmann::json& j);

// The evaluation stored under `key`, or nullopt when `stored` is damaged (not JSON, not an
// evaluation, another key's, or numbers out of range: negative or non-finite errors, a cosine
// outside [-1, 1], an SQNR that disagrees with its noise ratio) or holds a transient failure:
// such an entry is evaluated again.
std::optional<Evaluation> ParseStoredEvaluation(const std::string& stored, const std::string& key);

// The additive per-site loss the selection minimizes under `metric`.
double RankingLoss(const Evaluation& e, RankingMetric metric);
// Whether `e` holds what ranking by `metric` needs (a stored evaluation without MAE must be
// measured again for a job that ranks by MAE).
bool HasMetric(const Evaluation& e, RankingMetric metric);

}  // namespace qs

#endif  // QS_COMMON_EVALUATION_H_
