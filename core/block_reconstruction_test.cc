#include "core/block_reconstruction.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "core/across_block.h"
#include "core/quantize_model.h"
#include "core/test_models.h"

namespace qs::core {
namespace {

using testing::TinyConfig;
using testing::TinyTensors;

ViTModel TinyModel() {
  return ViTModel::FromTensors(TinyConfig(), TinyTensors(TinyConfig(), 5)).value();
}

torch::Tensor Images(int64_t n, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({n, 1, 16, 16});
}

Recipe ReconstructionRecipe(const std::string& shorthand, int iterations) {
  Recipe recipe = ParseUniformRecipe(shorthand, /*quantize_edges=*/true).value();
  recipe.linear_default.weight.recon_iterations = iterations;
  return recipe;
}

QuantizedModel Quantize(const ViTModel& model, const Recipe& recipe, const torch::Tensor& images) {
  QuantizeOptions options;
  options.site_reports = false;
  auto q = QuantizeModel(model, recipe, images, options);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  return std::move(q).value();
}

// The stage output error of `sites` on `images` against the float model: segment `stage`'s
// input from the quantized model, its output against the float one.
double StageError(const ViTModel& model, const std::map<std::string, QuantizedSite>& sites,
                  int64_t stage, const torch::Tensor& images) {
  torch::NoGradGuard no_grad;
  FakeQuantHandler handler(sites);
  torch::Tensor x = images, x_float = images;
  for (int64_t s = 0; s < stage; ++s) {
    x = model.ForwardSegment(s, x, &handler);
    x_float = model.ForwardSegment(s, x_float);
  }
  auto y = model.ForwardSegment(stage, x, &handler);
  return (y - model.ForwardSegment(stage, x_float)).pow(2).mean().item<double>();
}

TEST(BlockReconstructionTest, ZeroIterationsIsRoundToNearestOnTheSameGrids) {
  const ViTModel model = TinyModel();
  const auto images = Images(48, 1);
  for (const char* method : {"brecq", "mgrq"}) {
    SCOPED_TRACE(method);
    const QuantizedModel rtn = Quantize(model, ReconstructionRecipe("w3a4:rtn", 0), images);
    const QuantizedModel zero =
        Quantize(model, ReconstructionRecipe(std::string("w3a4:") + method, 0), images);
    ASSERT_EQ(zero.reconstructions().size(), 4u);  // patch_embed, blocks.0, blocks.1, head
    for (const auto& r : zero.reconstructions()) {
      EXPECT_FALSE(r.kept) << r.stage;
      EXPECT_EQ(r.iterations, 0);
      EXPECT_EQ(r.loss_before, r.loss_after);
    }
    EXPECT_EQ(zero.reconstructions()[1].stage, "blocks.0");
    for (const auto& [name, q] : rtn.sites()) {
      if (!q.weight) continue;
      EXPECT_TRUE(at::equal(q.weight->codes, zero.sites().at(name).weight->codes)) << name;
      EXPECT_TRUE(at::equal(q.weight->grid.scale, zero.sites().at(name).weight->grid.scale));
    }
    EXPECT_TRUE(at::equal(rtn.Logits(images).value(), zero.Logits(images).value()));
  }
  // From GPTQ's and ERQ's weights (ERQ's moved bias included) the same way.
  for (const char* init : {"gptq", "erq"}) {
    SCOPED_TRACE(init);
    const QuantizedModel start =
        Quantize(model, ReconstructionRecipe(std::string("w3a4:") + init, 0), images);
    Recipe recipe = ReconstructionRecipe("w3a4:brecq", 0);
    recipe.linear_default.weight.recon_init = ParseWeightMethod(init).value();
    for (auto& [site, config] : recipe.sites)
      config.weight.recon_init = recipe.linear_default.weight.recon_init;
    const QuantizedModel zero = Quantize(model, recipe, images);
    EXPECT_TRUE(at::equal(start.Logits(images).value(), zero.Logits(images).value()));
    for (const auto& [name, q] : start.sites()) {
      if (q.weight) EXPECT_TRUE(at::equal(q.weight->codes, zero.sites().at(name).weight->codes));
    }
    // Training from there never ends above its start: a stage keeps what it learned only when
    // the objective fell, and otherwise keeps the starting weights exactly.
    for (auto& [site, config] : recipe.sites) config.weight.recon_iterations = 60;
    recipe.linear_default.weight.recon_iterations = 60;
    const QuantizedModel trained = Quantize(model, recipe, images);
    bool any_kept = false;
    for (const auto& r : trained.reconstructions()) {
      EXPECT_LE(r.objective_after, r.objective_before) << r.stage;
      if (r.kept) EXPECT_LT(r.objective_after, r.objective_before) << r.stage;
      any_kept |= r.kept;
    }
    EXPECT_EQ(any_kept, !at::equal(start.Logits(images).value(), trained.Logits(images).value()));
  }
}

TEST(BlockReconstructionTest, LowersTheBlockErrorOnHeldOutImagesAndEndsOnTheGrid) {
  const ViTModel model = TinyModel();
  const auto calibration = Images(64, 2), held_out = Images(64, 3);
  const QuantizedModel rtn = Quantize(model, ReconstructionRecipe("w3a4:brecq", 0), calibration);
  const QuantizedModel brecq =
      Quantize(model, ReconstructionRecipe("w3a4:brecq", 300), calibration);
  int kept = 0;
  for (const auto& r : brecq.reconstructions()) {
    EXPECT_EQ(r.iterations, 300);
    if (!r.kept) continue;
    ++kept;
    EXPECT_LT(r.loss_after, r.loss_before) << r.stage;
    EXPECT_GT(r.flipped, 0) << r.stage;
    EXPECT_LT(r.flipped, r.weights) << r.stage;
  }
  EXPECT_GE(kept, 2);
  // Held-out images: both transformer blocks closer to the float blocks than round-to-nearest.
  for (int64_t block : {1, 2}) {
    EXPECT_LT(StageError(model, brecq.sites(), block, held_out),
              StageError(model, rtn.sites(), block, held_out))
        << "block " << block - 1;
  }
  // Hard rounding: every code is on the grid, one of the two neighbours of W/s, and the
  // dequantized weight is exactly the codes on the grid.
  for (const auto& [name, q] : brecq.sites()) {
    if (!q.weight) continue;
    const auto& w = *q.weight;
    EXPECT_TRUE(at::equal(w.dequantized, DequantizeCodes(w.codes, w.grid))) << name;
    EXPECT_GE(w.codes.min().item<int64_t>(), w.grid.qmin);
    EXPECT_LE(w.codes.max().item<int64_t>(), w.grid.qmax);
    const Site* site = model.FindSite(name);
    auto ratio = model.tensor(site->weight).reshape(w.codes.sizes()) / w.grid.scale;
    auto floor = (ratio.floor() + w.grid.zero_point).clamp(w.grid.qmin, w.grid.qmax);
    auto ceil = (ratio.floor() + 1 + w.grid.zero_point).clamp(w.grid.qmin, w.grid.qmax);
    auto codes = w.codes.to(torch::kFloat32);
    EXPECT_TRUE(codes.eq(floor).logical_or(codes.eq(ceil)).all().item<bool>()) << name;
  }
}

TEST(BlockReconstructionTest, OneSeedGivesOneResultAndMgrqWithoutExtraLossesIsBrecq) {
  const ViTModel model = TinyModel();
  const auto images = Images(48, 4);
  const Recipe mgrq = ReconstructionRecipe("w3a4:mgrq", 40);
  const QuantizedModel a = Quantize(model, mgrq, images);
  const QuantizedModel b = Quantize(model, mgrq, images);
  EXPECT_TRUE(at::equal(a.Logits(images).value(), b.Logits(images).value()));
  for (const auto& [name, q] : a.sites()) {
    if (q.weight) EXPECT_TRUE(at::equal(q.weight->codes, b.sites().at(name).weight->codes));
  }

  Recipe plain = mgrq;
  plain.linear_default.weight.mgrq_global_weight = 0;
  plain.linear_default.weight.mgrq_local_weight = 0;
  Recipe brecq = ReconstructionRecipe("w3a4:brecq", 40);
  const QuantizedModel c = Quantize(model, plain, images);
  const QuantizedModel d = Quantize(model, brecq, images);
  EXPECT_TRUE(at::equal(c.Logits(images).value(), d.Logits(images).value()));
  ASSERT_EQ(c.reconstructions().size(), d.reconstructions().size());
  for (size_t i = 0; i < c.reconstructions().size(); ++i) {
    EXPECT_EQ(c.reconstructions()[i].objective_after, d.reconstructions()[i].objective_after);
  }
  // The supervision changes what is learned.
  EXPECT_FALSE(at::equal(a.Logits(images).value(), c.Logits(images).value()));
}

TEST(BlockReconstructionTest, MgrqNeedsItsFloatReferences) {
  const ViTModel model = TinyModel();
  const auto images = Images(16, 5);
  const QuantizedModel start = Quantize(model, ReconstructionRecipe("w4a8:mgrq", 0), images);
  auto sites = start.sites();
  for (auto& [name, q] : sites) q.config.weight.recon_iterations = 5;
  torch::NoGradGuard no_grad;
  const auto x = model.ForwardSegment(0, images);
  const auto target = model.ForwardSegment(1, x);
  auto missing = ReconstructStage(model, {1, 1}, {x, target, x, torch::Tensor()}, &sites);
  ASSERT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("float logits"), std::string::npos);
  auto short_target =
      ReconstructStage(model, {1, 1}, {x, target.narrow(0, 0, 8), x, torch::Tensor()}, &sites);
  EXPECT_EQ(short_target.status().code(), StatusCode::kInvalidArgument);
  auto logits = model.Forward(images);
  auto fine = ReconstructStage(model, {1, 1}, {x, target, x, logits}, &sites);
  ASSERT_TRUE(fine.ok()) << fine.status().ToString();
  EXPECT_EQ(fine->stage, "blocks.0");
  EXPECT_EQ(fine->method, WeightMethod::kMgrq);
}

}  // namespace
}  // namespace qs::core
