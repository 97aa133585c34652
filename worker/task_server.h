// The worker's task loop: take a task, find or open the session it names, do it, record the
// outcome. The same loop serves embedded runs (threads in the `qsearch run` process) and the
// service (`qsearch worker` processes on the Redis queue).
//
// Sessions are kept by their digest (common/tasks.h) in a cache bounded by count, so a worker
// loads each model and data set once however many tasks and jobs use it. Evaluations are written
// to the store one by one as they exist; a candidate's permanent failure (INVALID_ARGUMENT, a
// non-finite result) is stored like a result, a transient one (out of memory) is not: the task
// fails with it and the queue retries it, and the retry skips what was stored. Leases of tasks in
// progress are renewed by a keeper thread, so a long task is not taken over while it runs; the
// same thread hands the task back at once when the worker is shutting down (`hand_back`), so
// another worker takes it without waiting for the lease to run out.
//
//   SessionCache sessions({.max_sessions = 1});
//   std::thread t([&] { ServeTasks(sessions, *evaluations, *queue, stop, {}); });
#ifndef QS_WORKER_TASK_SERVER_H_
#define QS_WORKER_TASK_SERVER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "common/job_spec.h"
#include "common/status.h"
#include "core/threads.h"
#include "storage/blob_store.h"
#include "storage/document_store.h"
#include "storage/task_queue.h"
#include "worker/model_session.h"

namespace qs::worker {

struct SessionCacheOptions {
  int max_sessions = 2;      // sessions kept open at once (least recently used goes first)
  SessionOptions session;    // how each is opened
};

// Open sessions by digest. Thread-safe: concurrent requests for one digest open it once.
class SessionCache {
 public:
  explicit SessionCache(SessionCacheOptions options = {});
  // The session for `spec`, opening it (and evicting the least recently used) when absent. A
  // failed open is not kept: the next request tries again.
  StatusOr<std::shared_ptr<ModelSession>> Get(const std::string& digest, const JobSpec& spec);
  // Keeps `session`, opened elsewhere, as the session for `digest` (benchmarks measure it).
  void Adopt(const std::string& digest, std::shared_ptr<ModelSession> session);
  // Sessions opened so far (a session evicted and needed again counts twice).
  int64_t opened() const { return opened_.load(); }

 private:
  const SessionCacheOptions options_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::list<std::pair<std::string, std::shared_ptr<ModelSession>>> sessions_;  // most recent first
  std::set<std::string> opening_;
  std::atomic<int64_t> opened_{0};
};

struct ServeOptions {
  // The CPU thread plan: evaluations run under the worker share, whole-model tasks (prepare,
  // validate, test, weights) under the single-stream plan. Null leaves threads alone.
  const core::ThreadPlan* threads = nullptr;
  // How long to wait for a task before checking `stop`.
  std::chrono::milliseconds poll{100};
  // How often leases of tasks in progress are renewed (keep it well under the queue's lease).
  std::chrono::milliseconds heartbeat{10000};
  // Where "blob:sha256:<hex>" references in specs resolve, and where write_weights tasks without
  // a path publish the weights (the service's shared volume). Null: no blobs.
  storage::BlobStore* blobs = nullptr;
  // Hear each task as it starts and as it ends (the worker's metrics). May be empty.
  std::function<void(const storage::Task&)> on_start;
  std::function<void(const storage::Task&, const Status&, double seconds)> on_task;
  // A worker shutting down sets it: the task in hand is handed back to the queue within
  // `hand_back_poll` (TaskQueue::Release) and its loop records nothing for it and ends, while
  // the computation, abandoned, may still be running (the process is about to exit). Null: never.
  const std::atomic<bool>* hand_back = nullptr;
  std::chrono::milliseconds hand_back_poll{50};
  // Hears each task handed back (then `on_task` is not called for it). May be empty.
  std::function<void(const storage::Task&, const Status& released)> on_hand_back;
};

// Serves `queue` until `stop` is set, or until its task is handed back; see the file comment.
void ServeTasks(SessionCache& sessions, storage::DocumentStore& evaluations,
                storage::TaskQueue& queue, const std::atomic<bool>& stop,
                const ServeOptions& options = {});

// Replaces the blob references among `spec`'s model files and data sources by their paths in
// `blobs`. NOT_FOUND for a blob the store lacks; FAILED_PRECONDITION when there are references
// but no store.
Status ResolveBlobReferences(const storage::BlobStore* blobs, JobSpec* spec);

// Does one task (without the queue): the result text a Complete records, or the failure.
StatusOr<std::string> DoTask(SessionCache& sessions, storage::DocumentStore& evaluations,
                             const std::string& payload, const ServeOptions& options = {});

}  // namespace qs::worker

#endif  // QS_WORKER_TASK_SERVER_H_
