#include "core/liu.h"

#include <gtest/gtest.h>

#include "core/metrics.h"

namespace qs::core {
namespace {

TEST(LiuTest, PearsonCorrelationKnownValues) {
  auto a = torch::tensor({1.0, 2.0, 3.0, 4.0});
  EXPECT_NEAR(PearsonCorrelation(a, a), 1.0, 1e-12);
  EXPECT_NEAR(PearsonCorrelation(a, 3 * a + 7), 1.0, 1e-12);  // affine-invariant
  EXPECT_NEAR(PearsonCorrelation(a, -a), -1.0, 1e-12);
  EXPECT_NEAR(PearsonCorrelation(a, torch::tensor({1.0, -1.0, -1.0, 1.0})), 0.0, 1e-12);
  EXPECT_EQ(PearsonCorrelation(a, torch::ones({4})), 0.0);  // constant: no correlation
}

TEST(LiuTest, RankingLossIsZeroForOrderKeepingOutputsAndGrowsWithInversions) {
  torch::manual_seed(3);
  auto scores = torch::randn({2, 3, 8, 8});  // [B, heads, queries, keys]
  // Any strictly increasing map keeps every order: no loss at margin 0.
  EXPECT_EQ(RankingLoss(scores, scores, 0), 0.0);
  EXPECT_EQ(RankingLoss(scores, 2 * scores.exp() - 1, 0), 0.0);
  // Swapping two keys of every row inverts one pair per row (or more); the loss grows with the
  // number of inversions and with their size.
  auto one = scores.clone();
  auto sorted = std::get<1>(scores.sort(-1));
  auto lo = sorted.select(-1, 0).unsqueeze(-1), hi = sorted.select(-1, 7).unsqueeze(-1);
  one.scatter_(-1, lo, scores.gather(-1, hi));
  one.scatter_(-1, hi, scores.gather(-1, lo));
  const double swapped = RankingLoss(scores, one, 0);
  EXPECT_GT(swapped, 0.0);
  EXPECT_GT(RankingLoss(scores, -scores, 0), swapped);  // every pair inverted
  // The margin asks for a gap too: the reference against itself pays for close pairs.
  EXPECT_GT(RankingLoss(scores, scores, 0.5), 0.0);
  // Ties in the reference ask nothing.
  EXPECT_EQ(RankingLoss(torch::zeros({4, 5}), torch::randn({4, 5}), 1.0), 0.0);
}

struct Layer {
  torch::Tensor x, weight, bias;
};

Layer MakeLayer() {
  torch::manual_seed(5);
  Layer l;
  l.x = torch::randn({3000, 32});
  l.x.narrow(1, 0, 2).mul_(6);  // two wide channels: the min-max input range is too wide
  l.weight = torch::randn({16, 32}) / 5;
  l.bias = torch::randn({16});
  return l;
}

WeightQuant Liu(int bits) {
  WeightQuant w;
  w.method = WeightMethod::kLiu;
  w.bits = bits;
  return w;
}

TEST(LiuTest, SearchNeverEndsBelowMinMaxAndCorrectsTheMeanShift) {
  Layer l = MakeLayer();
  auto base = FitUniformGrid(l.x, GroupLayout{}, RangeOptions{4, false, RangeCalibrator::kMinMax});
  ASSERT_TRUE(base.ok());
  const auto reference = at::linear(l.x, l.weight, l.bias);
  for (int bits : {3, 4, 6}) {
    SCOPED_TRACE(bits);
    auto r = SearchLiuIntervals(l.x, torch::Tensor(), &*base, l.weight, l.bias, Liu(bits));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(r->input_grid.has_value());
    // The min-max pair is a candidate, so the chosen one correlates at least as well.
    WeightQuant minmax = Liu(bits);
    minmax.calibrator = RangeCalibrator::kMinMax;
    auto w0 = QuantizeOnGrid(l.weight, *FitWeightGrid(l.weight, minmax));
    const double start =
        PearsonCorrelation(reference, at::linear(FakeQuantize(l.x, *base), w0.dequantized, l.bias));
    EXPECT_GE(r->pearson, start);
    EXPECT_GE(r->weight_multiplier, 0.5);
    EXPECT_LE(r->weight_multiplier, 1.2);
    // After the bias correction the output error has zero mean per output channel.
    const auto out = at::linear(FakeQuantize(l.x, *r->input_grid), r->weight.dequantized,
                                r->weight.bias);
    EXPECT_LT((reference - out).mean(0).abs().max().item<double>(), 1e-4);
    // Without it, the bias is the layer's.
    WeightQuant plain = Liu(bits);
    plain.liu_bias_correction = false;
    auto p = SearchLiuIntervals(l.x, torch::Tensor(), &*base, l.weight, l.bias, plain);
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(p->weight.bias.defined());
    EXPECT_EQ(p->pearson, r->pearson);
  }
  // The wide channels make the 4-bit min-max input interval too wide: the search clips it.
  auto r = SearchLiuIntervals(l.x, torch::Tensor(), &*base, l.weight, l.bias, Liu(8));
  ASSERT_TRUE(r.ok());
  EXPECT_LT(r->input_multiplier, 1.0);
}

TEST(LiuTest, FixedInputsSearchOnlyTheWeight) {
  Layer l = MakeLayer();
  auto r = SearchLiuIntervals(l.x, l.x, nullptr, l.weight, l.bias, Liu(3));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->input_grid.has_value());
  EXPECT_EQ(r->input_multiplier, 1.0);
  EXPECT_EQ(SearchLiuIntervals(l.x, l.x, nullptr, l.weight, l.bias, WeightQuant{}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(SearchLiuIntervals(l.x, torch::Tensor(), nullptr, l.weight, l.bias, Liu(3))
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(LiuTest, MatmulSearchStartsAtMinMaxAndKeepsTheRankingAtQk) {
  torch::manual_seed(9);
  auto q = torch::randn({20, 2, 10, 8});
  auto k = torch::randn({20, 2, 8, 10});
  q.select(3, 0).mul_(8);  // a wide channel: min-max wastes levels
  auto q_base = FitUniformGrid(q, GroupLayout{}, RangeOptions{4, false, RangeCalibrator::kMinMax});
  auto k_base = FitUniformGrid(k, GroupLayout{}, RangeOptions{4, false, RangeCalibrator::kMinMax});
  ASSERT_TRUE(q_base.ok() && k_base.ok());
  for (bool ranking : {false, true}) {
    auto r = SearchLiuMatmulIntervals(q, k, &*q_base, &*k_base, {}, {}, ranking);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(r->lhs_grid && r->rhs_grid);
    // The search scores 16 of the 20 images; on them it ends no worse than min-max.
    auto pick = torch::linspace(0, 19, kLiuMatmulItems, torch::kFloat64).round().to(torch::kLong);
    auto qs = q.index_select(0, pick), ks = k.index_select(0, pick);
    auto ref = at::matmul(qs, ks);
    auto score = [&](const UniformGrid& gq, const UniformGrid& gk) {
      auto out = at::matmul(FakeQuantize(qs, gq), FakeQuantize(ks, gk));
      return PearsonCorrelation(ref, out) - (ranking ? RankingLoss(ref, out, 0) / 45.0 : 0.0);
    };
    EXPECT_NEAR(r->objective, score(*r->lhs_grid, *r->rhs_grid), 1e-9);
    EXPECT_GE(r->objective, score(*q_base, *k_base));
  }
  // An operand without a base grid is taken as given and not searched.
  auto fixed = SearchLiuMatmulIntervals(q, k, &*q_base, nullptr, {}, k, true);
  ASSERT_TRUE(fixed.ok());
  EXPECT_TRUE(fixed->lhs_grid.has_value());
  EXPECT_FALSE(fixed->rhs_grid.has_value());
  EXPECT_EQ(SearchLiuMatmulIntervals(q, k, nullptr, nullptr, {}, {}, false).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs::core
