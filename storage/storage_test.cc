#include <gtest/gtest.h>

#include <filesystem>
#include <atomic>
#include <thread>

#include "storage/document_store.h"
#include "storage/queue_contract.h"
#include "storage/task_queue.h"

namespace qs::storage {
namespace {

using std::chrono::milliseconds;

void ExerciseStore(DocumentStore& store) {
  auto missing = store.Get("abc123");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(store.Put("abc123", R"({"x":1})").ok());
  auto got = store.Get("abc123");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ(**got, R"({"x":1})");
  ASSERT_TRUE(store.Put("abc123", "second").ok());
  EXPECT_EQ(**store.Get("abc123"), "second");
  ASSERT_TRUE(store.Put("gone", "x").ok());
  ASSERT_TRUE(store.Delete("gone").ok());
  EXPECT_FALSE(store.Get("gone")->has_value());
  EXPECT_TRUE(store.Delete("never-there").ok());
  for (const char* bad : {"", "../etc/passwd", "a/b", "a b", "ä"}) {
    EXPECT_EQ(store.Put(bad, "x").code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Get(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(DocumentStoreTest, InMemory) {
  auto store = NewInMemoryDocumentStore();
  ExerciseStore(*store);
}

TEST(DocumentStoreTest, DirectorySurvivesReopening) {
  auto dir = std::filesystem::temp_directory_path() / "qs_store_test";
  std::filesystem::remove_all(dir);
  {
    auto store = OpenDirectoryDocumentStore(dir.string());
    ASSERT_TRUE(store.ok());
    ExerciseStore(**store);
  }
  auto again = OpenDirectoryDocumentStore(dir.string());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(**(*again)->Get("abc123"), "second");
  std::filesystem::remove_all(dir);
}

std::unique_ptr<TaskQueue> MakeInProcess(const QueueOptions& options) {
  return NewInProcessTaskQueue(options);
}

TEST(InProcessTaskQueueTest, PushIsIdempotentAndOutcomesArePerJob) {
  contract::PushIsIdempotentAndOutcomesArePerJob(MakeInProcess);
}
TEST(InProcessTaskQueueTest, TransientFailuresRetryPermanentOnesDieAtOnce) {
  contract::TransientFailuresRetryPermanentOnesDieAtOnce(MakeInProcess);
}
TEST(InProcessTaskQueueTest, ExpiredLeasesAreTakenOverAndHeartbeatsKeepThem) {
  contract::ExpiredLeasesAreTakenOverAndHeartbeatsKeepThem(MakeInProcess);
}
TEST(InProcessTaskQueueTest, LeasesLostOnEveryAttemptEndDead) {
  contract::LeasesLostOnEveryAttemptEndDead(MakeInProcess);
}
TEST(InProcessTaskQueueTest, CancelDropsTheJobsQueuedTasksOnly) {
  contract::CancelDropsTheJobsQueuedTasksOnly(MakeInProcess);
}
TEST(InProcessTaskQueueTest, WaitForOutcomeWakesOnCompletion) {
  contract::WaitForOutcomeWakesOnCompletion(MakeInProcess);
}
TEST(InProcessTaskQueueTest, WorkersShareTasksAndEachRunsOnce) {
  contract::WorkersShareTasksAndEachRunsOnce(MakeInProcess);
}

}  // namespace
}  // namespace qs::storage
