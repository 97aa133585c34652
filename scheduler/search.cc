#include "scheduler/search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <sstream>

namespace qs::scheduler {
namespace {

using nlohmann::json;

constexpr auto kPollInterval = std::chrono::milliseconds(100);

bool CriterionMet(const JobSpec& spec, double fp32_top1, double top1) {
  const double drop = fp32_top1 - top1;
  if (spec.max_abs_top1_drop >= 0 && drop > spec.max_abs_top1_drop + 1e-12) return false;
  if (spec.max_rel_top1_drop >= 0 && fp32_top1 > 0 &&
      drop / fp32_top1 > spec.max_rel_top1_drop + 1e-12) {
    return false;
  }
  return true;
}

std::string Percent(double v) {
  std::ostringstream s;
  s.precision(2);
  s << std::fixed << 100 * v << "%";
  return s.str();
}


using Progress = std::function<void(const char* stage, size_t done, size_t total)>;

// Looks every candidate up in `store`, dispatches one task per site with its missing candidates
// (the worker loads that site's inputs once), and waits until each is stored or its task is
// dead. Fills r->evaluations (failures recorded as such), from_cache and evaluated_now; `keys`
// gets every candidate's key, by site.
Status CollectEvaluations(const JobSpec& spec, storage::EvaluationStore& store,
                          storage::TaskQueue& queue, const Progress& progress, SearchResult* out,
                          std::vector<std::vector<std::string>>* keys_out) {
  SearchResult& r = *out;
  auto& keys = *keys_out;
  const size_t n_sites = r.plan.sites.size();
  keys.assign(n_sites, {});
  std::vector<std::vector<size_t>> missing(n_sites);
  auto lookup = [&](const std::string& key) -> StatusOr<bool> {
    QS_ASSIGN_OR_RETURN(auto stored, store.Get(key));
    if (!stored) return false;
    // A damaged entry, or one without the metric this job ranks by, is evaluated again.
    auto e = ParseStoredEvaluation(*stored, key);
    if (!e || !HasMetric(*e, spec.metric)) return false;
    r.evaluations[key] = *e;
    return true;
  };
  for (size_t i = 0; i < n_sites; ++i) {
    for (const auto& c : r.plan.sites[i].candidates) {
      keys[i].push_back(CandidateKey(r.facts.model_digest, r.facts.calibration_digest, c));
      QS_ASSIGN_OR_RETURN(bool have, lookup(keys[i].back()));
      if (have) {
        ++r.from_cache;
      } else {
        missing[i].push_back(keys[i].size() - 1);
      }
    }
  }
  const size_t total = r.plan.candidate_count();
  size_t pending = total - r.from_cache;
  for (size_t i = 0; i < n_sites; ++i) {
    if (missing[i].empty()) continue;
    storage::Task task;
    task.id = "eval:" + r.facts.model_digest.substr(0, 16) + ":" +
              r.facts.calibration_digest.substr(0, 16) + ":" + r.plan.sites[i].site.name;
    task.payload =
        TaskPayload(r.plan.sites[i], keys[i], missing[i], spec.metric == RankingMetric::kMae)
            .dump();
    Status pushed = queue.Push(task);
    if (!pushed.ok() && pushed.code() != StatusCode::kAlreadyExists) return pushed;
  }
  progress("evaluate", r.from_cache, total);
  while (pending > 0) {
    const bool idle = queue.Idle();  // read before the store, so a final write is not missed
    for (size_t i = 0; i < n_sites; ++i) {
      auto& m = missing[i];
      for (auto it = m.begin(); it != m.end();) {
        QS_ASSIGN_OR_RETURN(bool have, lookup(keys[i][*it]));
        if (have) {
          ++r.evaluated_now;
          --pending;
          it = m.erase(it);
        } else {
          ++it;
        }
      }
    }
    progress("evaluate", total - pending, total);
    if (pending == 0 || idle) break;
    (void)queue.WaitIdleFor(kPollInterval);  // wakes as soon as the last task is done
  }
  // Whatever is still missing was dead-lettered: record it as failed, not lost.
  for (size_t i = 0; i < n_sites; ++i) {
    for (size_t j : missing[i]) {
      Evaluation e;
      e.key = keys[i][j];
      e.site = r.plan.sites[i].site.name;
      e.error = "evaluation task failed on every attempt";
      r.evaluations[e.key] = e;
    }
  }
  return OkStatus();
}

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

}  // namespace

json TaskPayload(const SitePlan& site, const std::vector<std::string>& keys,
                 const std::vector<size_t>& which, bool measure_mae) {
  json candidates = json::array();
  for (size_t j : which) {
    candidates.push_back({{"key", keys[j]},
                          {"config", ToJson(site.candidates[j].config, site.site.kind)}});
  }
  return json{{"site", site.site.name}, {"candidates", candidates}, {"measure_mae", measure_mae}};
}

namespace {

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
StatusOr<size_t> ValidateTiered(const JobSpec& spec, ModelBackend& backend,
                                const std::vector<KnapsackSolution>& front, size_t chosen,
                                const std::function<Recipe(const KnapsackSolution&)>& recipe_of,
                                const Progress& progress, SearchResult* out, bool* criterion_ok) {
  SearchResult& r = *out;
  const size_t tries = std::min<size_t>(spec.max_validations, chosen + 1);
  size_t best = chosen;
  size_t validated = 0;
  *criterion_ok = false;
  for (size_t t = 0; t < tries; ++t) {
    const size_t k = chosen - t;
    progress("validate", t, tries);
    QS_ASSIGN_OR_RETURN(ValidationResult v, backend.Validate(recipe_of(front[k])));
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

StatusOr<SearchResult> RunSearch(const JobSpec& spec, ModelBackend& backend,
                                 storage::EvaluationStore& store, storage::TaskQueue& queue,
                                 const SearchOptions& options) {
  auto progress = [&](const char* stage, size_t done, size_t total) {
    if (options.progress) options.progress(stage, done, total);
  };
  using Clock = std::chrono::steady_clock;
  auto since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  SearchResult r;
  auto stage_start = Clock::now();
  progress("prepare", 0, 1);
  QS_ASSIGN_OR_RETURN(r.facts, backend.Prepare());
  progress("prepare", 1, 1);
  r.seconds.prepare = since(stage_start);
  stage_start = Clock::now();
  QS_ASSIGN_OR_RETURN(r.plan, MakePlan(spec, r.facts.sites));
  QS_ASSIGN_OR_RETURN(r.budget_units, BudgetUnits(spec, r.plan));
  const size_t n_sites = r.plan.sites.size();

  std::vector<std::vector<std::string>> keys;
  QS_RETURN_IF_ERROR(CollectEvaluations(spec, store, queue, progress, &r, &keys));
  r.seconds.evaluate = since(stage_start);
  stage_start = Clock::now();

  // Selection over the candidates that evaluated cleanly.
  progress("select", 0, 1);
  QS_ASSIGN_OR_RETURN(FrontChoice sel, SelectFront(spec, keys, &r));
  const std::vector<std::vector<size_t>>& option_candidate = sel.option_candidate;
  progress("select", 1, 1);
  r.seconds.select = since(stage_start);
  stage_start = Clock::now();

  auto recipe_of = [&](const KnapsackSolution& s) {
    Recipe recipe;
    for (size_t i = 0; i < n_sites; ++i) {
      const Candidate& c = r.plan.sites[i].candidates[option_candidate[i][s.choice[i]]];
      recipe.sites[c.site] = c.config;
    }
    return recipe;
  };

  bool criterion_ok = false;
  QS_ASSIGN_OR_RETURN(const size_t best, ValidateTiered(spec, backend, sel.front, sel.chosen,
                                                        recipe_of, progress, &r, &criterion_ok));
  r.seconds.validate = since(stage_start);
  r.chosen_point = best;
  r.goal_met = sel.budget_ok && criterion_ok;
  if (sel.budget_ok && !criterion_ok) {
    r.goal_note = "no validated mix met the accuracy criterion (best top-1 " +
                  Percent(r.validation.top1) + " vs fp32 " + Percent(r.facts.fp32_top1) +
                  "); returning the best found";
  }

  // The chosen mix, per site with its runner-up.
  const KnapsackSolution& s = sel.front[best];
  r.recipe = recipe_of(s);
  DescribeChoices(spec, sel.groups, option_candidate, keys, s, &r);
  // Reported apart from the choice: the test images chose nothing.
  const auto test_start = Clock::now();
  const bool has_test = !spec.test_source.empty();
  if (has_test) progress("test", 0, 1);
  QS_ASSIGN_OR_RETURN(r.test, backend.Test(r.recipe));
  if (has_test) progress("test", 1, 1);
  r.seconds.test = since(test_start);
  return r;
}

}  // namespace qs::scheduler
