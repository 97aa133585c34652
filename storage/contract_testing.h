// The DocumentStore and TaskQueue contracts as test bodies, run against every implementation (in
// process and on disk in storage_test.cc, on Redis in redis_test.cc). Test-only.
#ifndef QS_STORAGE_CONTRACT_TESTING_H_
#define QS_STORAGE_CONTRACT_TESTING_H_

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "storage/document_store.h"
#include "storage/task_queue.h"

namespace qs::storage::contract {

using std::chrono::milliseconds;
using QueueFactory = std::function<std::unique_ptr<TaskQueue>(const QueueOptions&)>;

inline void ExerciseStore(DocumentStore& store) {
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
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(store.Put("binary", binary).ok());
  EXPECT_EQ(**store.Get("binary"), binary);
  for (const char* bad : {"", "../etc/passwd", "a/b", "a b", "ä"}) {
    EXPECT_EQ(store.Put(bad, "x").code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Get(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

inline std::optional<Task> PopOne(TaskQueue& q, milliseconds wait = milliseconds(200)) {
  auto t = q.Pop(wait);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : std::nullopt;
}

inline void PushIsIdempotentAndOutcomesArePerJob(const QueueFactory& make) {
  auto q = make({});
  ASSERT_TRUE(q->Push({"j1", "a", "p"}).ok());
  ASSERT_TRUE(q->Push({"j1", "a", "p"}).ok());  // queued already: nothing new
  ASSERT_TRUE(q->Push({"j2", "a", "p"}).ok());  // another job's task of the same id
  EXPECT_EQ(q->Push({"", "a", "p"}).code(), StatusCode::kInvalidArgument);
  auto first = PopOne(*q), second = PopOne(*q);
  ASSERT_TRUE(first && second);
  EXPECT_FALSE(PopOne(*q, milliseconds(50)));
  EXPECT_NE(first->job, second->job);
  EXPECT_EQ(first->attempt, 0);
  const Task& j1 = first->job == "j1" ? *first : *second;
  ASSERT_TRUE(q->Complete(j1, "r1").ok());
  auto o1 = q->Outcomes("j1");
  ASSERT_TRUE(o1.ok());
  ASSERT_EQ(o1->size(), 1u);
  EXPECT_EQ(o1->at("a").state, TaskState::kDone);
  EXPECT_EQ(o1->at("a").result, "r1");
  EXPECT_EQ(o1->at("a").attempts, 1);
  EXPECT_TRUE(q->Outcomes("j2")->empty());  // still leased
  ASSERT_TRUE(q->Push({"j1", "a", "p"}).ok());  // has an outcome: not delivered again
  EXPECT_FALSE(PopOne(*q, milliseconds(50)));
  ASSERT_TRUE(q->ForgetJob("j1").ok());
  EXPECT_TRUE(q->Outcomes("j1")->empty());
}

inline void TransientFailuresRetryPermanentOnesDieAtOnce(const QueueFactory& make) {
  QueueOptions options;
  options.max_attempts = 2;
  auto q = make(options);
  ASSERT_TRUE(q->Push({"j", "flaky", "p"}).ok());
  ASSERT_TRUE(q->Push({"j", "broken", "p"}).ok());
  for (int round = 0; round < 3; ++round) {
    auto t = PopOne(*q);
    if (!t) break;
    const Status error = t->id == "flaky" ? Status(StatusCode::kResourceExhausted, "oom")
                                          : InvalidArgumentError("bad config");
    ASSERT_TRUE(q->Fail(*t, error).ok());
  }
  EXPECT_FALSE(PopOne(*q, milliseconds(50)));
  auto outcomes = q->Outcomes("j");
  ASSERT_TRUE(outcomes.ok());
  ASSERT_EQ(outcomes->size(), 2u);
  const TaskOutcome& flaky = outcomes->at("flaky");
  EXPECT_EQ(flaky.state, TaskState::kDead);
  EXPECT_EQ(flaky.attempts, 2);
  EXPECT_EQ(flaky.error.code(), StatusCode::kResourceExhausted);
  const TaskOutcome& broken = outcomes->at("broken");
  EXPECT_EQ(broken.state, TaskState::kDead);
  EXPECT_EQ(broken.attempts, 1);
  EXPECT_EQ(broken.error.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(broken.error.message(), "bad config");
}

inline void ExpiredLeasesAreTakenOverAndHeartbeatsKeepThem(const QueueFactory& make) {
  QueueOptions options;
  options.lease = milliseconds(300);
  auto q = make(options);
  ASSERT_TRUE(q->Push({"j", "long", "p"}).ok());
  auto held = PopOne(*q);
  ASSERT_TRUE(held);
  // Renewed well within the lease: nobody else gets it.
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(milliseconds(100));
    ASSERT_TRUE(q->Heartbeat(*held).ok());
    EXPECT_FALSE(PopOne(*q, milliseconds(1)));
  }
  // The worker goes silent: the next Pop after the lease takes it over, as a second attempt.
  auto taken = PopOne(*q, milliseconds(2000));
  ASSERT_TRUE(taken);
  EXPECT_EQ(taken->attempt, 1);
  EXPECT_NE(taken->receipt, held->receipt);
  EXPECT_EQ(q->Heartbeat(*held).code(), StatusCode::kNotFound);
  EXPECT_EQ(q->Fail(*held, InvalidArgumentError("stale")).code(), StatusCode::kNotFound);
  // The first delivery finishes after all: its result stands, the second one's changes nothing.
  ASSERT_TRUE(q->Complete(*held, "from the first").ok());
  ASSERT_TRUE(q->Complete(*taken, "from the second").ok());
  auto outcomes = q->Outcomes("j");
  ASSERT_TRUE(outcomes.ok());
  ASSERT_EQ(outcomes->size(), 1u);
  EXPECT_EQ(outcomes->at("long").result, "from the first");
}

inline void LeasesLostOnEveryAttemptEndDead(const QueueFactory& make) {
  QueueOptions options;
  options.lease = milliseconds(100);
  options.max_attempts = 2;
  auto q = make(options);
  ASSERT_TRUE(q->Push({"j", "t", "p"}).ok());
  ASSERT_TRUE(PopOne(*q));
  ASSERT_TRUE(PopOne(*q, milliseconds(2000)));  // taken over once
  EXPECT_FALSE(PopOne(*q, milliseconds(600)));  // the second lease runs out: dead, not delivered
  auto outcomes = q->Outcomes("j");
  ASSERT_TRUE(outcomes.ok());
  ASSERT_EQ(outcomes->size(), 1u);
  EXPECT_EQ(outcomes->at("t").state, TaskState::kDead);
  EXPECT_EQ(outcomes->at("t").error.code(), StatusCode::kUnavailable);
}

inline void CancelDropsTheJobsQueuedTasksOnly(const QueueFactory& make) {
  auto q = make({});
  ASSERT_TRUE(q->Push({"j1", "a", "p"}).ok());
  ASSERT_TRUE(q->Push({"j1", "b", "p"}).ok());
  ASSERT_TRUE(q->Push({"j2", "c", "p"}).ok());
  EXPECT_FALSE(*q->Cancelled("j1"));
  ASSERT_TRUE(q->CancelJob("j1").ok());
  ASSERT_TRUE(q->CancelJob("j1").ok());  // idempotent
  EXPECT_TRUE(*q->Cancelled("j1"));
  auto t = PopOne(*q);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->job, "j2");
  EXPECT_FALSE(PopOne(*q, milliseconds(50)));
  auto outcomes = q->Outcomes("j1");
  ASSERT_TRUE(outcomes.ok());
  ASSERT_EQ(outcomes->size(), 2u);
  for (const auto& [id, o] : *outcomes) EXPECT_EQ(o.state, TaskState::kCancelled) << id;
  EXPECT_TRUE(q->Outcomes("j2")->empty());
}

inline void WaitForOutcomeWakesOnCompletion(const QueueFactory& make) {
  auto q = make({});
  ASSERT_TRUE(q->Push({"j", "a", "p"}).ok());
  auto t = PopOne(*q);
  ASSERT_TRUE(t);
  std::thread worker([&] {
    std::this_thread::sleep_for(milliseconds(50));
    (void)q->Complete(*t, "done");
  });
  const auto start = std::chrono::steady_clock::now();
  while (q->Outcomes("j")->empty() &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
    q->WaitForOutcome("j", milliseconds(5000));
  }
  worker.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(4));
  EXPECT_EQ(q->Outcomes("j")->size(), 1u);
}

inline void WorkersShareTasksAndEachRunsOnce(const QueueFactory& make) {
  auto q = make({});
  std::vector<Task> tasks;
  for (int i = 0; i < 200; ++i) tasks.push_back({"j", "t" + std::to_string(i), "p"});
  ASSERT_TRUE(q->PushAll(tasks).ok());
  std::atomic<int> runs{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&] {
      while (!stop) {
        auto t = q->Pop(milliseconds(20));
        if (!t.ok() || !t->has_value()) continue;
        ++runs;
        (void)q->Complete(**t, (*t)->id);
      }
    });
  }
  const auto start = std::chrono::steady_clock::now();
  while (q->Outcomes("j")->size() < tasks.size() &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(30)) {
    q->WaitForOutcome("j", milliseconds(100));
  }
  stop = true;
  for (auto& w : workers) w.join();
  EXPECT_EQ(runs.load(), 200);
  auto outcomes = q->Outcomes("j");
  ASSERT_EQ(outcomes->size(), 200u);
  for (const auto& [id, o] : *outcomes) EXPECT_EQ(o.result, id);
  q->Close();
  EXPECT_FALSE(q->Pop(milliseconds(10))->has_value());
  EXPECT_EQ(q->Push({"j", "late", "p"}).code(), StatusCode::kFailedPrecondition);
}

}  // namespace qs::storage::contract

#endif  // QS_STORAGE_CONTRACT_TESTING_H_
