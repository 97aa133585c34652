#include "common/job_spec.h"

#include <gtest/gtest.h>

#include <cstdio>

#include "common/file_util.h"

#include <functional>

namespace qs {
namespace {

using nlohmann::json;

json Minimal() {
  return json::parse(R"({
    "model": {"config": "model/config.json", "weights": "/abs/model.safetensors"},
    "calibration": {"source": "fashion-mnist:train", "count": 256, "seed": 0},
    "validation": {"source": "fashion-mnist:test", "limit": 2000},
    "search": {"weight_methods": ["rtn", "gptq", "erq"], "weight_bits": [2, 3, 4, 6, 8],
               "activation_bits": [8]},
    "objective": {"avg_weight_bits": 4.0}
  })");
}

TEST(JobSpecTest, ParsesTheDocumentedInterface) {
  auto spec = ParseJobSpec(Minimal(), "/jobs/a/spec.json");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->model_config, "/jobs/a/model/config.json");
  EXPECT_EQ(spec->model_weights, "/abs/model.safetensors");
  EXPECT_EQ(spec->calibration_count, 256);
  EXPECT_EQ(spec->validation_limit, 2000);
  EXPECT_EQ(spec->space.weight_methods.size(), 3u);
  EXPECT_EQ(spec->space.weight_bits, (std::vector<int>{2, 3, 4, 6, 8}));
  EXPECT_EQ(spec->budget_kind, BudgetKind::kAvgWeightBits);
  EXPECT_DOUBLE_EQ(spec->budget, 4.0);
  EXPECT_EQ(spec->metric, RankingMetric::kNoiseRatio);
  EXPECT_LT(spec->max_abs_top1_drop, 0);  // no criterion given
  // The canonical form parses back to the same canonical form.
  auto again = ParseJobSpec(ToJson(*spec), "/elsewhere/spec.json");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(ToJson(*again).dump(), ToJson(*spec).dump());
  // Reparam is off unless asked for, and left out of the canonical form while it is.
  EXPECT_EQ(spec->space.reparam, std::vector<bool>{false});
  EXPECT_FALSE(ToJson(*spec)["search"].contains("reparam"));
  json j = Minimal();
  j["search"]["reparam"] = json::array({false, true});
  auto both = ParseJobSpec(j, "spec.json");
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ(both->space.reparam, (std::vector<bool>{false, true}));
  EXPECT_EQ(ToJson(*both)["search"]["reparam"], json::array({false, true}));
  j = Minimal();
  j["objective"]["metric"] = "nuclear";
  auto nuclear = ParseJobSpec(j, "spec.json");
  ASSERT_TRUE(nuclear.ok()) << nuclear.status().ToString();
  EXPECT_EQ(nuclear->metric, RankingMetric::kNuclear);
  EXPECT_EQ(ToJson(*nuclear)["objective"]["metric"], "nuclear");
  // Non-linear methods: float only unless asked for, and then in the canonical form.
  EXPECT_EQ(spec->space.nonlinear_methods, std::vector<NonlinearMethod>{NonlinearMethod::kFloat});
  EXPECT_FALSE(ToJson(*spec)["search"].contains("nonlinear_methods"));
  j = Minimal();
  j["search"]["nonlinear_methods"] = json::array({"ibert", "fqvit", "ivit"});
  j["search"]["nonlinear_bits"] = json::array({6, 8});
  auto nonlinear = ParseJobSpec(j, "spec.json");
  ASSERT_TRUE(nonlinear.ok()) << nonlinear.status().ToString();
  EXPECT_EQ(nonlinear->space.nonlinear_methods.size(), 3u);
  EXPECT_EQ(nonlinear->space.nonlinear_bits, (std::vector<int>{6, 8}));
  EXPECT_EQ(ToJson(*nonlinear)["search"]["nonlinear_methods"], j["search"]["nonlinear_methods"]);
  for (const json& bad : {json::array({"ibert2"}), json::array()}) {
    j["search"]["nonlinear_methods"] = bad;
    EXPECT_EQ(ParseJobSpec(j, "spec.json").status().code(), StatusCode::kInvalidArgument);
  }
  j["search"]["nonlinear_methods"] = json::array({"ibert"});
  for (const json& bad : {json::array({3}), json::array({0}), json::array({9})}) {
    j["search"]["nonlinear_bits"] = bad;
    auto refused = ParseJobSpec(j, "spec.json");
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << bad.dump();
    EXPECT_NE(refused.status().message().find("nonlinear_bits"), std::string::npos)
        << refused.status().ToString();
  }
}

TEST(JobSpecTest, ReconstructionTierRewritesTheQuantizedWeightsOutsideThePins) {
  json j = Minimal();
  EXPECT_FALSE(ToJson(ParseJobSpec(j, "spec.json").value())["search"].contains("reconstruction"));
  j["search"]["reconstruction"] = {{"method", "mgrq"}, {"recon_iterations", 40},
                                   {"mgrq_global_weight", 0.5}};
  j["search"]["pin"] = {{"head", {{"weight", {{"bits", 8}, {"method", "erq"}}}}}};
  auto spec = ParseJobSpec(j, "spec.json");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  ASSERT_TRUE(spec->space.reconstruction.has_value());
  EXPECT_EQ(spec->space.reconstruction->method, WeightMethod::kMgrq);
  EXPECT_EQ(spec->space.reconstruction->recon_iterations, 40);
  // The canonical form holds the tier's fields only, and parses back to itself.
  const json tier = ToJson(*spec)["search"]["reconstruction"];
  EXPECT_EQ(tier["mgrq_global_weight"], 0.5);
  EXPECT_FALSE(tier.contains("bits"));
  auto again = ParseJobSpec(ToJson(*spec), "spec.json");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(ToJson(*again).dump(), ToJson(*spec).dump());

  Recipe recipe;
  QuantConfig gptq3;
  gptq3.weight.method = WeightMethod::kGptq;
  gptq3.weight.bits = 3;
  gptq3.weight.granularity = Granularity::kPerGroup;
  gptq3.weight.group_size = 32;
  gptq3.weight.calibrator = RangeCalibrator::kMae;
  gptq3.activation.bits = 4;
  recipe.sites["blocks.0.attn.qkv"] = gptq3;
  QuantConfig floating;
  recipe.sites["blocks.0.mlp.fc2"] = floating;
  QuantConfig pinned;
  pinned.weight.method = WeightMethod::kErq;
  pinned.weight.bits = 8;
  recipe.sites["head"] = pinned;
  const Recipe tiered = ApplyReconstructionTier(recipe, *spec);
  const WeightQuant& w = tiered.sites.at("blocks.0.attn.qkv").weight;
  EXPECT_EQ(w.method, WeightMethod::kMgrq);
  EXPECT_EQ(w.recon_iterations, 40);
  EXPECT_EQ(w.mgrq_global_weight, 0.5);
  EXPECT_EQ(w.bits, 3);
  EXPECT_EQ(w.granularity, Granularity::kPerGroup);
  EXPECT_EQ(w.group_size, 32);
  EXPECT_EQ(w.calibrator, RangeCalibrator::kMae);
  EXPECT_EQ(w.recon_init, WeightMethod::kGptq);  // refines the chosen method's weights
  EXPECT_EQ(tiered.sites.at("blocks.0.attn.qkv").activation, gptq3.activation);
  EXPECT_FALSE(tiered.sites.at("blocks.0.mlp.fc2").weight.quantized());
  EXPECT_EQ(tiered.sites.at("head").weight.method, WeightMethod::kErq);  // pinned
  // Without a tier the recipe is unchanged.
  EXPECT_EQ(ApplyReconstructionTier(recipe, ParseJobSpec(Minimal(), "spec.json").value())
                .sites.at("blocks.0.attn.qkv")
                .weight.method,
            WeightMethod::kGptq);
}

TEST(JobSpecTest, ErrorsNameTheField) {
  struct Case {
    std::function<void(json&)> edit;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {[](json& j) { j.erase("model"); }, "model"},
      {[](json& j) { j["model"].erase("weights"); }, "weights"},
      {[](json& j) { j["modle"] = 1; }, "modle"},
      {[](json& j) { j["calibration"]["count"] = 0; }, "count"},
      {[](json& j) { j["calibration"]["count"] = "many"; }, "count"},
      {[](json& j) { j["validation"]["limit"] = -5; }, "limit"},
      {[](json& j) { j["search"]["weight_bits"] = json::array({4, 9}); }, "weight_bits[1]"},
      {[](json& j) { j["search"]["weight_bits"] = json::array(); }, "weight_bits"},
      // Once read with get<int>(): 4294967300 wrapped to 4 and the job ran at 4 bits.
      {[](json& j) { j["search"]["weight_bits"] = json::array({4294967300ULL}); }, "4294967300"},
      {[](json& j) { j["search"]["activation_bits"] = json::array({-8}); }, "activation_bits[0]"},
      {[](json& j) { j["search"]["weight_bits"] = json::array({18446744073709551615ULL}); },
       "weight_bits[0]"},
      {[](json& j) { j["search"]["weight_methods"] = json::array({"rtn", "awq"}); }, "awq"},
      {[](json& j) { j["search"]["weight_granularities"] = json::array({"per_head"}); },
       "per_head"},
      {[](json& j) { j["search"]["bits"] = 4; }, "bits"},
      {[](json& j) { j["search"]["reparam"] = json::array({false, "on"}); }, "reparam[1]"},
      {[](json& j) { j["search"]["reparam"] = true; }, "reparam"},
      {[](json& j) { j["search"]["weight_calibrators"] = json::array({"liu"}); }, "weight_methods"},
      {[](json& j) { j["search"]["weight_methods"] = json::array({"rtn", "brecq"}); },
       "\"reconstruction\": {\"method\": \"brecq\"}"},
      {[](json& j) { j["search"]["reconstruction"] = {{"method", "gptq"}}; }, "brecq or mgrq"},
      {[](json& j) { j["search"]["reconstruction"] = json::object(); }, "missing 'method'"},
      {[](json& j) { j["search"]["reconstruction"] = {{"method", "mgrq"}, {"bits", 4}}; },
       "bits"},
      {[](json& j) {
         j["search"]["reconstruction"] = {{"method", "mgrq"}, {"mgrq_local_distance", "l1"}};
       },
       "mgrq_local_distance"},
      {[](json& j) { j["search"]["reconstruction"] = {{"method", "brecq"}, {"recon_lr", 0}}; },
       "recon_lr"},
      {[](json& j) { j["objective"] = json::object(); }, "exactly one budget"},
      {[](json& j) { j["objective"]["model_bytes"] = 1000; }, "exactly one budget"},
      {[](json& j) { j["objective"]["avg_weight_bits"] = -1; }, "positive"},
      {[](json& j) { j["objective"]["metric"] = "accuracy"; }, "accuracy"},
      {[](json& j) { j["accuracy"] = {{"max_rel_top1_drop", 3}}; }, "max_rel_top1_drop"},
      {[](json& j) { j["accuracy"] = {{"max_validations", 0}}; }, "max_validations"},
      {[](json& j) { j["compute"] = {{"device", "tpu"}}; }, "device"},
      {[](json& j) { j["compute"] = {{"capture_dtype", "int8"}}; }, "capture_dtype"},
      {[](json& j) { j["compute"] = {{"threads", 4}}; }, "threads"},
  };
  for (const auto& c : cases) {
    json j = Minimal();
    c.edit(j);
    auto spec = ParseJobSpec(j, "spec.json");
    ASSERT_FALSE(spec.ok()) << c.needle;
    EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument) << c.needle;
    EXPECT_NE(spec.status().message().find(c.needle), std::string::npos)
        << c.needle << " not in: " << spec.status().message();
  }
}

TEST(JobSpecTest, MissingFileMalformedJsonAndHugeBudgets) {
  EXPECT_EQ(LoadJobSpec("/nonexistent/spec.json").status().code(), StatusCode::kNotFound);
  const std::string path = "/tmp/qs_job_spec_malformed.json";
  ASSERT_TRUE(WriteFileAtomically(path, "{\"model\": ").ok());
  auto bad = LoadJobSpec(path);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("malformed JSON"), std::string::npos);
  std::remove(path.c_str());
  json j = Minimal();
  j["objective"] = {{"bops", 1e300}};
  EXPECT_EQ(ParseJobSpec(j, "s.json").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs
