#include "core/gptq.h"

#include <gtest/gtest.h>

#include <cstdio>

#include <ATen/ATen.h>

#include "core/dataset.h"
#include "core/kernel_choice.h"
#include "core/layer_inputs_for_test.h"

namespace qs::core {
namespace {

WeightQuant Spec(int bits, Granularity g = Granularity::kPerChannel, int group = 0) {
  WeightQuant s;
  s.method = WeightMethod::kGptq;
  s.bits = bits;
  s.granularity = g;
  s.group_size = group;
  return s;
}

// Correlated inputs X = Z·L, the regime where GPTQ's error feedback pays.
torch::Tensor CorrelatedInputs(int64_t tokens, int64_t width, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({tokens, width}).mm(torch::randn({width, width}) / std::sqrt(width));
}

TEST(GptqTest, DiagonalHessianReproducesRtnExactly) {
  torch::manual_seed(0);
  auto w = torch::randn({48, 96});
  auto h = torch::diag(torch::rand({96}, torch::kFloat64) + 0.1);
  std::vector<WeightQuant> specs = {Spec(4), Spec(3, Granularity::kPerTensor),
                                    Spec(4, Granularity::kPerGroup, 32), Spec(2)};
  specs.push_back(Spec(4, Granularity::kPerGroup, 32));
  specs.back().gptq_static_groups = true;
  specs.push_back(Spec(3));
  specs.back().gptq_act_order = true;
  specs.back().calibrator = RangeCalibrator::kMinMax;
  for (const auto& spec : specs) {
    auto gptq = QuantizeWeightGptq(w, h, spec);
    auto rtn = QuantizeWeightRtn(w, spec);
    ASSERT_TRUE(gptq.ok()) << gptq.status().ToString();
    ASSERT_TRUE(rtn.ok());
    EXPECT_TRUE(torch::equal(gptq->dequantized, rtn->dequantized))
        << ToString(spec.granularity) << " bits " << spec.bits;
    EXPECT_TRUE(torch::equal(gptq->codes, rtn->codes));
  }
}

TEST(GptqTest, BlockSizeDoesNotChangeTheResult) {
  auto x = CorrelatedInputs(512, 96, 1);
  auto h = InputHessian(x);
  torch::manual_seed(2);
  auto w = torch::randn({40, 96});
  for (auto base : {Spec(3), Spec(4, Granularity::kPerGroup, 32)}) {
    base.gptq_block_size = 128;
    auto reference = QuantizeWeightGptq(w, h, base);
    ASSERT_TRUE(reference.ok());
    for (int block : {1, 5, 32, 50}) {
      auto spec = base;
      spec.gptq_block_size = block;
      auto other = QuantizeWeightGptq(w, h, spec);
      ASSERT_TRUE(other.ok());
      EXPECT_TRUE(torch::allclose(other->dequantized, reference->dequantized, 1e-5, 1e-6))
          << "block " << block << " " << ToString(base.granularity);
    }
  }
}

TEST(GptqTest, CpuLoopsEqualTheTensorOpPathBitForBit) {
  auto x = CorrelatedInputs(400, 80, 5);
  auto h = InputHessian(x);
  torch::manual_seed(6);
  auto w = torch::randn({36, 80});
  std::vector<WeightQuant> specs = {Spec(3), Spec(4, Granularity::kPerGroup, 32),
                                    Spec(2, Granularity::kPerTensor)};
  specs.push_back(Spec(4, Granularity::kPerGroup, 16));
  specs.back().gptq_static_groups = true;
  specs.back().gptq_act_order = true;
  specs.push_back(Spec(3));
  specs.back().gptq_block_size = 24;
  for (const auto& spec : specs) {
    auto fast = QuantizeWeightGptq(w, h, spec);
    StatusOr<QuantizedWeight> reference = InternalError("not run");
    {
      ForceTensorOpsForTesting tensor_ops;
      reference = QuantizeWeightGptq(w, h, spec);
    }
    ASSERT_TRUE(fast.ok() && reference.ok());
    EXPECT_TRUE(torch::equal(fast->dequantized, reference->dequantized))
        << ToString(spec.granularity) << " bits " << spec.bits;
    EXPECT_TRUE(torch::equal(fast->grid.scale, reference->grid.scale));
  }
}

TEST(GptqTest, BeatsRtnOnCorrelatedInputs) {
  int wins = 0, trials = 0;
  for (uint64_t seed = 0; seed < 10; ++seed) {
    auto x = CorrelatedInputs(400, 64, 10 + seed);
    auto h = InputHessian(x);
    torch::manual_seed(100 + seed);
    auto w = torch::randn({32, 64});
    for (int bits : {3, 4}) {
      auto gptq = QuantizeWeightGptq(w, h, Spec(bits));
      auto rtn = QuantizeWeightRtn(w, Spec(bits));
      ASSERT_TRUE(gptq.ok() && rtn.ok());
      wins += HessianWeightedError(w, gptq->dequantized, h) <
              HessianWeightedError(w, rtn->dequantized, h);
      ++trials;
    }
  }
  EXPECT_GE(wins, trials * 95 / 100);
}

TEST(GptqTest, ActOrderAndGroupsStayOnGrid) {
  auto x = CorrelatedInputs(300, 64, 3);
  auto h = InputHessian(x);
  torch::manual_seed(4);
  auto w = torch::randn({16, 64});
  auto spec = Spec(3, Granularity::kPerGroup, 16);
  spec.gptq_act_order = true;
  spec.gptq_static_groups = true;
  auto q = QuantizeWeightGptq(w, h, spec);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_GE(q->codes.min().item<int>(), q->grid.qmin);
  EXPECT_LE(q->codes.max().item<int>(), q->grid.qmax);
  EXPECT_TRUE(torch::allclose(DequantizeCodes(q->codes, q->grid), q->dequantized));
  // Static groups: every group shares one scale per row, whatever order columns were visited in.
  auto s = q->grid.scale;
  EXPECT_TRUE(torch::equal(s.narrow(1, 16, 16), s.select(1, 16).unsqueeze(1).expand({16, 16})));
  auto bad = spec;
  bad.gptq_static_groups = false;
  EXPECT_EQ(QuantizeWeightGptq(w, h, bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(GptqTest, SingularAndDeadInputsGiveFiniteWeights) {
  torch::manual_seed(5);
  auto w = torch::randn({8, 32});
  auto x = torch::randn({5, 32});  // rank 5 < 32
  x.select(1, 7).zero_();           // a dead input
  auto q = QuantizeWeightGptq(w, InputHessian(x), Spec(4));
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_TRUE(torch::isfinite(q->dequantized).all().item<bool>());
  EXPECT_TRUE(q->dequantized.select(1, 7).eq(0).all().item<bool>());
  auto zero = QuantizeWeightGptq(w, torch::zeros({32, 32}, torch::kFloat64), Spec(4));
  ASSERT_TRUE(zero.ok()) << zero.status().ToString();
  EXPECT_EQ(QuantizeWeightGptq(w, torch::eye(31), Spec(4)).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(GptqTest, LayerErrorAtMostRtnOnTheFixtureLayers) {
  auto captured = testing::FixtureLayerInputs(128, 0);
  ASSERT_TRUE(captured.ok()) << captured.status().ToString();
  const auto& layers = *captured;
  ASSERT_EQ(layers.size(), 2u + 4u * 4u);  // patch embed, head, 4 blocks × 4
  // Not a theorem (methods.md §4.2 c): require it of at least 95% of layer × bit-width cases.
  int wins = 0, cases = 0;
  for (const auto& [name, layer] : layers) {
    auto h = InputHessian(layer.input);
    for (int bits : {3, 4}) {
      auto gptq = QuantizeWeightGptq(layer.weight, h, Spec(bits));
      auto rtn = QuantizeWeightRtn(layer.weight, Spec(bits));
      ASSERT_TRUE(gptq.ok() && rtn.ok()) << name;
      const bool win = HessianWeightedError(layer.weight, gptq->dequantized, h) <=
                       HessianWeightedError(layer.weight, rtn->dequantized, h);
      if (!win) std::printf("note: GPTQ above RTN on %s at %d bits\n", name.c_str(), bits);
      wins += win;
      ++cases;
    }
  }
  EXPECT_GE(wins, (cases * 95 + 99) / 100);
}

}  // namespace
}  // namespace qs::core
