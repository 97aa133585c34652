#include "common/select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <numeric>

namespace qs {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

Status Validate(const std::vector<SelectionGroup>& groups) {
  if (groups.empty()) return InvalidArgumentError("selection needs at least one site");
  for (const auto& g : groups) {
    if (g.options.empty()) return InvalidArgumentError("site '" + g.site + "' has no options");
    for (const auto& o : g.options) {
      if (o.cost < 0) return InvalidArgumentError("site '" + g.site + "' has a negative cost");
      if (!std::isfinite(o.loss)) {
        return InvalidArgumentError("site '" + g.site + "' has a non-finite loss");
      }
    }
  }
  return OkStatus();
}

// The DP table over extra cost above the cheapest choice of every site, in `unit`s.
struct Table {
  int64_t base = 0;   // Σ cheapest cost
  int64_t unit = 1;
  int64_t cells = 0;  // extra-cost cells 0..cells-1
  std::vector<std::vector<int64_t>> steps;  // per group, per option: extra cost in units
  std::vector<double> best;                 // after all groups: least loss at each extra cost
  std::vector<std::vector<int16_t>> pick;   // per group, per cell: chosen option (−1: unreachable)
};

StatusOr<Table> Build(const std::vector<SelectionGroup>& groups, int64_t max_extra,
                      const KnapsackOptions& options) {
  QS_RETURN_IF_ERROR(Validate(groups));
  if (options.max_cells < 2) return InvalidArgumentError("max_cells must be at least 2");
  Table t;
  int64_t gcd = 0, span = 0;
  for (const auto& g : groups) {
    if (g.options.size() > 32767) return InvalidArgumentError("too many options at one site");
    int64_t lo = g.options[0].cost, hi = lo;
    for (const auto& o : g.options) {
      lo = std::min(lo, o.cost);
      hi = std::max(hi, o.cost);
    }
    t.base += lo;
    span += hi - lo;
    for (const auto& o : g.options) gcd = std::gcd(gcd, o.cost - lo);
  }
  if (max_extra < 0) max_extra = span;
  max_extra = std::min(max_extra, span);
  t.unit = std::max<int64_t>(gcd, 1);
  bool exact = true;
  if (max_extra / t.unit + 1 > options.max_cells) {
    t.unit = (max_extra + options.max_cells - 2) / (options.max_cells - 1);
    exact = false;
  }
  if (options.exact) *options.exact = exact;
  // Rounding each site's extra cost up can push the rounded sum past max_extra / unit; size the
  // table for the rounded sum so no mix the budget allows is cut off (the budget itself is
  // enforced on real costs by the callers).
  int64_t rounded_span = 0;
  for (const auto& g : groups) {
    int64_t lo = g.options[0].cost, hi = lo;
    for (const auto& o : g.options) lo = std::min(lo, o.cost), hi = std::max(hi, o.cost);
    rounded_span += (hi - lo + t.unit - 1) / t.unit;
  }
  const int64_t slack = exact ? 0 : static_cast<int64_t>(groups.size());
  t.cells = std::min(max_extra / t.unit + slack, rounded_span) + 1;
  t.best.assign(t.cells, kInf);
  t.best[0] = 0;
  for (const auto& g : groups) {
    int64_t lo = g.options[0].cost;
    for (const auto& o : g.options) lo = std::min(lo, o.cost);
    std::vector<int64_t> step;
    // Rounding up keeps every DP answer within the true budget.
    for (const auto& o : g.options) step.push_back((o.cost - lo + t.unit - 1) / t.unit);
    std::vector<double> next(t.cells, kInf);
    std::vector<int16_t> pick(t.cells, -1);
    for (int64_t c = 0; c < t.cells; ++c) {
      if (t.best[c] == kInf) continue;
      for (size_t k = 0; k < step.size(); ++k) {
        const int64_t to = c + step[k];
        if (to >= t.cells) continue;
        const double loss = t.best[c] + g.options[k].loss;
        // Strictly better only: the first (lowest-cost predecessor, lowest index) wins ties.
        if (loss < next[to]) {
          next[to] = loss;
          pick[to] = static_cast<int16_t>(k);
        }
      }
    }
    t.best = std::move(next);
    t.pick.push_back(std::move(pick));
    t.steps.push_back(std::move(step));
  }
  return t;
}

KnapsackSolution Trace(const std::vector<SelectionGroup>& groups, const Table& t, int64_t cell) {
  KnapsackSolution s;
  s.choice.assign(groups.size(), 0);
  for (size_t i = groups.size(); i-- > 0;) {
    const int k = t.pick[i][cell];
    s.choice[i] = k;
    cell -= t.steps[i][k];
  }
  for (size_t i = 0; i < groups.size(); ++i) {
    s.cost += groups[i].options[s.choice[i]].cost;
    s.loss += groups[i].options[s.choice[i]].loss;
  }
  return s;
}

}  // namespace

StatusOr<KnapsackSolution> SolveKnapsack(const std::vector<SelectionGroup>& groups, int64_t budget,
                                         const KnapsackOptions& options) {
  QS_RETURN_IF_ERROR(Validate(groups));
  int64_t base = 0;
  for (const auto& g : groups) {
    int64_t lo = g.options[0].cost;
    for (const auto& o : g.options) lo = std::min(lo, o.cost);
    base += lo;
  }
  if (budget < base) {
    return FailedPreconditionError("budget " + std::to_string(budget) +
                                   " is below the cheapest selection's cost " +
                                   std::to_string(base));
  }
  QS_ASSIGN_OR_RETURN(Table t, Build(groups, budget - base, options));
  // The least loss among cells whose real cost fits (rounded cells may hold a mix slightly over).
  std::optional<KnapsackSolution> best;
  for (int64_t c = 0; c < t.cells; ++c) {
    if (t.best[c] == kInf || (best && t.best[c] >= best->loss)) continue;
    KnapsackSolution s = Trace(groups, t, c);
    if (s.cost <= budget) best = s;
  }
  return *best;  // cell 0, the cheapest mix, always fits here
}

StatusOr<std::vector<KnapsackSolution>> ParetoFront(const std::vector<SelectionGroup>& groups,
                                                    const KnapsackOptions& options) {
  QS_ASSIGN_OR_RETURN(Table t, Build(groups, -1, options));
  std::vector<KnapsackSolution> candidates;
  for (int64_t c = 0; c < t.cells; ++c) {
    if (t.best[c] != kInf) candidates.push_back(Trace(groups, t, c));
  }
  // Non-dominated by real cost: with rounded cells, real costs need not follow cell order.
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const KnapsackSolution& a, const KnapsackSolution& b) {
                     return a.cost != b.cost ? a.cost < b.cost : a.loss < b.loss;
                   });
  std::vector<KnapsackSolution> front;
  for (auto& s : candidates) {
    if (front.empty() || s.loss < front.back().loss) {
      if (!front.empty() && front.back().cost == s.cost) continue;
      front.push_back(std::move(s));
    }
  }
  return front;
}

}  // namespace qs
