#include "scheduler/job_manager.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "storage/redis_store.h"
#include "storage/redis_testing.h"

namespace qs::scheduler {
namespace {

using nlohmann::json;

json Spec(double budget) {
  return {{"model", {{"config", "/models/m/config.json"}, {"weights", "/models/m/w.safetensors"}}},
          {"objective", {{"avg_weight_bits", budget}}}};
}

// A manager without runners: jobs stay where the calls put them.
class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start());
    auto redis = storage::RedisClient::Connect(server_.address());
    ASSERT_TRUE(redis.ok());
    redis_ = std::move(*redis);
    evaluations_ = storage::NewRedisDocumentStore(redis_, "qs:v1:eval:");
    states_ = storage::NewRedisDocumentStore(redis_, "qs:v1:jobstate:");
    auto queue = storage::NewRedisTaskQueue(redis_);
    ASSERT_TRUE(queue.ok());
    queue_ = std::move(*queue);
    blob_dir_ = std::filesystem::temp_directory_path() / ("qs_jm_blobs_" + std::to_string(getpid()));
    auto blobs = storage::BlobStore::Open(blob_dir_.string());
    ASSERT_TRUE(blobs.ok());
    blobs_ = std::move(*blobs);
    jobs_ = std::make_unique<JobManager>(redis_, *evaluations_, *states_, *queue_, *blobs_);
  }
  void TearDown() override { std::filesystem::remove_all(blob_dir_); }

  storage::testing::RedisServer server_{/*aof=*/false};
  std::shared_ptr<storage::RedisClient> redis_;
  std::unique_ptr<storage::DocumentStore> evaluations_, states_;
  std::unique_ptr<storage::TaskQueue> queue_;
  std::filesystem::path blob_dir_;
  std::unique_ptr<storage::BlobStore> blobs_;
  std::unique_ptr<JobManager> jobs_;
};

TEST_F(JobManagerTest, CreateIsIdempotentByRequestIdAndChecksTheSpec) {
  auto a = jobs_->Create(Spec(4), "req-1");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->phase, JobPhase::kQueued);
  auto again = jobs_->Create(Spec(4), "req-1");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, a->id);
  EXPECT_EQ(jobs_->Create(Spec(3), "req-1").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(jobs_->Create(Spec(4), "bad id!").status().code(), StatusCode::kInvalidArgument);
  json bad = Spec(4);
  bad["search"] = {{"weight_bits", {4, 12}}};
  auto invalid = jobs_->Create(bad, "");
  EXPECT_EQ(invalid.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(invalid.status().message().find("weight_bits"), std::string::npos);
  json blob = Spec(4);
  blob["model"]["weights"] = "blob:sha256:" + std::string(64, 'a');
  EXPECT_EQ(jobs_->Create(blob, "").status().code(), StatusCode::kNotFound);
  // The service's budget: more work than one job may queue is RESOURCE_EXHAUSTED, named.
  json greedy = Spec(4);
  greedy["calibration"] = {{"count", 1000000}};
  auto refused = jobs_->Create(greedy, "");
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("calibration.count"), std::string::npos);
  json many = Spec(4);
  many["search"] = {{"skip", json::array()}};
  for (int i = 0; i < 10001; ++i) many["search"]["skip"].push_back("blocks." + std::to_string(i));
  EXPECT_EQ(jobs_->Create(many, "").status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(jobs_->Get("nothere").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(jobs_->Get("../x").status().code(), StatusCode::kNotFound);
}

TEST_F(JobManagerTest, ActiveJobsAreBoundedAndEndedOnesFreeTheirPlace) {
  JobManagerOptions options;
  options.max_active_jobs = 2;
  JobManager bounded(redis_, *evaluations_, *states_, *queue_, *blobs_, options);
  auto a = bounded.Create(Spec(4), "");
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(bounded.Create(Spec(5), "").ok());
  auto refused = bounded.Create(Spec(6), "");
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("2 jobs are queued or running"), std::string::npos)
      << refused.status().message();
  ASSERT_TRUE(bounded.Cancel(a->id).ok());
  EXPECT_TRUE(bounded.Create(Spec(6), "").ok());
}

TEST_F(JobManagerTest, ListPagesNewestFirstAndFiltersByState) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto j = jobs_->Create(Spec(2 + i), "");
    ASSERT_TRUE(j.ok());
    ids.push_back(j->id);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // distinct creation times
  }
  ASSERT_TRUE(jobs_->Cancel(ids[1]).ok());
  auto first = jobs_->List(2, "", std::nullopt);
  ASSERT_TRUE(first.ok());
  ASSERT_EQ(first->jobs.size(), 2u);
  EXPECT_EQ(first->jobs[0].id, ids[4]);
  EXPECT_EQ(first->jobs[1].id, ids[3]);
  auto rest = jobs_->List(10, first->next_page_token, std::nullopt);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->jobs.size(), 3u);
  EXPECT_EQ(rest->jobs[2].id, ids[0]);
  EXPECT_TRUE(rest->next_page_token.empty());
  auto cancelled = jobs_->List(10, "", JobPhase::kCancelled);
  ASSERT_TRUE(cancelled.ok());
  ASSERT_EQ(cancelled->jobs.size(), 1u);
  EXPECT_EQ(cancelled->jobs[0].id, ids[1]);
  EXPECT_EQ(jobs_->List(5000, "", std::nullopt).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(jobs_->List(5, "x1", std::nullopt).status().code(), StatusCode::kInvalidArgument);
  const auto counts = jobs_->Counts();
  EXPECT_EQ(counts.at(JobPhase::kQueued), 4);
}

TEST_F(JobManagerTest, CancelEndsAQueuedJobOnceAndEventsResumeBySequence) {
  auto j = jobs_->Create(Spec(4), "");
  ASSERT_TRUE(j.ok());
  auto cancelled = jobs_->Cancel(j->id);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->phase, JobPhase::kCancelled);
  EXPECT_EQ(jobs_->Cancel(j->id).status().code(), StatusCode::kFailedPrecondition);
  auto events = jobs_->Events(j->id, 0, std::chrono::milliseconds(10));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);  // created, cancelled
  EXPECT_EQ((*events)[0].job.phase, JobPhase::kQueued);
  EXPECT_EQ((*events)[1].job.phase, JobPhase::kCancelled);
  auto after = jobs_->Events(j->id, (*events)[0].seq, std::chrono::milliseconds(10));
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 1u);
  EXPECT_EQ((*after)[0].seq, (*events)[1].seq);
  auto none = jobs_->Events(j->id, (*events)[1].seq, std::chrono::milliseconds(10));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  // Its queue side is cancelled too: a late task of it is never delivered.
  EXPECT_TRUE(*queue_->Cancelled(j->id));
}

}  // namespace
}  // namespace qs::scheduler
