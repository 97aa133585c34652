#include "core/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace qs::core {
namespace {

TEST(MetricsTest, KnownValues) {
  auto x = torch::tensor({3.0, 4.0});
  auto y = torch::tensor({3.0, 3.0});
  // Σx² = 25, Σ(x−y)² = 1.
  EXPECT_NEAR(SqnrDb(x, y), 10 * std::log10(25.0), 1e-9);
  EXPECT_TRUE(std::isinf(SqnrDb(x, x)));
  EXPECT_NEAR(Mse(x, y), 0.5, 1e-12);
  EXPECT_NEAR(Mae(x, y), 0.5, 1e-12);
  EXPECT_NEAR(Cosine(torch::tensor({1.0, 0.0}), torch::tensor({0.0, 2.0})), 0.0, 1e-12);
  EXPECT_NEAR(Cosine(x, x * 3), 1.0, 1e-12);
}

TEST(MetricsTest, OnePassSumsAgreeWithTheSeparateMetrics) {
  torch::manual_seed(3);
  for (int64_t n : {1, 7, 1000, 100003}) {
    auto y = torch::randn({n}), y_hat = y + torch::randn({n}) * 0.1;
    for (bool cpu_kernel : {true, false}) {
      // float64 inputs take the tensor-op path.
      auto a = cpu_kernel ? y : y.to(torch::kFloat64), b = cpu_kernel ? y_hat : y_hat.to(torch::kFloat64);
      const ErrorSums s = SumErrors(a, b);
      EXPECT_TRUE(s.finite);
      EXPECT_EQ(s.count, n);
      EXPECT_NEAR(10 * std::log10(s.signal / s.noise), SqnrDb(y, y_hat), 1e-9);
      EXPECT_NEAR(s.noise / n, Mse(y, y_hat), 1e-12);
      EXPECT_NEAR(s.absolute / n, Mae(y, y_hat), 1e-12);
      EXPECT_NEAR(s.cross / std::sqrt(s.signal * (s.noise - s.signal + 2 * s.cross)),
                  Cosine(y, y_hat), 1e-12);
    }
  }
  auto bad = torch::ones({9});
  bad[5] = std::nanf("");
  EXPECT_FALSE(SumErrors(torch::ones({9}), bad).finite);
  bad[5] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(SumErrors(torch::ones({9}), bad.to(torch::kFloat64)).finite);
}

TEST(MetricsTest, KlAndTop1) {
  auto logits = torch::tensor({{2.0, 1.0, 0.0}, {0.0, 5.0, 1.0}, {1.0, 0.0, 3.0}});
  auto labels = torch::tensor({0, 1, 1});
  EXPECT_NEAR(Top1(logits, labels), 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(OutputKl(logits, logits), 0.0, 1e-12);
  EXPECT_NEAR(OutputKl(logits, logits + 7.0), 0.0, 1e-9);  // softmax is shift-invariant
  EXPECT_GT(OutputKl(logits, logits.flip({1})), 0.1);
  auto other = logits.clone();
  other[2][0] = 10;
  EXPECT_NEAR(Top1Agreement(logits, other), 2.0 / 3.0, 1e-12);
  // Two-class KL by hand: p = softmax(0, 0) = (½, ½), q = softmax(0, ln 3) = (¼, ¾).
  auto p = torch::tensor({{0.0, 0.0}});
  auto q = torch::tensor({{0.0, std::log(3.0)}});
  EXPECT_NEAR(OutputKl(p, q), 0.5 * std::log(2.0) + 0.5 * std::log(0.5 / 0.75), 1e-7);
}

}  // namespace
}  // namespace qs::core
