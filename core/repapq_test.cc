#include "core/repapq.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/across_block.h"
#include "core/quantize_model.h"
#include "core/repvgg.h"
#include "core/vit.h"

namespace qs::core {
namespace {

using nlohmann::json;

WeightQuant RepapqSpec(int bits) {
  WeightQuant w;
  w.method = WeightMethod::kRepapq;
  w.bits = bits;
  w.calibrator = RangeCalibrator::kMae;
  return w;
}

TEST(RepapqTest, AffineFitIsExactOnCleanDataAndIgnoresOutliers) {
  torch::manual_seed(1);
  auto z = torch::randn({2000, 3});
  auto gamma = torch::tensor({0.8f, 1.0f, 1.3f}), beta = torch::tensor({0.1f, -0.2f, 0.0f});
  auto y = z * gamma + beta;
  auto [g, b] = FitAffineL1(z, y);
  EXPECT_TRUE(at::allclose(g, gamma, 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(b, beta, 1e-4, 1e-5));
  // 5% of the rows far off: least absolute deviations stay on the line, least squares would not.
  auto noisy = y.clone();
  noisy.narrow(0, 0, 100).add_(25.0);
  auto [g3, b3] = FitAffineL1(z, noisy);
  EXPECT_LT((g3 - gamma).abs().max().item<double>(), 0.02);
  EXPECT_LT((b3 - beta).abs().max().item<double>(), 0.02);
  // The least-squares line through the same data: its shift moves by about 5% · 25.
  auto zc = z - z.mean(0), yc = noisy - noisy.mean(0);
  auto ls_gamma = (zc * yc).sum(0) / (zc * zc).sum(0);
  auto ls_beta = noisy.mean(0) - ls_gamma * z.mean(0);
  EXPECT_GT((ls_beta - beta).abs().min().item<double>(), 1.0);
}

TEST(RepapqTest, QprepFoldsExactlyIntoTheScalesAndTheBias) {
  torch::manual_seed(2);
  auto weight = torch::randn({6, 10}), bias = torch::randn({6});
  auto x = torch::randn({500, 10});
  auto r = QuantizeRepapqWeight(x, x, weight, bias, RepapqSpec(4));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const QprepAffine& a = r->affine;
  // Bit-exact integer weights: the fold changes the scales, never the codes.
  EXPECT_TRUE(at::equal(r->folded.codes, QuantizeCodes(weight, a.grid)));
  // The folded layer equals the affine applied after the unfolded one.
  auto unfolded = at::linear(x, DequantizeCodes(r->folded.codes, a.grid), bias) * a.gamma + a.beta;
  auto folded = at::linear(x, r->folded.dequantized, r->folded.bias);
  EXPECT_LT((folded - unfolded).abs().max().item<double>(),
            1e-5 * unfolded.abs().max().item<double>());
  EXPECT_TRUE((a.gamma > 0).all().item<bool>());
  // Fitted for the layer's own output: no worse in absolute error than the plain rounding.
  auto y = at::linear(x, weight, bias);
  auto plain = at::linear(x, DequantizeCodes(r->folded.codes, a.grid), bias);
  EXPECT_LE((folded - y).abs().mean().item<double>(), (plain - y).abs().mean().item<double>());
}

TEST(RepapqTest, RefusesLayersWithoutABiasAndOtherGranularities) {
  auto weight = torch::randn({4, 8}), x = torch::randn({20, 8});
  auto no_bias = QuantizeRepapqWeight(x, x, weight, torch::Tensor(), RepapqSpec(4));
  ASSERT_FALSE(no_bias.ok());
  EXPECT_EQ(no_bias.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_bias.status().message().find("bias"), std::string::npos);
  WeightQuant per_tensor = RepapqSpec(4);
  per_tensor.granularity = Granularity::kPerTensor;
  EXPECT_FALSE(QuantizeRepapqWeight(x, x, weight, torch::randn({4}), per_tensor).ok());
  QuantConfig config;
  config.weight = per_tensor;
  EXPECT_EQ(ValidateQuantConfig(config, SiteKind::kLinear).code(), StatusCode::kInvalidArgument);
}

// A small trained-form RepVGG with BatchNorms away from identity.
ViTModel SmallRepVggModel() {
  json j = {{"architecture", "repvgg"}, {"img_size", 12}, {"in_chans", 1},
            {"num_classes", 5},         {"stem_chs", 4},  {"depths", {1, 3}},
            {"widths", {6, 8}},         {"mean", {0.3}},  {"std", {0.4}}};
  const ViTConfig c = ParseViTConfig(j).value();
  auto t = InitRepVggTensors(c, 7);
  torch::manual_seed(8);
  for (auto& [name, v] : t) {
    if (name.find("running_var") != std::string::npos) v = torch::rand(v.sizes()) + 0.3;
    if (name.find("bias") != std::string::npos) v = torch::randn(v.sizes()) * 0.2;
    if (name == "head.fc.weight") v = torch::randn(v.sizes()) * 0.3;
  }
  return ViTModel::FromTensors(c, t).value();
}

TEST(AcrossBlockTest, StagesGroupEachRepVggStage) {
  const ViTModel model = SmallRepVggModel();
  // stem, stages.0 (one block), stages.1 (three blocks), head.
  EXPECT_EQ(StageRanges(model),
            (std::vector<std::pair<int64_t, int64_t>>{{0, 0}, {1, 1}, {2, 4}, {5, 5}}));
}

TEST(AcrossBlockTest, TrainingLowersTheStageErrorAndIsRepeatable) {
  const ViTModel model = SmallRepVggModel();
  torch::manual_seed(3);
  auto images = torch::randn({96, 1, 12, 12});
  auto recipe = ParseUniformRecipe("w4a4:repapq", /*quantize_edges=*/true).value();
  recipe.linear_default.weight.repapq_iterations = 0;  // site-local fits only
  QuantizeOptions options;
  options.site_reports = false;
  auto local = QuantizeModel(model, recipe, images, options);
  ASSERT_TRUE(local.ok()) << local.status().ToString();
  // Stage stages.1 (segments 2..4) from the float stage input: the local fits against ABC.
  torch::Tensor x = images;
  for (int64_t s = 0; s < 2; ++s) x = model.ForwardSegment(s, x);
  torch::Tensor target = x;
  for (int64_t s = 2; s <= 4; ++s) target = model.ForwardSegment(s, target);
  auto sites = local->sites();
  for (auto& [name, q] : sites) q.config.weight.repapq_iterations = 300;
  auto report = CalibrateAcrossBlocks(model, {2, 4}, x, target, &sites);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->iterations, 300);
  EXPECT_LT(report->loss_after, 0.9 * report->loss_before);
  // The reported loss is the folded model's: recompute it.
  FakeQuantHandler folded(sites);
  auto y = x;
  for (int64_t s = 2; s <= 4; ++s) y = model.ForwardSegment(s, y, &folded);
  EXPECT_NEAR((y - target).abs().mean().item<double>(), report->loss_after, 1e-6);
  // Folded exactly: every trained site keeps codes on its (trained) grid.
  const QuantizedSite& q = sites.at("stages.1.1.reparam_conv");
  EXPECT_TRUE(
      at::equal(q.weight->codes,
                QuantizeCodes(model.tensor("stages.1.1.reparam_conv.weight").reshape({8, -1}),
                              q.qprep->grid)));
  // Sites outside the stage are untouched.
  EXPECT_TRUE(at::equal(sites.at("stages.0.0.reparam_conv").weight->dequantized,
                        local->sites().at("stages.0.0.reparam_conv").weight->dequantized));
  // The whole pipeline is repeatable.
  recipe.linear_default.weight.repapq_iterations = 50;
  auto a = QuantizeModel(model, recipe, images, options);
  auto b = QuantizeModel(model, recipe, images, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(a->Logits(images).value(), b->Logits(images).value()));
}

}  // namespace
}  // namespace qs::core
