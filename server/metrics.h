// Prometheus metrics of the scheduler and worker processes (names: docs/api.md). Counters and
// histograms are cached references, so the hot paths never look a family up; gauges that come
// from Redis are refreshed by a poller, so a scrape never waits on Redis. /metrics is served by a
// small HTTP loop of our own: prometheus-cpp's civetweb exposer refused to start inside this
// binary (mg_start returned no context after a successful bind; a standalone program with the
// same library started fine), and the text format needs nothing more than this.
#ifndef QS_SERVER_METRICS_H_
#define QS_SERVER_METRICS_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <atomic>
#include <thread>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "common/status.h"

namespace qs::server {

class Metrics {
 public:
  explicit Metrics(const std::string& version);
  ~Metrics();
  // Serves /metrics on `address` ("127.0.0.1:9464", ":9464" for every interface) from a thread
  // of its own. INVALID_ARGUMENT for an address that is not host:port; UNAVAILABLE when it
  // cannot listen there.
  Status Serve(const std::string& address);
  // The exposition text, as a scrape gets it.
  std::string Text() const;

  // One gRPC call handled.
  void Rpc(const std::string& service, const std::string& method, int code, double seconds);
  // Jobs.
  void JobCreated();
  void JobFinished(const std::string& state);
  void SetJobs(const std::map<std::string, int64_t>& by_state);
  // The queue, from XINFO GROUPS / XLEN.
  void SetQueue(int64_t lag, int64_t pending, int64_t length);
  // Entries in the dead-letter stream (tasks that failed for good).
  void SetDeadLetters(int64_t n);
  // One task ended on a worker.
  void Task(const std::string& kind, bool ok, double seconds, double queue_wait_seconds);
  void SetBusy(int busy_threads);
  void SetWorkerThreads(int threads);
  // A task handed back to the queue unfinished (the worker is shutting down).
  void TaskHandedBack();
  // Redis memory from INFO memory, by instance ("queue", "cache"); max 0 means no limit.
  void SetRedisMemory(const std::string& instance, int64_t used_bytes, int64_t max_bytes);
  // The activation cache: one lookup (hit or miss) with the bytes read, or a store.
  void ActivationCacheLookup(bool hit, int64_t bytes_read);
  void ActivationCacheStore(int64_t bytes_written);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread http_;
  std::mutex mu_;
  prometheus::Family<prometheus::Counter>* rpc_handled_;
  prometheus::Family<prometheus::Histogram>* rpc_seconds_;
  prometheus::Counter* jobs_created_;
  prometheus::Family<prometheus::Counter>* jobs_finished_;
  prometheus::Family<prometheus::Gauge>* jobs_;
  prometheus::Gauge *queue_lag_, *queue_pending_, *queue_length_, *dead_letters_, *busy_,
      *worker_threads_;
  prometheus::Counter* handed_back_;
  prometheus::Family<prometheus::Gauge>*redis_used_, *redis_max_;
  prometheus::Family<prometheus::Counter>* tasks_;
  prometheus::Family<prometheus::Histogram>* task_seconds_;
  prometheus::Histogram* queue_wait_;
  prometheus::Family<prometheus::Counter>* cache_requests_;
  prometheus::Family<prometheus::Counter>* cache_bytes_;
};

}  // namespace qs::server

#endif  // QS_SERVER_METRICS_H_
