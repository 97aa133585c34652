#include "scheduler/search.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>

#include "scheduler/artifacts.h"
#include "storage/redis_store.h"
#include "storage/redis_testing.h"

namespace qs::scheduler {
namespace {

using nlohmann::json;

// A model of four linear sites and one matmul; a candidate's noise is 4^-bits scaled per site,
// so low bits hurt some sites far more than others. Validation top-1 falls with total noise.
struct FakeBackend {
  ModelFacts Prepare() {
    ++prepares;
    ModelFacts f;
    f.model_digest = "m1";
    f.calibration_digest = "c1";
    f.sites = Sites();
    f.fp32_top1 = 0.9;
    f.validation_images = 100;
    return f;
  }
  static std::vector<SiteInfo> Sites() {
    return {{"a", SiteKind::kLinear, 1000, 1000},
            {"b", SiteKind::kLinear, 4000, 4000},
            {"c", SiteKind::kLinear, 2000, 2000},
            {"d", SiteKind::kLinear, 1000, 1000},
            {"m", SiteKind::kMatmul, 0, 500}};
  }
  ValidationResult Validate(const Recipe& recipe) {
    ++validations;
    double noise = 0;
    for (const auto& [site, config] : recipe.sites) noise += Noise(site, config.weight.bits);
    ValidationResult v;
    v.top1 = 0.9 - top1_penalty * std::sqrt(noise);
    return v;
  }

  static double Noise(const std::string& site, int bits) {
    if (bits == 0) return 0;
    const double scale = site == "a" ? 50 : site == "b" ? 1 : site == "c" ? 5 : 20;
    return scale * std::pow(4.0, -bits);
  }

  std::atomic<int> prepares{0};
  std::atomic<int> validations{0};
  double top1_penalty = 0.05;
};

// Serves every task kind like a worker: evaluates with FakeBackend::Noise (`fail_bits` fail
// permanently; every evaluate task of `oom_site` fails with a transient error), validates with
// FakeBackend::Validate.
class FakeWorkers {
 public:
  FakeWorkers(storage::DocumentStore& store, storage::TaskQueue& queue, FakeBackend& backend,
              int fail_bits = -1, std::string oom_site = "")
      : store_(store),
        queue_(queue),
        backend_(backend),
        fail_bits_(fail_bits),
        oom_site_(std::move(oom_site)) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~FakeWorkers() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }
  std::atomic<int> evaluated{0};
  std::atomic<int> errors{0};

 private:
  void Loop() {
    while (!stop_) {
      auto t = queue_.Pop(std::chrono::milliseconds(20));
      if (!t.ok() || !t->has_value()) continue;
      const json payload = json::parse((*t)->payload);
      auto result = Serve(payload);
      // No ASSERT here: a failure inside a worker thread must not leave the task leased.
      Status s = result.ok() ? queue_.Complete(**t, *result) : queue_.Fail(**t, result.status());
      if (!s.ok()) ++errors;
    }
  }

  StatusOr<std::string> Serve(const json& payload) {
    const std::string kind = payload["kind"];
    if (kind == "prepare") return ToJson(backend_.Prepare()).dump();
    if (kind == "validate") {
      std::map<std::string, SiteKind> kinds;
      for (const auto& s : FakeBackend::Sites()) kinds[s.name] = s.kind;
      auto recipe = RecipeFromJson(payload["recipe"], kinds);
      if (!recipe.ok()) return recipe.status();
      return ToJson(backend_.Validate(*recipe)).dump();
    }
    if (kind != "evaluate") return InvalidArgumentError("unexpected task kind " + kind);
    const std::string site = payload["site"];
    if (site == oom_site_) return ResourceExhaustedError("synthetic out of memory");
    for (const auto& c : payload["candidates"]) {
      const std::string key = c["key"];
      // Skip what is stored, readable and complete enough, as real workers do.
      const bool mae = payload.value("measure_mae", false);
      auto have = store_.Get(key);
      if (have.ok() && have->has_value()) {
        auto stored = ParseStoredEvaluation(**have, key);
        if (stored && HasMetric(*stored, mae ? RankingMetric::kMae : RankingMetric::kMse)) {
          continue;
        }
      }
      Evaluation e;
      e.key = key;
      e.site = site;
      const int bits = c["config"].contains("weight") ? c["config"]["weight"]["bits"].get<int>() : 0;
      e.noise_ratio = FakeBackend::Noise(site, bits);
      e.mse = e.noise_ratio;
      if (mae) e.mae = e.noise_ratio / 2;
      e.sqnr_db = e.noise_ratio > 0 ? -10 * std::log10(e.noise_ratio) : INFINITY;
      if (bits == fail_bits_) e.SetError(InvalidArgumentError("synthetic failure"));
      if (!store_.Put(e.key, ToJson(e).dump()).ok()) ++errors;
      ++evaluated;
    }
    return std::string("{}");
  }

  storage::DocumentStore& store_;
  storage::TaskQueue& queue_;
  FakeBackend& backend_;
  const int fail_bits_;
  const std::string oom_site_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

JobSpec Spec(double avg_bits) {
  JobSpec spec;
  spec.space.weight_methods = {WeightMethod::kRtn, WeightMethod::kGptq};
  spec.space.weight_bits = {2, 3, 4, 6, 8};
  spec.space.activation_bits = {8};
  spec.budget = avg_bits;
  return spec;
}

StatusOr<SearchResult> RunJob(const JobSpec& spec, FakeBackend& backend,
                              storage::DocumentStore& store, int fail_bits = -1,
                              const SearchOptions& options = {}) {
  auto queue = storage::NewInProcessTaskQueue();
  auto jobs = storage::NewInMemoryDocumentStore();
  FakeWorkers workers(store, *queue, backend, fail_bits);
  auto r = RunSearch("job", spec, store, *jobs, *queue, options);
  if (workers.errors.load() != 0) ADD_FAILURE() << "fake workers hit store or queue errors";
  return r;
}

TEST(SearchTest, SelectsWithinBudgetAndSpendsBitsWhereTheyMatter) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  auto r = RunJob(Spec(4.0), backend, *store);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->goal_met);
  EXPECT_LE(r->avg_weight_bits, 4.0 + 1e-9);
  EXPECT_GT(r->avg_weight_bits, 3.5);
  EXPECT_EQ(r->evaluated_now, r->plan.candidate_count());
  EXPECT_EQ(r->from_cache, 0u);
  // Site "a" (50× noise) gets more bits than site "b" (1×).
  EXPECT_GT(r->recipe.sites.at("a").weight.bits, r->recipe.sites.at("b").weight.bits);
  // The front is monotone and the chosen point is the last within budget.
  for (size_t i = 1; i < r->pareto.size(); ++i) {
    EXPECT_GT(r->pareto[i].avg_weight_bits, r->pareto[i - 1].avg_weight_bits - 1e-12);
    EXPECT_LT(r->pareto[i].predicted_loss, r->pareto[i - 1].predicted_loss);
  }
  EXPECT_LE(r->pareto[r->chosen_point].cost_units, r->budget_units);
  if (r->chosen_point + 1 < r->pareto.size()) {
    EXPECT_GT(r->pareto[r->chosen_point + 1].cost_units, r->budget_units);
  }
  // Tiered validation: the optimum and its cheaper neighbour; the prediction held (the neighbour
  // measured worse), so the optimum stays.
  EXPECT_EQ(backend.validations, 2);
  EXPECT_EQ(r->validated_points(), 2u);
}

TEST(SearchTest, RefinementFollowsMeasuredQualityWhenItDisagrees) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  backend.top1_penalty = -0.05;  // measured top-1 now rises with noise: prediction is wrong
  JobSpec spec = Spec(4.0);
  spec.max_validations = 3;
  auto r = RunJob(spec, backend, *store);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(backend.validations, 3);  // kept walking while cheaper points measured better
  EXPECT_EQ(r->chosen_point + 2, [&] {
    size_t c = 0;
    for (size_t k = 0; k < r->pareto.size(); ++k) {
      if (r->pareto[k].cost_units <= r->budget_units) c = k;
    }
    return c;
  }());
  FakeBackend plain;
  plain.top1_penalty = -0.05;
  spec.refine_validation = false;
  auto off = RunJob(spec, plain, *store);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(plain.validations, 1);
}

TEST(SearchTest, DeterministicAndCachedAcrossBudgets) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend b1, b2, b3;
  auto first = RunJob(Spec(4.0), b1, *store);
  auto again = RunJob(Spec(4.0), b2, *store);
  ASSERT_TRUE(first.ok() && again.ok());
  EXPECT_EQ(again->evaluated_now, 0u);
  EXPECT_EQ(again->from_cache, first->plan.candidate_count());
  EXPECT_EQ(RecipeDocument(*first).dump(), RecipeDocument(*again).dump());
  auto other_budget = RunJob(Spec(3.0), b3, *store);
  ASSERT_TRUE(other_budget.ok());
  EXPECT_EQ(other_budget->evaluated_now, 0u);
  EXPECT_LE(other_budget->avg_weight_bits, 3.0 + 1e-9);
}

TEST(SearchTest, ResumesFromAPartiallyFilledStore) {
  auto full = storage::NewInMemoryDocumentStore();
  FakeBackend b1;
  auto complete = RunJob(Spec(4.0), b1, *full);
  ASSERT_TRUE(complete.ok());
  // A store holding every other evaluation, as a killed run would leave it.
  auto partial = storage::NewInMemoryDocumentStore();
  size_t kept = 0, i = 0;
  for (const auto& [key, e] : complete->evaluations) {
    if (i++ % 2 == 0) {
      ASSERT_TRUE(partial->Put(key, ToJson(e).dump()).ok());
      ++kept;
    }
  }
  FakeBackend b2;
  auto resumed = RunJob(Spec(4.0), b2, *partial);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(resumed->from_cache, kept);
  EXPECT_EQ(resumed->evaluated_now, complete->plan.candidate_count() - kept);
  EXPECT_EQ(RecipeDocument(*resumed).dump(), RecipeDocument(*complete).dump());
}

TEST(SearchTest, RankingByMaeMeasuresItWhereTheStoreLacksIt) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  auto plain = RunJob(Spec(4.0), backend, *store);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  for (const auto& [key, e] : plain->evaluations) EXPECT_FALSE(e.mae.has_value()) << key;
  JobSpec by_mae = Spec(4.0);
  by_mae.metric = RankingMetric::kMae;
  auto first = RunJob(by_mae, backend, *store);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->evaluated_now, first->plan.candidate_count());
  for (const auto& [key, e] : first->evaluations) EXPECT_TRUE(e.mae.has_value()) << key;
  auto again = RunJob(by_mae, backend, *store);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->evaluated_now, 0u);
  EXPECT_EQ(again->recipe.sites.at("a") == first->recipe.sites.at("a"), true);
}

TEST(SearchTest, DamagedCacheEntriesAreEvaluatedAgain) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend b1;
  auto first = RunJob(Spec(4.0), b1, *store);
  ASSERT_TRUE(first.ok());
  // Damage four entries four ways, the last with a noise ratio no measurement gives (it once
  // made every site's cheapest candidate look best).
  auto it = first->evaluations.begin();
  ASSERT_TRUE(store->Put((it++)->first, "{not json").ok());
  ASSERT_TRUE(store->Put((it++)->first, R"({"key": "x"})").ok());
  ASSERT_TRUE(store->Put((it++)->first, ToJson(first->evaluations.begin()->second).dump()).ok());
  Evaluation negative = it->second;
  negative.noise_ratio = -1e308;
  ASSERT_TRUE(store->Put(it->first, ToJson(negative).dump()).ok());
  FakeBackend b2;
  auto again = RunJob(Spec(4.0), b2, *store);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->evaluated_now, 4u);
  EXPECT_EQ(again->failed, 0u);
  EXPECT_EQ(RecipeDocument(*again).dump(), RecipeDocument(*first).dump());
}

TEST(SearchTest, FailedCandidatesAreExcludedNotFatal) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  auto r = RunJob(Spec(4.0), backend, *store, /*fail_bits=*/4);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->failed, 4u * 2u);  // four linear sites × two methods at 4 bits
  for (const auto& [site, config] : r->recipe.sites) EXPECT_NE(config.weight.bits, 4) << site;
}

TEST(SearchTest, InfeasibleBudgetReturnsTheCheapestMixFlagged) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  auto r = RunJob(Spec(1.0), backend, *store);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->goal_met);
  EXPECT_NE(r->goal_note.find("budget"), std::string::npos);
  EXPECT_NEAR(r->avg_weight_bits, 2.0, 1e-9);
}

TEST(SearchTest, MissedAccuracyGoalWalksTheFrontAndFlags) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  backend.top1_penalty = 1;  // every mix loses far more than allowed
  JobSpec spec = Spec(4.0);
  spec.max_abs_top1_drop = 0.001;
  spec.max_validations = 3;
  auto r = RunJob(spec, backend, *store);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->goal_met);
  EXPECT_EQ(backend.validations, 3);
  EXPECT_NE(r->goal_note.find("criterion"), std::string::npos);
  // The best validated point is the one returned.
  double best = -INFINITY;
  for (const auto& p : r->pareto) {
    if (p.validated) best = std::max(best, p.top1);
  }
  EXPECT_DOUBLE_EQ(r->validation.top1, best);
}

TEST(SearchTest, EveryCandidateOfASiteFailingIsAnError) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  JobSpec spec = Spec(4.0);
  spec.space.weight_bits = {4};
  auto r = RunJob(spec, backend, *store, /*fail_bits=*/4);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("synthetic failure"), std::string::npos);
}

TEST(SearchTest, TwoJobsWithDifferentCandidatesForOneSiteEachGetAll) {
  // Once, task ids named only the site: the second job's tasks were dropped as duplicates and it
  // waited for candidates nobody evaluated.
  auto store = storage::NewInMemoryDocumentStore();
  auto jobs = storage::NewInMemoryDocumentStore();
  auto queue = storage::NewInProcessTaskQueue();
  FakeBackend backend;
  FakeWorkers workers(*store, *queue, backend);
  JobSpec low = Spec(3.0), high = Spec(6.0);
  low.space.weight_bits = {2, 3, 4};
  high.space.weight_bits = {4, 6, 8};
  StatusOr<SearchResult> a = InternalError("not run"), b = InternalError("not run");
  SearchOptions options;
  options.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::thread ta([&] { a = RunSearch("low", low, *store, *jobs, *queue, options); });
  std::thread tb([&] { b = RunSearch("high", high, *store, *jobs, *queue, options); });
  ta.join();
  tb.join();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->failed + b->failed, 0u);
  EXPECT_EQ(a->evaluations.size(), a->plan.candidate_count());
  EXPECT_EQ(b->evaluations.size(), b->plan.candidate_count());
  for (const char* site : {"a", "b", "c", "d"}) {
    EXPECT_GE(b->recipe.sites.at(site).weight.bits, 4) << site;
    EXPECT_LE(a->recipe.sites.at(site).weight.bits, 4) << site;
  }
}

TEST(SearchTest, AStoppedJobResumesWithoutRedoingFinishedSteps) {
  auto store = storage::NewInMemoryDocumentStore();
  auto jobs = storage::NewInMemoryDocumentStore();
  JobSpec spec = Spec(4.0);
  FakeBackend reference_backend;
  auto reference = RunJob(spec, reference_backend, *storage::NewInMemoryDocumentStore());
  ASSERT_TRUE(reference.ok());

  // The first scheduler stops once the first validation is done (as if it were killed).
  FakeBackend first_backend;
  {
    auto queue = storage::NewInProcessTaskQueue();
    FakeWorkers workers(*store, *queue, first_backend);
    SearchOptions options;
    options.cancelled = [&] { return first_backend.validations.load() >= 1; };
    auto stopped = RunSearch("job", spec, *store, *jobs, *queue, options);
    ASSERT_EQ(stopped.status().code(), StatusCode::kCancelled) << stopped.status().ToString();
  }
  ASSERT_EQ(first_backend.prepares.load(), 1);
  ASSERT_EQ(first_backend.validations.load(), 1);
  auto saved = jobs->Get("job");
  ASSERT_TRUE(saved.ok() && saved->has_value());
  auto state = JobStateFromJson(json::parse(**saved));
  ASSERT_TRUE(state.ok()) << state.status().ToString();
  EXPECT_TRUE(state->prepared);
  EXPECT_TRUE(state->evaluated);
  EXPECT_EQ(state->validated.size(), 1u);

  // A second scheduler on the same state: no preparation, no evaluation, one validation left.
  FakeBackend second_backend;
  auto queue = storage::NewInProcessTaskQueue();
  FakeWorkers workers(*store, *queue, second_backend);
  auto resumed = RunSearch("job", spec, *store, *jobs, *queue);
  ASSERT_TRUE(resumed.ok()) << resumed.status().ToString();
  EXPECT_EQ(second_backend.prepares.load(), 0);
  EXPECT_EQ(workers.evaluated.load(), 0);
  EXPECT_EQ(second_backend.validations.load(), 1);
  EXPECT_EQ(resumed->validated_points(), 2u);
  EXPECT_EQ(RecipeDocument(*resumed).dump(), RecipeDocument(*reference).dump());
  EXPECT_EQ(resumed->from_cache, resumed->plan.candidate_count());  // counted by this run
  EXPECT_EQ(resumed->evaluated_now, 0u);
}

TEST(SearchTest, TransientTaskFailuresAreRetriedThenFailedButNeverCached) {
  auto store = storage::NewInMemoryDocumentStore();
  auto jobs = storage::NewInMemoryDocumentStore();
  JobSpec spec = Spec(4.0);
  FakeBackend backend;
  {
    auto queue = storage::NewInProcessTaskQueue();
    FakeWorkers workers(*store, *queue, backend, -1, /*oom_site=*/"c");
    auto r = RunSearch("job", spec, *store, *jobs, *queue);
    ASSERT_EQ(r.status().code(), StatusCode::kFailedPrecondition) << r.status().ToString();
    EXPECT_NE(r.status().message().find("every candidate of site c"), std::string::npos);
    EXPECT_NE(r.status().message().find("RESOURCE_EXHAUSTED"), std::string::npos);
    EXPECT_NE(r.status().message().find("3 attempt(s)"), std::string::npos);
  }
  // Nothing of site c was stored: a later job evaluates it.
  FakeBackend healthy;
  auto again = RunJob(spec, healthy, *store);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->failed, 0u);
  size_t c_candidates = 0;
  for (const auto& site : again->plan.sites) c_candidates += site.site.name == "c" ? site.candidates.size() : 0;
  EXPECT_EQ(again->evaluated_now, c_candidates);
}

TEST(SearchTest, NoWorkersMeansTheDeadlineEndsTheJob) {
  auto store = storage::NewInMemoryDocumentStore();
  auto jobs = storage::NewInMemoryDocumentStore();
  auto queue = storage::NewInProcessTaskQueue();
  SearchOptions options;
  options.poll = std::chrono::milliseconds(10);
  options.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
  const auto start = std::chrono::steady_clock::now();
  auto r = RunSearch("job", Spec(4.0), *store, *jobs, *queue, options);
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // Its queued task was cancelled with it: a worker arriving late finds nothing to do.
  EXPECT_TRUE(*queue->Cancelled("job"));
  EXPECT_FALSE(queue->Pop(std::chrono::milliseconds(10))->has_value());
}

TEST(SearchTest, PrefetchedValidationsGiveTheSameResultAndNoExtraValidation) {
  FakeBackend b1, b2;
  auto plain = RunJob(Spec(4.0), b1, *storage::NewInMemoryDocumentStore());
  SearchOptions options;
  options.prefetch_validation = true;
  auto prefetched = RunJob(Spec(4.0), b2, *storage::NewInMemoryDocumentStore(), -1, options);
  ASSERT_TRUE(plain.ok() && prefetched.ok());
  EXPECT_EQ(RecipeDocument(*prefetched).dump(), RecipeDocument(*plain).dump());
  EXPECT_EQ(b2.validations.load(), b1.validations.load());
  EXPECT_EQ(b2.validations.load(), 2);
}

TEST(SearchTest, ABoundedDispatchWindowGivesTheSameResult) {
  FakeBackend b1, b2;
  auto all_at_once = RunJob(Spec(4.0), b1, *storage::NewInMemoryDocumentStore());
  SearchOptions options;
  options.dispatch_window = 1;
  auto windowed = RunJob(Spec(4.0), b2, *storage::NewInMemoryDocumentStore(), -1, options);
  ASSERT_TRUE(all_at_once.ok() && windowed.ok());
  EXPECT_EQ(RecipeDocument(*windowed).dump(), RecipeDocument(*all_at_once).dump());
}

TEST(SearchTest, OverRedisTheSameJobGivesTheSameRecipeAndResumes) {
  storage::testing::RedisServer server;
  ASSERT_TRUE(server.Start());
  auto redis = storage::RedisClient::Connect(server.address());
  ASSERT_TRUE(redis.ok()) << redis.status().ToString();
  std::shared_ptr<storage::RedisClient> client = std::move(*redis);
  auto evaluations = storage::NewRedisDocumentStore(client, "qs:v1:eval:");
  auto jobs = storage::NewRedisDocumentStore(client, "qs:v1:jobstate:");
  auto queue = storage::NewRedisTaskQueue(client);
  ASSERT_TRUE(queue.ok()) << queue.status().ToString();
  FakeBackend local_backend, redis_backend;
  auto local = RunJob(Spec(4.0), local_backend, *storage::NewInMemoryDocumentStore());
  ASSERT_TRUE(local.ok());
  {
    FakeWorkers workers(*evaluations, **queue, redis_backend);
    auto remote = RunSearch("job", Spec(4.0), *evaluations, *jobs, **queue);
    ASSERT_TRUE(remote.ok()) << remote.status().ToString();
    EXPECT_EQ(RecipeDocument(*remote).dump(), RecipeDocument(*local).dump());
    EXPECT_EQ(remote->evaluated_now, remote->plan.candidate_count());
  }
  // The saved state lets a second scheduler finish the job without a single task.
  auto again = RunSearch("job", Spec(4.0), *evaluations, *jobs, **queue);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->from_cache, again->plan.candidate_count());
  EXPECT_EQ(RecipeDocument(*again).dump(), RecipeDocument(*local).dump());
}

TEST(ArtifactsTest, DocumentsCarryWhatUsersNeed) {
  auto store = storage::NewInMemoryDocumentStore();
  FakeBackend backend;
  auto r = RunJob(Spec(4.0), backend, *store);
  ASSERT_TRUE(r.ok());
  auto recipe = RecipeDocument(*r);
  EXPECT_EQ(recipe["format"], kRecipeFormat);
  EXPECT_EQ(recipe["sites"].size(), 5u);
  EXPECT_TRUE(recipe["search"]["sites"]["a"].contains("runner_up"));
  EXPECT_FALSE(recipe["search"]["sites"]["a"]["why"].get<std::string>().empty());
  // The recipe parses back as a recipe.
  std::map<std::string, SiteKind> kinds;
  for (const auto& s : r->plan.sites) kinds[s.site.name] = s.site.kind;
  auto back = RecipeFromJson(recipe, kinds);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->sites.at("a") == r->recipe.sites.at("a"));
  auto metrics = MetricsDocument(Spec(4.0), *r, 0.25, 1.0);
  for (const char* key : {"fp32_top1", "quant_top1", "avg_weight_bits", "evaluations", "goal_met"}) {
    EXPECT_TRUE(metrics.contains(key)) << key;
  }
  for (const char* key : {"prepare", "evaluate", "select", "validate", "artifacts", "wall",
                          "fp32_calibration_pass", "fp32_validation_pass"}) {
    EXPECT_TRUE(metrics["seconds"].contains(key)) << key;
  }
  EXPECT_EQ(metrics["seconds"]["artifacts"], 0.25);
  EXPECT_EQ(metrics["seconds"]["wall"], 1.0);
  EXPECT_GE(metrics["seconds"]["evaluate"].get<double>(), 0.0);
  // The fake backend measures no reference pass, so there is no ratio to report.
  EXPECT_TRUE(metrics["relative"]["evaluate_in_fp32_calibration_passes"].is_null());
  auto pareto = ParetoDocument(Spec(4.0), *r);
  EXPECT_EQ(pareto["points"].size(), r->pareto.size());
  const std::string html = ReportHtml(Spec(4.0), *r);
  EXPECT_NE(html.find("id=\"heatmap\""), std::string::npos);
  EXPECT_NE(html.find("chosen-point"), std::string::npos);
  EXPECT_NE(html.find("id=\"accuracy\""), std::string::npos);
}

}  // namespace
}  // namespace qs::scheduler
