#include "common/plan.h"

#include <gtest/gtest.h>

#include <set>

namespace qs {
namespace {

std::vector<SiteInfo> Sites() {
  return {{"patch_embed.proj", SiteKind::kLinear, 96 * 49, 16 * 96 * 49},
          {"blocks.0.attn.qkv", SiteKind::kLinear, 288 * 96, 17 * 288 * 96},
          {"blocks.0.attn.qk_matmul", SiteKind::kMatmul, 0, 4 * 17 * 17 * 24},
          {"blocks.0.attn.av_matmul", SiteKind::kMatmul, 0, 4 * 17 * 17 * 24},
          {"head", SiteKind::kLinear, 10 * 96, 10 * 96}};
}

JobSpec Spec() {
  JobSpec spec;
  spec.space.weight_methods = {WeightMethod::kRtn, WeightMethod::kGptq};
  spec.space.weight_bits = {3, 4, 8};
  spec.space.activation_bits = {8};
  spec.space.softmax_quantizers = {ActivationQuantizer::kUniform, ActivationQuantizer::kLog2};
  return spec;
}

TEST(PlanTest, CrossesSitesWithTheSpace) {
  auto plan = MakePlan(Spec(), Sites());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->sites.size(), 5u);
  EXPECT_EQ(plan->sites[1].candidates.size(), 2u * 3u);  // methods × bits
  EXPECT_EQ(plan->sites[2].candidates.size(), 1u);       // q·kᵀ: uniform only
  EXPECT_EQ(plan->sites[3].candidates.size(), 2u);       // softmax: uniform, log2
  EXPECT_EQ(plan->candidate_count(), 6u + 6u + 1u + 2u + 6u);
  EXPECT_EQ(plan->total_weight_params, 96 * 49 + 288 * 96 + 10 * 96);
}

TEST(PlanTest, ActivationCalibratorsMultiplyQuantizedActivationsOnly) {
  JobSpec spec = Spec();
  spec.space.activation_bits = {0, 8};
  spec.space.activation_calibrators = {RangeCalibrator::kMinMax, RangeCalibrator::kOmse};
  auto plan = MakePlan(spec, Sites());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  // methods × bits × (float + 8-bit × two calibrators)
  EXPECT_EQ(plan->sites[1].candidates.size(), 2u * 3u * 3u);
  // q·kᵀ: float, or 8 bits × two calibrators (both operands share it)
  ASSERT_EQ(plan->sites[2].candidates.size(), 3u);
  EXPECT_EQ(plan->sites[2].candidates[1].config.activation.calibrator, RangeCalibrator::kMinMax);
  EXPECT_EQ(plan->sites[2].candidates[1].config.activation_rhs.calibrator,
            RangeCalibrator::kMinMax);
  std::set<std::string> keys;
  for (const auto& c : plan->sites[1].candidates) keys.insert(CandidateKey("m", "c", c));
  EXPECT_EQ(keys.size(), plan->sites[1].candidates.size());
}

TEST(PlanTest, SkipAndPinFixASite) {
  JobSpec spec = Spec();
  spec.space.skip = {"patch_embed"};
  spec.space.pin["head"] = nlohmann::json::parse(R"({"weight": {"bits": 8}, "activation": {"bits": 8}})");
  auto plan = MakePlan(spec, Sites());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_TRUE(plan->sites[0].fixed);
  EXPECT_FALSE(plan->sites[0].candidates[0].config.weight.quantized());
  EXPECT_TRUE(plan->sites[4].fixed);
  EXPECT_EQ(plan->sites[4].candidates[0].config.weight.bits, 8);

  spec.space.pin["blocks.7.mlp.fc1"] = nlohmann::json::object();
  EXPECT_NE(MakePlan(spec, Sites()).status().message().find("blocks.7.mlp.fc1"),
            std::string::npos);
  spec.space.pin.erase("blocks.7.mlp.fc1");
  spec.space.skip = {"decoder"};
  EXPECT_NE(MakePlan(spec, Sites()).status().message().find("decoder"), std::string::npos);
}

TEST(PlanTest, ConfigsThatCannotApplyToASiteAreRefusedByName) {
  const SiteInfo qk{"blocks.0.attn.qk_matmul", SiteKind::kMatmul, 0, 100, 4, 0};
  const SiteInfo av{"blocks.0.attn.av_matmul", SiteKind::kMatmul, 0, 100, 4, 0};
  const SiteInfo fc1{"blocks.0.mlp.fc1", SiteKind::kLinear, 100, 100, 3, 16};
  const SiteInfo fc2{"blocks.0.mlp.fc2", SiteKind::kLinear, 100, 100, 4, 64};
  QuantConfig log;
  log.activation.bits = 4;
  log.activation.quantizer = ActivationQuantizer::kLog2;
  EXPECT_TRUE(CheckConfigSuitsSite(log, av).ok());
  Status s = CheckConfigSuitsSite(log, qk);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "site blocks.0.attn.qk_matmul activation: log2 quantizes post-softmax "
                         "values only");
  QuantConfig log_rhs;
  log_rhs.activation_rhs = log.activation;  // v is not post-softmax
  EXPECT_NE(CheckConfigSuitsSite(log_rhs, av).message().find("activation_rhs"), std::string::npos);

  QuantConfig twin;
  twin.weight.bits = 8;
  twin.activation.bits = 4;
  twin.activation.quantizer = ActivationQuantizer::kTwinUniform;
  EXPECT_TRUE(CheckConfigSuitsSite(twin, fc2).ok());
  EXPECT_NE(CheckConfigSuitsSite(twin, fc1).message().find("post-GELU"), std::string::npos);

  QuantConfig per_head;
  per_head.activation.bits = 8;
  per_head.activation.granularity = Granularity::kPerHead;
  EXPECT_TRUE(CheckConfigSuitsSite(per_head, fc2).ok());
  EXPECT_TRUE(CheckConfigSuitsSite(per_head, qk).ok());
  EXPECT_EQ(CheckConfigSuitsSite(per_head, fc1).message(),
            "site blocks.0.mlp.fc1 activation: per_head: 3 heads do not divide the input width 16");

  // A search's pins are checked when the plan is made, before any candidate is evaluated.
  JobSpec spec = Spec();
  spec.space.pin["blocks.0.attn.qk_matmul"] =
      nlohmann::json::parse(R"({"activation": {"bits": 4, "quantizer": "log2"}})");
  s = MakePlan(spec, Sites()).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("blocks.0.attn.qk_matmul activation: log2"), std::string::npos)
      << s.message();
}

TEST(PlanTest, ReparamDoublesOnlyTheSitesItChanges) {
  JobSpec spec = Spec();
  spec.space.activation_bits = {0, 8};
  spec.space.reparam = {false, true};
  auto plan = MakePlan(spec, Sites());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  // qkv: methods × bits × (float activations + 8-bit without and with reparam).
  EXPECT_EQ(plan->sites[1].candidates.size(), 2u * 3u * 3u);
  int on = 0;
  for (const auto& c : plan->sites[1].candidates) {
    on += c.config.reparam;
    if (c.config.reparam) EXPECT_EQ(c.config.activation.bits, 8);
  }
  EXPECT_EQ(on, 2 * 3);
  // The patch embedding, the head and q·kᵀ: nothing to reparameterize.
  for (size_t s : {0u, 2u, 4u}) {
    for (const auto& c : plan->sites[s].candidates) EXPECT_FALSE(c.config.reparam);
  }
  // softmax·v: float, uniform, uniform with reparam (log√2), log2.
  EXPECT_EQ(plan->sites[3].candidates.size(), 4u);
  std::set<std::string> keys;
  for (const auto& s : plan->sites) {
    for (const auto& c : s.candidates) keys.insert(CandidateKey("m", "c", c));
  }
  EXPECT_EQ(keys.size(), plan->candidate_count());
  // When log√2 is offered anyway, reparam adds no softmax candidate of its own.
  spec.space.softmax_quantizers = {ActivationQuantizer::kUniform, ActivationQuantizer::kLogSqrt2};
  plan = MakePlan(spec, Sites());
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->sites[3].candidates.size(), 3u);
  // Reparam with a per-channel activation contradicts itself: refused by site name.
  QuantConfig c;
  c.activation.bits = 8;
  c.activation.granularity = Granularity::kPerChannel;
  c.reparam = true;
  Status s = CheckConfigSuitsSite(c, Sites()[1]);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("blocks.0.attn.qkv"), std::string::npos) << s.message();
}

TEST(PlanTest, LiuCalibratesMatmulOperandsOnly) {
  JobSpec spec = Spec();
  spec.space.activation_calibrators = {RangeCalibrator::kLiu};
  auto plan = MakePlan(spec, Sites());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  for (const auto& c : plan->sites[1].candidates) {  // qkv: its input falls back to OMSE
    EXPECT_EQ(c.config.activation.calibrator, RangeCalibrator::kOmse);
  }
  EXPECT_EQ(plan->sites[2].candidates[0].config.activation.calibrator, RangeCalibrator::kLiu);
  // softmax·v: uniform with liu; log2 cannot take it, so it has no candidate here.
  ASSERT_EQ(plan->sites[3].candidates.size(), 1u);
  EXPECT_EQ(plan->sites[3].candidates[0].config.activation.quantizer,
            ActivationQuantizer::kUniform);
  QuantConfig bad;
  bad.weight.bits = 4;
  bad.weight.calibrator = RangeCalibrator::kLiu;
  EXPECT_EQ(ValidateQuantConfig(bad, SiteKind::kLinear).code(), StatusCode::kInvalidArgument);
  bad = QuantConfig{};
  bad.activation.bits = 8;
  bad.activation.calibrator = RangeCalibrator::kLiu;
  EXPECT_EQ(ValidateQuantConfig(bad, SiteKind::kLinear).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateQuantConfig(bad, SiteKind::kMatmul).ok());
  bad.activation.quantizer = ActivationQuantizer::kLog2;
  EXPECT_EQ(ValidateQuantConfig(bad, SiteKind::kMatmul).code(), StatusCode::kInvalidArgument);
}

TEST(PlanTest, KeysAreStableAndDistinct) {
  auto plan = MakePlan(Spec(), Sites());
  ASSERT_TRUE(plan.ok());
  std::set<std::string> keys;
  for (const auto& s : plan->sites) {
    for (const auto& c : s.candidates) keys.insert(CandidateKey("m", "c", c));
  }
  EXPECT_EQ(keys.size(), plan->candidate_count());
  const auto& c = plan->sites[1].candidates[0];
  EXPECT_EQ(CandidateKey("m", "c", c), CandidateKey("m", "c", c));
  EXPECT_NE(CandidateKey("m", "c", c), CandidateKey("m2", "c", c));
  EXPECT_NE(CandidateKey("m", "c", c), CandidateKey("m", "c2", c));
  EXPECT_EQ(CandidateKey("m", "c", c).size(), 64u);
}

TEST(PlanTest, CostsAndBudgets) {
  const SiteInfo site{"x", SiteKind::kLinear, 1000, 5000};
  QuantConfig c;
  c.weight.bits = 4;
  c.activation.bits = 8;
  EXPECT_EQ(CostOf(site, c).weight_bits, 4000);
  EXPECT_EQ(CostOf(site, c).bops, 5000 * 4 * 8);
  c.activation.bits = 0;
  EXPECT_EQ(CostOf(site, c).bops, 5000 * 4 * 32);
  JobSpec spec = Spec();
  spec.budget = 4.0;
  auto plan = MakePlan(spec, Sites());
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(*BudgetUnits(spec, *plan), 4 * plan->total_weight_params);
  spec.budget_kind = BudgetKind::kModelBytes;
  spec.budget = 1000;
  EXPECT_EQ(*BudgetUnits(spec, *plan), 8000);
}

}  // namespace
}  // namespace qs

namespace qs {
namespace {

std::vector<SiteInfo> SitesWithNonlinear() {
  auto sites = Sites();
  sites.push_back({"blocks.0.norm1", SiteKind::kNonlinear, 0, 17 * 96});
  sites.push_back({"blocks.0.attn.softmax", SiteKind::kNonlinear, 0, 4 * 17 * 17});
  sites.push_back({"blocks.0.mlp.act", SiteKind::kNonlinear, 0, 17 * 384});
  return sites;
}

TEST(PlanTest, NonlinearSitesArePlannedOnlyWhenAnIntegerMethodIsOffered) {
  // The default space offers float only: the plan is what it was without non-linear sites.
  auto plain = MakePlan(Spec(), SitesWithNonlinear());
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(plain->sites.size(), 5u);

  JobSpec spec = Spec();
  spec.space.activation_bits = {0, 6, 8};
  spec.space.nonlinear_methods = {NonlinearMethod::kFloat, NonlinearMethod::kIbert,
                                  NonlinearMethod::kFqvit};
  auto plan = MakePlan(spec, SitesWithNonlinear());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->sites.size(), 8u);
  // LayerNorm and softmax: float, then I-BERT and FQ-ViT at the quantized activation bits.
  EXPECT_EQ(plan->sites[5].candidates.size(), 5u);
  EXPECT_EQ(plan->sites[6].candidates.size(), 5u);
  // GELU: FQ-ViT has no kernel.
  ASSERT_EQ(plan->sites[7].candidates.size(), 3u);
  for (const auto& c : plan->sites[7].candidates) {
    EXPECT_NE(c.config.nonlinear.method, NonlinearMethod::kFqvit);
  }
  EXPECT_EQ(plan->total_weight_params, 96 * 49 + 288 * 96 + 10 * 96);  // no weights

  // Costs: no weight bits; BOPs are elements × bits², float at 32.
  const auto& ibert6 = plan->sites[5].candidates[1];
  EXPECT_EQ(ibert6.config.nonlinear.method, NonlinearMethod::kIbert);
  EXPECT_EQ(ibert6.config.nonlinear.bits, 6);
  EXPECT_EQ(CostOf(plan->sites[5].site, ibert6.config).weight_bits, 0);
  EXPECT_EQ(CostOf(plan->sites[5].site, ibert6.config).bops, 17 * 96 * 36);
  EXPECT_EQ(CostOf(plan->sites[5].site, plan->sites[5].candidates[0].config).bops,
            17 * 96 * 32 * 32);

  // Explicit bits; keys differ by method and bits.
  spec.space.nonlinear_bits = {4};
  plan = MakePlan(spec, SitesWithNonlinear());
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->sites[5].candidates.size(), 3u);
  std::set<std::string> keys;
  for (const auto& c : plan->sites[5].candidates) keys.insert(CandidateKey("m", "c", c));
  EXPECT_EQ(keys.size(), 3u);

  // Only FQ-ViT offered: GELU keeps its float op.
  spec.space.nonlinear_methods = {NonlinearMethod::kFqvit};
  plan = MakePlan(spec, SitesWithNonlinear());
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->sites[7].candidates.size(), 1u);
  EXPECT_FALSE(plan->sites[7].candidates[0].config.nonlinear.quantized());

  // A pin of FQ-ViT at a GELU is refused by name.
  spec.space.pin["blocks.0.mlp.act"] = {{"nonlinear", {{"method", "fqvit"}, {"bits", 8}}}};
  auto refused = MakePlan(spec, SitesWithNonlinear());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("blocks.0.mlp.act"), std::string::npos);
  EXPECT_NE(refused.status().message().find("gelu kernel"), std::string::npos);
}

}  // namespace
}  // namespace qs
