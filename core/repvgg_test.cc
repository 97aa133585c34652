#include "core/repvgg.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/vit.h"

namespace qs::core {
namespace {

using nlohmann::json;

// Two stages of two blocks: every block kind (strided without identity,
// identity) appears.
ViTConfig SmallRepVgg() {
  json j = {{"architecture", "repvgg"}, {"img_size", 12}, {"in_chans", 1},
            {"num_classes", 5},         {"stem_chs", 4},  {"depths", {2, 2}},
            {"widths", {6, 8}},         {"mean", {0.3}},  {"std", {0.4}}};
  return ParseViTConfig(j).value();
}

// Trained-form tensors whose BatchNorms are far from identity, so fusion has
// work to do.
std::map<std::string, torch::Tensor> TrainedTensors(const ViTConfig& c, uint64_t seed) {
  auto t = InitRepVggTensors(c, seed);
  torch::manual_seed(seed + 1);
  for (auto& [name, v] : t) {
    if (name.find("running_var") != std::string::npos) v = torch::rand(v.sizes()) + 0.2;
    if (name.find("running_mean") != std::string::npos) v = torch::randn(v.sizes()) * 0.3;
    if (name.find("bn.weight") != std::string::npos ||
        name.find("identity.weight") != std::string::npos) {
      v = torch::rand(v.sizes()) * 1.5 + 0.25;
    }
    if (name.find("bn.bias") != std::string::npos ||
        name.find("identity.bias") != std::string::npos) {
      v = torch::randn(v.sizes()) * 0.2;
    }
    if (name == "head.fc.weight") v = torch::randn(v.sizes()) * 0.3;
  }
  return t;
}

double MaxRelativeError(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

TEST(RepVggTest, BlocksFollowTimmsLayout) {
  const auto blocks = RepVggBlocks(SmallRepVgg());
  ASSERT_EQ(blocks.size(), 5u);
  EXPECT_EQ(blocks[0].prefix, "stem.");
  EXPECT_EQ(blocks[0].stride, 2);
  EXPECT_FALSE(blocks[0].identity);
  EXPECT_EQ(blocks[1].prefix, "stages.0.0.");
  EXPECT_EQ(blocks[1].stride, 2);
  EXPECT_FALSE(blocks[1].identity);
  EXPECT_EQ(blocks[2].prefix, "stages.0.1.");
  EXPECT_EQ(blocks[2].stride, 1);
  EXPECT_TRUE(blocks[2].identity);
  // 12 → 6 (stem) → 3 → 2 with padding 1.
  EXPECT_EQ(blocks[0].out_side, 6);
  EXPECT_EQ(blocks[2].out_side, 3);
  EXPECT_EQ(blocks[4].out_side, 2);
  const auto shapes = RepVggTrainShapes(SmallRepVgg());
  EXPECT_TRUE(shapes.count("stages.1.1.identity.running_var"));
  EXPECT_FALSE(shapes.count("stages.1.0.identity.weight"));
  EXPECT_EQ(shapes.at("stages.1.0.conv_1x1.conv.weight"), (std::vector<int64_t>{8, 6, 1, 1}));
}

TEST(RepVggTest, BranchFusionChangesNoOutput) {
  const ViTConfig c = SmallRepVgg();
  const auto trained = TrainedTensors(c, 3);
  auto model = ViTModel::FromTensors(c, trained);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  torch::manual_seed(9);
  auto images = torch::randn({6, 1, 12, 12});
  auto branches = RepVggTrainForward(c, trained, images, /*training=*/false);
  auto fused = model->Forward(images);
  EXPECT_LT(MaxRelativeError(fused, branches), 1e-5);
  // The branches matter: dropping the identity branch's BatchNorm changes the
  // output.
  auto without = trained;
  without["stages.0.1.identity.weight"] = torch::zeros({6});
  without["stages.0.1.identity.bias"] = torch::zeros({6});
  EXPECT_GT(MaxRelativeError(RepVggTrainForward(c, without, images, false), branches), 1e-3);
}

TEST(RepVggTest, ConvSitesAreLinearsOverPatchesAndEqualTheConv) {
  torch::manual_seed(4);
  SiteHandler plain;
  Site site{"x", SiteKind::kLinear, "x.weight"};
  auto x = torch::randn({2, 3, 7, 7});
  auto w = torch::randn({5, 3, 3, 3});
  auto b = torch::randn({5});
  for (int64_t stride : {1, 2}) {
    auto expected = at::conv2d(x, w, b, stride, 1);
    auto got = ConvAsLinear(site, x, w, b, stride, plain);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_LT(MaxRelativeError(got, expected), 1e-6) << "stride " << stride;
  }
}

TEST(RepVggTest, SitesSegmentsAndTheDeployForm) {
  const ViTConfig c = SmallRepVgg();
  auto trained = TrainedTensors(c, 5);
  trained["stem.conv_kxk.bn.num_batches_tracked"] = torch::tensor(int64_t{7});  // timm's counter
  auto model = ViTModel::FromTensors(c, trained);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  ASSERT_EQ(model->sites().size(), 6u);
  EXPECT_EQ(model->sites()[0].name, "stem.reparam_conv");
  EXPECT_EQ(model->sites()[3].name, "stages.1.0.reparam_conv");
  EXPECT_EQ(model->sites()[5].name, "head.fc");
  EXPECT_EQ(EdgeSites(*model), (std::vector<std::string>{"stem.reparam_conv", "head.fc"}));
  // stages.1.0: 6 → 8 channels, 3×3 → 2×2: 4 positions · 8 · 6 · 9
  // multiply-adds.
  EXPECT_EQ(model->sites()[3].macs, 4 * 8 * 6 * 9);
  EXPECT_EQ(model->sites()[3].input_elements, 6 * 3 * 3);
  EXPECT_EQ(model->num_segments(), 6);
  // The segments chain to the full forward, bit for bit.
  auto images = torch::randn({3, 1, 12, 12});
  auto x = images;
  for (int64_t s = 0; s < model->num_segments(); ++s) x = model->ForwardSegment(s, x);
  EXPECT_TRUE(at::equal(x, model->Forward(images)));
  // The model holds the deploy form, which loads back to the same model.
  EXPECT_TRUE(model->tensors().count("stages.0.1.reparam_conv.bias"));
  EXPECT_FALSE(model->tensors().count("stages.0.1.identity.weight"));
  auto again = ViTModel::FromTensors(c, model->tensors());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->Digest(), model->Digest());
}

TEST(RepVggTest, TrainingModeUsesBatchStatisticsAndUpdatesTheRunningOnes) {
  const ViTConfig c = SmallRepVgg();
  auto t = InitRepVggTensors(c, 1);
  auto before = t.at("stem.conv_kxk.bn.running_mean").clone();
  auto images = torch::randn({8, 1, 12, 12}) + 2.0;
  RepVggTrainForward(c, t, images, /*training=*/true);
  EXPECT_FALSE(at::equal(before, t.at("stem.conv_kxk.bn.running_mean")));
}

TEST(RepVggTest, ErrorsNameTheKeyAndTheTensor) {
  auto base = ToJson(SmallRepVgg());
  auto expect_error = [](json j, const std::string& needle) {
    auto c = ParseViTConfig(j);
    ASSERT_FALSE(c.ok()) << needle;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
  };
  auto j = base;
  j["patch_size"] = 4;
  expect_error(j, "patch_size");
  j = base;
  j["widths"] = {6};
  expect_error(j, "widths");
  j = base;
  j["depths"] = {2, 0};
  expect_error(j, "depths[1]");
  j = base;
  j.erase("stem_chs");
  expect_error(j, "stem_chs");
  EXPECT_EQ(ToJson(ParseViTConfig(base).value()), base);

  const ViTConfig c = SmallRepVgg();
  auto t = TrainedTensors(c, 2);
  t.erase("stages.1.1.identity.running_var");
  auto missing = ViTModel::FromTensors(c, t);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("stages.1.1.identity.running_var"), std::string::npos);
  t = TrainedTensors(c, 2);
  t["stages.0.0.conv_1x1.conv.weight"] = torch::zeros({6, 4, 3, 3});
  auto shape = ViTModel::FromTensors(c, t);
  ASSERT_FALSE(shape.ok());
  EXPECT_NE(shape.status().message().find("conv_1x1"), std::string::npos);
}

}  // namespace
}  // namespace qs::core
