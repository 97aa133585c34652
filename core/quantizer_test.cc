#include "core/quantizer.h"

#include <gtest/gtest.h>

#include <limits>

#include <ATen/ATen.h>

#include "core/kernel_choice.h"
#include "core/metrics.h"

namespace qs::core {
namespace {

torch::Tensor Gaussian(int64_t rows, int64_t cols, uint64_t seed = 0) {
  torch::manual_seed(seed);
  return torch::randn({rows, cols});
}

double WeightSqnr(const torch::Tensor& w, Granularity g, int bits,
                  RangeCalibrator cal = RangeCalibrator::kMinMax, bool symmetric = true,
                  int group = 0) {
  WeightQuant spec;
  spec.bits = bits;
  spec.granularity = g;
  spec.calibrator = cal;
  spec.symmetric = symmetric;
  spec.group_size = group;
  auto q = QuantizeWeightRtn(w, spec);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  return SqnrDb(w, q->dequantized);
}

// methods.md §1.1, computed on N(0,1) 768×768: the values the grid math must reproduce.
TEST(UniformQuantizerTest, MatchesReferenceSqnrOnGaussianWeights) {
  auto w = Gaussian(768, 768);
  struct Row { int bits; double per_channel, per_tensor, per_channel_asym; };
  for (Row r : {Row{8, 42.3, 38.8, 42.9}, Row{6, 30.1, 26.6, 30.7}, Row{4, 17.1, 13.7, 18.3},
                Row{3, 9.8, 6.3, 11.7}}) {
    EXPECT_NEAR(WeightSqnr(w, Granularity::kPerChannel, r.bits), r.per_channel, 0.5) << r.bits;
    // Per-tensor hangs on the single largest of 590k draws, so it moves more with the seed.
    EXPECT_NEAR(WeightSqnr(w, Granularity::kPerTensor, r.bits), r.per_tensor, 1.0) << r.bits;
    EXPECT_NEAR(WeightSqnr(w, Granularity::kPerChannel, r.bits, RangeCalibrator::kMinMax, false),
                r.per_channel_asym, 0.5)
        << r.bits;
  }
}

TEST(UniformQuantizerTest, FullScaleUniformInt8IsTheoretical48Db) {
  torch::manual_seed(1);
  auto x = torch::rand({1 << 20}) * 2 - 1;
  auto g = FitUniformGrid(x, GroupLayout{}, RangeOptions{8, true, RangeCalibrator::kMinMax});
  ASSERT_TRUE(g.ok());
  EXPECT_NEAR(SqnrDb(x, FakeQuantize(x, *g)), 48.1, 0.3);
}

TEST(UniformQuantizerTest, EachExtraBitAddsAboutSixDb) {
  auto w = Gaussian(512, 512, 2);
  for (int bits = 6; bits < 8; ++bits) {
    double gain = WeightSqnr(w, Granularity::kPerChannel, bits + 1) -
                  WeightSqnr(w, Granularity::kPerChannel, bits);
    EXPECT_GE(gain, 5.5) << bits;
    EXPECT_LE(gain, 6.5) << bits;
  }
}

TEST(UniformQuantizerTest, FinerGranularityAndSearchNeverLose) {
  auto w = Gaussian(256, 384, 3) * torch::linspace(0.1, 3.0, 256).unsqueeze(1);
  for (int bits : {2, 3, 4, 6, 8}) {
    const double tensor = WeightSqnr(w, Granularity::kPerTensor, bits);
    const double channel = WeightSqnr(w, Granularity::kPerChannel, bits);
    const double group = WeightSqnr(w, Granularity::kPerGroup, bits, RangeCalibrator::kMinMax,
                                    true, 64);
    EXPECT_GE(channel, tensor) << bits;
    EXPECT_GE(group, channel - 1e-9) << bits;
    for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel}) {
      EXPECT_GE(WeightSqnr(w, g, bits, RangeCalibrator::kOmse),
                WeightSqnr(w, g, bits, RangeCalibrator::kMinMax) - 1e-9)
          << bits;
    }
  }
  // The search pays off most at low bits.
  EXPECT_GT(WeightSqnr(w, Granularity::kPerChannel, 3, RangeCalibrator::kOmse),
            WeightSqnr(w, Granularity::kPerChannel, 3) + 1.0);
}

TEST(UniformQuantizerTest, MaeSearchNeverHasLargerMaeThanMinMax) {
  auto x = Gaussian(64, 4096, 4);
  for (int bits : {3, 4, 8}) {
    auto mm = FitUniformGrid(x, {}, RangeOptions{bits, false, RangeCalibrator::kMinMax});
    auto mae = FitUniformGrid(x, {}, RangeOptions{bits, false, RangeCalibrator::kMae});
    ASSERT_TRUE(mm.ok() && mae.ok());
    EXPECT_LE(Mae(x, FakeQuantize(x, *mae)), Mae(x, FakeQuantize(x, *mm)) + 1e-12) << bits;
  }
}

TEST(UniformQuantizerTest, PerGroupWithWholeRowGroupsEqualsPerChannelAndRaggedGroupsWork) {
  auto w = Gaussian(32, 100, 5);
  EXPECT_DOUBLE_EQ(WeightSqnr(w, Granularity::kPerGroup, 4, RangeCalibrator::kMinMax, true, 100),
                   WeightSqnr(w, Granularity::kPerChannel, 4));
  WeightQuant spec;
  spec.bits = 4;
  spec.granularity = Granularity::kPerGroup;
  spec.group_size = 32;  // 100 = 32 + 32 + 32 + 4
  spec.calibrator = RangeCalibrator::kMinMax;
  auto g = FitWeightGrid(w, spec);
  ASSERT_TRUE(g.ok());
  ASSERT_EQ(g->scale.sizes().vec(), (std::vector<int64_t>{32, 100}));
  // Each group's scale is its own max |w| / 7.
  auto expected = w.narrow(1, 96, 4).abs().amax(1) / 7.0;
  EXPECT_TRUE(torch::allclose(g->scale.select(1, 99), expected));
  EXPECT_TRUE(torch::allclose(g->scale.select(1, 97), expected));
}

TEST(UniformQuantizerTest, OutlierChannelsHurtPerTensorButNotPerChannel) {
  auto x = Gaussian(2048, 768, 6);
  x.narrow(1, 0, 4).mul_(50);
  RangeOptions int8{8, true, RangeCalibrator::kMinMax};
  auto tensor = FitUniformGrid(x, GroupLayout{}, int8);
  GroupLayout per_channel{Granularity::kPerChannel, /*channel_axis=*/-1};
  auto channel = FitUniformGrid(x, per_channel, int8);
  ASSERT_TRUE(tensor.ok() && channel.ok());
  // SQNR over the well-behaved channels.
  auto body = [](const torch::Tensor& t) { return t.narrow(1, 4, 764); };
  const double tensor_db = SqnrDb(body(x), body(FakeQuantize(x, *tensor)));
  const double channel_db = SqnrDb(body(x), body(FakeQuantize(x, *channel)));
  EXPECT_LT(tensor_db, 25.0);
  EXPECT_GT(channel_db, 38.0);
}

TEST(UniformQuantizerTest, LargeActivationsKeepEveryChannelInTheirRange) {
  // 4096 tokens × 768 channels (3.1M elements, above the search's sampling threshold) with one
  // channel of each parity scaled up: neither may be missed.
  torch::manual_seed(14);
  auto x = torch::randn({4096, 768});
  x.select(1, 6).mul_(40);
  x.select(1, 7).mul_(40);
  for (auto cal : {RangeCalibrator::kOmse, RangeCalibrator::kPercentile}) {
    auto g = FitUniformGrid(x, {}, RangeOptions{8, true, cal, 0.99999});
    ASSERT_TRUE(g.ok());
    EXPECT_GT(g->scale.item<double>() * 127, 40.0) << ToString(cal);
  }
  // The sampled search still lands at or near min-max's error on the whole tensor.
  auto omse = FitUniformGrid(x, {}, RangeOptions{8, true, RangeCalibrator::kOmse});
  auto mm = FitUniformGrid(x, {}, RangeOptions{8, true, RangeCalibrator::kMinMax});
  ASSERT_TRUE(omse.ok() && mm.ok());
  EXPECT_LE(Mse(x, FakeQuantize(x, *omse)), 1.05 * Mse(x, FakeQuantize(x, *mm)));
}

TEST(UniformQuantizerTest, PercentileClipsOutliers) {
  auto x = Gaussian(1, 100000, 7).flatten();
  x[0] = 100.0;
  auto mm = FitUniformGrid(x, {}, RangeOptions{8, true, RangeCalibrator::kMinMax});
  auto pct = FitUniformGrid(x, {}, RangeOptions{8, true, RangeCalibrator::kPercentile, 0.999});
  ASSERT_TRUE(mm.ok() && pct.ok());
  EXPECT_NEAR(mm->scale.item<double>(), 100.0 / 127, 1e-5);
  EXPECT_LT(pct->scale.item<double>(), 4.0 / 127);
  EXPECT_GT(pct->scale.item<double>(), 2.5 / 127);
}

TEST(UniformQuantizerTest, PerHeadGivesEachHeadItsOwnScale) {
  // [tokens, heads × head_dim] with head h scaled by 10^h.
  auto x = Gaussian(50, 12, 8);
  for (int h = 0; h < 3; ++h) x.narrow(1, 4 * h, 4).mul_(std::pow(10.0, h));
  GroupLayout layout{Granularity::kPerHead, -1, /*head_axis=*/-1, /*num_heads=*/3};
  auto g = FitUniformGrid(x, layout, RangeOptions{8, true, RangeCalibrator::kMinMax});
  ASSERT_TRUE(g.ok());
  auto s = g->scale.flatten();
  ASSERT_EQ(s.numel(), 12);
  EXPECT_EQ(s[0].item<float>(), s[3].item<float>());
  EXPECT_NEAR(s[4].item<double>() / s[0].item<double>(), 10.0, 5.0);
  EXPECT_NEAR(s[8].item<double>() / s[4].item<double>(), 10.0, 5.0);
  // Matmul operands [B, H, N, K] with heads on axis 1.
  auto op = torch::randn({2, 3, 5, 4});
  GroupLayout op_layout{Granularity::kPerHead, -1, 1, 3};
  auto og = FitUniformGrid(op, op_layout, RangeOptions{8, true, RangeCalibrator::kMinMax});
  ASSERT_TRUE(og.ok());
  EXPECT_EQ(og->scale.sizes().vec(), (std::vector<int64_t>{1, 3, 1, 1}));
  GroupLayout bad{Granularity::kPerHead, -1, -1, 5};
  EXPECT_EQ(FitUniformGrid(x, bad, RangeOptions{}).status().code(), StatusCode::kInvalidArgument);
}

TEST(UniformQuantizerTest, IdempotentOnGridAndCodesInRange) {
  auto x = Gaussian(64, 96, 9) * 3 + 0.5;
  for (bool symmetric : {true, false}) {
    for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel}) {
      for (auto cal : {RangeCalibrator::kMinMax, RangeCalibrator::kOmse,
                       RangeCalibrator::kPercentile, RangeCalibrator::kMae}) {
        for (int bits : {2, 3, 4, 8}) {
          GroupLayout layout{g, /*channel_axis=*/0};
          auto grid = FitUniformGrid(x, layout, RangeOptions{bits, symmetric, cal, 0.99});
          ASSERT_TRUE(grid.ok());
          auto once = FakeQuantize(x, *grid);
          EXPECT_TRUE(torch::equal(FakeQuantize(once, *grid), once));
          auto codes = QuantizeCodes(x, *grid);
          EXPECT_GE(codes.min().item<int64_t>(), grid->qmin);
          EXPECT_LE(codes.max().item<int64_t>(), grid->qmax);
          EXPECT_TRUE(torch::equal(DequantizeCodes(codes, *grid), once));
          // On the grid: x̂ / scale + zero point is an integer.
          auto k = once / grid->scale + grid->zero_point;
          EXPECT_LT((k - k.round()).abs().max().item<double>(), 1e-3);
        }
      }
    }
  }
}

// The CPU shrink search (sorted runs for long rows, element by element for short ones) must pick
// the very grid the tensor-op search picks, on every kind of value an activation or weight has.
TEST(UniformQuantizerTest, CpuShrinkSearchPicksWhatTheTensorOpSearchPicks) {
  torch::manual_seed(11);
  std::vector<std::pair<std::string, torch::Tensor>> inputs = {
      {"gaussian", torch::randn({8, 4096})},
      {"heavy tails", torch::randn({8, 4096}) / (torch::rand({8, 4096}) + 0.05)},
      {"post-softmax", (torch::randn({8, 64, 64}) * 3).softmax(-1).reshape({8, -1})},
      {"post-gelu", at::gelu(torch::randn({8, 4096}) * 2)},
      {"on the grid", (torch::randint(-8, 8, {8, 4096}) * 0.25).to(torch::kFloat32)},
      {"constant rows", torch::full({8, 4096}, 0.37f)},
      {"zeros", torch::zeros({8, 4096})},
      {"short rows", torch::randn({300, 96})},
  };
  auto outliers = torch::randn({8, 4096});
  outliers.narrow(1, 0, 3).mul_(50);
  inputs.push_back({"outliers", outliers});
  int compared = 0;
  for (const auto& [name, x] : inputs) {
    for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel}) {
      for (auto cal : {RangeCalibrator::kOmse, RangeCalibrator::kMae}) {
        for (bool symmetric : {true, false}) {
          for (int bits : {2, 3, 4, 6, 8}) {
            GroupLayout layout{g, /*channel_axis=*/0};
            RangeOptions range{bits, symmetric, cal};
            auto a = FitUniformGrid(x, layout, range);
            StatusOr<UniformGrid> b = InternalError("not run");
            {
              ForceTensorOpsForTesting tensor_ops;
              b = FitUniformGrid(x, layout, range);
            }
            ASSERT_TRUE(a.ok() && b.ok());
            const std::string what = name + " " + ToString(g) + " " + ToString(cal) + " " +
                                     (symmetric ? "sym" : "asym") + " " + std::to_string(bits);
            EXPECT_TRUE(torch::equal(a->scale, b->scale)) << what;
            EXPECT_TRUE(torch::equal(a->zero_point, b->zero_point)) << what;
            ++compared;
          }
        }
      }
    }
  }
  EXPECT_EQ(compared, 9 * 2 * 2 * 2 * 5);
}

TEST(UniformQuantizerTest, CpuFakeQuantizeEqualsTheTensorOps) {
  torch::manual_seed(12);
  auto calibration = torch::randn({6, 17, 48}) * 3;
  auto y = torch::randn({6, 17, 48}) * 3;
  y[0][0][0] = 1e30f;
  y[0][0][1] = -std::numeric_limits<float>::infinity();
  y[0][0][2] = 5e6f;  // beyond the rounding trick's exact range, clamped all the same
  for (auto g : {Granularity::kPerTensor, Granularity::kPerChannel, Granularity::kPerHead}) {
    for (bool symmetric : {true, false}) {
      for (int bits : {2, 4, 8}) {
        auto grid = FitUniformGrid(calibration, GroupLayout{g, /*channel_axis=*/-1,
                                                            /*head_axis=*/-1, /*num_heads=*/4},
                                   RangeOptions{bits, symmetric});
        ASSERT_TRUE(grid.ok());
        auto fast = FakeQuantize(y, *grid);
        torch::Tensor reference;
        {
          ForceTensorOpsForTesting tensor_ops;
          reference = FakeQuantize(y, *grid);
        }
        EXPECT_TRUE(torch::equal(fast, reference)) << ToString(g) << " " << bits << symmetric;
      }
    }
  }
}

TEST(UniformQuantizerTest, RejectsBadBitWidthsAndEmptyTensors) {
  auto x = Gaussian(4, 4);
  EXPECT_EQ(FitUniformGrid(x, {}, RangeOptions{9}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FitUniformGrid(x, {}, RangeOptions{1}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FitUniformGrid(torch::empty({0}), {}, RangeOptions{}).status().code(),
            StatusCode::kInvalidArgument);
}

torch::Tensor SoftmaxRows(uint64_t seed) {
  torch::manual_seed(seed);
  return (torch::randn({64, 197}) * 3).softmax(-1);
}

TEST(LogQuantizerTest, ValuesArePowersOfTwoAndIdempotent) {
  auto p = SoftmaxRows(10);
  for (bool sqrt2 : {false, true}) {
    auto q = LogFakeQuantize(p, 1.0, 4, sqrt2);
    EXPECT_TRUE(torch::equal(LogFakeQuantize(q, 1.0, 4, sqrt2), q));
    auto nz = q.masked_select(q > 0);
    auto e = -(sqrt2 ? 2.0 : 1.0) * nz.log2();
    EXPECT_LT((e - e.round()).abs().max().item<double>(), 1e-4);
    EXPECT_LE(e.max().item<double>(), 15 + 1e-4);
  }
  // Non-positive inputs and values below the smallest level become 0.
  auto edge = torch::tensor({-1.0f, 0.0f, 1e-9f, 1.0f});
  auto q = LogFakeQuantize(edge, 1.0, 4, false);
  EXPECT_EQ(q[0].item<float>(), 0);
  EXPECT_EQ(q[1].item<float>(), 0);
  EXPECT_EQ(q[2].item<float>(), 0);
  EXPECT_EQ(q[3].item<float>(), 1);
}

TEST(LogQuantizerTest, FitsOnlyPostSoftmaxAndSqrt2IsFiner) {
  auto p = SoftmaxRows(11);
  ActivationQuant spec;
  spec.bits = 4;
  spec.quantizer = ActivationQuantizer::kLog2;
  auto general = ActivationQuantizerState::Fit(p, spec, {}, ValueDomain::kGeneral);
  EXPECT_EQ(general.status().code(), StatusCode::kInvalidArgument);
  auto log2 = ActivationQuantizerState::Fit(p, spec, {}, ValueDomain::kPostSoftmax);
  spec.quantizer = ActivationQuantizer::kLogSqrt2;
  auto logs2 = ActivationQuantizerState::Fit(p, spec, {}, ValueDomain::kPostSoftmax);
  ASSERT_TRUE(log2.ok() && logs2.ok());
  // Relative error is smaller on the √2 grid wherever both grids reach (4 bits: 2^−7.5 for √2).
  auto mask = p > 1.0 / 128;
  auto rel = [&](const torch::Tensor& q) {
    return ((q - p).abs() / p).masked_select(mask).mean().item<double>();
  };
  EXPECT_LT(rel(logs2->Apply(p)), rel(log2->Apply(p)));
}

TEST(TwinUniformTest, PostSoftmaxBeatsPlainUniformAndIsIdempotent) {
  auto p = SoftmaxRows(12);
  ActivationQuant spec;
  spec.bits = 4;
  spec.quantizer = ActivationQuantizer::kTwinUniform;
  auto twin = ActivationQuantizerState::Fit(p, spec, {}, ValueDomain::kPostSoftmax);
  ASSERT_TRUE(twin.ok()) << twin.status().ToString();
  auto q = twin->Apply(p);
  EXPECT_TRUE(torch::equal(twin->Apply(q), q));
  // Split m = 0 is the plain (bits−1)-bit uniform grid over [0, 1]. Softmax rows put most values
  // near 0, so the search must find a finer small region that does strictly better.
  auto plain = (p * 7).round().clamp(0, 7) / 7;
  EXPECT_LT(Mse(p, q), 0.9 * Mse(p, plain));
  EXPECT_LT(twin->twin_small_step(), twin->twin_large_step());
}

TEST(TwinUniformTest, PostGeluKeepsTheNegativeRegionFine) {
  torch::manual_seed(13);
  auto x = at::gelu(torch::randn({4096}) * 2);
  ActivationQuant spec;
  spec.bits = 4;
  spec.quantizer = ActivationQuantizer::kTwinUniform;
  auto twin = ActivationQuantizerState::Fit(x, spec, {}, ValueDomain::kPostGelu);
  ASSERT_TRUE(twin.ok()) << twin.status().ToString();
  auto q = twin->Apply(x);
  EXPECT_TRUE(torch::equal(twin->Apply(q), q));
  auto neg = x < 0;
  auto uniform = FitUniformGrid(x, {}, RangeOptions{4, false, RangeCalibrator::kOmse});
  ASSERT_TRUE(uniform.ok());
  auto u = FakeQuantize(x, *uniform);
  EXPECT_LT(Mse(x.masked_select(neg), q.masked_select(neg)),
            Mse(x.masked_select(neg), u.masked_select(neg)));
  EXPECT_EQ(
      ActivationQuantizerState::Fit(x, spec, {}, ValueDomain::kGeneral).status().code(),
      StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs::core
