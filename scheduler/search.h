// The search job, from spec to selection: plan the candidates, dispatch the ones the store lacks
// as one task per site, wait for the workers, select the least-loss mix under the budget, and
// validate it on the whole model together with its close Pareto alternatives (further while the
// accuracy goal is missed or measurement disagrees with prediction), returning the best measured.
//
// The scheduler never touches tensors: the model side (loading, validation, weights) is behind
// ModelBackend, and evaluations arrive through the EvaluationStore, written by workers that take
// tasks from the TaskQueue. Embedded and distributed runs differ only in those implementations.
//
//   QS_ASSIGN_OR_RETURN(SearchResult r, RunSearch(spec, backend, *store, *queue, {}));
#ifndef QS_SCHEDULER_SEARCH_H_
#define QS_SCHEDULER_SEARCH_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/evaluation.h"
#include "common/job_spec.h"
#include "common/plan.h"
#include "common/quant_config.h"
#include "common/select.h"
#include "common/status.h"
#include "storage/evaluation_store.h"
#include "storage/task_queue.h"

namespace qs::scheduler {

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

// Wall time of each stage of a run, in seconds.
struct StageSeconds {
  double prepare = 0;    // loading, the reference passes, the checkpoints
  double evaluate = 0;   // dispatch until every candidate is stored
  double select = 0;
  double validate = 0;
  double test = 0;       // the returned recipe on the test set
};

class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  // Loads model and data and captures what workers need. Called once, first.
  virtual StatusOr<ModelFacts> Prepare() = 0;
  // Quantizes the whole model with `recipe` (sequentially) and measures it on the validation set.
  virtual StatusOr<ValidationResult> Validate(const Recipe& recipe) = 0;
  // The returned recipe's top-1 on the job's test set, with the float model's; measured = false
  // when the job names none (the default, for backends without one).
  virtual StatusOr<TestResult> Test(const Recipe& recipe) {
    (void)recipe;
    return TestResult{};
  }
  // Writes the quantized weights of `recipe` (validated before) to `path`.
  virtual Status WriteWeights(const Recipe& recipe, const std::string& path) = 0;
};

// Progress: `stage` is "prepare", "evaluate", "select", "validate" or "test"; `done` of `total`
// units of that stage (a backend may report "prepare" in its own units, such as images).
using ProgressFn = std::function<void(const std::string& stage, size_t done, size_t total)>;

struct SearchOptions {
  ProgressFn progress;  // may be empty
};

// One selected site: the chosen candidate and the runner-up (the lowest-loss other candidate of
// this site), with why it was not taken.
struct SiteChoice {
  Candidate chosen;
  Evaluation chosen_eval;
  int64_t cost_units = 0;
  bool has_runner_up = false;
  Candidate runner_up;
  Evaluation runner_up_eval;
  std::string why;
};

struct ParetoPoint {
  int64_t cost_units = 0;
  double avg_weight_bits = 0;
  double predicted_loss = 0;
  bool validated = false;
  double top1 = 0;
};

struct SearchResult {
  ModelFacts facts;
  Plan plan;
  std::map<std::string, Evaluation> evaluations;  // by key
  size_t evaluated_now = 0;   // candidates this run evaluated
  size_t from_cache = 0;      // candidates found in the store
  size_t failed = 0;          // candidates whose evaluation failed
  int64_t budget_units = 0;
  std::vector<ParetoPoint> pareto;
  size_t chosen_point = 0;    // index into `pareto`
  size_t validated_points() const {
    size_t n = 0;
    for (const auto& p : pareto) n += p.validated;
    return n;
  }
  std::vector<SiteChoice> choices;  // in plan order
  Recipe recipe;
  ValidationResult validation;
  TestResult test;            // the returned recipe on the test set, when the job names one
  double avg_weight_bits = 0;
  double model_weight_bytes = 0;
  int64_t bops = 0;
  bool goal_met = false;
  std::string goal_note;      // why the goal was missed, when it was
  bool selection_exact = true;  // false when costs had to be rounded (see KnapsackOptions)
  std::string selection_note;   // says so, when they were
  StageSeconds seconds;
};

// Runs the job. A budget below the cheapest mix, or a missed accuracy criterion, still returns the
// best mix found, with goal_met false and goal_note saying why. INVALID_ARGUMENT for a spec the
// model cannot satisfy (a pin or skip naming no site); FAILED_PRECONDITION when every candidate
// of some site failed. The queue must be served by workers writing each task's evaluations to
// `store` (see worker/).
StatusOr<SearchResult> RunSearch(const JobSpec& spec, ModelBackend& backend,
                                 storage::EvaluationStore& store, storage::TaskQueue& queue,
                                 const SearchOptions& options = {});

// A task's payload: the site, its candidates (key + config) and whether MAE must be measured,
// as workers read it.
nlohmann::json TaskPayload(const SitePlan& site, const std::vector<std::string>& keys,
                           const std::vector<size_t>& which, bool measure_mae = false);

}  // namespace qs::scheduler

#endif  // QS_SCHEDULER_SEARCH_H_
