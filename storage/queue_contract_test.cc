// The TaskQueue contract, run against both implementations: in process, and on a real
// redis-server (append-only, fsync always) that the suite starts.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "storage/redis_client.h"
#include "storage/redis_store.h"
#include "storage/redis_testing.h"
#include "storage/task_queue.h"

namespace qs::storage {
namespace {

using std::chrono::milliseconds;

class QueueContractTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    server_ = new testing::RedisServer(/*aof=*/true);
    started_ = server_->Start();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    if (GetParam() != "redis") return;
    ASSERT_TRUE(started_) << "redis-server did not start";
    auto c = RedisClient::Connect(server_->address());
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    redis_ = std::move(*c);
    ASSERT_TRUE(redis_->Command({"FLUSHALL"}).ok());
  }
  std::unique_ptr<TaskQueue> Make(const QueueOptions& base) {
    if (GetParam() != "redis") return NewInProcessTaskQueue(base);
    RedisQueueOptions options;
    static_cast<QueueOptions&>(options) = base;
    auto q = NewRedisTaskQueue(redis_, options);
    EXPECT_TRUE(q.ok()) << q.status().ToString();
    return q.ok() ? std::move(*q) : nullptr;
  }

  static testing::RedisServer* server_;
  static bool started_;
  std::shared_ptr<RedisClient> redis_;
};

testing::RedisServer* QueueContractTest::server_ = nullptr;
bool QueueContractTest::started_ = false;

inline std::optional<Task> PopOne(TaskQueue& q, milliseconds wait = milliseconds(200)) {
  auto t = q.Pop(wait);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : std::nullopt;
}

TEST_P(QueueContractTest, PushIsIdempotentAndOutcomesArePerJob) {
  auto q = Make({});
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

TEST_P(QueueContractTest, TransientFailuresRetryPermanentOnesDieAtOnce) {
  QueueOptions options;
  options.max_attempts = 2;
  auto q = Make(options);
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
  if (GetParam() == "redis") {
    // Both dead tasks are in the dead-letter stream too, with their codes.
    auto dead = redis_->Command({"XRANGE", "qs:v1:tasks:dead", "-", "+"});
    ASSERT_TRUE(dead.ok());
    std::set<std::string> codes;
    for (const auto& entry : dead->elements) {
      const auto& fields = entry.elements[1].elements;
      for (size_t i = 0; i + 1 < fields.size(); i += 2) {
        if (fields[i].str == "code") codes.insert(fields[i + 1].str);
      }
    }
    EXPECT_EQ(codes, (std::set<std::string>{"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}));
  }
}

TEST_P(QueueContractTest, ExpiredLeasesAreTakenOverAndHeartbeatsKeepThem) {
  QueueOptions options;
  options.lease = milliseconds(300);
  auto q = Make(options);
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

TEST_P(QueueContractTest, LeasesLostOnEveryAttemptEndDead) {
  QueueOptions options;
  options.lease = milliseconds(100);
  options.max_attempts = 2;
  auto q = Make(options);
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

TEST_P(QueueContractTest, ReleasedTasksComeBackAtOnceWithoutCostingAnAttempt) {
  QueueOptions options;
  options.lease = milliseconds(60000);  // a lease that never runs out within the test
  options.max_attempts = 2;
  auto q = Make(options);
  ASSERT_TRUE(q->Push({"j", "t", "p"}).ok());
  // Handed back more often than the attempts allow: each delivery is free, none is dead.
  std::string previous_receipt;
  for (int round = 0; round < 3; ++round) {
    auto held = PopOne(*q);
    ASSERT_TRUE(held) << "round " << round;
    EXPECT_EQ(held->attempt, 0);
    EXPECT_EQ(held->payload, "p");
    EXPECT_NE(held->receipt, previous_receipt);
    previous_receipt = held->receipt;
    ASSERT_TRUE(q->Release(*held).ok());
    // Released once: it is no longer this caller's.
    EXPECT_EQ(q->Release(*held).code(), StatusCode::kNotFound);
    EXPECT_EQ(q->Heartbeat(*held).code(), StatusCode::kNotFound);
  }
  auto last = PopOne(*q);
  ASSERT_TRUE(last);
  ASSERT_TRUE(q->Complete(*last, "done").ok());
  EXPECT_EQ(q->Release(*last).code(), StatusCode::kNotFound);  // finished: nothing to hand back
  EXPECT_FALSE(PopOne(*q, milliseconds(50)));
  auto outcomes = q->Outcomes("j");
  ASSERT_TRUE(outcomes.ok());
  ASSERT_EQ(outcomes->size(), 1u);
  EXPECT_EQ(outcomes->at("t").state, TaskState::kDone);
  EXPECT_EQ(outcomes->at("t").attempts, 1);
}

TEST_P(QueueContractTest, CancelDropsTheJobsQueuedTasksOnly) {
  auto q = Make({});
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

TEST_P(QueueContractTest, WaitForOutcomeWakesOnCompletion) {
  auto q = Make({});
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

TEST_P(QueueContractTest, WorkersShareTasksAndEachRunsOnce) {
  auto q = Make({});
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

INSTANTIATE_TEST_SUITE_P(Queues, QueueContractTest, ::testing::Values("in_process", "redis"));

}  // namespace
}  // namespace qs::storage
