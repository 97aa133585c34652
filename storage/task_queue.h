// TaskQueue: work units from the scheduler to workers, shared by every job, with leases, retries
// and a recorded outcome for each task of each job.
//
// A task belongs to a job and is named by an id unique within the job and determined by its
// content, so pushing it again (a restarted scheduler) is harmless. Pop leases it to the caller
// until Complete or Fail; a lease not renewed by Heartbeat within `lease` is taken over by the
// next Pop (the worker is presumed lost; that counts as an attempt). A transient failure is
// retried until `max_attempts` deliveries; a permanent one, or the last attempt, makes the task
// dead. The scheduler reads each job's outcomes, never a global "idle": a shared queue is never
// idle. Delivery is at least once: a task may run twice (a lease taken over from a slow worker),
// so what workers write must be idempotent; the first outcome recorded stands.
//
// The in-process implementation serves embedded mode; the Redis one (storage/redis_task_queue.h)
// the service.
//
//   queue->Push({"job1", "evaluate:3f9a...", payload});
//   auto task = queue->Pop(std::chrono::milliseconds(100));  // in a worker
//   queue->Complete(**task, result_text);
//   auto outcomes = queue->Outcomes("job1");                 // in the scheduler
#ifndef QS_STORAGE_TASK_QUEUE_H_
#define QS_STORAGE_TASK_QUEUE_H_

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace qs::storage {

struct Task {
  std::string job;      // the job it serves
  std::string id;       // unique within the job, derived from the content
  std::string payload;  // opaque to the queue (JSON in practice)
  int attempt = 0;      // deliveries before this one
  std::string receipt;  // set by Pop: names this delivery (a stream entry id in Redis)
};

enum class TaskState {
  kDone,       // completed; `result` holds what the worker returned
  kDead,       // failed permanently or on every attempt; `error` says why
  kCancelled,  // its job was cancelled before it ran to the end
};

struct TaskOutcome {
  TaskState state = TaskState::kDone;
  std::string result;
  Status error;
  int attempts = 0;  // deliveries it took
};

struct QueueOptions {
  int max_attempts = 3;
  // How long a delivery is leased without a heartbeat before another worker may take it.
  std::chrono::milliseconds lease{60000};
};

class TaskQueue {
 public:
  virtual ~TaskQueue() = default;
  // Queues `task` unless its (job, id) is queued, leased or has an outcome (then OK, nothing
  // changes). INVALID_ARGUMENT for an empty job or id; FAILED_PRECONDITION once closed.
  virtual Status Push(const Task& task) = 0;
  // The same for several tasks, in one round trip where the backend allows.
  virtual Status PushAll(const std::vector<Task>& tasks) {
    for (const Task& t : tasks) QS_RETURN_IF_ERROR(Push(t));
    return OkStatus();
  }
  // The next task, waiting up to `wait`; nullopt if none came or the queue is closed. Tasks of
  // cancelled jobs are never delivered.
  virtual StatusOr<std::optional<Task>> Pop(std::chrono::milliseconds wait) = 0;
  // Renews the lease of a delivered task; long tasks call it well within the lease. NOT_FOUND
  // when the lease was lost (taken over, or the task already has an outcome); the worker should
  // then drop the task.
  virtual Status Heartbeat(const Task& task) = 0;
  // Records `result` as the task's outcome (unless one exists) and ends the lease.
  virtual Status Complete(const Task& task, const std::string& result) = 0;
  // Records a failure: a transient `error` (IsTransient) with attempts left delivers the task
  // again; otherwise the task is dead with `error`.
  virtual Status Fail(const Task& task, const Status& error) = 0;
  // Hands a delivered task back unfinished (its worker is shutting down): it is queued again at
  // once, and this delivery does not count as an attempt. NOT_FOUND when the caller no longer
  // holds the delivery (taken over, or the task already has an outcome).
  virtual Status Release(const Task& task) = 0;
  // The outcomes of `job`'s tasks so far, by task id (tasks still queued or leased are absent).
  virtual StatusOr<std::map<std::string, TaskOutcome>> Outcomes(const std::string& job) = 0;
  // Returns when `job` may have a new outcome, or after `wait` at the latest.
  virtual void WaitForOutcome(const std::string& job, std::chrono::milliseconds wait) = 0;
  // Cancels `job`: its queued tasks are dropped (outcome kCancelled) and Cancelled() turns true,
  // which workers check between candidates. Idempotent.
  virtual Status CancelJob(const std::string& job) = 0;
  virtual StatusOr<bool> Cancelled(const std::string& job) = 0;
  // Forgets `job`'s outcomes and cancellation (the job is over and its state saved).
  virtual Status ForgetJob(const std::string& job) = 0;
  // Wakes every waiter; later Pops return nullopt and Pushes fail.
  virtual void Close() = 0;
};

std::unique_ptr<TaskQueue> NewInProcessTaskQueue(const QueueOptions& options = {});

}  // namespace qs::storage

#endif  // QS_STORAGE_TASK_QUEUE_H_
