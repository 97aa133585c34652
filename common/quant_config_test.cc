#include "common/quant_config.h"

#include <gtest/gtest.h>

#include <functional>

namespace qs {
namespace {

const std::map<std::string, SiteKind> kSites = {
    {"patch_embed.proj", SiteKind::kLinear},
    {"blocks.0.attn.qkv", SiteKind::kLinear},
    {"blocks.0.attn.av_matmul", SiteKind::kMatmul},
    {"head", SiteKind::kLinear},
};

TEST(UniformRecipeTest, ParsesBitsMethodAndKeepsEdgesAt8) {
  auto r = ParseUniformRecipe("w4a8:rtn");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->linear_default.weight.bits, 4);
  EXPECT_EQ(r->linear_default.activation.bits, 8);
  EXPECT_EQ(r->matmul_default.activation.bits, 8);
  EXPECT_EQ(r->matmul_default.activation_rhs.bits, 8);
  EXPECT_EQ(r->Resolve("blocks.0.attn.qkv", SiteKind::kLinear).weight.bits, 4);
  EXPECT_EQ(r->Resolve("head", SiteKind::kLinear).weight.bits, 8);
  EXPECT_EQ(r->Resolve("patch_embed.proj", SiteKind::kLinear).activation.bits, 8);

  auto edges = ParseUniformRecipe("w3a4", /*quantize_edges=*/true);
  ASSERT_TRUE(edges.ok());
  EXPECT_EQ(edges->Resolve("head", SiteKind::kLinear).weight.bits, 3);
  EXPECT_EQ(edges->Resolve("head", SiteKind::kLinear).activation.bits, 4);

  auto weight_only = ParseUniformRecipe("w4a32");
  ASSERT_TRUE(weight_only.ok());
  EXPECT_FALSE(weight_only->linear_default.activation.quantized());
  EXPECT_FALSE(weight_only->Resolve("head", SiteKind::kLinear).activation.quantized());
}

TEST(UniformRecipeTest, RejectsMalformedShorthand) {
  for (const char* bad : {"", "w4", "a8w4", "w9a8", "w4a1", "w1a8", "x4a8", "w4a8:nope", "w44a8"}) {
    auto r = ParseUniformRecipe(bad);
    EXPECT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ParseUniformRecipe("w4a8:nope").status().message().find("nope"), std::string::npos);
  // Each says what is actually wrong ("w4" once said it must start with 'w').
  for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
           {"w4", "missing 'a<bits>'"},
           {"w4a", "missing the activation bits"},
           {"x4a8", "must start with 'w'"},
           {"wa8", "weight bits"},
           {"w4a9", "activation bits"}}) {
    const std::string message = ParseUniformRecipe(text).status().message();
    EXPECT_NE(message.find(needle), std::string::npos) << text << ": " << message;
  }
}

TEST(RecipeJsonTest, RoundTripsAndIsCanonical) {
  auto r = ParseUniformRecipe("w4a4");
  ASSERT_TRUE(r.ok());
  QuantConfig softmax;
  softmax.activation.bits = 4;
  softmax.activation.quantizer = ActivationQuantizer::kLog2;
  softmax.activation_rhs.bits = 4;
  r->sites["blocks.0.attn.av_matmul"] = softmax;
  QuantConfig grouped;
  grouped.weight.bits = 3;
  grouped.weight.granularity = Granularity::kPerGroup;
  grouped.weight.group_size = 32;
  grouped.weight.calibrator = RangeCalibrator::kPercentile;
  grouped.weight.percentile = 0.999;
  grouped.activation.bits = 8;
  r->sites["blocks.0.attn.qkv"] = grouped;
  QuantConfig gptq;
  gptq.weight.method = WeightMethod::kGptq;
  gptq.weight.bits = 3;
  gptq.weight.gptq_act_order = true;
  gptq.weight.gptq_block_size = 64;
  r->sites["head"] = gptq;
  QuantConfig erq;
  erq.weight.method = WeightMethod::kErq;
  erq.weight.bits = 4;
  erq.weight.erq_wqer_lambda = 50;
  erq.weight.erq_aqer_lambda = 7;
  r->sites["patch_embed.proj"] = erq;

  auto j = RecipeToJson(*r, kSites);
  auto back = RecipeFromJson(j, kSites);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->sites.size(), r->sites.size());
  for (const auto& [name, config] : r->sites) {
    EXPECT_TRUE(back->sites.at(name) == config) << name;
  }
  EXPECT_TRUE(back->linear_default == r->linear_default);
  EXPECT_EQ(RecipeToJson(*back, kSites).dump(), j.dump());
  EXPECT_EQ(back->sites.at("head").weight.gptq_block_size, 64);
  EXPECT_TRUE(back->sites.at("head").weight.gptq_act_order);
  EXPECT_EQ(back->sites.at("patch_embed.proj").weight.erq_wqer_lambda, 50);
  // Method-specific fields appear only for their method.
  EXPECT_FALSE(j["sites"]["patch_embed.proj"]["weight"].contains("gptq_damp"));
  EXPECT_FALSE(j["sites"]["head"]["weight"].contains("erq_wqer_lambda"));
}

TEST(RecipeJsonTest, ReparamRoundTripsAndResolvesOnlyWhereItApplies) {
  auto sites = kSites;
  sites["blocks.0.mlp.fc1"] = sites["blocks.0.mlp.fc2"] = SiteKind::kLinear;
  auto r = ParseUniformRecipe("w4a4");
  ASSERT_TRUE(r.ok());
  r->linear_default.reparam = r->matmul_default.reparam = true;
  QuantConfig fc1 = r->linear_default;
  r->sites["blocks.0.mlp.fc1"] = fc1;
  auto j = RecipeToJson(*r, sites);
  EXPECT_EQ(j["linear_default"]["reparam"], true);
  EXPECT_EQ(j["sites"]["blocks.0.mlp.fc1"]["reparam"], true);
  auto back = RecipeFromJson(j, sites);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->sites.at("blocks.0.mlp.fc1").reparam);
  EXPECT_TRUE(back->Resolve("blocks.0.attn.qkv", SiteKind::kLinear).reparam);
  EXPECT_TRUE(back->Resolve("blocks.0.attn.av_matmul", SiteKind::kMatmul).reparam);
  EXPECT_FALSE(back->Resolve("blocks.0.attn.qk_matmul", SiteKind::kMatmul).reparam);
  EXPECT_FALSE(back->Resolve("blocks.0.mlp.fc2", SiteKind::kLinear).reparam);
  EXPECT_FALSE(back->Resolve("head", SiteKind::kLinear).reparam);
  // Off, the field is left out: recipes without it read and key as they always did.
  QuantConfig off;
  EXPECT_FALSE(ToJson(off, SiteKind::kLinear).contains("reparam"));
  // A site entry asking for it where it cannot apply, or a non-boolean, is refused by name.
  j["sites"]["blocks.0.mlp.fc2"] = j["sites"]["blocks.0.mlp.fc1"];
  auto bad = RecipeFromJson(j, sites);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("blocks.0.mlp.fc2"), std::string::npos);
  nlohmann::json config = {{"reparam", "yes"}};
  EXPECT_EQ(QuantConfigFromJson(config, SiteKind::kLinear).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(RecipeJsonTest, NonlinearSitesRoundTripAndResolve) {
  auto sites = kSites;
  sites["blocks.0.norm1"] = sites["blocks.0.attn.softmax"] = sites["blocks.0.mlp.act"] =
      SiteKind::kNonlinear;
  auto r = ParseUniformRecipe("w8a8");
  ASSERT_TRUE(r.ok());
  // Without a non-linear default, the JSON reads as it always did, and every such site is float.
  EXPECT_FALSE(RecipeToJson(*r, sites).contains("nonlinear_default"));
  EXPECT_FALSE(r->Resolve("blocks.0.norm1", SiteKind::kNonlinear).nonlinear.quantized());

  r->nonlinear_default.nonlinear = {NonlinearMethod::kFqvit, 6};
  QuantConfig ivit;
  ivit.nonlinear = {NonlinearMethod::kIvit, 8};
  r->sites["blocks.0.attn.softmax"] = ivit;
  auto j = RecipeToJson(*r, sites);
  EXPECT_EQ(j["nonlinear_default"]["nonlinear"]["method"], "fqvit");
  EXPECT_EQ(j["sites"]["blocks.0.attn.softmax"]["nonlinear"]["bits"], 8);
  auto back = RecipeFromJson(j, sites);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(RecipeToJson(*back, sites).dump(), j.dump());
  EXPECT_EQ(back->Resolve("blocks.0.norm1", SiteKind::kNonlinear).nonlinear,
            (NonlinearQuant{NonlinearMethod::kFqvit, 6}));
  EXPECT_EQ(back->Resolve("blocks.0.attn.softmax", SiteKind::kNonlinear).nonlinear,
            (NonlinearQuant{NonlinearMethod::kIvit, 8}));
  // FQ-ViT has no GELU kernel: the default leaves GELU float, a site entry asking for it fails.
  EXPECT_FALSE(back->Resolve("blocks.0.mlp.act", SiteKind::kNonlinear).nonlinear.quantized());
  j["sites"]["blocks.0.mlp.act"] = j["nonlinear_default"];
  auto bad = RecipeFromJson(j, sites);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("blocks.0.mlp.act"), std::string::npos);
  // Bits outside 4..8, an unknown method, weights at a non-linear site, a method elsewhere.
  for (const char* text : {R"({"nonlinear": {"method": "ibert", "bits": 3}})",
                           R"({"nonlinear": {"method": "softermax", "bits": 8}})",
                           R"({"weight": {"bits": 4}})"}) {
    EXPECT_EQ(QuantConfigFromJson(nlohmann::json::parse(text), SiteKind::kNonlinear)
                  .status()
                  .code(),
              StatusCode::kInvalidArgument)
        << text;
  }
  EXPECT_EQ(ValidateQuantConfig(ivit, SiteKind::kLinear).code(), StatusCode::kInvalidArgument);
}

TEST(UniformRecipeTest, MethodSuffixSelectsGptqAndErq) {
  EXPECT_EQ(ParseUniformRecipe("w3a4:gptq")->linear_default.weight.method, WeightMethod::kGptq);
  EXPECT_EQ(ParseUniformRecipe("w3a4:erq")->linear_default.weight.method, WeightMethod::kErq);
  // The 8-bit edges use the same method.
  EXPECT_EQ(ParseUniformRecipe("w3a4:erq")->sites.at("head").weight.method, WeightMethod::kErq);
}

TEST(RecipeJsonTest, ErrorsNameTheProblem) {
  using nlohmann::json;
  auto err = [](const json& j) { return RecipeFromJson(j, kSites).status(); };
  EXPECT_NE(err(json{{"format", "v0"}}).message().find("format"), std::string::npos);
  auto unknown_site = err(json{{"format", kRecipeFormat}, {"sites", {{"blocks.9.mlp.fc1", {}}}}});
  EXPECT_EQ(unknown_site.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unknown_site.message().find("blocks.9.mlp.fc1"), std::string::npos);
  auto bad_field = err(json{{"format", kRecipeFormat},
                            {"linear_default", {{"weight", {{"bitz", 4}}}}}});
  EXPECT_NE(bad_field.message().find("bitz"), std::string::npos);
  auto bad_type = err(json{{"format", kRecipeFormat},
                           {"linear_default", {{"weight", {{"bits", "four"}}}}}});
  EXPECT_NE(bad_type.message().find("bits"), std::string::npos);
  auto fractional = err(json{{"format", kRecipeFormat},
                             {"linear_default", {{"weight", {{"bits", 4.7}}}}}});
  EXPECT_NE(fractional.message().find("integer"), std::string::npos);
  auto huge = err(json{{"format", kRecipeFormat},
                       {"linear_default", {{"weight", {{"bits", int64_t{1} << 40}}}}}});
  EXPECT_NE(huge.message().find("range"), std::string::npos);
  auto bad_enum = err(json{{"format", kRecipeFormat},
                           {"linear_default", {{"weight", {{"bits", 4}, {"calibrator", "avg"}}}}}});
  EXPECT_NE(bad_enum.message().find("avg"), std::string::npos);
}

TEST(ValidateQuantConfigTest, RejectsImpossibleConfigs) {
  QuantConfig c;
  c.weight.bits = 1;
  EXPECT_FALSE(ValidateQuantConfig(c, SiteKind::kLinear).ok());
  c.weight.bits = 4;
  EXPECT_TRUE(ValidateQuantConfig(c, SiteKind::kLinear).ok());
  c.weight.granularity = Granularity::kPerGroup;
  EXPECT_FALSE(ValidateQuantConfig(c, SiteKind::kLinear).ok());  // no group size
  c.weight.group_size = 16;
  EXPECT_TRUE(ValidateQuantConfig(c, SiteKind::kLinear).ok());
  EXPECT_FALSE(ValidateQuantConfig(c, SiteKind::kMatmul).ok());  // matmuls have no weight

  QuantConfig liu;
  liu.weight.method = WeightMethod::kLiu;
  liu.weight.bits = 6;
  EXPECT_TRUE(ValidateQuantConfig(liu, SiteKind::kLinear).ok());
  liu.weight.liu_alpha = 1.5;  // the interval must contain 1 (min-max)
  EXPECT_FALSE(ValidateQuantConfig(liu, SiteKind::kLinear).ok());
  liu.weight.liu_alpha = 0.5;
  liu.weight.liu_grid = 1;
  EXPECT_FALSE(ValidateQuantConfig(liu, SiteKind::kLinear).ok());
  liu.weight.liu_grid = 50;
  liu.weight.liu_rounds = 0;
  EXPECT_FALSE(ValidateQuantConfig(liu, SiteKind::kLinear).ok());
  liu.weight.liu_rounds = 2;
  liu.weight.liu_bias_correction = false;
  auto back = QuantConfigFromJson(ToJson(liu, SiteKind::kLinear), SiteKind::kLinear);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == liu);
  EXPECT_EQ(back->weight.liu_grid, 50);
  EXPECT_FALSE(ToJson(c, SiteKind::kLinear)["weight"].contains("liu_grid"));  // rtn

  QuantConfig repapq;
  repapq.weight.method = WeightMethod::kRepapq;
  repapq.weight.bits = 6;
  EXPECT_TRUE(ValidateQuantConfig(repapq, SiteKind::kLinear).ok());
  repapq.weight.granularity = Granularity::kPerGroup;  // the affine folds per output channel
  repapq.weight.group_size = 16;
  EXPECT_FALSE(ValidateQuantConfig(repapq, SiteKind::kLinear).ok());
  repapq.weight.granularity = Granularity::kPerChannel;
  repapq.weight.repapq_batch = 0;
  EXPECT_FALSE(ValidateQuantConfig(repapq, SiteKind::kLinear).ok());
  repapq.weight.repapq_batch = 32;
  repapq.weight.repapq_lr = 0;
  EXPECT_FALSE(ValidateQuantConfig(repapq, SiteKind::kLinear).ok());
  repapq.weight.repapq_lr = 0.02;
  repapq.weight.repapq_iterations = 40;
  back = QuantConfigFromJson(ToJson(repapq, SiteKind::kLinear), SiteKind::kLinear);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == repapq);
  EXPECT_EQ(back->weight.repapq_iterations, 40);
  // The shorthand takes RepAPQ's MAE ranges for weights and activations, edges included.
  auto shorthand = ParseUniformRecipe("w6a6:repapq").value();
  EXPECT_EQ(shorthand.linear_default.weight.calibrator, RangeCalibrator::kMae);
  EXPECT_EQ(shorthand.linear_default.activation.calibrator, RangeCalibrator::kMae);
  EXPECT_EQ(shorthand.sites.at("head").weight.method, WeightMethod::kRepapq);
  EXPECT_EQ(shorthand.sites.at("head").weight.bits, 8);
  EXPECT_EQ(ParseUniformRecipe("w6a6").value().linear_default.weight.calibrator,
            RangeCalibrator::kOmse);

  // Block reconstruction: fields round-trip under their method only, and are checked.
  QuantConfig mgrq;
  mgrq.weight.method = WeightMethod::kMgrq;
  mgrq.weight.bits = 3;
  mgrq.weight.recon_iterations = 70;
  mgrq.weight.mgrq_global_distance = "mse";
  mgrq.weight.mgrq_local_weight = 0.25;
  back = QuantConfigFromJson(ToJson(mgrq, SiteKind::kLinear), SiteKind::kLinear);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == mgrq);
  EXPECT_EQ(back->weight.mgrq_global_distance, "mse");
  EXPECT_EQ(back->weight.recon_iterations, 70);
  QuantConfig brecq = mgrq;
  brecq.weight.method = WeightMethod::kBrecq;
  const nlohmann::json brecq_json = ToJson(brecq, SiteKind::kLinear);
  EXPECT_TRUE(brecq_json["weight"].contains("recon_iterations"));
  EXPECT_FALSE(brecq_json["weight"].contains("mgrq_local_weight"));
  EXPECT_FALSE(ToJson(repapq, SiteKind::kLinear)["weight"].contains("recon_iterations"));
  EXPECT_TRUE(IsReconstructionMethod(WeightMethod::kBrecq));
  EXPECT_FALSE(IsReconstructionMethod(WeightMethod::kGptq));
  for (auto edit : std::vector<std::function<void(WeightQuant&)>>{
           [](WeightQuant& w) { w.recon_batch = 0; },
           [](WeightQuant& w) { w.recon_warmup = 1; },
           [](WeightQuant& w) { w.recon_beta_end = 30; },
           [](WeightQuant& w) { w.recon_seed = -1; },
           [](WeightQuant& w) { w.mgrq_global_weight = -1; },
           [](WeightQuant& w) { w.mgrq_global_distance = "l1"; }}) {
    QuantConfig bad = mgrq;
    edit(bad.weight);
    EXPECT_EQ(ValidateQuantConfig(bad, SiteKind::kLinear).code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(ParseUniformRecipe("w4a4:mgrq").value().linear_default.weight.method,
            WeightMethod::kMgrq);

  QuantConfig log_on_linear;
  log_on_linear.activation.bits = 4;
  log_on_linear.activation.quantizer = ActivationQuantizer::kLog2;
  EXPECT_FALSE(ValidateQuantConfig(log_on_linear, SiteKind::kLinear).ok());
  EXPECT_TRUE(ValidateQuantConfig(log_on_linear, SiteKind::kMatmul).ok());

  QuantConfig gptq;
  gptq.weight.method = WeightMethod::kGptq;
  gptq.weight.bits = 4;
  gptq.weight.gptq_damp = 0;
  EXPECT_FALSE(ValidateQuantConfig(gptq, SiteKind::kLinear).ok());
  gptq.weight.gptq_damp = 0.01;
  gptq.weight.granularity = Granularity::kPerGroup;
  gptq.weight.group_size = 32;
  gptq.weight.gptq_act_order = true;
  EXPECT_FALSE(ValidateQuantConfig(gptq, SiteKind::kLinear).ok());
  gptq.weight.gptq_static_groups = true;
  EXPECT_TRUE(ValidateQuantConfig(gptq, SiteKind::kLinear).ok());
  QuantConfig erq;
  erq.weight.method = WeightMethod::kErq;
  erq.weight.bits = 4;
  erq.weight.erq_wqer_lambda = -1;
  EXPECT_FALSE(ValidateQuantConfig(erq, SiteKind::kLinear).ok());
  // A value a method does not use is refused as where it is used (gptq_damp 50 on an RTN site
  // used to be dropped silently), and so is one on a float site.
  QuantConfig rtn;
  rtn.weight.bits = 4;
  rtn.weight.gptq_damp = 50;
  EXPECT_FALSE(ValidateQuantConfig(rtn, SiteKind::kLinear).ok());
  QuantConfig float_site;
  float_site.weight.erq_aqer_lambda = 0;
  EXPECT_FALSE(ValidateQuantConfig(float_site, SiteKind::kLinear).ok());
  QuantConfig float_activation;
  float_activation.activation.percentile = 7;
  EXPECT_FALSE(ValidateQuantConfig(float_activation, SiteKind::kLinear).ok());

  QuantConfig pct;
  pct.activation.bits = 8;
  pct.activation.calibrator = RangeCalibrator::kPercentile;
  pct.activation.percentile = 0.3;
  EXPECT_FALSE(ValidateQuantConfig(pct, SiteKind::kLinear).ok());
}

}  // namespace
}  // namespace qs
