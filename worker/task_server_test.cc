#include "worker/task_server.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "common/file_util.h"
#include "common/tasks.h"
#include "core/safetensors.h"
#include "core/test_models.h"
#include "worker/session_testing.h"
#include "storage/redis_testing.h"

namespace qs::worker {
namespace {

using nlohmann::json;

// A tiny random model with random calibration and validation images, written once.
class TaskServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::WriteTinySessionFiles("qs_task_server_test"));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static JobSpec Spec() { return testing::TinySessionSpec(*dir_); }

  static std::string* dir_;
};

std::string* TaskServerTest::dir_ = nullptr;

TEST_F(TaskServerTest, ServesEveryKindFromOneSessionAndStoresOnlyWhatLasts) {
  SessionCache sessions;
  auto store = storage::NewInMemoryDocumentStore();
  const JobSpec spec = Spec();
  auto facts_text = DoTask(sessions, *store, PrepareRequest(spec).dump());
  ASSERT_TRUE(facts_text.ok()) << facts_text.status().ToString();
  auto facts = ModelFactsFromJson(json::parse(*facts_text));
  ASSERT_TRUE(facts.ok());
  EXPECT_FALSE(facts->sites.empty());
  EXPECT_EQ(facts->calibration_images, 24);

  // One site: a valid candidate and one whose config cannot be read (a permanent failure).
  SitePlan site;
  site.site = facts->sites[1];
  ASSERT_EQ(site.site.kind, SiteKind::kLinear) << site.site.name;
  Candidate good{site.site.name, SiteKind::kLinear, {}};
  good.config.weight.bits = 4;
  site.candidates = {good};
  json payload = EvaluateRequest(spec, site, {"goodkey"}, {0}, false);
  payload["candidates"].push_back({{"key", "badkey"}, {"config", {{"weight", {{"bits", 99}}}}}});
  auto evaluated = DoTask(sessions, *store, payload.dump());
  ASSERT_TRUE(evaluated.ok()) << evaluated.status().ToString();
  auto good_e = ParseStoredEvaluation(**store->Get("goodkey"), "goodkey");
  ASSERT_TRUE(good_e && good_e->ok());
  EXPECT_GT(good_e->sqnr_db, 0);
  auto bad_e = ParseStoredEvaluation(**store->Get("badkey"), "badkey");
  ASSERT_TRUE(bad_e);
  EXPECT_EQ(bad_e->error_code, StatusCode::kInvalidArgument);

  // A second job over the same model and data with another search space shares the session.
  JobSpec other = spec;
  other.space.weight_bits = {3};
  ASSERT_TRUE(DoTask(sessions, *store, PrepareRequest(other).dump()).ok());
  Recipe recipe;
  recipe.linear_default.weight.bits = 8;
  auto validated =
      DoTask(sessions, *store, RecipeRequest(TaskKind::kValidate, other, recipe, facts->sites).dump());
  ASSERT_TRUE(validated.ok()) << validated.status().ToString();
  auto v = ValidationResultFromJson(json::parse(*validated));
  ASSERT_TRUE(v.ok());
  EXPECT_GE(v->top1, 0.0);
  const std::string weights = *dir_ + "/w8.safetensors";
  ASSERT_TRUE(DoTask(sessions, *store,
                     RecipeRequest(TaskKind::kWriteWeights, other, recipe, facts->sites, weights).dump())
                  .ok());
  EXPECT_TRUE(std::filesystem::exists(weights));
  EXPECT_EQ(sessions.opened(), 1);
}

TEST_F(TaskServerTest, BadTasksFailWithCodesThatSayWhetherToRetry) {
  SessionCache sessions;
  auto store = storage::NewInMemoryDocumentStore();
  EXPECT_EQ(DoTask(sessions, *store, "{oops").status().code(), StatusCode::kInvalidArgument);
  SitePlan nowhere;
  nowhere.site = {"blocks.99.mlp.fc1", SiteKind::kLinear, 4, 4};
  nowhere.candidates = {{nowhere.site.name, SiteKind::kLinear, {}}};
  auto missing_site = DoTask(sessions, *store, EvaluateRequest(Spec(), nowhere, {"k"}, {0}, false).dump());
  EXPECT_EQ(missing_site.status().code(), StatusCode::kNotFound);
  JobSpec no_model = Spec();
  no_model.model_weights = *dir_ + "/absent.safetensors";
  auto unloadable = DoTask(sessions, *store, PrepareRequest(no_model).dump());
  ASSERT_FALSE(unloadable.ok());
  EXPECT_FALSE(IsTransient(unloadable.status().code())) << unloadable.status().ToString();
  EXPECT_FALSE(store->Get("k")->has_value());
}

TEST_F(TaskServerTest, ServeTasksRecordsOutcomesOnTheQueue) {
  SessionCache sessions;
  auto store = storage::NewInMemoryDocumentStore();
  auto queue = storage::NewInProcessTaskQueue();
  const json prepare = PrepareRequest(Spec());
  ASSERT_TRUE(queue->Push({"j", TaskIdFor(prepare), prepare.dump()}).ok());
  ASSERT_TRUE(queue->Push({"j", "broken", "{}"}).ok());
  std::atomic<bool> stop{false};
  std::thread worker([&] { ServeTasks(sessions, *store, *queue, stop); });
  const auto start = std::chrono::steady_clock::now();
  while (queue->Outcomes("j")->size() < 2 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(60)) {
    queue->WaitForOutcome("j", std::chrono::milliseconds(100));
  }
  stop = true;
  worker.join();
  auto outcomes = queue->Outcomes("j");
  ASSERT_EQ(outcomes->size(), 2u);
  EXPECT_EQ(outcomes->at(TaskIdFor(prepare)).state, storage::TaskState::kDone);
  const auto& broken = outcomes->at("broken");
  EXPECT_EQ(broken.state, storage::TaskState::kDead);
  EXPECT_EQ(broken.attempts, 1);  // permanent: not retried
  EXPECT_EQ(broken.error.code(), StatusCode::kInvalidArgument);
}

TEST_F(TaskServerTest, ATaskInHandIsHandedBackAtOnceWhenTheWorkerShutsDown) {
  SessionCache sessions;
  auto store = storage::NewInMemoryDocumentStore();
  storage::QueueOptions queue_options;
  queue_options.lease = std::chrono::minutes(10);  // handing back must not wait for it
  auto queue = storage::NewInProcessTaskQueue(queue_options);
  const json prepare = PrepareRequest(Spec());
  ASSERT_TRUE(queue->Push({"j", TaskIdFor(prepare), prepare.dump()}).ok());
  std::atomic<bool> stop{false}, hand_back{false};
  std::atomic<int> handed_back{0}, recorded{0};
  ServeOptions options;
  options.hand_back = &hand_back;
  // The shutdown comes while the task is in hand; the keeper hands it back before it ends.
  options.on_start = [&](const storage::Task&) {
    hand_back = true;
    const auto start = std::chrono::steady_clock::now();
    while (handed_back == 0 && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  options.on_hand_back = [&](const storage::Task& task, const Status& released) {
    EXPECT_TRUE(released.ok()) << released.ToString();
    EXPECT_EQ(task.id, TaskIdFor(prepare));
    ++handed_back;
  };
  options.on_task = [&](const storage::Task&, const Status&, double) { ++recorded; };
  std::thread worker([&] { ServeTasks(sessions, *store, *queue, stop, options); });
  worker.join();  // ends by itself: its task was handed back
  EXPECT_EQ(handed_back.load(), 1);
  EXPECT_EQ(recorded.load(), 0);
  EXPECT_TRUE(queue->Outcomes("j")->empty());  // nothing recorded for it
  // Another worker gets it at once, as the same attempt, and finishes it.
  auto again = queue->Pop(std::chrono::milliseconds(100));
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->attempt, 0);
  ASSERT_TRUE(queue->Complete(**again, "facts").ok());
  EXPECT_EQ(queue->Outcomes("j")->at(TaskIdFor(prepare)).attempts, 1);
}

TEST_F(TaskServerTest, ASecondSessionRestoresTheCheckpointsAndMeasuresTheSame) {
  storage::testing::RedisServer server(/*aof=*/false);
  ASSERT_TRUE(server.Start());
  auto redis = storage::RedisClient::Connect(server.address());
  ASSERT_TRUE(redis.ok());
  storage::ChunkedCache cache(std::move(*redis), "qs:v1:act:", std::chrono::seconds(600));
  int hits = 0, misses = 0;
  int64_t written = 0;
  SessionOptions options;
  options.checkpoint_cache = &cache;
  options.on_checkpoint_lookup = [&](bool hit, int64_t) { (hit ? hits : misses)++; };
  options.on_checkpoint_store = [&](int64_t bytes) { written += bytes; };
  auto first = ModelSession::Open(Spec(), options);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(misses, 1);
  EXPECT_GT(written, 0);
  auto second = ModelSession::Open(Spec(), options);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(hits, 1);
  EXPECT_EQ((*second)->fp32_calibration_seconds(), (*first)->fp32_calibration_seconds());
  // The restored checkpoints give bit-identical evaluations.
  const std::string site = (*first)->sites()[1].name;
  QuantConfig w4;
  w4.weight.bits = 4;
  w4.activation.bits = 8;
  auto a = (*first)->EvaluateTask(site, {{w4, "k"}}, {});
  auto b = (*second)->EvaluateTask(site, {{w4, "k"}}, {});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)[0].mse, (*b)[0].mse);
  EXPECT_EQ((*a)[0].noise_ratio, (*b)[0].noise_ratio);
  EXPECT_EQ((*a)[0].cosine, (*b)[0].cosine);
  EXPECT_GT((*a)[0].mse, 0);
}

TEST_F(TaskServerTest, ACheckpointOfAnotherShapeInTheCacheIsAMiss) {
  storage::testing::RedisServer server(/*aof=*/false);
  ASSERT_TRUE(server.Start());
  auto redis = storage::RedisClient::Connect(server.address());
  ASSERT_TRUE(redis.ok());
  std::shared_ptr<storage::RedisClient> client = std::move(*redis);
  storage::ChunkedCache cache(client, "qs:v1:act:", std::chrono::seconds(600));
  int hits = 0, misses = 0;
  SessionOptions options;
  options.checkpoint_cache = &cache;
  options.on_checkpoint_lookup = [&](bool hit, int64_t) { (hit ? hits : misses)++; };
  ASSERT_TRUE(ModelSession::Open(Spec(), options).ok());
  // Rewrite segment 1's entry with the same bytes but a transposed shape: the byte count still
  // agrees, which once was all that was checked.
  auto keys = client->Command({"KEYS", "qs:v1:act:ckpt:*:1:meta"});
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->elements.size(), 1u);
  const std::string meta = keys->elements[0].str;
  const std::string name = meta.substr(std::string("qs:v1:act:").size(),
                                       meta.size() - std::string("qs:v1:act:").size() - 5);
  auto entry = cache.Get(name);
  ASSERT_TRUE(entry.ok() && entry->has_value());
  auto shape = (*entry)->meta["shape"];
  const auto a = shape.find(','), b = shape.find(',', a + 1);
  (*entry)->meta["shape"] = shape.substr(0, a) + shape.substr(b) + shape.substr(a, b - a);
  ASSERT_NE((*entry)->meta["shape"], shape);
  ASSERT_TRUE(cache.Put(name, (*entry)->bytes, (*entry)->meta).ok());
  ASSERT_TRUE(ModelSession::Open(Spec(), options).ok());
  EXPECT_EQ(hits, 0);
  EXPECT_EQ(misses, 2);
}

TEST(CheckpointCodecTest, DecodesWhatItEncodesAndNothingElse) {
  const torch::Tensor t = torch::arange(24, torch::kFloat32).reshape({2, 3, 4});
  const CachedCheckpoint entry = EncodeCheckpoint(t, 1.5);
  auto back = DecodeCheckpoint(entry, torch::kFloat32, {2, 3, 4});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(torch::equal(back->first, t));
  EXPECT_EQ(back->second, 1.5);
  EXPECT_EQ(DecodeCheckpoint(entry, torch::kFloat16, {2, 3, 4}).status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(DecodeCheckpoint(entry, torch::kFloat32, {2, 4, 3}).status().code(),
            StatusCode::kDataLoss);
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"seconds", "nan"}, {"seconds", "-1"}, {"seconds", "1x"}, {"shape", "2,3,-4"},
           {"shape", "9223372036854775807,2,3"}, {"dtype", "int8"}}) {
    CachedCheckpoint bad = entry;
    bad.fields[key] = value;
    EXPECT_EQ(DecodeCheckpoint(bad, torch::kFloat32, {2, 3, 4}).status().code(),
              StatusCode::kDataLoss)
        << key << "=" << value;
  }
  CachedCheckpoint short_bytes = entry;
  short_bytes.bytes.pop_back();
  EXPECT_EQ(DecodeCheckpoint(short_bytes, torch::kFloat32, {2, 3, 4}).status().code(),
            StatusCode::kDataLoss);
}

}  // namespace
}  // namespace qs::worker
