#include <gtest/gtest.h>

#include <filesystem>
#include <atomic>
#include <thread>

#include "storage/evaluation_store.h"
#include "storage/task_queue.h"

namespace qs::storage {
namespace {

using std::chrono::milliseconds;

void ExerciseStore(EvaluationStore& store) {
  auto missing = store.Get("abc123");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(store.Put("abc123", R"({"x":1})").ok());
  auto got = store.Get("abc123");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ(**got, R"({"x":1})");
  ASSERT_TRUE(store.Put("abc123", "second").ok());
  EXPECT_EQ(**store.Get("abc123"), "second");
  for (const char* bad : {"", "../etc/passwd", "a/b", "a b", "ä"}) {
    EXPECT_EQ(store.Put(bad, "x").code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Get(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(EvaluationStoreTest, InMemory) {
  auto store = NewInMemoryEvaluationStore();
  ExerciseStore(*store);
}

TEST(EvaluationStoreTest, DirectorySurvivesReopening) {
  auto dir = std::filesystem::temp_directory_path() / "qs_store_test";
  std::filesystem::remove_all(dir);
  {
    auto store = OpenDirectoryEvaluationStore(dir.string());
    ASSERT_TRUE(store.ok());
    ExerciseStore(**store);
  }
  auto again = OpenDirectoryEvaluationStore(dir.string());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(**(*again)->Get("abc123"), "second");
  std::filesystem::remove_all(dir);
}

TEST(TaskQueueTest, DeliversLeasesRetriesAndDeadLetters) {
  auto q = NewInProcessTaskQueue(/*max_attempts=*/2);
  ASSERT_TRUE(q->Push({"a", "1"}).ok());
  ASSERT_TRUE(q->Push({"b", "2"}).ok());
  EXPECT_EQ(q->Push({"a", "dup"}).code(), StatusCode::kAlreadyExists);
  auto a = q->Pop(milliseconds(10));
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->id, "a");
  ASSERT_TRUE(q->Ack("a").ok());
  EXPECT_EQ(q->Ack("a").code(), StatusCode::kNotFound);
  auto b = q->Pop(milliseconds(10));
  ASSERT_TRUE(b->has_value());
  ASSERT_TRUE(q->Nack("b").ok());  // attempt 1: requeued
  b = q->Pop(milliseconds(10));
  ASSERT_TRUE(b->has_value());
  EXPECT_EQ((*b)->attempt, 1);
  ASSERT_TRUE(q->Nack("b").ok());  // attempt 2: dead
  EXPECT_FALSE(q->Pop(milliseconds(10))->has_value());
  ASSERT_EQ(q->DeadLetters().size(), 1u);
  EXPECT_EQ(q->DeadLetters()[0].id, "b");
  q->WaitIdle();  // nothing queued or leased: returns at once
  EXPECT_TRUE(q->WaitIdleFor(milliseconds(0)));
  ASSERT_TRUE(q->Push({"c", ""}).ok());
  EXPECT_FALSE(q->WaitIdleFor(milliseconds(20)));  // queued: times out
  auto c = q->Pop(milliseconds(10));
  ASSERT_TRUE(c->has_value());
  std::thread acker([&] {
    std::this_thread::sleep_for(milliseconds(20));
    (void)q->Ack("c");
  });
  EXPECT_TRUE(q->WaitIdleFor(milliseconds(5000)));  // woken by the Ack, long before the timeout
  acker.join();
}

TEST(TaskQueueTest, WorkersDrainConcurrentlyAndCloseWakesThem) {
  auto q = NewInProcessTaskQueue();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(q->Push({std::to_string(i), ""}).ok());
  std::atomic<int> done{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      while (true) {
        auto t = q->Pop(milliseconds(50));
        if (!t.ok() || !t->has_value()) return;
        done += q->Ack((*t)->id).ok();
      }
    });
  }
  q->WaitIdle();
  EXPECT_TRUE(q->Idle());
  q->Close();
  for (auto& w : workers) w.join();
  // Counted after joining: a worker bumps `done` only once its Ack has returned.
  EXPECT_EQ(done.load(), 100);
  EXPECT_EQ(q->Push({"late", ""}).code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace qs::storage
