// TaskQueue: work units from the scheduler to workers, with leases and retries.
//
// A task popped is leased to its worker until Ack (done) or Nack (failed: requeued with one more
// attempt, or dead-lettered once `max_attempts` is reached). The in-process implementation serves
// embedded mode; a Redis Stream consumer group implements the same contract for the service.
//
//   queue->Push({"site:blocks.0.mlp.fc1", payload});
//   while (auto task = queue->Pop(std::chrono::milliseconds(100)); ...) { ...; queue->Ack(id); }
#ifndef QS_STORAGE_TASK_QUEUE_H_
#define QS_STORAGE_TASK_QUEUE_H_

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace qs::storage {

struct Task {
  std::string id;       // unique among queued and leased tasks
  std::string payload;  // opaque to the queue (JSON in practice)
  int attempt = 0;      // 0 on first delivery
};

class TaskQueue {
 public:
  virtual ~TaskQueue() = default;
  // ALREADY_EXISTS if a task with this id is queued or leased; FAILED_PRECONDITION once closed.
  virtual Status Push(const Task& task) = 0;
  // The next task, waiting up to `wait`; nullopt if none came or the queue is closed.
  virtual StatusOr<std::optional<Task>> Pop(std::chrono::milliseconds wait) = 0;
  // NOT_FOUND if `id` is not leased.
  virtual Status Ack(const std::string& id) = 0;
  virtual Status Nack(const std::string& id) = 0;
  // Blocks until nothing is queued or leased (or the queue is closed).
  virtual void WaitIdle() = 0;
  // The same for at most `timeout`; whether the queue is idle (or closed) on return.
  virtual bool WaitIdleFor(std::chrono::milliseconds timeout) = 0;
  // Whether nothing is queued or leased right now.
  virtual bool Idle() = 0;
  // Wakes every waiter; later Pops return nullopt and Pushes fail.
  virtual void Close() = 0;
  // Tasks that failed `max_attempts` times.
  virtual std::vector<Task> DeadLetters() = 0;
};

std::unique_ptr<TaskQueue> NewInProcessTaskQueue(int max_attempts = 3);

}  // namespace qs::storage

#endif  // QS_STORAGE_TASK_QUEUE_H_
