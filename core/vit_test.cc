#include "core/vit.h"

#include <gtest/gtest.h>

#include <limits>

#include <cstdio>
#include <filesystem>

#include <ATen/ATen.h>

#include "common/file_util.h"
#include "core/safetensors.h"
#include "core/test_models.h"

namespace qs::core {
namespace {

using nlohmann::json;
using testing::TinyConfig;
using testing::TinyTensors;

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("qs_vit_" + name)).string();
}

TEST(ViTConfigTest, ParsesAValidConfigAndRoundTrips) {
  auto j = ToJson(TinyConfig());
  auto c = ParseViTConfig(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_patches(), 16);
  EXPECT_EQ(c->head_dim(), 8);
  EXPECT_EQ(c->mlp_hidden(), 64);
  EXPECT_EQ(ToJson(*c), j);
}

TEST(ViTConfigTest, ErrorsNameTheKey) {
  auto expect_error = [](json j, const std::string& needle) {
    auto c = ParseViTConfig(j);
    ASSERT_FALSE(c.ok()) << needle;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
  };
  auto base = ToJson(TinyConfig());
  auto j = base;
  j.erase("depth");
  expect_error(j, "depth");
  j = base;
  j["dropout"] = 0.1;
  expect_error(j, "dropout");
  j = base;
  j["embed_dim"] = "32";
  expect_error(j, "embed_dim");
  j = base;
  j["patch_size"] = 5;
  expect_error(j, "patch_size");
  j = base;
  j["num_heads"] = 5;
  expect_error(j, "num_heads");
  j = base;
  j["mean"] = {0.5, 0.5};
  expect_error(j, "mean");
  j = base;
  j["global_pool"] = "max";
  expect_error(j, "global_pool");
  j = base;
  j["architecture"] = "resnet";
  expect_error(j, "architecture");
  j = base;
  j["depth"] = 0;
  expect_error(j, "depth");
  j = base;
  j["depth"] = 100000;
  expect_error(j, "depth");
  j = base;
  j["mlp_ratio"] = 1e300;
  expect_error(j, "mlp_ratio");
  j = base;
  j["embed_dim"] = int64_t{1} << 40;
  expect_error(j, "embed_dim");
  EXPECT_EQ(LoadViTConfig(TempPath("missing.json")).status().code(), StatusCode::kNotFound);
}

TEST(ViTModelTest, LoaderErrorsNameTheTensor) {
  const auto c = TinyConfig();
  auto missing = TinyTensors(c, 0);
  missing.erase("blocks.1.mlp.fc1.bias");
  auto s = ViTModel::FromTensors(c, missing).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("blocks.1.mlp.fc1.bias"), std::string::npos);

  auto shape = TinyTensors(c, 0);
  shape["blocks.0.attn.qkv.weight"] = torch::zeros({96, 31});
  s = ViTModel::FromTensors(c, shape).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("blocks.0.attn.qkv.weight"), std::string::npos);
  EXPECT_NE(s.message().find("[96, 32]"), std::string::npos);

  auto dtype = TinyTensors(c, 0);
  dtype["head.bias"] = torch::zeros({5}, torch::kInt32);
  s = ViTModel::FromTensors(c, dtype).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head.bias"), std::string::npos);

  auto extra = TinyTensors(c, 0);
  extra["blocks.7.norm1.weight"] = torch::ones({32});
  s = ViTModel::FromTensors(c, extra).status();
  EXPECT_NE(s.message().find("blocks.7.norm1.weight"), std::string::npos);

  auto nan = TinyTensors(c, 0);
  nan["pos_embed"][0][0][0] = std::nanf("");
  s = ViTModel::FromTensors(c, nan).status();
  EXPECT_NE(s.message().find("pos_embed"), std::string::npos);

  auto no_cls = TinyTensors(c, 0);
  no_cls.erase("cls_token");
  s = ViTModel::FromTensors(c, no_cls).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("cls_token"), std::string::npos);
}

TEST(ViTModelTest, LoadsHalfPrecisionFilesAndReportsDamagedOnes) {
  const auto c = TinyConfig();
  auto tensors = TinyTensors(c, 1);
  std::map<std::string, torch::Tensor> half;
  for (const auto& [name, t] : tensors) {
    half[name] = t.to(name.find("mlp") != std::string::npos ? torch::kBFloat16 : torch::kFloat16);
  }
  const std::string config = TempPath("config.json");
  const std::string weights = TempPath("half.safetensors");
  ASSERT_TRUE(WriteFileAtomically(config, ToJson(c).dump()).ok());
  ASSERT_TRUE(WriteSafetensors(weights, half).ok());
  auto model = ViTModel::Load(config, weights);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ(model->tensor("blocks.0.mlp.fc1.weight").scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(model->tensor("head.weight"),
                           half["head.weight"].to(torch::kFloat32)));

  // A truncated copy is DATA_LOSS naming the file.
  auto bytes = *ReadFileBytes(weights);
  const std::string cut = TempPath("cut.safetensors");
  ASSERT_TRUE(WriteFileAtomically(cut, bytes.substr(0, bytes.size() / 2)).ok());
  auto damaged = ViTModel::Load(config, cut);
  EXPECT_EQ(damaged.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(damaged.status().message().find(cut), std::string::npos);
  std::remove(config.c_str());
  std::remove(weights.c_str());
  std::remove(cut.c_str());
}

TEST(ViTModelTest, PatchEmbeddingEqualsTheConvolution) {
  const auto c = TinyConfig();
  auto model = ViTModel::FromTensors(c, TinyTensors(c, 2));
  ASSERT_TRUE(model.ok());
  torch::manual_seed(3);
  auto images = torch::randn({3, 1, 16, 16});
  struct Capture : SiteHandler {
    torch::Tensor patch_out;
    torch::Tensor Linear(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                         const torch::Tensor& b) override {
      auto y = SiteHandler::Linear(s, x, w, b);
      if (s.name == "patch_embed.proj") patch_out = y;
      return y;
    }
  } capture;
  auto logits = model->Forward(images, &capture);
  auto conv = at::conv2d(images, model->tensor("patch_embed.proj.weight"),
                         model->tensor("patch_embed.proj.bias"), {4, 4})
                  .flatten(2)
                  .transpose(1, 2);
  EXPECT_TRUE(torch::allclose(capture.patch_out, conv, 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(logits, model->Forward(images)));
  EXPECT_EQ(logits.sizes().vec(), (std::vector<int64_t>{3, 5}));
}

// Records the sites a forward pass calls, linear and matmul apart from non-linear ones.
struct RecordOrder : SiteHandler {
  std::vector<std::string> seen, seen_nonlinear;
  torch::Tensor Linear(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                       const torch::Tensor& b) override {
    seen.push_back(s.name);
    return SiteHandler::Linear(s, x, w, b);
  }
  torch::Tensor Matmul(const Site& s, const torch::Tensor& a, const torch::Tensor& b) override {
    seen.push_back(s.name);
    return SiteHandler::Matmul(s, a, b);
  }
  torch::Tensor Softmax(const Site& s, const torch::Tensor& x) override {
    seen_nonlinear.push_back(s.name);
    return SiteHandler::Softmax(s, x);
  }
  torch::Tensor Gelu(const Site& s, const torch::Tensor& x) override {
    seen_nonlinear.push_back(s.name);
    return SiteHandler::Gelu(s, x);
  }
  torch::Tensor LayerNorm(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                          const torch::Tensor& b, double eps) override {
    seen_nonlinear.push_back(s.name);
    return SiteHandler::LayerNorm(s, x, w, b, eps);
  }
};

TEST(ViTModelTest, SitesFollowTheForwardOrder) {
  const auto c = TinyConfig();
  auto model = ViTModel::FromTensors(c, TinyTensors(c, 0));
  ASSERT_TRUE(model.ok());
  std::vector<std::string> seen;
  RecordOrder order;
  model->Forward(torch::zeros({1, 1, 16, 16}), &order);
  // Linear and matmul sites in forward order; the non-linear ones too, among themselves (each
  // segment lists them after its linear and matmul sites).
  std::vector<std::string> listed, listed_nonlinear;
  for (const Site& site : model->sites()) {
    (site.kind == SiteKind::kNonlinear ? listed_nonlinear : listed).push_back(site.name);
  }
  EXPECT_EQ(order.seen, listed);
  EXPECT_EQ(order.seen_nonlinear, listed_nonlinear);
  EXPECT_EQ(listed.size(), 2u + 6u * 2u);
  EXPECT_EQ(listed_nonlinear.size(), 4u * 2u + 1u);  // norm1, softmax, norm2, GELU; final norm
}

TEST(ViTModelTest, SegmentsRunTheirOwnSitesAndChainToTheFullForward) {
  const auto c = TinyConfig();
  auto model = ViTModel::FromTensors(c, TinyTensors(c, 4));
  ASSERT_TRUE(model.ok());
  ASSERT_EQ(model->num_segments(), c.depth + 2);
  torch::manual_seed(5);
  auto x = torch::randn({2, 1, 16, 16});
  const auto full = model->Forward(x);
  size_t covered = 0;
  for (int64_t seg = 0; seg < model->num_segments(); ++seg) {
    RecordOrder order;
    x = model->ForwardSegment(seg, x, &order);
    std::vector<std::string> expected, expected_nonlinear;
    for (const Site* site : model->SegmentSites(seg)) {
      (site->kind == SiteKind::kNonlinear ? expected_nonlinear : expected).push_back(site->name);
      EXPECT_EQ(model->SegmentOf(*site), seg) << site->name;
    }
    EXPECT_EQ(order.seen, expected) << "segment " << seg;
    EXPECT_EQ(order.seen_nonlinear, expected_nonlinear) << "segment " << seg;
    covered += expected.size() + expected_nonlinear.size();
  }
  EXPECT_EQ(covered, model->sites().size());
  EXPECT_TRUE(torch::equal(x, full));
  EXPECT_TRUE(model->SegmentSites(model->num_segments()).empty());
}

TEST(ViTModelTest, AvgPoolWithoutClassTokenAndFcNormLoads) {
  auto c = TinyConfig();
  c.global_pool = "avg";
  c.qkv_bias = false;
  auto t = TinyTensors(c, 4);
  t.erase("cls_token");
  t.erase("blocks.0.attn.qkv.bias");
  t.erase("blocks.1.attn.qkv.bias");
  t["pos_embed"] = torch::randn({1, 16, 32}) * 0.02;
  t["fc_norm.weight"] = t["norm.weight"];
  t["fc_norm.bias"] = t["norm.bias"];
  t.erase("norm.weight");
  t.erase("norm.bias");
  auto model = ViTModel::FromTensors(c, t);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  auto logits = model->Logits(torch::randn({4, 1, 16, 16}));
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(logits->sizes().vec(), (std::vector<int64_t>{4, 5}));
  auto bad = model->Logits(torch::randn({4, 3, 16, 16}));
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(model->Logits(torch::randn({4, 1, 16, 16}), nullptr, 0).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ViTModelTest, DigestChangesWithAnyWeight) {
  const auto c = TinyConfig();
  auto t = TinyTensors(c, 5);
  auto a = ViTModel::FromTensors(c, t);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->Digest(), ViTModel::FromTensors(c, t)->Digest());
  auto changed = a->WithTensors({{"head.bias", t["head.bias"] + 1e-3}});
  ASSERT_TRUE(changed.ok());
  EXPECT_NE(a->Digest(), changed->Digest());
  EXPECT_FALSE(a->WithTensors({{"head.bias", torch::zeros({4})}}).ok());
  EXPECT_FALSE(a->WithTensors({{"nope", torch::zeros({5})}}).ok());
}

struct FamilyCase {
  const char* name;
  ViTConfig config;
  std::vector<std::string> must_have_sites;
  size_t sites;            // linear and matmul
  size_t nonlinear_sites;  // LayerNorms, softmaxes, GELUs
};

std::vector<FamilyCase> FamilyCases() {
  return {
      {"distilled", testing::TinyDistilledConfig(), {"head", "head_dist"}, 1 + 6 * 2 + 2,
       4 * 2 + 1},
      {"layerscale_registers", testing::TinyLayerScaleRegistersConfig(), {"head"}, 1 + 6 * 2 + 1,
       4 * 2 + 1},
      {"swin",
       testing::TinySwinConfig(),
       {"layers.0.blocks.1.attn.qk_matmul", "layers.1.downsample.reduction", "head.fc",
        "patch_embed.norm", "layers.1.downsample.norm", "layers.1.blocks.1.mlp.act", "norm"},
       1 + 1 + 6 * 4 + 1,
       1 + 1 + 4 * 4 + 1},
  };
}

TEST(ModelFamilyTest, ConfigsRoundTripAndSegmentsChainToTheForward) {
  for (const auto& f : FamilyCases()) {
    SCOPED_TRACE(f.name);
    auto parsed = ParseViTConfig(ToJson(f.config));
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(ToJson(*parsed), ToJson(f.config));
    auto model = ViTModel::FromTensors(*parsed, TinyTensors(*parsed, 8));
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    EXPECT_EQ(model->sites().size(), f.sites + f.nonlinear_sites);
    for (const auto& name : f.must_have_sites) EXPECT_NE(model->FindSite(name), nullptr) << name;
    torch::manual_seed(9);
    auto x = torch::randn({3, f.config.in_chans, f.config.img_size, f.config.img_size});
    const auto full = model->Forward(x);
    EXPECT_EQ(full.sizes().vec(), (std::vector<int64_t>{3, f.config.num_classes}));
    EXPECT_TRUE(torch::isfinite(full).all().item<bool>());
    size_t covered = 0;
    for (int64_t seg = 0; seg < model->num_segments(); ++seg) {
      for (const Site* site : model->SegmentSites(seg)) EXPECT_EQ(model->SegmentOf(*site), seg);
      covered += model->SegmentSites(seg).size();
      x = model->ForwardSegment(seg, x);
    }
    EXPECT_EQ(covered, model->sites().size());
    EXPECT_TRUE(torch::equal(x, full));
    const auto edges = EdgeSites(*model);
    EXPECT_EQ(edges.front(), "patch_embed.proj");
    for (const auto& name : edges) EXPECT_NE(model->FindSite(name), nullptr) << name;
  }
}

TEST(ModelFamilyTest, FamilyFeaturesChangeTheOutput) {
  // Each feature is live: dropping it (same weights otherwise) changes the logits.
  torch::manual_seed(3);
  const auto x = torch::randn({2, 1, 16, 16});
  auto c = testing::TinyLayerScaleRegistersConfig();
  auto t = TinyTensors(c, 11);
  auto with = ViTModel::FromTensors(c, t);
  ASSERT_TRUE(with.ok()) << with.status().ToString();
  auto gammas = t;
  for (auto& [name, v] : gammas) {
    if (name.find(".gamma") != std::string::npos) v = torch::ones_like(v);
  }
  auto unit = with->WithTensors(gammas);
  ASSERT_TRUE(unit.ok());
  EXPECT_FALSE(torch::allclose(with->Forward(x), unit->Forward(x)));

  auto d = testing::TinyDistilledConfig();
  auto td = TinyTensors(d, 12);
  auto distilled = ViTModel::FromTensors(d, td);
  ASSERT_TRUE(distilled.ok());
  auto same_heads = td;
  same_heads["head_dist.weight"] = td["head.weight"];
  same_heads["head_dist.bias"] = td["head.bias"];
  auto averaged = distilled->WithTensors(same_heads);
  ASSERT_TRUE(averaged.ok());
  EXPECT_FALSE(torch::allclose(distilled->Forward(x), averaged->Forward(x)));
  // The logits are the mean of the two heads' outputs, as timm's at inference.
  struct Heads : SiteHandler {
    std::map<std::string, torch::Tensor> out;
    torch::Tensor Linear(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                         const torch::Tensor& b) override {
      auto y = SiteHandler::Linear(s, x, w, b);
      out[s.name] = y;
      return y;
    }
  } heads;
  const auto logits = distilled->Forward(x, &heads);
  EXPECT_TRUE(torch::allclose(logits, (heads.out.at("head") + heads.out.at("head_dist")) / 2));
  EXPECT_FALSE(torch::allclose(heads.out.at("head"), heads.out.at("head_dist")));
}

TEST(ModelFamilyTest, SwinClipsWindowsToTheGridAndIgnoresPersistedBuffers) {
  auto c = testing::TinySwinConfig();
  auto t = TinyTensors(c, 13);
  auto model = ViTModel::FromTensors(c, t);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(c.stage_window(0), 4);
  EXPECT_EQ(c.stage_window(1), 4);
  auto wide = c;
  wide.window_size = 8;  // stage 0 attends globally, no shift; stage 1 clips the window to 4
  EXPECT_EQ(wide.stage_window(1), 4);
  auto wide_tensors = TinyTensors(wide, 13);
  EXPECT_EQ(wide_tensors.at("layers.0.blocks.0.attn.relative_position_bias_table").size(0), 225);
  EXPECT_EQ(wide_tensors.at("layers.1.blocks.0.attn.relative_position_bias_table").size(0), 49);
  EXPECT_TRUE(ViTModel::FromTensors(wide, wide_tensors).ok());
  auto stale = t;
  stale["layers.0.blocks.0.attn.relative_position_index"] = torch::zeros({16, 16}, torch::kInt64);
  stale["layers.0.blocks.1.attn_mask"] = torch::zeros({4, 16, 16});
  auto ignored = ViTModel::FromTensors(c, stale);
  ASSERT_TRUE(ignored.ok()) << ignored.status().ToString();
  EXPECT_EQ(ignored->Digest(), model->Digest());
}

TEST(ModelFamilyTest, ErrorsNameTheTensorAndTheKey) {
  auto c = testing::TinySwinConfig();
  auto t = TinyTensors(c, 14);
  t.erase("layers.1.downsample.reduction.weight");
  auto missing = ViTModel::FromTensors(c, t);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("layers.1.downsample.reduction.weight"),
            std::string::npos);
  EXPECT_NE(missing.status().message().find("[32, 64]"), std::string::npos);

  auto expect_error = [](json j, const std::string& needle) {
    auto parsed = ParseViTConfig(j);
    ASSERT_FALSE(parsed.ok()) << needle;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(needle), std::string::npos)
        << parsed.status().message();
  };
  auto swin = ToJson(c);
  auto j = swin;
  j["architecture"] = "convnext";
  expect_error(j, "convnext");
  j = swin;
  j["window_size"] = 3;  // grid 8 is not a multiple of 3
  expect_error(j, "window_size");
  j = swin;
  j["num_heads"] = {2};
  expect_error(j, "num_heads");
  j = swin;
  j["depth"] = 4;  // a ViT key
  expect_error(j, "depth");
  j = swin;
  j["depths"] = {2, 2, 2, 2, 2};  // grid 8 cannot merge four times
  j["num_heads"] = {1, 1, 1, 1, 1};
  expect_error(j, "grid");
  auto vit = ToJson(testing::TinyDistilledConfig());
  j = vit;
  j["global_pool"] = "avg";
  expect_error(j, "distilled");
  j = ToJson(TinyConfig());
  j["interpolation"] = "lanczos";
  expect_error(j, "interpolation");
  j["interpolation"] = "bilinear";
  j["crop_pct"] = 1.5;
  expect_error(j, "crop_pct");
  j = ToJson(TinyConfig());
  j.erase("mean");
  j.erase("std");
  expect_error(j, "mean");  // one channel: no ImageNet default
  j["in_chans"] = 3;
  auto defaults = ParseViTConfig(j);
  ASSERT_TRUE(defaults.ok()) << defaults.status().ToString();
  EXPECT_EQ(defaults->mean, (std::vector<double>{0.485, 0.456, 0.406}));
  EXPECT_DOUBLE_EQ(defaults->crop_pct, 0.875);
  EXPECT_EQ(defaults->interpolation, "bicubic");
  // 2^64 - 1 once read as -1 ("must be positive, got -1").
  j = ToJson(TinyConfig());
  j["depth"] = 18446744073709551615ULL;
  expect_error(j, "out of range");
  // A std below float32's normal range once divided to infinity and NaN logits, with exit 0.
  j = ToJson(TinyConfig());
  j["std"] = {1e-320};
  expect_error(j, "std");
  j["std"] = {0.5};
  j["mean"] = {std::numeric_limits<double>::infinity()};
  j["mean"] = {1e309};  // parsed as infinity
  expect_error(j, "mean");
}

}  // namespace
}  // namespace qs::core
