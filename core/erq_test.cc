#include "core/erq.h"

#include <gtest/gtest.h>

#include <cstdio>

#include <ATen/ATen.h>

#include "core/dataset.h"
#include "core/kernel_choice.h"
#include "core/layer_inputs_for_test.h"
#include "core/metrics.h"

namespace qs::core {
namespace {

WeightQuant Spec(int bits) {
  WeightQuant s;
  s.method = WeightMethod::kErq;
  s.bits = bits;
  return s;
}

torch::Tensor ActivationQuantize(const torch::Tensor& x, int bits) {
  auto grid = FitUniformGrid(x, {}, RangeOptions{bits, false, RangeCalibrator::kOmse});
  EXPECT_TRUE(grid.ok());
  return FakeQuantize(x, *grid);
}

double OutputError(const torch::Tensor& x_hat, const torch::Tensor& w_hat,
                   const torch::Tensor& b_hat, const torch::Tensor& x, const LinearParams& fp) {
  return Mse(at::linear(x, fp.weight, fp.bias), at::linear(x_hat, w_hat, b_hat));
}

TEST(RidgeTest, VanishingLambdaIsLeastSquaresAndLargeLambdaIsZero) {
  torch::manual_seed(0);
  auto x = torch::randn({200, 20}, torch::kFloat64);
  auto y = torch::randn({200, 5}, torch::kFloat64);
  auto ridge = RidgeSolve(x.t().mm(x), x.t().mm(y), 1e-10);
  ASSERT_TRUE(ridge.ok());
  auto lstsq = std::get<0>(at::linalg_lstsq(x, y));
  EXPECT_TRUE(torch::allclose(*ridge, lstsq, 1e-8, 1e-9));
  auto huge = RidgeSolve(x.t().mm(x), x.t().mm(y), 1e12);
  ASSERT_TRUE(huge.ok());
  EXPECT_LT(huge->abs().max().item<double>(), 1e-8);
  // The fit error does not grow as λ shrinks.
  double prev = 1e300;
  for (double lambda : {1e4, 1e2, 1.0, 1e-2, 1e-6}) {
    auto d = RidgeSolve(x.t().mm(x), x.t().mm(y), lambda);
    ASSERT_TRUE(d.ok());
    double err = (x.mm(*d) - y).pow(2).sum().item<double>();
    EXPECT_LE(err, prev + 1e-9) << lambda;
    prev = err;
  }
}

TEST(AqerTest, ChangesNothingWithoutActivationQuantization) {
  torch::manual_seed(1);
  LinearParams layer{torch::randn({24, 32}), torch::randn({24})};
  auto x = torch::randn({4, 50, 32});
  auto out = ReduceActivationError(layer, x, x, 1000);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(torch::equal(out->weight, layer.weight));
  EXPECT_TRUE(torch::equal(out->bias, layer.bias));
}

TEST(AqerTest, AbsorbsActivationErrorAndKeepsBiaslessLayersBiasless) {
  torch::manual_seed(2);
  LinearParams layer{torch::randn({24, 32}), torch::randn({24})};
  auto x = torch::randn({2000, 32}) + 0.3;
  auto x_hat = ActivationQuantize(x, 4);
  auto out = ReduceActivationError(layer, x, x_hat, 1.0);
  ASSERT_TRUE(out.ok());
  // Only the part of the error predictable from X̄ can be absorbed; on i.i.d. inputs that is a
  // few percent, but it must never get worse.
  EXPECT_LT(OutputError(x_hat, out->weight, out->bias, x, layer),
            OutputError(x_hat, layer.weight, layer.bias, x, layer));
  LinearParams no_bias{layer.weight, torch::Tensor()};
  auto nb = ReduceActivationError(no_bias, x, x_hat, 1.0);
  ASSERT_TRUE(nb.ok());
  EXPECT_FALSE(nb->bias.defined());
}

TEST(AqerTest, VanishingLambdaGivesTheLeastSquaresLayer) {
  torch::manual_seed(3);
  LinearParams layer{torch::randn({6, 10}), torch::randn({6})};
  auto x = torch::randn({500, 10});
  auto x_hat = ActivationQuantize(x, 3);
  auto out = ReduceActivationError(layer, x, x_hat, 1e-9);
  ASSERT_TRUE(out.ok());
  // Ordinary least squares of the float output on [X̄, 1].
  auto xt = at::cat({x_hat, torch::ones({500, 1})}, 1).to(torch::kFloat64);
  auto y = at::linear(x, layer.weight, layer.bias).to(torch::kFloat64);
  auto ols = std::get<0>(at::linalg_lstsq(xt, y));
  EXPECT_TRUE(torch::allclose(out->weight.to(torch::kFloat64), ols.narrow(0, 0, 10).t(), 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(out->bias.to(torch::kFloat64), ols.select(0, 10), 1e-4, 1e-4));
}

// Returns whether ERQ's output error is at most RTN's at the same scales; checks the grid always.
bool OnGridAndNoWorseThanRtn(const LinearParams& layer, const torch::Tensor& x_hat, int bits,
                             const std::string& what, bool conv = false) {
  auto spec = Spec(bits);
  auto erq = ReduceWeightError(layer, x_hat, spec, conv);
  EXPECT_TRUE(erq.ok()) << erq.status().ToString();
  if (!erq.ok()) return false;
  // On the grid: fake-quantizing again changes nothing, and the codes reproduce it.
  EXPECT_TRUE(torch::equal(FakeQuantize(erq->dequantized, erq->grid), erq->dequantized)) << what;
  EXPECT_TRUE(torch::equal(DequantizeCodes(erq->codes, erq->grid), erq->dequantized)) << what;
  // RTN at the same scales.
  auto rtn = FakeQuantize(layer.weight, erq->grid);
  auto b = erq->bias.defined() ? erq->bias : layer.bias;
  const double erq_err = OutputError(x_hat, erq->dequantized, b, x_hat, layer);
  const double rtn_err = OutputError(x_hat, rtn, layer.bias, x_hat, layer);
  if (erq_err > rtn_err) std::printf("note: ERQ above RTN on %s at %d bits\n", what.c_str(), bits);
  return erq_err <= rtn_err;
}

TEST(WqerTest, WeightsOnGridAndOutputErrorAtMostRtnOnRandomLayers) {
  int wins = 0, cases = 0;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    torch::manual_seed(10 + seed);
    LinearParams layer{torch::randn({32, 48}), torch::randn({32})};
    auto x = torch::randn({600, 48}).mm(torch::randn({48, 48}) / 7.0);
    auto x_hat = ActivationQuantize(x, 8);
    for (int bits : {3, 4}) {
      wins += OnGridAndNoWorseThanRtn(layer, x_hat, bits, "random");
      wins += OnGridAndNoWorseThanRtn(layer, x_hat, bits, "random, conv path", /*conv=*/true);
      cases += 2;
    }
  }
  torch::manual_seed(20);
  LinearParams no_bias{torch::randn({16, 33}), torch::Tensor()};
  wins += OnGridAndNoWorseThanRtn(no_bias, torch::randn({300, 33}), 3, "no bias, odd width");
  ++cases;
  EXPECT_GE(wins, (cases * 95 + 99) / 100);
}

TEST(WqerTest, CpuRefinementEqualsTheTensorOpPathBitForBit) {
  torch::manual_seed(30);
  LinearParams layer{torch::randn({40, 64}), torch::randn({40})};
  auto x_hat = ActivationQuantize(torch::randn({500, 64}).mm(torch::randn({64, 64}) / 8.0), 8);
  for (int bits : {2, 3, 4}) {
    for (bool conv : {false, true}) {
      auto fast = ReduceWeightError(layer, x_hat, Spec(bits), conv);
      StatusOr<QuantizedWeight> reference = InternalError("not run");
      {
        ForceTensorOpsForTesting tensor_ops;
        reference = ReduceWeightError(layer, x_hat, Spec(bits), conv);
      }
      ASSERT_TRUE(fast.ok() && reference.ok());
      EXPECT_TRUE(torch::equal(fast->dequantized, reference->dequantized)) << bits << conv;
      EXPECT_TRUE(torch::equal(fast->bias, reference->bias)) << bits << conv;
    }
  }
}

TEST(WqerTest, OutputErrorAtMostRtnOnTheFixtureLayers) {
  auto layers = testing::FixtureLayerInputs(64, 1);
  ASSERT_TRUE(layers.ok()) << layers.status().ToString();
  // Statistical, as methods.md §5.1 (e) says: at least 95% of layer × bit-width cases.
  int wins = 0, cases = 0;
  for (const auto& [name, layer] : *layers) {
    auto x_hat = ActivationQuantize(layer.input, 4);
    LinearParams params{layer.weight, layer.bias};
    for (int bits : {3, 4}) {
      wins += OnGridAndNoWorseThanRtn(params, x_hat, bits, name, name == "patch_embed.proj");
      ++cases;
    }
  }
  EXPECT_GE(wins, (cases * 95 + 99) / 100);
}

TEST(WqerTest, RejectsMismatchedInputs) {
  LinearParams layer{torch::randn({4, 8}), torch::randn({4})};
  EXPECT_EQ(ReduceWeightError(layer, torch::randn({10, 7}), Spec(4)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ReduceActivationError(layer, torch::randn({10, 8}), torch::randn({10, 7}), 1).status()
                .code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs::core
