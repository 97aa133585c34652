#include "storage/task_queue.h"

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>

namespace qs::storage {
namespace {

class InProcessTaskQueue : public TaskQueue {
 public:
  explicit InProcessTaskQueue(int max_attempts) : max_attempts_(std::max(1, max_attempts)) {}

  Status Push(const Task& task) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return FailedPreconditionError("task queue is closed");
    if (ids_.count(task.id)) return Status(StatusCode::kAlreadyExists, "task " + task.id);
    ids_.insert({task.id, true});
    queued_.push_back(task);
    changed_.notify_all();
    return OkStatus();
  }

  StatusOr<std::optional<Task>> Pop(std::chrono::milliseconds wait) override {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait_for(lock, wait, [&] { return closed_ || !queued_.empty(); });
    if (closed_ || queued_.empty()) return std::optional<Task>();
    Task t = queued_.front();
    queued_.pop_front();
    leased_[t.id] = t;
    return std::optional<Task>(t);
  }

  Status Ack(const std::string& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!leased_.erase(id)) return NotFoundError("task " + id + " is not leased");
    ids_.erase(id);
    changed_.notify_all();
    return OkStatus();
  }

  Status Nack(const std::string& id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = leased_.find(id);
    if (it == leased_.end()) return NotFoundError("task " + id + " is not leased");
    Task t = it->second;
    leased_.erase(it);
    if (++t.attempt >= max_attempts_) {
      dead_.push_back(t);
      ids_.erase(id);
    } else {
      queued_.push_back(t);
    }
    changed_.notify_all();
    return OkStatus();
  }

  void WaitIdle() override {
    std::unique_lock<std::mutex> lock(mu_);
    changed_.wait(lock, [&] { return closed_ || (queued_.empty() && leased_.empty()); });
  }

  bool WaitIdleFor(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, timeout,
                             [&] { return closed_ || (queued_.empty() && leased_.empty()); });
  }

  bool Idle() override {
    std::lock_guard<std::mutex> lock(mu_);
    return queued_.empty() && leased_.empty();
  }

  void Close() override {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    changed_.notify_all();
  }

  std::vector<Task> DeadLetters() override {
    std::lock_guard<std::mutex> lock(mu_);
    return dead_;
  }

 private:
  const int max_attempts_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::deque<Task> queued_;
  std::map<std::string, Task> leased_;
  std::map<std::string, bool> ids_;
  std::vector<Task> dead_;
  bool closed_ = false;
};

}  // namespace

std::unique_ptr<TaskQueue> NewInProcessTaskQueue(int max_attempts) {
  return std::make_unique<InProcessTaskQueue>(max_attempts);
}

}  // namespace qs::storage
