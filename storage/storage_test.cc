#include <gtest/gtest.h>

#include <filesystem>
#include <atomic>
#include <thread>

#include "storage/document_store.h"
#include "storage/contract_testing.h"
#include "storage/task_queue.h"

namespace qs::storage {
namespace {

using std::chrono::milliseconds;

using contract::ExerciseStore;

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
