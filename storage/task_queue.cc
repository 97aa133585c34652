#include "storage/task_queue.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <utility>

namespace qs::storage {
namespace {

using Clock = std::chrono::steady_clock;
using TaskKey = std::pair<std::string, std::string>;  // (job, id)

class InProcessTaskQueue : public TaskQueue {
 public:
  explicit InProcessTaskQueue(const QueueOptions& options)
      : max_attempts_(std::max(1, options.max_attempts)), lease_(options.lease) {}

  Status Push(const Task& task) override {
    if (task.job.empty() || task.id.empty()) {
      return InvalidArgumentError("a task needs a job and an id");
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return FailedPreconditionError("task queue is closed");
    PushLocked(task);
    changed_.notify_all();
    return OkStatus();
  }

  StatusOr<std::optional<Task>> Pop(std::chrono::milliseconds wait) override {
    std::unique_lock<std::mutex> lock(mu_);
    const auto until = Clock::now() + wait;
    while (true) {
      ReclaimExpiredLocked();
      while (!queued_.empty() && cancelled_.count(queued_.front().job)) {
        CancelLocked(queued_.front(), queued_.front().attempt);
        queued_.pop_front();
      }
      if (closed_) return std::optional<Task>();
      if (!queued_.empty()) break;
      const auto now = Clock::now();
      if (now >= until) return std::optional<Task>();
      // Wake for a push, or when the next lease runs out.
      auto next = until;
      for (const auto& [key, lease] : leased_) next = std::min(next, lease.expires);
      changed_.wait_until(lock, std::max(next, now + std::chrono::milliseconds(1)));
    }
    Task t = queued_.front();
    queued_.pop_front();
    t.receipt = std::to_string(++deliveries_);
    leased_[{t.job, t.id}] = {t, Clock::now() + lease_};
    return std::optional<Task>(t);
  }

  Status Heartbeat(const Task& task) override {
    std::lock_guard<std::mutex> lock(mu_);
    Lease* lease = LeaseOfLocked(task);
    if (lease == nullptr) return NoLongerLeased(task);
    lease->expires = Clock::now() + lease_;
    return OkStatus();
  }

  Status Complete(const Task& task, const std::string& result) override {
    std::lock_guard<std::mutex> lock(mu_);
    // A result from a delivery whose lease was taken over is still the task's result (tasks
    // are deterministic); whichever delivery finishes first decides.
    leased_.erase({task.job, task.id});
    known_.erase({task.job, task.id});
    auto& outcomes = outcomes_[task.job];
    if (!outcomes.count(task.id)) {
      outcomes[task.id] = {TaskState::kDone, result, OkStatus(), task.attempt + 1};
    }
    changed_.notify_all();
    return OkStatus();
  }

  Status Fail(const Task& task, const Status& error) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::optional<Task> leased = TakeLeaseLocked(task);
    if (!leased) return NoLongerLeased(task);
    Task t = std::move(*leased);
    if (cancelled_.count(t.job)) {
      CancelLocked(t, t.attempt + 1);
    } else if (IsTransient(error.code()) && t.attempt + 1 < max_attempts_) {
      ++t.attempt;
      t.receipt.clear();
      queued_.push_back(t);
    } else {
      DropLocked(t, t.attempt + 1, TaskState::kDead, error);
    }
    changed_.notify_all();
    return OkStatus();
  }

  Status Release(const Task& task) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::optional<Task> leased = TakeLeaseLocked(task);
    if (!leased) return NoLongerLeased(task);
    Task t = std::move(*leased);
    t.receipt.clear();
    // First in line: it was delivered before anything queued now.
    queued_.push_front(t);
    changed_.notify_all();
    return OkStatus();
  }

  StatusOr<std::map<std::string, TaskOutcome>> Outcomes(const std::string& job) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = outcomes_.find(job);
    if (it == outcomes_.end()) return std::map<std::string, TaskOutcome>();
    return it->second;
  }

  void WaitForOutcome(const std::string& job, std::chrono::milliseconds wait) override {
    std::unique_lock<std::mutex> lock(mu_);
    const size_t before = outcomes_.count(job) ? outcomes_[job].size() : 0;
    changed_.wait_for(lock, wait, [&] {
      return closed_ || (outcomes_.count(job) && outcomes_[job].size() != before);
    });
  }

  Status CancelJob(const std::string& job) override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.insert(job);
    for (auto it = queued_.begin(); it != queued_.end();) {
      if (it->job == job) {
        CancelLocked(*it, it->attempt);
        it = queued_.erase(it);
      } else {
        ++it;
      }
    }
    changed_.notify_all();
    return OkStatus();
  }

  StatusOr<bool> Cancelled(const std::string& job) override {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_.count(job) > 0;
  }

  Status ForgetJob(const std::string& job) override {
    std::lock_guard<std::mutex> lock(mu_);
    outcomes_.erase(job);
    cancelled_.erase(job);
    queued_.erase(std::remove_if(queued_.begin(), queued_.end(),
                                 [&](const Task& t) {
                                   if (t.job != job) return false;
                                   known_.erase({t.job, t.id});
                                   return true;
                                 }),
                  queued_.end());
    return OkStatus();
  }

  void Close() override {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    changed_.notify_all();
  }

 private:
  struct Lease {
    Task task;
    Clock::time_point expires;
  };

  // The lease of this delivery of `task` (same receipt), or nullptr once it was taken over.
  Lease* LeaseOfLocked(const Task& task) {
    auto it = leased_.find({task.job, task.id});
    if (it == leased_.end() || it->second.task.receipt != task.receipt) return nullptr;
    return &it->second;
  }
  // Ends that lease and returns the task as leased, or nullopt as above.
  std::optional<Task> TakeLeaseLocked(const Task& task) {
    Lease* lease = LeaseOfLocked(task);
    if (lease == nullptr) return std::nullopt;
    Task t = std::move(lease->task);
    leased_.erase({task.job, task.id});
    return t;
  }
  static Status NoLongerLeased(const Task& task) {
    return NotFoundError("task " + task.id + " of job " + task.job + " is no longer leased");
  }

  void PushLocked(const Task& task) {
    const TaskKey key{task.job, task.id};
    if (known_.count(key)) return;
    auto o = outcomes_.find(task.job);
    if (o != outcomes_.end() && o->second.count(task.id)) return;
    known_.insert(key);
    Task t = task;
    t.attempt = 0;
    t.receipt.clear();
    queued_.push_back(t);
  }

  // Records `t`'s final outcome (first one stands) and forgets it as queued or leased.
  void DropLocked(const Task& t, int attempts, TaskState state, const Status& error) {
    known_.erase({t.job, t.id});
    auto& outcomes = outcomes_[t.job];
    if (!outcomes.count(t.id)) outcomes[t.id] = {state, "", error, attempts};
  }
  void CancelLocked(const Task& t, int attempts) {
    DropLocked(t, attempts, TaskState::kCancelled, Status(StatusCode::kCancelled, "job cancelled"));
  }

  // Leases past their time: the worker is presumed lost, which costs the task an attempt.
  void ReclaimExpiredLocked() {
    const auto now = Clock::now();
    for (auto it = leased_.begin(); it != leased_.end();) {
      if (it->second.expires > now) {
        ++it;
        continue;
      }
      Task t = it->second.task;
      it = leased_.erase(it);
      ++t.attempt;
      if (t.attempt >= max_attempts_) {
        DropLocked(t, t.attempt, TaskState::kDead,
                   Status(StatusCode::kUnavailable, "lease expired on every attempt (" +
                                                        std::to_string(t.attempt) +
                                                        "): the worker was lost"));
      } else {
        t.receipt.clear();
        queued_.push_front(t);
      }
      changed_.notify_all();
    }
  }

  const int max_attempts_;
  const std::chrono::milliseconds lease_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<Task> queued_;
  std::map<TaskKey, Lease> leased_;
  std::set<TaskKey> known_;  // queued or leased
  std::map<std::string, std::map<std::string, TaskOutcome>> outcomes_;
  std::set<std::string> cancelled_;
  uint64_t deliveries_ = 0;
  bool closed_ = false;
};

}  // namespace

std::unique_ptr<TaskQueue> NewInProcessTaskQueue(const QueueOptions& options) {
  return std::make_unique<InProcessTaskQueue>(options);
}

}  // namespace qs::storage
