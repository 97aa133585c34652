#include "scheduler/search.h"

#include "scheduler/artifacts.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <sstream>

namespace qs::scheduler {
namespace {

using nlohmann::json;


bool CriterionMet(const JobSpec& spec, double fp32_top1, double top1) {
  const double drop = fp32_top1 - top1;
  if (spec.max_abs_top1_drop >= 0 && drop > spec.max_abs_top1_drop + 1e-12) return false;
  if (spec.max_rel_top1_drop >= 0 && fp32_top1 > 0 &&
      drop / fp32_top1 > spec.max_rel_top1_drop + 1e-12) {
    return false;
  }
  return true;
}



using Progress = std::function<void(const char* stage, size_t done, size_t total)>;

// One selection group per site over its candidates that evaluated cleanly (`option_candidate`
// maps an option back to its candidate); counts the failures in r->failed.
// FAILED_PRECONDITION when every candidate of some site failed.
Status SelectionGroups(const JobSpec& spec, const std::vector<std::vector<std::string>>& keys,
                       SearchResult* out, std::vector<SelectionGroup>* groups_out,
                       std::vector<std::vector<size_t>>* option_candidate_out) {
  SearchResult& r = *out;
  const size_t n_sites = r.plan.sites.size();
  auto& groups = *groups_out;
  auto& option_candidate = *option_candidate_out;
  groups.assign(n_sites, {});
  option_candidate.assign(n_sites, {});
  for (size_t i = 0; i < n_sites; ++i) {
    const SitePlan& sp = r.plan.sites[i];
    groups[i].site = sp.site.name;
    for (size_t j = 0; j < sp.candidates.size(); ++j) {
      Evaluation& e = r.evaluations.at(keys[i][j]);
      const double loss = e.ok() ? RankingLoss(e, spec.metric) : 0;
      if (e.ok() && !std::isfinite(loss)) e.error = "non-finite ranking loss";
      if (!e.ok()) {
        ++r.failed;
        continue;
      }
      groups[i].options.push_back(
          {CostUnits(spec.budget_kind, CostOf(sp.site, sp.candidates[j].config)), loss});
      option_candidate[i].push_back(j);
    }
    if (groups[i].options.empty()) {
      return FailedPreconditionError("every candidate of site " + sp.site.name +
                                     " failed to evaluate; first error: " +
                                     r.evaluations.at(keys[i][0]).error);
    }
  }
  return OkStatus();
}

// The chosen mix `s`, per site with its runner-up and why it lost, and the mix's sizes.
void DescribeChoices(const JobSpec& spec, const std::vector<SelectionGroup>& groups,
                     const std::vector<std::vector<size_t>>& option_candidate,
                     const std::vector<std::vector<std::string>>& keys, const KnapsackSolution& s,
                     SearchResult* out) {
  SearchResult& r = *out;
  const size_t n_sites = r.plan.sites.size();
  const double total_params =
      static_cast<double>(std::max<int64_t>(1, r.plan.total_weight_params));
  int64_t weight_bits = 0;
  for (size_t i = 0; i < n_sites; ++i) {
    const SitePlan& sp = r.plan.sites[i];
    SiteChoice choice;
    const size_t j = option_candidate[i][s.choice[i]];
    choice.chosen = sp.candidates[j];
    choice.chosen_eval = r.evaluations.at(keys[i][j]);
    choice.cost_units = groups[i].options[s.choice[i]].cost;
    const CandidateCost cost = CostOf(sp.site, choice.chosen.config);
    weight_bits += cost.weight_bits;
    r.bops += cost.bops;
    // Runner-up: the best other option by loss (then cost, then order).
    int best_other = -1;
    for (size_t o = 0; o < groups[i].options.size(); ++o) {
      if (static_cast<int>(o) == s.choice[i]) continue;
      const auto& a = groups[i].options[o];
      if (best_other < 0 || a.loss < groups[i].options[best_other].loss ||
          (a.loss == groups[i].options[best_other].loss &&
           a.cost < groups[i].options[best_other].cost)) {
        best_other = static_cast<int>(o);
      }
    }
    if (best_other >= 0) {
      const size_t rj = option_candidate[i][best_other];
      choice.has_runner_up = true;
      choice.runner_up = sp.candidates[rj];
      choice.runner_up_eval = r.evaluations.at(keys[i][rj]);
      const auto& chosen_opt = groups[i].options[s.choice[i]];
      const auto& other = groups[i].options[best_other];
      std::ostringstream why;
      if (other.loss < chosen_opt.loss) {
        why << "lower loss (" << other.loss << " vs " << chosen_opt.loss << ") at "
            << (other.cost - chosen_opt.cost) << " more " << ToString(spec.budget_kind)
            << " cost units; the chosen mix as a whole has the least loss the budget allows";
      } else if (other.loss == chosen_opt.loss) {
        why << "equal loss at a cost of " << other.cost << " vs " << chosen_opt.cost;
      } else {
        why << "higher loss (" << other.loss << " vs " << chosen_opt.loss << ")";
      }
      choice.why = why.str();
    } else {
      choice.why = sp.fixed                      ? "fixed by the spec (skip or pin)"
                   : sp.candidates.size() == 1 ? "the only candidate in the search space"
                                               : "the only candidate that evaluated cleanly";
    }
    r.choices.push_back(choice);
  }
  r.avg_weight_bits = weight_bits / total_params;
  r.model_weight_bytes = weight_bits / 8.0;
}

// The selection stage's outcome: the groups, each option's candidate, the Pareto front and the
// point the budget picks.
struct FrontChoice {
  std::vector<SelectionGroup> groups;
  std::vector<std::vector<size_t>> option_candidate;
  std::vector<KnapsackSolution> front;
  size_t chosen = 0;       // the costliest point within the budget (the cheapest if none is)
  bool budget_ok = true;   // false when even the cheapest point is over the budget
};

// Selects over the candidates that evaluated cleanly: the Pareto front (r->pareto), the point
// within the budget, and the notes on a budget below the space or rounded costs.
StatusOr<FrontChoice> SelectFront(const JobSpec& spec,
                                  const std::vector<std::vector<std::string>>& keys,
                                  SearchResult* out) {
  SearchResult& r = *out;
  FrontChoice c;
  const size_t n_sites = r.plan.sites.size();
  QS_RETURN_IF_ERROR(SelectionGroups(spec, keys, &r, &c.groups, &c.option_candidate));
  bool exact = true;
  KnapsackOptions knapsack;
  knapsack.exact = &exact;
  QS_ASSIGN_OR_RETURN(c.front, ParetoFront(c.groups, knapsack));
  r.selection_exact = exact;
  const double total_params =
      static_cast<double>(std::max<int64_t>(1, r.plan.total_weight_params));
  auto weight_bits_of = [&](const KnapsackSolution& s) {
    int64_t bits = 0;
    for (size_t i = 0; i < n_sites; ++i) {
      const SitePlan& sp = r.plan.sites[i];
      bits += CostOf(sp.site, sp.candidates[c.option_candidate[i][s.choice[i]]].config).weight_bits;
    }
    return bits;
  };
  for (const auto& p : c.front) {
    r.pareto.push_back({p.cost, weight_bits_of(p) / total_params, p.loss, false, 0});
  }
  for (size_t k = 0; k < c.front.size(); ++k) {
    if (c.front[k].cost <= r.budget_units) c.chosen = k;
  }
  if (c.front[0].cost > r.budget_units) {
    c.budget_ok = false;
    r.goal_note = "the budget is below the cheapest mix in the search space; returning that mix";
  }
  if (!exact) {
    r.selection_note =
        "the search space needed more budget cells than the selection allows, so costs were "
        "rounded up to a coarser unit: the mix fits the budget but may not be the optimum";
  }
  return c;
}

// Validation, tiered: the optimum (front[chosen]) first, then the next cheaper Pareto points (the
// close alternatives) while the accuracy goal is missed or measured quality disagrees with the
// prediction (a cheaper point measuring better than every point before it), at most
// max_validations in all. The best measured point wins (its index is returned, its result left
// in r->validation); ties keep the costlier one, which the prediction prefers.
StatusOr<size_t> ValidateTiered(
    const JobSpec& spec, size_t chosen,
    const std::function<StatusOr<ValidationResult>(size_t point)>& validate,
    const Progress& progress, SearchResult* out, bool* criterion_ok) {
  SearchResult& r = *out;
  const size_t tries = std::min<size_t>(spec.max_validations, chosen + 1);
  size_t best = chosen;
  size_t validated = 0;
  *criterion_ok = false;
  for (size_t t = 0; t < tries; ++t) {
    const size_t k = chosen - t;
    progress("validate", t, tries);
    QS_ASSIGN_OR_RETURN(ValidationResult v, validate(k));
    r.pareto[k].validated = true;
    ++validated;
    r.pareto[k].top1 = v.top1;
    const bool improved = t == 0 || v.top1 > r.validation.top1;
    if (improved) {
      r.validation = v;
      best = k;
    }
    // The criterion only asks for enough top-1, so once the best so far meets it, it stays met.
    *criterion_ok = CriterionMet(spec, r.facts.fp32_top1, r.validation.top1);
    const bool disagreement = t > 0 && improved;
    if (*criterion_ok && (!spec.refine_validation || (t > 0 && !disagreement))) break;
  }
  progress("validate", validated, validated);
  return best;
}

}  // namespace

json ToJson(const JobState& state) {
  json failures = json::array();
  for (const auto& [key, e] : state.failures) failures.push_back(ToJson(e));
  json validated = json::array();
  for (const auto& [point, v] : state.validated) {
    validated.push_back({{"point", point}, {"cost_units", v.cost_units}, {"result", ToJson(v.result)}});
  }
  const StageSeconds& t = state.seconds;
  return {{"stage", state.stage},
          {"facts", state.prepared ? ToJson(state.facts) : json(nullptr)},
          {"evaluated", state.evaluated},
          {"failures", failures},
          {"validated", validated},
          {"test", state.tested ? ToJson(state.test) : json(nullptr)},
          {"seconds",
           {{"prepare", t.prepare},
            {"evaluate", t.evaluate},
            {"select", t.select},
            {"validate", t.validate},
            {"test", t.test}}}};
}

StatusOr<JobState> JobStateFromJson(const json& j) {
  JobState s;
  try {
    s.stage = j.at("stage").get<std::string>();
    if (!j.at("facts").is_null()) {
      QS_ASSIGN_OR_RETURN(s.facts, ModelFactsFromJson(j.at("facts")));
      s.prepared = true;
    }
    s.evaluated = j.at("evaluated").get<bool>();
    for (const auto& f : j.at("failures")) {
      QS_ASSIGN_OR_RETURN(Evaluation e, EvaluationFromJson(f));
      s.failures[e.key] = e;
    }
    for (const auto& v : j.at("validated")) {
      JobState::Validated point;
      point.cost_units = v.at("cost_units").get<int64_t>();
      QS_ASSIGN_OR_RETURN(point.result, ValidationResultFromJson(v.at("result")));
      s.validated[v.at("point").get<size_t>()] = point;
    }
    if (!j.at("test").is_null()) {
      QS_ASSIGN_OR_RETURN(s.test, TestResultFromJson(j.at("test")));
      s.tested = true;
    }
    const json& t = j.at("seconds");
    s.seconds = {t.at("prepare").get<double>(), t.at("evaluate").get<double>(),
                 t.at("select").get<double>(), t.at("validate").get<double>(),
                 t.at("test").get<double>()};
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("job state: ") + e.what());
  }
  return s;
}

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// OK while the job may go on; CANCELLED or DEADLINE_EXCEEDED (its queued tasks cancelled) not.
Status CheckLive(storage::TaskQueue& queue, const std::string& job, const SearchOptions& options) {
  Status stop;
  if (options.cancelled && options.cancelled()) {
    stop = Status(StatusCode::kCancelled, "job " + job + " was cancelled");
  } else if (Clock::now() >= options.deadline) {
    stop = Status(StatusCode::kDeadlineExceeded, "job " + job + " ran past its deadline");
  }
  if (!stop.ok()) (void)queue.CancelJob(job);
  return stop;
}

// One run of a job's stages over its saved state.
class JobRun {
 public:
  JobRun(const std::string& job, const JobSpec& spec, storage::DocumentStore& evaluations,
         storage::DocumentStore& jobs, storage::TaskQueue& queue, const SearchOptions& options)
      : job_(job),
        spec_(spec),
        evaluations_(evaluations),
        jobs_(jobs),
        queue_(queue),
        options_(options) {}

  StatusOr<SearchResult> Run() {
    QS_RETURN_IF_ERROR(Load());
    QS_RETURN_IF_ERROR(Prepare());
    QS_ASSIGN_OR_RETURN(r_.plan, MakePlan(spec_, r_.facts.sites));
    QS_ASSIGN_OR_RETURN(r_.budget_units, BudgetUnits(spec_, r_.plan));
    QS_RETURN_IF_ERROR(Evaluate());
    QS_ASSIGN_OR_RETURN(FrontChoice selection, Select());
    QS_RETURN_IF_ERROR(Validate(selection));
    QS_RETURN_IF_ERROR(Test());
    state_.stage = "done";
    QS_RETURN_IF_ERROR(Save());
    r_.seconds = state_.seconds;
    return std::move(r_);
  }

 private:
  void Report(const char* stage, size_t done, size_t total) {
    if (options_.progress) options_.progress(stage, done, total);
  }

  Status Load() {
    if (!storage::IsValidStoreKey(job_)) {
      return InvalidArgumentError("job id '" + job_ + "' is not 1-128 characters of [0-9a-zA-Z_-]");
    }
    QS_ASSIGN_OR_RETURN(auto saved, jobs_.Get(job_));
    if (!saved) return OkStatus();
    const json j = json::parse(*saved, nullptr, /*allow_exceptions=*/false);
    auto state = JobStateFromJson(j);
    // A damaged state costs the steps it recorded, nothing more: evaluations are in their store.
    if (state.ok()) state_ = std::move(*state);
    return OkStatus();
  }

  Status Save() { return jobs_.Put(job_, ToJson(state_).dump()); }

  // Runs one step and adds its wall time to `seconds`.
  template <typename Fn>
  Status Timed(double* seconds, Fn&& fn) {
    const auto start = Clock::now();
    Status s = fn();
    *seconds += Since(start);
    return s;
  }

  Status Prepare() {
    if (!state_.prepared) {
      state_.stage = "prepare";
      QS_RETURN_IF_ERROR(Timed(&state_.seconds.prepare, [&]() -> Status {
        Report("prepare", 0, 1);
        QS_ASSIGN_OR_RETURN(std::string result, RunTask(queue_, job_, PrepareRequest(spec_), options_));
        const json j = json::parse(result, nullptr, /*allow_exceptions=*/false);
        QS_ASSIGN_OR_RETURN(state_.facts, ModelFactsFromJson(j));
        Report("prepare", 1, 1);
        return OkStatus();
      }));
      state_.prepared = true;
      QS_RETURN_IF_ERROR(Save());
    }
    r_.facts = state_.facts;
    return OkStatus();
  }

  // The stored evaluation of `key`, if it is there, readable and has this job's metric.
  StatusOr<std::optional<Evaluation>> Lookup(const std::string& key) {
    QS_ASSIGN_OR_RETURN(auto stored, evaluations_.Get(key));
    if (!stored) return std::optional<Evaluation>();
    auto e = ParseStoredEvaluation(*stored, key);
    if (!e || !HasMetric(*e, spec_.metric)) return std::optional<Evaluation>();
    return e;
  }

  Status Evaluate() {
    state_.stage = "evaluate";
    return Timed(&state_.seconds.evaluate, [&] { return CollectEvaluations(); });
  }

  // Looks every candidate up, dispatches one task per site with the ones missing (the worker
  // loads that site's inputs once), and collects each task's outcome: its candidates stored, or
  // failed with the status the task died with (not stored: a transient cause may pass).
  Status CollectEvaluations() {
    std::vector<std::vector<size_t>> missing;
    QS_RETURN_IF_ERROR(LookUpCandidates(&missing));
    QS_RETURN_IF_ERROR(DispatchMissing(missing));
    // Whatever is stored now and was not at the first look, this run had evaluated.
    size_t stored = 0;
    for (const auto& [key, e] : r_.evaluations) stored += !state_.failures.count(key);
    r_.evaluated_now = stored - r_.from_cache;
    state_.evaluated = true;
    return Save();
  }

  // Fills keys_ and r_.evaluations (stored evaluations and failures recorded earlier in this job)
  // and r_.from_cache; `missing` gets, per site, the candidates still to evaluate.
  Status LookUpCandidates(std::vector<std::vector<size_t>>* missing) {
    const size_t n_sites = r_.plan.sites.size();
    keys_.assign(n_sites, {});
    missing->assign(n_sites, {});
    r_.from_cache = 0;
    for (size_t i = 0; i < n_sites; ++i) {
      for (const auto& c : r_.plan.sites[i].candidates) {
        keys_[i].push_back(CandidateKey(r_.facts.model_digest, r_.facts.calibration_digest, c));
        const std::string& key = keys_[i].back();
        if (auto f = state_.failures.find(key); f != state_.failures.end()) {
          r_.evaluations[key] = f->second;
          continue;
        }
        QS_ASSIGN_OR_RETURN(auto e, Lookup(key));
        if (e) {
          r_.evaluations[key] = *e;
          ++r_.from_cache;
        } else {
          (*missing)[i].push_back(keys_[i].size() - 1);
        }
      }
    }
    return OkStatus();
  }

  // One task per site with missing candidates, at most options_.dispatch_window in the queue at
  // once, until each has an outcome.
  Status DispatchMissing(const std::vector<std::vector<size_t>>& missing) {
    const size_t total = r_.plan.candidate_count();
    size_t resolved = total;
    std::vector<std::pair<storage::Task, size_t>> to_push;  // (task, site)
    for (size_t i = 0; i < missing.size(); ++i) {
      if (missing[i].empty()) continue;
      resolved -= missing[i].size();
      const json payload = EvaluateRequest(spec_, r_.plan.sites[i], keys_[i], missing[i],
                                           spec_.metric == RankingMetric::kMae);
      to_push.push_back({{job_, TaskIdFor(payload), payload.dump()}, i});
    }
    Report("evaluate", resolved, total);
    std::map<std::string, size_t> outstanding;  // task id -> site
    size_t next = 0;
    const size_t window = options_.dispatch_window ? options_.dispatch_window : to_push.size();
    while (next < to_push.size() || !outstanding.empty()) {
      std::vector<storage::Task> batch;
      for (; next < to_push.size() && outstanding.size() < window; ++next) {
        batch.push_back(to_push[next].first);
        outstanding[to_push[next].first.id] = to_push[next].second;
      }
      if (!batch.empty()) QS_RETURN_IF_ERROR(queue_.PushAll(batch));
      QS_ASSIGN_OR_RETURN(auto outcomes, queue_.Outcomes(job_));
      for (auto it = outstanding.begin(); it != outstanding.end();) {
        auto o = outcomes.find(it->first);
        if (o == outcomes.end()) {
          ++it;
          continue;
        }
        if (o->second.state == storage::TaskState::kCancelled) {
          return Status(StatusCode::kCancelled, "job " + job_ + " was cancelled");
        }
        QS_RETURN_IF_ERROR(Resolve(it->second, missing[it->second], o->second));
        resolved += missing[it->second].size();
        it = outstanding.erase(it);
      }
      Report("evaluate", resolved, total);
      if (next >= to_push.size() && outstanding.empty()) break;
      QS_RETURN_IF_ERROR(CheckLive(queue_, job_, options_));
      queue_.WaitForOutcome(job_, options_.poll);
    }
    return OkStatus();
  }

  // Reads back the candidates of `site` a finished task covered.
  Status Resolve(size_t site, const std::vector<size_t>& which, const storage::TaskOutcome& outcome) {
    for (size_t j : which) {
      const std::string& key = keys_[site][j];
      QS_ASSIGN_OR_RETURN(auto e, Lookup(key));
      if (e) {
        r_.evaluations[key] = *e;
        continue;
      }
      Evaluation failed;
      failed.key = key;
      failed.site = r_.plan.sites[site].site.name;
      if (outcome.state == storage::TaskState::kDone) {
        failed.SetError(InternalError("the task completed without storing this candidate"));
      } else {
        failed.SetError(outcome.error.WithContext("evaluation task failed after " +
                                                  std::to_string(outcome.attempts) + " attempt(s)"));
      }
      state_.failures[key] = failed;
      r_.evaluations[key] = failed;
    }
    return OkStatus();
  }

  StatusOr<FrontChoice> Select() {
    state_.stage = "select";
    const auto start = Clock::now();
    Report("select", 0, 1);
    QS_ASSIGN_OR_RETURN(FrontChoice selection, SelectFront(spec_, keys_, &r_));
    Report("select", 1, 1);
    state_.seconds.select += Since(start);
    return selection;
  }

  Recipe RecipeOf(const FrontChoice& selection, const KnapsackSolution& s) const {
    Recipe recipe;
    for (size_t i = 0; i < r_.plan.sites.size(); ++i) {
      const Candidate& c = r_.plan.sites[i].candidates[selection.option_candidate[i][s.choice[i]]];
      recipe.sites[c.site] = c.config;
    }
    // The reconstruction tier: every mix validated (and so the one returned) is reconstructed.
    return ApplyReconstructionTier(recipe, spec_);
  }

  // Tiered validation; each point validated is saved, so a resumed job does not redo it.
  Status Validate(const FrontChoice& selection) {
    state_.stage = "validate";
    auto request = [&](size_t k) {
      return RecipeRequest(TaskKind::kValidate, spec_, RecipeOf(selection, selection.front[k]),
                           r_.facts.sites);
    };
    auto saved_result = [&](size_t k) -> const ValidationResult* {
      auto saved = state_.validated.find(k);
      if (saved == state_.validated.end() || saved->second.cost_units != selection.front[k].cost) {
        return nullptr;
      }
      return &saved->second.result;
    };
    // With refinement on, the optimum's cheaper neighbour is always validated as well (see
    // ValidateTiered), so both can go to the workers at once.
    if (options_.prefetch_validation && spec_.refine_validation && spec_.max_validations >= 2 &&
        selection.chosen >= 1) {
      for (size_t k : {selection.chosen, selection.chosen - 1}) {
        if (saved_result(k) != nullptr) continue;
        const json payload = request(k);
        QS_RETURN_IF_ERROR(queue_.Push({job_, TaskIdFor(payload), payload.dump()}));
      }
    }
    auto validate = [&](size_t k) -> StatusOr<ValidationResult> {
      if (const ValidationResult* saved = saved_result(k)) return *saved;
      const auto start = Clock::now();
      QS_ASSIGN_OR_RETURN(std::string text, RunTask(queue_, job_, request(k), options_));
      const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
      QS_ASSIGN_OR_RETURN(ValidationResult v, ValidationResultFromJson(j));
      state_.seconds.validate += Since(start);
      state_.validated[k] = {selection.front[k].cost, v};
      QS_RETURN_IF_ERROR(Save());
      return v;
    };
    bool criterion_ok = false;
    QS_ASSIGN_OR_RETURN(const size_t best,
                        ValidateTiered(spec_, selection.chosen, validate,
                                       [&](const char* stage, size_t done, size_t total) {
                                         Report(stage, done, total);
                                       },
                                       &r_, &criterion_ok));
    r_.chosen_point = best;
    r_.goal_met = selection.budget_ok && criterion_ok;
    if (selection.budget_ok && !criterion_ok) {
      r_.goal_note = "no validated mix met the accuracy criterion (best top-1 " +
                     FormatPercent(r_.validation.top1) + " vs fp32 " + FormatPercent(r_.facts.fp32_top1) +
                     "); returning the best found";
    }
    // The chosen mix, per site with its runner-up.
    const KnapsackSolution& s = selection.front[best];
    r_.recipe = RecipeOf(selection, s);
    DescribeChoices(spec_, selection.groups, selection.option_candidate, keys_, s, &r_);
    return OkStatus();
  }

  // The returned recipe on the test set, reported apart from the choice: the test images chose
  // nothing.
  Status Test() {
    if (spec_.test_source.empty()) {
      r_.test = TestResult{};
      return OkStatus();
    }
    state_.stage = "test";
    if (!state_.tested) {
      QS_RETURN_IF_ERROR(Timed(&state_.seconds.test, [&]() -> Status {
        Report("test", 0, 1);
        QS_ASSIGN_OR_RETURN(
            std::string text,
            RunTask(queue_, job_,
                    RecipeRequest(TaskKind::kTest, spec_, r_.recipe, r_.facts.sites), options_));
        const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
        QS_ASSIGN_OR_RETURN(state_.test, TestResultFromJson(j));
        Report("test", 1, 1);
        return OkStatus();
      }));
      state_.tested = true;
      QS_RETURN_IF_ERROR(Save());
    }
    r_.test = state_.test;
    return OkStatus();
  }

  const std::string job_;
  const JobSpec& spec_;
  storage::DocumentStore& evaluations_;
  storage::DocumentStore& jobs_;
  storage::TaskQueue& queue_;
  const SearchOptions& options_;
  JobState state_;
  SearchResult r_;
  std::vector<std::vector<std::string>> keys_;  // every candidate's key, by site
};

}  // namespace

StatusOr<std::string> RunTask(storage::TaskQueue& queue, const std::string& job,
                              const json& payload, const SearchOptions& options) {
  QS_RETURN_IF_ERROR(CheckLive(queue, job, options));
  const std::string id = TaskIdFor(payload);
  QS_RETURN_IF_ERROR(queue.Push({job, id, payload.dump()}));
  while (true) {
    QS_ASSIGN_OR_RETURN(auto outcomes, queue.Outcomes(job));
    auto it = outcomes.find(id);
    if (it != outcomes.end()) {
      const storage::TaskOutcome& o = it->second;
      if (o.state == storage::TaskState::kDone) return o.result;
      if (o.state == storage::TaskState::kCancelled) {
        return Status(StatusCode::kCancelled, "job " + job + " was cancelled");
      }
      return o.error.WithContext(std::string(payload.value("kind", "task")) + " task failed after " +
                                 std::to_string(o.attempts) + " attempt(s)");
    }
    QS_RETURN_IF_ERROR(CheckLive(queue, job, options));
    queue.WaitForOutcome(job, options.poll);
  }
}

StatusOr<SearchResult> RunSearch(const std::string& job, const JobSpec& spec,
                                 storage::DocumentStore& evaluations, storage::DocumentStore& jobs,
                                 storage::TaskQueue& queue, const SearchOptions& options) {
  JobRun run(job, spec, evaluations, jobs, queue, options);
  return run.Run();
}

}  // namespace qs::scheduler
