// Tasks: what the scheduler asks of workers and what they answer, as JSON both sides read.
//
// Every model-side step of a job is a task: `prepare` (load the model and data, run the float
// reference passes, report ModelFacts), `evaluate` (one site's candidates, results written to
// the evaluation store by candidate key), `validate` and `test` (a whole recipe on the
// validation or test set), `write_weights` (a recipe's quantized weights to a file). Each
// payload names its session: the job's spec, whose data part (model, data sets, device) says
// which loaded model and data the task needs; workers keep sessions by that part's digest, so
// jobs over the same model and data share one. A task's id is its kind and a digest of its
// payload: unique per job and content.
//
//   storage::Task t = MakeTask(job, EvaluateRequest(spec, site, keys, which));
#ifndef QS_COMMON_TASKS_H_
#define QS_COMMON_TASKS_H_

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/evaluation.h"
#include "common/job_spec.h"
#include "common/plan.h"
#include "common/quant_config.h"
#include "common/status.h"

namespace qs {

enum class TaskKind { kPrepare, kEvaluate, kValidate, kTest, kWriteWeights };
const char* ToString(TaskKind kind);

// What the model side reports once it has loaded the model and data.
struct ModelFacts {
  std::string model_digest;
  std::string calibration_digest;
  std::vector<SiteInfo> sites;
  double fp32_top1 = 0;                 // on the validation set
  double fp32_eval_seconds = 0;         // one float pass over the validation set
  double fp32_calibration_seconds = 0;  // one float pass over the calibration set
  int64_t validation_images = 0;
  int64_t calibration_images = 0;
  std::string device;                   // where the model side runs ("cpu", "cuda:0")
};

nlohmann::json ToJson(const ModelFacts& f);
StatusOr<ModelFacts> ModelFactsFromJson(const nlohmann::json& j);
nlohmann::json ToJson(const ValidationResult& v);
StatusOr<ValidationResult> ValidationResultFromJson(const nlohmann::json& j);
nlohmann::json ToJson(const TestResult& t);
StatusOr<TestResult> TestResultFromJson(const nlohmann::json& j);

// The digest of the part of `spec` a session loads (model, data sets and their draws, device,
// capture precision): two jobs with equal digests can share a loaded session.
std::string SessionDigest(const JobSpec& spec);

// A parsed task payload.
struct TaskRequest {
  TaskKind kind = TaskKind::kPrepare;
  JobSpec spec;                 // the session's spec
  std::string session;          // SessionDigest(spec)
  // kEvaluate: the site and its candidates (key and config), and whether MAE is measured.
  std::string site;
  std::vector<std::pair<std::string, nlohmann::json>> candidates;
  bool measure_mae = false;
  // kValidate, kTest, kWriteWeights: the recipe; kWriteWeights: where the file goes.
  nlohmann::json recipe;
  std::string path;
};

// Payload builders. `which` selects `site`'s candidates by index into `keys`.
nlohmann::json PrepareRequest(const JobSpec& spec);
nlohmann::json EvaluateRequest(const JobSpec& spec, const SitePlan& site,
                               const std::vector<std::string>& keys,
                               const std::vector<size_t>& which, bool measure_mae);
nlohmann::json RecipeRequest(TaskKind kind, const JobSpec& spec, const Recipe& recipe,
                             const std::vector<SiteInfo>& sites, const std::string& path = "");

// INVALID_ARGUMENT naming what is wrong with a payload.
StatusOr<TaskRequest> ParseTaskRequest(const std::string& payload);

// The id of the task with `payload`: "<kind>:<digest of the payload>".
std::string TaskIdFor(const nlohmann::json& payload);

}  // namespace qs

#endif  // QS_COMMON_TASKS_H_
