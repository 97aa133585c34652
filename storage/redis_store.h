// The service's storage on Redis: documents (evaluations, job states) and the task queue.
//
// Keys follow qs:v1:<type>:<id>[:<sub>] (docs/service.md of the project notes):
//   qs:v1:tasks                       stream of tasks, consumer group "workers"
//   qs:v1:tasks:dead                  stream of dead tasks (job outcomes key, id, code, message)
//   qs:v1:job:<job>:known             set of the job's task ids queued or leased
//   qs:v1:job:<job>:outcomes          hash task id -> outcome JSON (first writer wins)
//   qs:v1:job:<job>:attempts          hash task id -> deliveries so far
//   qs:v1:job:<job>:cancelled         flag
//   qs:v1:job:<job>:notify            one-element list pushed on each outcome (waiters BLPOP it)
//   <prefix><key>                     a document (e.g. qs:v1:eval:<candidate key>)
// Each state change of a task is one Lua script, so a scheduler or worker dying between two
// commands leaves nothing half done. Pop takes over deliveries idle past the lease with
// XAUTOCLAIM; Heartbeat renews one with XCLAIM JUSTID (which does not count a delivery); an entry
// is acknowledged and deleted once its outcome is written, so the stream holds only live tasks.
//
//   auto queue = NewRedisTaskQueue(redis, {.max_attempts = 3, .lease = 60s});
//   auto evaluations = NewRedisDocumentStore(redis, "qs:v1:eval:");
#ifndef QS_STORAGE_REDIS_STORE_H_
#define QS_STORAGE_REDIS_STORE_H_

#include <chrono>
#include <memory>
#include <string>

#include "common/status.h"
#include "storage/document_store.h"
#include "storage/redis_client.h"
#include "storage/task_queue.h"

namespace qs::storage {

// Documents under `prefix`; with `ttl` > 0 each Put expires after it (an LRU cache instance).
std::unique_ptr<DocumentStore> NewRedisDocumentStore(std::shared_ptr<RedisClient> redis,
                                                     std::string prefix,
                                                     std::chrono::seconds ttl = std::chrono::seconds(0));

struct RedisQueueOptions : QueueOptions {
  std::string stream = "qs:v1:tasks";
  std::string group = "workers";
  // Names this process's deliveries in the consumer group (default: host and pid).
  std::string consumer;
};

// Creates the stream and consumer group when missing.
StatusOr<std::unique_ptr<TaskQueue>> NewRedisTaskQueue(std::shared_ptr<RedisClient> redis,
                                                       const RedisQueueOptions& options = {});

}  // namespace qs::storage

#endif  // QS_STORAGE_REDIS_STORE_H_
