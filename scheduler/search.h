// The search job as named stages, from spec to selection: prepare (a worker loads the model and
// data), evaluate (one task per site with the candidates the store lacks), select (the
// least-loss mix under the budget), validate (the whole model with that mix and its close Pareto
// alternatives, further while the accuracy goal is missed or measurement disagrees with
// prediction) and test, returning the best measured mix.
//
// The scheduler never touches tensors: every model-side step is a task for workers (common/
// tasks.h), evaluations arrive through the evaluation store, and the job's own progress is a
// JobState saved in the job store after every step. Embedded and distributed runs differ only in
// the storage implementations.
//
//   QS_ASSIGN_OR_RETURN(SearchResult r, RunSearch("job1", spec, *evals, *jobs, *queue));
#ifndef QS_SCHEDULER_SEARCH_H_
#define QS_SCHEDULER_SEARCH_H_

#include <chrono>
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
#include "common/tasks.h"
#include "storage/document_store.h"
#include "storage/task_queue.h"

namespace qs::scheduler {

// Wall time of each stage of a run, in seconds.
struct StageSeconds {
  double prepare = 0;    // loading, the reference passes, the checkpoints
  double evaluate = 0;   // dispatch until every candidate is stored
  double select = 0;
  double validate = 0;
  double test = 0;       // the returned recipe on the test set
};

// Progress: `stage` is "prepare", "evaluate", "select", "validate" or "test"; `done` of `total`
// units of that stage (a backend may report "prepare" in its own units, such as images).
using ProgressFn = std::function<void(const std::string& stage, size_t done, size_t total)>;

struct SearchOptions {
  ProgressFn progress;  // may be empty
  // The job fails with DEADLINE_EXCEEDED past this point (its queued tasks are cancelled).
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // Polled while waiting; true cancels the job (CANCELLED). May be empty.
  std::function<bool()> cancelled;
  // How long one wait for task outcomes may last before deadline and cancellation are checked.
  std::chrono::milliseconds poll{100};
  // Evaluation tasks a job keeps in the queue at once (0: all). A bounded window lets jobs
  // sharing workers interleave, so a small job is not queued behind every task of a big one.
  size_t dispatch_window = 0;
  // Hands the first two validations to the workers at once when both are certain to run (the
  // optimum and its cheaper neighbour, under refinement). For several worker processes; in one
  // process validations share one session and run one after the other anyway.
  bool prefetch_validation = false;
};

// What a job has done so far, saved after every step so that a restarted scheduler resumes it
// through the same stages: `prepare` fills `facts`, `evaluate` `failures` and `evaluated`,
// `validate` `validated` point by point, `test` `test`. Selection is recomputed (it is pure);
// evaluations are read back from the evaluation store, so a resumed run counts what it found
// there as from the cache.
struct JobState {
  std::string stage = "prepare";  // the stage running or next: prepare ... test, then "done"
  bool prepared = false;
  ModelFacts facts;
  bool evaluated = false;   // every candidate has an evaluation or a recorded failure
  std::map<std::string, Evaluation> failures;  // candidates whose task died, by key
  struct Validated {
    int64_t cost_units = 0;  // the point's cost, to check that the front is the same
    ValidationResult result;
  };
  std::map<size_t, Validated> validated;  // by index into the Pareto front
  bool tested = false;
  TestResult test;
  StageSeconds seconds;  // summed over every run of the job
};

nlohmann::json ToJson(const JobState& state);
StatusOr<JobState> JobStateFromJson(const nlohmann::json& j);

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

// Runs job `job` (an id valid as a store key) to the end, resuming from its state in `jobs` when
// there is one, and saving it there after every step. Every model-side step is a task on
// `queue` (common/tasks.h), which workers must serve, writing evaluations to `evaluations`
// (see worker/). A budget below the cheapest mix, or a missed accuracy criterion, still returns
// the best mix found, with goal_met false and goal_note saying why. INVALID_ARGUMENT for a spec
// the model cannot satisfy (a pin or skip naming no site); FAILED_PRECONDITION when every
// candidate of some site failed; a dead prepare, validate or test task's own status;
// DEADLINE_EXCEEDED or CANCELLED per `options`.
StatusOr<SearchResult> RunSearch(const std::string& job, const JobSpec& spec,
                                 storage::DocumentStore& evaluations, storage::DocumentStore& jobs,
                                 storage::TaskQueue& queue, const SearchOptions& options = {});

// Pushes one task of `job` and waits for its outcome: the worker's result, or the status it died
// with (CANCELLED / DEADLINE_EXCEEDED per `options`).
StatusOr<std::string> RunTask(storage::TaskQueue& queue, const std::string& job,
                              const nlohmann::json& payload, const SearchOptions& options = {});

}  // namespace qs::scheduler

#endif  // QS_SCHEDULER_SEARCH_H_
