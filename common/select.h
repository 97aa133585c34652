// Selection: one option per site minimizing the summed predicted loss under a cost budget (an
// exact multiple-choice knapsack), and the whole Pareto front of budget → least loss.
//
// Costs are integers in the caller's unit (e.g. weight bits: parameters × bits), losses are
// additive per-site sensitivities. Pure and deterministic: among equal losses the lower total cost
// wins, and remaining ties follow the dynamic program's fixed scan order (sites in the given
// order, options by index), so the same input always gives the same choice.
//
//   QS_ASSIGN_OR_RETURN(KnapsackSolution s, SolveKnapsack(groups, budget));
//   QS_ASSIGN_OR_RETURN(std::vector<KnapsackSolution> front, ParetoFront(groups));
#ifndef QS_COMMON_SELECT_H_
#define QS_COMMON_SELECT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace qs {

struct SelectionOption {
  int64_t cost = 0;  // >= 0
  double loss = 0;   // finite
};

// The options of one site.
struct SelectionGroup {
  std::string site;
  std::vector<SelectionOption> options;  // at least one
};

struct KnapsackSolution {
  std::vector<int> choice;  // option index per group
  int64_t cost = 0;         // Σ chosen costs
  double loss = 0;          // Σ chosen losses
};

struct KnapsackOptions {
  // The dynamic program runs over about this many budget cells (at least 2). When the exact unit
  // (the gcd of every option's cost above its site's cheapest) would need more, costs are rounded
  // up to a coarser unit: answers still fit the budget in real cost but may miss the optimum, and
  // `*exact` (when given) is set false.
  int64_t max_cells = int64_t{1} << 20;
  bool* exact = nullptr;
};

// The least-loss choice with cost <= budget. INVALID_ARGUMENT for an empty group, a negative cost
// or a non-finite loss; FAILED_PRECONDITION when even the cheapest choice exceeds the budget.
StatusOr<KnapsackSolution> SolveKnapsack(const std::vector<SelectionGroup>& groups, int64_t budget,
                                         const KnapsackOptions& options = {});

// Every Pareto-optimal choice, by ascending cost with strictly decreasing loss: for any budget, the
// last point whose cost fits is the knapsack optimum. Errors as SolveKnapsack.
StatusOr<std::vector<KnapsackSolution>> ParetoFront(const std::vector<SelectionGroup>& groups,
                                                    const KnapsackOptions& options = {});

}  // namespace qs

#endif  // QS_COMMON_SELECT_H_
