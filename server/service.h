// The service's processes: `qsearch scheduler` (the gRPC API, the job manager, metrics) and
// `qsearch worker` (task loops over the shared queue, metrics, gRPC health), and the settings
// both read (flags > environment > config file, see server/service_commands.cc).
#ifndef QS_SERVER_SERVICE_H_
#define QS_SERVER_SERVICE_H_

#include <string>

#include "common/status.h"

namespace qs::server {

struct ServiceConfig {
  std::string listen = "127.0.0.1:50051";  // gRPC (the worker: health only)
  std::string metrics_listen;              // Prometheus /metrics; empty: none
  std::string redis = "redis://127.0.0.1:6379/0";  // queue, jobs, evaluations (persistent)
  std::string cache_redis;                 // activation cache (LRU instance); empty: `redis`
  std::string blob_dir = "qsearch-blobs";  // shared by the scheduler and every worker
  std::string token_file;                  // bearer tokens, one per line; empty: no auth
  std::string tls_cert, tls_key, tls_ca;   // TLS when cert and key are given
  int worker_threads = 0;                  // worker: task loops (0: one per core, at most 8)
  int max_running = 4;                     // scheduler: jobs running at once
  int dispatch_window = 16;                // scheduler: evaluation tasks per job in the queue
  int job_deadline_seconds = 24 * 3600;    // scheduler: a job still running then ends
                                           // DEADLINE_EXCEEDED
  int max_active_jobs = 1000;              // scheduler: queued + running; more: RESOURCE_EXHAUSTED
  int lease_seconds = 60;                  // a silent worker's task is taken over after this
  int max_attempts = 3;                    // deliveries before a task is dead
  int drain_seconds = 20;                  // worker: on SIGTERM, how long tasks in hand may run
                                           // before they are handed back to the queue
};

// Runs until SIGINT or SIGTERM; returns the exit code.
int RunScheduler(const ServiceConfig& config);
int RunWorker(const ServiceConfig& config);

// The tokens in `path` (one per line, blank lines and #comments skipped). INVALID_ARGUMENT for a
// file with none; NOT_FOUND for a missing one.
StatusOr<std::vector<std::string>> ReadTokens(const std::string& path);

}  // namespace qs::server

#endif  // QS_SERVER_SERVICE_H_
