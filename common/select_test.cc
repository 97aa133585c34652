#include "common/select.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace qs {
namespace {

std::vector<SelectionGroup> RandomInstance(std::mt19937_64& rng, int sites, int options) {
  std::vector<SelectionGroup> groups;
  for (int s = 0; s < sites; ++s) {
    SelectionGroup g{"site" + std::to_string(s), {}};
    for (int k = 0; k < options; ++k) {
      g.options.push_back({static_cast<int64_t>(rng() % 40) * 8,
                           static_cast<double>(rng() % 1000) / 10.0});
    }
    groups.push_back(g);
  }
  return groups;
}

// Least loss with cost <= budget by enumerating every combination.
double BruteForce(const std::vector<SelectionGroup>& groups, int64_t budget, bool* feasible) {
  double best = INFINITY;
  std::vector<size_t> idx(groups.size(), 0);
  while (true) {
    int64_t cost = 0;
    double loss = 0;
    for (size_t i = 0; i < groups.size(); ++i) {
      cost += groups[i].options[idx[i]].cost;
      loss += groups[i].options[idx[i]].loss;
    }
    if (cost <= budget) best = std::min(best, loss);
    size_t i = 0;
    while (i < groups.size() && ++idx[i] == groups[i].options.size()) idx[i++] = 0;
    if (i == groups.size()) break;
  }
  *feasible = std::isfinite(best);
  return best;
}

TEST(KnapsackTest, MatchesBruteForceOnRandomInstances) {
  std::mt19937_64 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    auto groups = RandomInstance(rng, 1 + trial % 6, 1 + trial % 4);
    const int64_t budget = static_cast<int64_t>(rng() % 700);
    bool feasible = false;
    const double expected = BruteForce(groups, budget, &feasible);
    bool exact = false;
    auto s = SolveKnapsack(groups, budget, {int64_t{1} << 20, &exact});
    if (!feasible) {
      EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition) << trial;
      continue;
    }
    ASSERT_TRUE(s.ok()) << trial << ": " << s.status().ToString();
    EXPECT_TRUE(exact);
    EXPECT_NEAR(s->loss, expected, 1e-9) << trial;
    EXPECT_LE(s->cost, budget);
    // The reported totals are those of the reported choice.
    int64_t cost = 0;
    double loss = 0;
    for (size_t i = 0; i < groups.size(); ++i) {
      cost += groups[i].options[s->choice[i]].cost;
      loss += groups[i].options[s->choice[i]].loss;
    }
    EXPECT_EQ(cost, s->cost);
    EXPECT_DOUBLE_EQ(loss, s->loss);
  }
}

TEST(KnapsackTest, ParetoFrontIsMonotoneAndAnswersEveryBudget) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    auto groups = RandomInstance(rng, 2 + trial % 5, 2 + trial % 3);
    auto front = ParetoFront(groups);
    ASSERT_TRUE(front.ok());
    ASSERT_FALSE(front->empty());
    for (size_t i = 1; i < front->size(); ++i) {
      EXPECT_GT((*front)[i].cost, (*front)[i - 1].cost);
      EXPECT_LT((*front)[i].loss, (*front)[i - 1].loss);
    }
    for (int64_t budget = 0; budget < 900; budget += 37) {
      bool feasible = false;
      const double expected = BruteForce(groups, budget, &feasible);
      const KnapsackSolution* last = nullptr;
      for (const auto& p : *front) {
        if (p.cost <= budget) last = &p;
      }
      EXPECT_EQ(last != nullptr, feasible);
      if (last) EXPECT_NEAR(last->loss, expected, 1e-9);
    }
  }
}

TEST(KnapsackTest, LowerCostWinsAmongEqualLosses) {
  std::vector<SelectionGroup> groups = {{"a", {{2, 0.0}, {1, 1.0}}}, {"b", {{0, 1.0}, {0, 0.0}}}};
  auto s = SolveKnapsack(groups, 10);
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->loss, 0.0);
  groups = {{"a", {{2, 0.0}, {1, 0.5}}}, {"b", {{0, 0.5}, {0, 1.0}}}};
  s = SolveKnapsack(groups, 10);
  ASSERT_TRUE(s.ok());
  // Mixes with loss 0.5: a0+b0 (cost 2). Mixes with loss 1.0: a1+b0 (cost 1), a0+b1 (cost 2).
  EXPECT_EQ(s->choice, (std::vector<int>{0, 0}));
  groups = {{"a", {{2, 0.5}, {1, 0.5}}}, {"b", {{3, 0.25}, {3, 0.25}}}};
  s = SolveKnapsack(groups, 10);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->cost, 4);  // equal losses: the cheaper option at site a
}

TEST(KnapsackTest, DeterministicTieBreaks) {
  // Two sites with identical options: the lower cost, then the lower index, wins.
  std::vector<SelectionGroup> groups = {{"a", {{8, 1.0}, {8, 1.0}, {4, 1.0}}},
                                        {"b", {{2, 0.5}, {2, 0.5}}}};
  auto s = SolveKnapsack(groups, 100);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->choice, (std::vector<int>{2, 0}));
  auto again = SolveKnapsack(groups, 100);
  EXPECT_EQ(again->choice, s->choice);
}

TEST(KnapsackTest, CoarseCellsStayWithinBudget) {
  std::mt19937_64 rng(9);
  auto groups = RandomInstance(rng, 6, 4);
  for (auto& g : groups) {
    for (auto& o : g.options) o.cost = o.cost * 1000 + 7 * static_cast<int64_t>(o.loss);
  }
  int64_t lo = 0, hi = 0;
  for (const auto& g : groups) {
    int64_t a = g.options[0].cost, b = a;
    for (const auto& o : g.options) a = std::min(a, o.cost), b = std::max(b, o.cost);
    lo += a;
    hi += b;
  }
  const int64_t budget = (lo + hi) / 2;
  bool exact = true;
  auto coarse = SolveKnapsack(groups, budget, {64, &exact});
  ASSERT_TRUE(coarse.ok()) << coarse.status().ToString();
  EXPECT_FALSE(exact);
  EXPECT_LE(coarse->cost, budget);
  bool feasible = false;
  EXPECT_GE(coarse->loss, BruteForce(groups, budget, &feasible) - 1e-9);
  // Rounding each site's cost up by less than one cell loses at most one cell per site: the
  // answer is at least as good as the exact optimum of a budget that much smaller.
  const int64_t unit = (budget - lo + 62) / 63;
  const int64_t reduced = budget - static_cast<int64_t>(groups.size()) * unit;
  if (reduced >= lo) EXPECT_LE(coarse->loss, BruteForce(groups, reduced, &feasible) + 1e-9);

  // The coarse front keeps real costs ascending, losses descending, and the best mix of all.
  bool front_exact = true;
  auto front = ParetoFront(groups, {64, &front_exact});
  ASSERT_TRUE(front.ok());
  EXPECT_FALSE(front_exact);
  for (size_t i = 1; i < front->size(); ++i) {
    EXPECT_GT((*front)[i].cost, (*front)[i - 1].cost);
    EXPECT_LT((*front)[i].loss, (*front)[i - 1].loss);
  }
  EXPECT_NEAR(front->back().loss, BruteForce(groups, hi, &feasible), 1e-9);
}

TEST(KnapsackTest, RejectsBadInput) {
  EXPECT_EQ(SolveKnapsack({}, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveKnapsack({{"a", {}}}, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveKnapsack({{"a", {{-1, 0}}}}, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveKnapsack({{"a", {{1, NAN}}}}, 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(SolveKnapsack({{"a", {{1, 0}}}}, 10, {1}).status().code(),
            StatusCode::kInvalidArgument);
  auto over = SolveKnapsack({{"a", {{20, 0}}}}, 10);
  EXPECT_EQ(over.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(over.status().message().find("20"), std::string::npos);
}

}  // namespace
}  // namespace qs
