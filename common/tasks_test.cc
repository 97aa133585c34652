#include "common/tasks.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/evaluation.h"

#include <functional>

namespace qs {
namespace {

using nlohmann::json;

JobSpec Spec() {
  JobSpec spec;
  spec.model_config = "/models/vit/config.json";
  spec.model_weights = "/models/vit/model.safetensors";
  return spec;
}

SitePlan Site() {
  SitePlan sp;
  sp.site = {"blocks.0.mlp.fc1", SiteKind::kLinear, 64, 64};
  for (int bits : {2, 4, 8}) {
    Candidate c{sp.site.name, SiteKind::kLinear, {}};
    c.config.weight.bits = bits;
    sp.candidates.push_back(c);
  }
  return sp;
}

TEST(TasksTest, SessionDigestCoversWhatIsLoadedAndNothingElse) {
  JobSpec a = Spec(), b = Spec();
  b.space.weight_bits = {3};
  b.budget = 2.5;
  b.max_abs_top1_drop = 0.02;
  EXPECT_EQ(SessionDigest(a), SessionDigest(b));  // another search over the same model and data
  b.calibration_count = 128;
  EXPECT_NE(SessionDigest(a), SessionDigest(b));
  JobSpec c = Spec();
  c.capture_dtype = "float16";
  EXPECT_NE(SessionDigest(a), SessionDigest(c));
}

TEST(TasksTest, EvaluatePayloadRoundTripsAndItsIdFollowsTheContent) {
  const SitePlan site = Site();
  const std::vector<std::string> keys = {"k2", "k4", "k8"};
  const json payload = EvaluateRequest(Spec(), site, keys, {0, 2}, /*measure_mae=*/true);
  auto r = ParseTaskRequest(payload.dump());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, TaskKind::kEvaluate);
  EXPECT_EQ(r->site, "blocks.0.mlp.fc1");
  EXPECT_TRUE(r->measure_mae);
  ASSERT_EQ(r->candidates.size(), 2u);
  EXPECT_EQ(r->candidates[1].first, "k8");
  EXPECT_EQ(r->session, SessionDigest(Spec()));
  EXPECT_EQ(r->spec.model_weights, "/models/vit/model.safetensors");

  // Same content, same id; another candidate set for the same site, another id.
  const std::string id = TaskIdFor(payload);
  EXPECT_EQ(id.rfind("evaluate:", 0), 0u);
  EXPECT_EQ(id, TaskIdFor(EvaluateRequest(Spec(), site, keys, {0, 2}, true)));
  EXPECT_NE(id, TaskIdFor(EvaluateRequest(Spec(), site, keys, {0, 1}, true)));
  EXPECT_NE(id, TaskIdFor(EvaluateRequest(Spec(), site, keys, {0, 2}, false)));
}

TEST(TasksTest, RecipePayloadsCarryTheRecipeAndPath) {
  Recipe recipe;
  recipe.sites["blocks.0.mlp.fc1"].weight.bits = 3;
  const std::vector<SiteInfo> sites = {Site().site};
  auto r = ParseTaskRequest(
      RecipeRequest(TaskKind::kWriteWeights, Spec(), recipe, sites, "/out/w.safetensors").dump());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, TaskKind::kWriteWeights);
  EXPECT_EQ(r->path, "/out/w.safetensors");
  auto back = RecipeFromJson(r->recipe, {{"blocks.0.mlp.fc1", SiteKind::kLinear}});
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->sites.at("blocks.0.mlp.fc1").weight.bits, 3);
}

TEST(TasksTest, MalformedPayloadsAreInvalidArgumentNamingTheProblem) {
  json good = PrepareRequest(Spec());
  for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
           {"not json", "not a JSON object"},
           {"[1,2]", "not a JSON object"},
           {R"({"session":{}})", "missing 'kind'"},
           {R"({"kind":"launch","session":{}})", "unknown task kind"},
           {R"({"kind":"prepare"})", "missing 'session'"},
           {R"({"kind":"evaluate","session":{}})", "missing 'candidates'"},
       }) {
    auto r = ParseTaskRequest(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << text;
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().ToString();
  }
  json tampered = good;
  tampered["session"]["digest"] = "0000";
  auto r = ParseTaskRequest(tampered.dump());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("digest does not match"), std::string::npos);
  json extra = good;
  extra["surprise"] = 1;
  EXPECT_EQ(ParseTaskRequest(extra.dump()).status().code(), StatusCode::kInvalidArgument);
}

TEST(TasksTest, ResultsRoundTrip) {
  ModelFacts f;
  f.model_digest = "m";
  f.calibration_digest = "c";
  f.sites = {{"a", SiteKind::kLinear, 10, 20}, {"m", SiteKind::kMatmul, 0, 30}};
  f.fp32_top1 = 0.8731;
  f.fp32_eval_seconds = 0.1 + 0.2;  // not exactly representable: must survive exactly
  f.device = "cpu";
  auto back = ModelFactsFromJson(json::parse(ToJson(f).dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->sites.size(), 2u);
  EXPECT_EQ(back->sites[1].kind, SiteKind::kMatmul);
  EXPECT_EQ(back->sites[1].macs, 30);
  EXPECT_EQ(back->fp32_eval_seconds, f.fp32_eval_seconds);
  json bad = ToJson(f);
  bad["sites"][0]["kind"] = "conv";
  EXPECT_EQ(ModelFactsFromJson(bad).status().code(), StatusCode::kInvalidArgument);

  ValidationResult v{0.5, 0.9, 0.01, 2.0};
  auto v2 = ValidationResultFromJson(json::parse(ToJson(v).dump()));
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->top1_agreement, 0.9);
  TestResult t{true, "imagefolder:/x", 100, 0.7, 0.75, 1.5};
  auto t2 = TestResultFromJson(json::parse(ToJson(t).dump()));
  ASSERT_TRUE(t2.ok());
  EXPECT_EQ(t2->source, "imagefolder:/x");
  EXPECT_EQ(t2->images, 100);
}

TEST(TasksTest, TransientEvaluationFailuresAreNeverReadBackFromAStore) {
  Evaluation e;
  e.key = "k";
  e.site = "s";
  e.SetError(ResourceExhaustedError("out of memory"));
  EXPECT_FALSE(ParseStoredEvaluation(ToJson(e).dump(), "k").has_value());
  e.SetError(InvalidArgumentError("bits out of range"));
  auto stored = ParseStoredEvaluation(ToJson(e).dump(), "k");
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->error_code, StatusCode::kInvalidArgument);
  // Entries from before codes were stored: the code is read from the message.
  json old = ToJson(e);
  old.erase("error_code");
  old["error"] = "RESOURCE_EXHAUSTED: out of memory";
  EXPECT_FALSE(ParseStoredEvaluation(old.dump(), "k").has_value());
  old["error"] = "non-finite output";
  stored = ParseStoredEvaluation(old.dump(), "k");
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->error_code, StatusCode::kUnknown);
}

TEST(EvaluationTest, ImplausibleStoredNumbersAreTreatedAsMissing) {
  Evaluation good;
  good.key = "k";
  good.site = "s";
  good.noise_ratio = 1e-3;
  good.mse = 2e-4;
  good.sqnr_db = 30;
  good.cosine = 0.999;
  ASSERT_TRUE(ParseStoredEvaluation(ToJson(good).dump(), "k").has_value());
  std::vector<std::function<void(Evaluation&)>> damage = {
      [](Evaluation& e) { e.noise_ratio = -1e308; },  // once bought every site its cheapest mix
      [](Evaluation& e) { e.mse = -1; },
      [](Evaluation& e) { e.mae = -0.5; },
      [](Evaluation& e) { e.nuclear_error = -2; },
      [](Evaluation& e) { e.cosine = 7; },
      [](Evaluation& e) { e.seconds = -1; },
      [](Evaluation& e) { e.sqnr_db = 90; },  // disagrees with the noise ratio
      [](Evaluation& e) { e.site = ""; },
  };
  for (size_t i = 0; i < damage.size(); ++i) {
    Evaluation e = good;
    damage[i](e);
    EXPECT_FALSE(ParseStoredEvaluation(ToJson(e).dump(), "k").has_value()) << i;
  }
  // The nuclear sensitivity: written only when measured, read back, and what ranks by it needs.
  EXPECT_FALSE(ToJson(good).contains("nuclear_error"));
  EXPECT_FALSE(HasMetric(good, RankingMetric::kNuclear));
  EXPECT_TRUE(HasMetric(good, RankingMetric::kNoiseRatio));
  Evaluation with = good;
  with.nuclear_error = 12.5;
  auto back = ParseStoredEvaluation(ToJson(with).dump(), "k");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->nuclear_error, 12.5);
  EXPECT_TRUE(HasMetric(*back, RankingMetric::kNuclear));
  EXPECT_EQ(RankingLoss(*back, RankingMetric::kNuclear), 12.5);
  EXPECT_TRUE(std::isnan(RankingLoss(good, RankingMetric::kNuclear)));
  nlohmann::json nan_mse = ToJson(good);
  nan_mse["mse"] = nullptr;  // read back as infinity
  EXPECT_FALSE(ParseStoredEvaluation(nan_mse.dump(), "k").has_value());
}

}  // namespace
}  // namespace qs
