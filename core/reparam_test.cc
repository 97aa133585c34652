#include "core/reparam.h"

#include <gtest/gtest.h>

#include "core/metrics.h"

namespace qs::core {
namespace {

// LayerNorm outputs with a few channels tens of times larger than the rest, as real ViTs have.
struct NormAndLinear {
  torch::Tensor input, gamma, beta, weight, bias;
  torch::Tensor Norm(const torch::Tensor& g, const torch::Tensor& b) const {
    return at::layer_norm(input, {input.size(-1)}, g, b, 1e-6);
  }
};

NormAndLinear MakeNormAndLinear(int64_t seed) {
  torch::manual_seed(seed);
  const int64_t c = 48, out = 24;
  NormAndLinear t;
  t.input = torch::randn({4, 17, c});
  t.gamma = 1 + 0.2 * torch::randn({c});
  t.beta = 0.3 * torch::randn({c});
  for (int64_t ch : {3, 20, 41}) {
    t.gamma[ch] *= 40;
    t.beta[ch] = t.beta[ch] * 40 + 15;
  }
  t.weight = torch::randn({out, c}) / 7;
  t.bias = torch::randn({out});
  return t;
}

ActivationQuant Asymmetric(int bits) {
  ActivationQuant a;
  a.bits = bits;
  a.calibrator = RangeCalibrator::kMinMax;
  return a;
}

TEST(ReparamTest, FoldingChangesNoFloatOutput) {
  auto t = MakeNormAndLinear(1);
  const auto y = t.Norm(t.gamma, t.beta);
  const auto reference = at::linear(y, t.weight, t.bias);
  for (int bits : {4, 8}) {
    auto fit = FitScaleReparam(y, Asymmetric(bits));
    ASSERT_TRUE(fit.ok()) << fit.status().ToString();
    auto [gamma, beta] = fit->reparam.FoldIntoLayerNorm(t.gamma, t.beta);
    const auto folded_norm = t.Norm(gamma, beta);
    // The folded LayerNorm emits what Apply computes from the original one.
    EXPECT_LT((folded_norm - fit->reparam.Apply(y)).abs().max().item<double>(), 1e-4);
    LinearFold f = fit->reparam.FoldIntoLinear(t.weight, t.bias);
    const auto folded = at::linear(folded_norm, f.weight, f.bias);
    EXPECT_LT((folded - reference).abs().max().item<double>(),
              1e-4 * reference.abs().max().item<double>());
    // The factors are not trivial: the outlier channels' scales differ from the rest.
    EXPECT_GT(fit->reparam.ratio.max().item<double>(), 5.0);
    EXPECT_GT(fit->reparam.shift.abs().max().item<double>(), 0.0);
  }
}

TEST(ReparamTest, OnePerTensorGridGivesThePerChannelCodes) {
  auto t = MakeNormAndLinear(2);
  const auto y = t.Norm(t.gamma, t.beta);
  auto fit = FitScaleReparam(y, Asymmetric(6));
  ASSERT_TRUE(fit.ok());
  UniformGrid per_channel = fit->per_channel;
  per_channel.scale = per_channel.scale.reshape({1, 1, -1});
  per_channel.zero_point = per_channel.zero_point.reshape({1, 1, -1});
  const auto want = QuantizeCodes(y, per_channel);
  const auto got = QuantizeCodes(fit->reparam.Apply(y), fit->per_tensor);
  // Equal but where float rounding moves a value across a rounding boundary.
  const double same = (want == got).to(torch::kFloat64).mean().item<double>();
  EXPECT_GT(same, 0.999);
  EXPECT_LE((want - got).abs().max().item<int>(), 1);
  EXPECT_EQ(fit->per_tensor.scale.numel(), 1);
  EXPECT_EQ(fit->per_tensor.zero_point.numel(), 1);
  // And so it serves the input far better than a per-tensor grid fitted to it directly.
  auto plain = FitUniformGrid(y, GroupLayout{}, RangeOptions{6, false, RangeCalibrator::kMinMax});
  ASSERT_TRUE(plain.ok());
  const auto folded_hat = FakeQuantize(fit->reparam.Apply(y), fit->per_tensor);
  const auto unfolded = (folded_hat + fit->reparam.shift) * fit->reparam.ratio;
  EXPECT_GT(SqnrDb(y, unfolded), SqnrDb(y, FakeQuantize(y, *plain)) + 10);
}

TEST(ReparamTest, SymmetricGridsNeedNoShift) {
  auto t = MakeNormAndLinear(3);
  const auto y = t.Norm(t.gamma, t.beta);
  ActivationQuant a = Asymmetric(8);
  a.symmetric = true;
  auto fit = FitScaleReparam(y, a);
  ASSERT_TRUE(fit.ok());
  EXPECT_EQ(fit->reparam.shift.abs().max().item<double>(), 0.0);
  EXPECT_NEAR(fit->reparam.ratio.mean().item<double>(), 1.0, 1e-5);
}

TEST(ReparamTest, RefusesWhatItCannotFold) {
  auto y = torch::randn({8, 16});
  EXPECT_EQ(FitScaleReparam(y, ActivationQuant{}).status().code(), StatusCode::kInvalidArgument);
  ActivationQuant log = Asymmetric(4);
  log.quantizer = ActivationQuantizer::kLogSqrt2;
  EXPECT_EQ(FitScaleReparam(y, log).status().code(), StatusCode::kInvalidArgument);
}

TEST(ReparamTest, NamesTheLayerNormOfEachSiteAndLogSqrt2ForSoftmax) {
  EXPECT_EQ(ReparamNorm("blocks.3.attn.qkv"), "blocks.3.norm1");
  EXPECT_EQ(ReparamNorm("blocks.3.mlp.fc1"), "blocks.3.norm2");
  EXPECT_EQ(ReparamNorm("layers.1.blocks.0.attn.qkv"), "layers.1.blocks.0.norm1");
  EXPECT_EQ(ReparamNorm("blocks.3.mlp.fc2"), "");
  EXPECT_EQ(ReparamNorm("head"), "");
  QuantConfig c;
  c.activation.bits = 4;
  EXPECT_EQ(MatmulLhsSpec(c, "blocks.0.attn.av_matmul").quantizer, ActivationQuantizer::kUniform);
  c.reparam = true;
  EXPECT_EQ(MatmulLhsSpec(c, "blocks.0.attn.av_matmul").quantizer,
            ActivationQuantizer::kLogSqrt2);
  EXPECT_EQ(MatmulLhsSpec(c, "blocks.0.attn.qk_matmul").quantizer, ActivationQuantizer::kUniform);
  c.activation.bits = 0;
  EXPECT_EQ(MatmulLhsSpec(c, "blocks.0.attn.av_matmul").quantizer, ActivationQuantizer::kUniform);
}

}  // namespace
}  // namespace qs::core
