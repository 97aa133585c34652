#include "core/nonlinear_site.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/evaluate.h"
#include "core/metrics.h"
#include "core/quantize_model.h"
#include "core/test_models.h"

namespace qs::core {
namespace {

using testing::TinyConfig;
using testing::TinySwinConfig;
using testing::TinyTensors;

ViTModel Tiny(const ViTConfig& c, uint64_t seed) {
  auto model = ViTModel::FromTensors(c, TinyTensors(c, seed));
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return *model;
}

// `model` with `channels` residual-stream channels `factor` times larger everywhere: every write
// into the residual (patch embedding, class token, position embedding, attn.proj, mlp.fc2)
// scaled on those channels, so every LayerNorm input carries them as outliers, as real ViTs'
// do. (A LayerNorm is not invariant to per-channel input scales, so the float function changes;
// the tests compare quantized paths against the float ops of this same model.)
ViTModel WithResidualOutliers(const ViTModel& model, const std::vector<int64_t>& channels,
                              double factor) {
  std::map<std::string, torch::Tensor> out;
  auto scale_rows = [&](const std::string& name, int64_t dim) {
    auto t = model.tensor(name).clone();
    for (int64_t c : channels) t.select(dim, c).mul_(factor);
    out[name] = t;
  };
  scale_rows("patch_embed.proj.weight", 0);
  scale_rows("patch_embed.proj.bias", 0);
  scale_rows("cls_token", 2);
  scale_rows("pos_embed", 2);
  for (int64_t b = 0; b < model.config().depth; ++b) {
    const std::string p = "blocks." + std::to_string(b) + ".";
    for (const char* layer : {"attn.proj", "mlp.fc2"}) {
      scale_rows(p + layer + ".weight", 0);
      scale_rows(p + layer + ".bias", 0);
    }
  }
  auto scaled = model.WithTensors(out);
  EXPECT_TRUE(scaled.ok()) << scaled.status().ToString();
  return *scaled;
}

Recipe FloatExceptNonlinear(NonlinearMethod method, int bits) {
  Recipe r;  // float weights and activations
  r.nonlinear_default.nonlinear = {method, bits};
  return r;
}

double LogitsSqnr(const ViTModel& model, const Recipe& recipe, const torch::Tensor& calib,
                  const torch::Tensor& eval) {
  auto q = QuantizeModel(model, recipe, calib);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  if (!q.ok()) return -1e9;
  auto fp = model.Logits(eval);
  auto ql = q->Logits(eval);
  EXPECT_TRUE(fp.ok() && ql.ok());
  return SqnrDb(*fp, *ql);
}

TEST(NonlinearSiteTest, EveryLayerNormSoftmaxAndGeluIsASite) {
  const ViTModel vit = Tiny(TinyConfig(), 1);
  std::set<std::string> nonlinear;
  for (const Site& s : vit.sites()) {
    if (s.kind == SiteKind::kNonlinear) nonlinear.insert(s.name);
  }
  const std::set<std::string> expected = {
      "blocks.0.norm1",    "blocks.0.attn.softmax", "blocks.0.norm2",
      "blocks.0.mlp.act", "blocks.1.norm1",        "blocks.1.attn.softmax",
      "blocks.1.norm2",    "blocks.1.mlp.act",     "norm"};
  EXPECT_EQ(nonlinear, expected);
  EXPECT_EQ(NonlinearOpOf("blocks.0.attn.softmax"), NonlinearOp::kSoftmax);
  EXPECT_EQ(NonlinearOpOf("blocks.0.mlp.act"), NonlinearOp::kGelu);
  EXPECT_EQ(NonlinearOpOf("norm"), NonlinearOp::kLayerNorm);
  // Elements per image: 16 tokens + class token, width 32, 4 heads, hidden 64.
  EXPECT_EQ(vit.FindSite("blocks.0.norm1")->macs, 17 * 32);
  EXPECT_EQ(vit.FindSite("blocks.0.attn.softmax")->macs, 4 * 17 * 17);
  EXPECT_EQ(vit.FindSite("blocks.0.mlp.act")->macs, 17 * 64);

  const ViTModel swin = Tiny(TinySwinConfig(), 2);
  std::set<std::string> swin_norms;
  for (const Site& s : swin.sites()) {
    if (s.kind == SiteKind::kNonlinear && NonlinearOpOf(s.name) == NonlinearOp::kLayerNorm) {
      swin_norms.insert(s.name);
    }
  }
  EXPECT_TRUE(swin_norms.count("patch_embed.norm"));
  EXPECT_TRUE(swin_norms.count("layers.1.downsample.norm"));
  EXPECT_TRUE(swin_norms.count("norm"));
  EXPECT_EQ(swin_norms.size(), 3 + 2 * 4u);  // and norm1, norm2 of the four blocks
}

TEST(NonlinearSiteTest, EachIntegerMethodTracksTheFloatOpsAndMoreBitsHelp) {
  for (const ViTConfig& c : {TinyConfig(), TinySwinConfig()}) {
    const ViTModel model = Tiny(c, 3);
    torch::manual_seed(4);
    const auto calib = torch::randn({16, c.in_chans, c.img_size, c.img_size});
    const auto eval = torch::randn({32, c.in_chans, c.img_size, c.img_size});
    for (NonlinearMethod m :
         {NonlinearMethod::kIbert, NonlinearMethod::kFqvit, NonlinearMethod::kIvit}) {
      auto q = QuantizeModel(model, FloatExceptNonlinear(m, 8), calib);
      ASSERT_TRUE(q.ok()) << q.status().ToString();
      for (const auto& r : q->reports()) {
        if (r.kind != SiteKind::kNonlinear) continue;
        const QuantConfig& config = q->sites().at(r.site).config;
        if (!config.nonlinear.quantized()) {
          // FQ-ViT has no GELU kernel: the default leaves those sites float.
          EXPECT_EQ(m, NonlinearMethod::kFqvit) << r.site;
          EXPECT_EQ(NonlinearOpOf(r.site), NonlinearOp::kGelu) << r.site;
          EXPECT_TRUE(std::isinf(r.sqnr_db)) << r.site;
          continue;
        }
        // Lossy but close. Measured minima over these sites: I-BERT 30.8 dB; FQ-ViT 36.1 dB
        // (LayerNorm) and 11.6 dB (Log-Int-Softmax: a log2 grid's ±√2 rounding, whatever the
        // bits); I-ViT 10.9 dB (Shiftmax in Swin's shifted blocks, whose −100 mask sets the
        // range of the scores' 8-bit grid; its LayerNorm's ten Newton steps from 2^16 are short
        // of small variances).
        const bool log_softmax =
            m == NonlinearMethod::kFqvit && NonlinearOpOf(r.site) == NonlinearOp::kSoftmax;
        const double floor_db = m == NonlinearMethod::kIbert  ? 25.0
                                : m == NonlinearMethod::kIvit ? 8.0
                                : log_softmax                 ? 9.0
                                                              : 30.0;
        EXPECT_TRUE(std::isfinite(r.sqnr_db)) << ToString(m) << " " << r.site;
        EXPECT_GT(r.sqnr_db, floor_db) << ToString(m) << " " << r.site;
      }
      const double more = LogitsSqnr(model, FloatExceptNonlinear(m, 8), calib, eval);
      const double fewer = LogitsSqnr(model, FloatExceptNonlinear(m, 4), calib, eval);
      // Every op of a random tiny model at once; measured 5.2 dB (I-ViT) to 30.8 dB (I-BERT).
      EXPECT_GT(more, 3.0) << c.architecture << " " << ToString(m);
      EXPECT_GT(more, fewer) << c.architecture << " " << ToString(m);
    }
  }
}

TEST(NonlinearSiteTest, SoftmaxTakesTheAccumulatorOfUniformOperands) {
  const ViTModel model = Tiny(TinyConfig(), 5);
  torch::manual_seed(6);
  const auto calib = torch::randn({16, 1, 16, 16});
  Recipe recipe = FloatExceptNonlinear(NonlinearMethod::kIbert, 8);
  recipe.matmul_default.activation.bits = 8;
  recipe.matmul_default.activation_rhs.bits = 8;
  auto q = QuantizeModel(model, recipe, calib);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  const QuantizedSite& qk = q->sites().at("blocks.0.attn.qk_matmul");
  const torch::Tensor scale = AccumulatorScale(qk);
  ASSERT_TRUE(scale.defined());
  // Products of the two fake-quantized operands are integers of that scale.
  auto inputs = CaptureSiteInputs(model, calib);
  ASSERT_TRUE(inputs.ok());
  const auto& operands = inputs->at("blocks.0.attn.qk_matmul");
  const auto scores =
      at::matmul(qk.input.Apply(operands[0]), qk.input_rhs.Apply(operands[1])).to(torch::kFloat64);
  const auto units = scores / scale;
  EXPECT_LT((units - at::round(units)).abs().max().item<double>(), 1e-2);
  EXPECT_EQ(AccumulatorConsumer("blocks.0.attn.qk_matmul"), "blocks.0.attn.softmax");
  EXPECT_EQ(AccumulatorConsumer("blocks.0.mlp.fc1"), "blocks.0.mlp.act");
  EXPECT_EQ(AccumulatorConsumer("blocks.0.mlp.fc2"), "");
  // A per-channel operand has no single accumulator scale.
  ActivationQuant per_channel = recipe.matmul_default.activation;
  per_channel.granularity = Granularity::kPerChannel;
  GroupLayout layout;
  layout.granularity = Granularity::kPerChannel;
  auto lhs = ActivationQuantizerState::Fit(operands[0], per_channel, layout, ValueDomain::kGeneral);
  ASSERT_TRUE(lhs.ok());
  QuantizedSite other = qk;
  other.input = *lhs;
  EXPECT_FALSE(AccumulatorScale(other).defined());
  // fc1 with quantized input and per-channel weight: one scale per output, and its outputs (bias
  // aside) are integers of it.
  Recipe w8a8 = FloatExceptNonlinear(NonlinearMethod::kIbert, 8);
  w8a8.linear_default.weight.bits = 8;
  w8a8.linear_default.activation.bits = 8;
  auto q8 = QuantizeModel(model, w8a8, calib);
  ASSERT_TRUE(q8.ok()) << q8.status().ToString();
  const QuantizedSite& fc1 = q8->sites().at("blocks.0.mlp.fc1");
  const torch::Tensor fc1_scale = AccumulatorScale(fc1);
  ASSERT_TRUE(fc1_scale.defined());
  EXPECT_EQ(fc1_scale.numel(), model.tensor("blocks.0.mlp.fc1.weight").size(0));
  const auto x = inputs->at("blocks.0.mlp.fc1")[0];
  const auto acc =
      at::linear(fc1.input.Apply(x), fc1.weight->dequantized).to(torch::kFloat64) / fc1_scale;
  EXPECT_LT((acc - at::round(acc)).abs().max().item<double>(), 1e-2);
}

TEST(NonlinearSiteTest, EvaluationReportsTheSqnrDifference) {
  const ViTModel model = Tiny(TinyConfig(), 7);
  torch::manual_seed(8);
  auto inputs = CaptureSiteInputs(model, torch::randn({16, 1, 16, 16}), /*nonlinear=*/true);
  ASSERT_TRUE(inputs.ok());
  const Site& gelu = *model.FindSite("blocks.0.mlp.act");
  std::vector<SiteCandidate> candidates;
  for (auto [m, bits] :
       std::vector<std::pair<NonlinearMethod, int>>{{NonlinearMethod::kFloat, 8},
                                                    {NonlinearMethod::kIbert, 8},
                                                    {NonlinearMethod::kIbert, 4},
                                                    {NonlinearMethod::kIvit, 8},
                                                    {NonlinearMethod::kFqvit, 8}}) {
    QuantConfig c;
    c.nonlinear = {m, bits};
    candidates.push_back({c, std::string(ToString(m)) + std::to_string(bits)});
  }
  SiteData data{inputs->at(gelu.name), torch::Tensor()};
  const auto e = EvaluateSite(model, gelu, candidates, &data);
  ASSERT_EQ(e.size(), 5u);
  EXPECT_TRUE(e[0].ok() && std::isinf(e[0].sqnr_db) && !e[0].input_sqnr_db);
  for (int i : {1, 2, 3}) {
    ASSERT_TRUE(e[i].ok()) << e[i].error;
    ASSERT_TRUE(e[i].input_sqnr_db.has_value());
    EXPECT_TRUE(std::isfinite(e[i].sqnr_db));
  }
  // The same input grid for both 8-bit methods; fewer bits, a coarser input and a larger loss.
  EXPECT_EQ(*e[1].input_sqnr_db, *e[3].input_sqnr_db);
  EXPECT_GT(*e[1].input_sqnr_db, *e[2].input_sqnr_db);
  EXPECT_GT(e[1].sqnr_db, e[2].sqnr_db);
  // FQ-ViT has no GELU kernel.
  EXPECT_FALSE(e[4].ok());
  EXPECT_EQ(e[4].error_code, StatusCode::kInvalidArgument);
}

// The done-when case: LayerNorm inputs with outlier channels. FQ-ViT's Power-of-Two Factor gives
// those channels coarser steps and the rest fine ones; a per-tensor grid (I-BERT, I-ViT) spends
// its levels on the outliers.
TEST(NonlinearSiteTest, PowerOfTwoFactorBeatsPerTensorLayerNormOnOutlierChannels) {
  const ViTModel base = Tiny(TinyConfig(), 9);
  const ViTModel model = WithResidualOutliers(base, {3, 17, 29}, 30.0);
  torch::manual_seed(10);
  const auto calib = torch::randn({32, 1, 16, 16});
  const auto eval = torch::randn({64, 1, 16, 16});
  // The inputs really carry outliers: a few channels dominate the range.
  auto inputs = CaptureSiteInputs(model, calib, /*nonlinear=*/true);
  ASSERT_TRUE(inputs.ok());
  const auto norm_in = inputs->at("blocks.1.norm1")[0].reshape({-1, 32});
  const auto channel_max = norm_in.abs().amax(0);
  EXPECT_GT(channel_max.max().item<double>(), 8 * channel_max.median().item<double>());

  // Only the LayerNorms integer: each method's default has no other effect on LayerNorm-free
  // sites once softmax and GELU are pinned float.
  auto layer_norms_only = [&](NonlinearMethod m) {
    Recipe r = FloatExceptNonlinear(m, 8);
    for (const Site& s : model.sites()) {
      if (s.kind == SiteKind::kNonlinear && NonlinearOpOf(s.name) != NonlinearOp::kLayerNorm) {
        r.sites[s.name] = QuantConfig{};
      }
    }
    return r;
  };
  auto per_site = [&](NonlinearMethod m) {
    auto q = QuantizeModel(model, layer_norms_only(m), calib);
    EXPECT_TRUE(q.ok()) << q.status().ToString();
    std::map<std::string, double> sqnr;
    for (const auto& r : q->reports()) {
      if (r.kind == SiteKind::kNonlinear && NonlinearOpOf(r.site) == NonlinearOp::kLayerNorm) {
        sqnr[r.site] = r.sqnr_db;
      }
    }
    return sqnr;
  };
  const auto ptf = per_site(NonlinearMethod::kFqvit);
  const auto ibert = per_site(NonlinearMethod::kIbert);
  const auto ivit = per_site(NonlinearMethod::kIvit);
  ASSERT_EQ(ptf.size(), 5u);
  for (const auto& [site, db] : ptf) {
    EXPECT_GT(db, ibert.at(site) + 3) << site;
    EXPECT_GT(db, ivit.at(site) + 3) << site;
  }
  const double ptf_logits =
      LogitsSqnr(model, layer_norms_only(NonlinearMethod::kFqvit), calib, eval);
  EXPECT_GT(ptf_logits, LogitsSqnr(model, layer_norms_only(NonlinearMethod::kIbert), calib, eval));
  EXPECT_GT(ptf_logits, LogitsSqnr(model, layer_norms_only(NonlinearMethod::kIvit), calib, eval));

  // The mixed choice finds it: FQ-ViT at every LayerNorm.
  auto mixed = ChooseMixedNonlinear(model, calib, 8);
  ASSERT_TRUE(mixed.ok()) << mixed.status().ToString();
  for (const auto& [site, db] : ptf) {
    EXPECT_EQ(mixed->at(site).nonlinear.method, NonlinearMethod::kFqvit) << site;
  }
}

// Per-site argmax of SQNR can never sum lower than any single method's per-site SQNRs, and the
// choice is deterministic.
TEST(NonlinearSiteTest, MixedChoiceDominatesEverySingleMethodSiteBySite) {
  const ViTModel model = WithResidualOutliers(Tiny(TinyConfig(), 11), {5, 21}, 10.0);
  torch::manual_seed(12);
  const auto calib = torch::randn({16, 1, 16, 16});
  for (int bits : {6, 8}) {
    auto mixed = ChooseMixedNonlinear(model, calib, bits);
    ASSERT_TRUE(mixed.ok()) << mixed.status().ToString();
    auto again = ChooseMixedNonlinear(model, calib, bits);
    ASSERT_TRUE(again.ok());
    auto inputs = CaptureSiteInputs(model, calib, /*nonlinear=*/true);
    ASSERT_TRUE(inputs.ok());
    std::map<NonlinearMethod, double> total;
    double mixed_total = 0;
    for (const Site& site : model.sites()) {
      if (site.kind != SiteKind::kNonlinear) continue;
      ASSERT_TRUE(mixed->count(site.name)) << site.name;
      EXPECT_EQ(mixed->at(site.name).nonlinear, again->at(site.name).nonlinear);
      EXPECT_EQ(mixed->at(site.name).nonlinear.bits, bits);
      SiteData data{inputs->at(site.name), torch::Tensor()};
      std::map<NonlinearMethod, double> sqnr;
      for (NonlinearMethod m : IntegerMethodsFor(NonlinearOpOf(site.name))) {
        QuantConfig c;
        c.nonlinear = {m, bits};
        auto e = EvaluateSite(model, site, {{c, "k"}}, &data)[0];
        ASSERT_TRUE(e.ok()) << e.error;
        sqnr[m] = e.sqnr_db;
      }
      mixed_total += sqnr.at(mixed->at(site.name).nonlinear.method);
      for (NonlinearMethod m :
           {NonlinearMethod::kIbert, NonlinearMethod::kFqvit, NonlinearMethod::kIvit}) {
        // A method without the op (FQ-ViT at GELU) is counted at the site's best, as mixed.
        total[m] += sqnr.count(m) ? sqnr.at(m) : sqnr.at(mixed->at(site.name).nonlinear.method);
        if (sqnr.count(m)) EXPECT_GE(sqnr.at(mixed->at(site.name).nonlinear.method), sqnr.at(m));
      }
    }
    for (const auto& [m, sum] : total) EXPECT_GE(mixed_total, sum) << ToString(m);
  }
}

}  // namespace
}  // namespace qs::core
