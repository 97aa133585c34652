#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>

namespace qs::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

const Histogram::BucketBoundaries& TaskBuckets() {
  static const Histogram::BucketBoundaries b = {0.01, 0.05, 0.1, 0.5, 1,   2.5,  5,   10,
                                                30,   60,   120, 300, 600, 1800, 3600};
  return b;
}

const Histogram::BucketBoundaries& RpcBuckets() {
  static const Histogram::BucketBoundaries b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,    1,     2.5,  5,     10};
  return b;
}

// A metric with no labels: a family of one series.
prometheus::Gauge* UnlabeledGauge(prometheus::Registry& registry, const std::string& name,
                                  const std::string& help) {
  return &BuildGauge().Name(name).Help(help).Register(registry).Add({});
}
prometheus::Counter* UnlabeledCounter(prometheus::Registry& registry, const std::string& name,
                                      const std::string& help) {
  return &BuildCounter().Name(name).Help(help).Register(registry).Add({});
}

}  // namespace

Metrics::Metrics(const std::string& version) : registry_(std::make_shared<prometheus::Registry>()) {
  BuildGauge()
      .Name("qsearch_build_info")
      .Help("qsearch build: 1, labelled with the version")
      .Register(*registry_)
      .Add({{"version", version}})
      .Set(1);
  BuildGauge()
      .Name("process_start_time_seconds")
      .Help("Start time of the process since the Unix epoch, in seconds")
      .Register(*registry_)
      .Add({})
      .Set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
               .count());
  rpc_handled_ = &BuildCounter()
                      .Name("grpc_server_handled_total")
                      .Help("gRPC calls completed, by service, method and status code")
                      .Register(*registry_);
  rpc_seconds_ = &BuildHistogram()
                      .Name("grpc_server_handling_seconds")
                      .Help("Time to handle a gRPC call, by service and method")
                      .Register(*registry_);
  jobs_created_ = UnlabeledCounter(*registry_, "qsearch_jobs_created_total", "Jobs created");
  jobs_finished_ = &BuildCounter()
                        .Name("qsearch_jobs_finished_total")
                        .Help("Jobs ended, by final state")
                        .Register(*registry_);
  jobs_ = &BuildGauge().Name("qsearch_jobs").Help("Jobs known, by state").Register(*registry_);
  queue_lag_ = UnlabeledGauge(*registry_, "qsearch_queue_lag",
                              "Tasks in the stream not yet delivered to any worker");
  queue_pending_ = UnlabeledGauge(*registry_, "qsearch_queue_pending",
                                  "Tasks delivered and not yet finished (leased)");
  queue_length_ = UnlabeledGauge(*registry_, "qsearch_queue_length", "Entries in the task stream");
  dead_letters_ =
      UnlabeledGauge(*registry_, "qsearch_queue_dead_letters",
                     "Tasks in the dead-letter stream (failed permanently or on every attempt)");
  busy_ =
      UnlabeledGauge(*registry_, "qsearch_worker_busy_threads", "Worker threads working on a task");
  worker_threads_ =
      UnlabeledGauge(*registry_, "qsearch_worker_threads",
                     "Task loops of this worker (utilization: busy threads over these)");
  handed_back_ =
      UnlabeledCounter(*registry_, "qsearch_tasks_handed_back_total",
                       "Tasks handed back to the queue unfinished by a worker shutting down");
  redis_used_ = &BuildGauge()
                     .Name("qsearch_redis_memory_used_bytes")
                     .Help("Memory Redis reports in use, by instance (queue or cache)")
                     .Register(*registry_);
  redis_max_ = &BuildGauge()
                    .Name("qsearch_redis_memory_max_bytes")
                    .Help("Redis maxmemory, by instance (0: no limit)")
                    .Register(*registry_);
  tasks_ = &BuildCounter()
                .Name("qsearch_tasks_completed_total")
                .Help("Tasks ended on this worker, by kind and result (ok or error)")
                .Register(*registry_);
  task_seconds_ = &BuildHistogram()
                       .Name("qsearch_task_duration_seconds")
                       .Help("Time a worker spent on a task, by kind")
                       .Register(*registry_);
  queue_wait_ = &BuildHistogram()
                     .Name("qsearch_task_queue_wait_seconds")
                     .Help("Time from a task's enqueueing to the delivery a worker ran")
                     .Register(*registry_)
                     .Add({}, TaskBuckets());
  cache_requests_ = &BuildCounter()
                         .Name("qsearch_activation_cache_requests_total")
                         .Help("Activation cache lookups, by result (hit or miss)")
                         .Register(*registry_);
  cache_bytes_ = &BuildCounter()
                      .Name("qsearch_activation_cache_bytes_total")
                      .Help("Activation cache bytes moved, by operation (read or write)")
                      .Register(*registry_);
  // Known label values up front, so that the series exist from the first scrape.
  for (const char* r : {"hit", "miss"}) cache_requests_->Add({{"result", r}});
  for (const char* op : {"read", "write"}) cache_bytes_->Add({{"op", op}});
}

Metrics::~Metrics() {
  stop_ = true;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (http_.joinable()) http_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::string Metrics::Text() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

Status Metrics::Serve(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    return InvalidArgumentError("metrics address '" + address + "' is not host:port");
  }
  const std::string host = address.substr(0, colon);
  char* end = nullptr;
  const std::string port_text = address.substr(colon + 1);
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port < 1 || port > 65535) {
    return InvalidArgumentError("metrics address '" + address + "': port is not 1-65535");
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (host.empty() || host == "0.0.0.0") {
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
  } else if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(),
                         &addr.sin_addr) != 1) {
    return InvalidArgumentError("metrics address '" + address + "': host is not an IPv4 address");
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 16) != 0) {
    return Status(StatusCode::kUnavailable,
                  "cannot serve metrics on " + address + ": " + std::strerror(errno));
  }
  http_ = std::thread([this] {
    while (!stop_) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      timeval tv{2, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      char buf[2048];
      const ssize_t n = ::recv(fd, buf, sizeof(buf) - 1, 0);
      const std::string request(buf, n > 0 ? static_cast<size_t>(n) : 0);
      std::string status = "200 OK", body;
      if (request.rfind("GET /metrics", 0) == 0) {
        body = Text();
      } else {
        status = "404 Not Found";
        body = "metrics are at /metrics\n";
      }
      const std::string response = "HTTP/1.1 " + status +
                                   "\r\nContent-Type: text/plain; version=0.0.4\r\n"
                                   "Content-Length: " +
                                   std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
                                   body;
      size_t sent = 0;
      while (sent < response.size()) {
        const ssize_t k = ::send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
        if (k <= 0) break;
        sent += static_cast<size_t>(k);
      }
      ::close(fd);
    }
  });
  return OkStatus();
}

void Metrics::Rpc(const std::string& service, const std::string& method, int code, double seconds) {
  static const char* kCodes[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const char* name = code >= 0 && code <= 16 ? kCodes[code] : "UNKNOWN";
  std::lock_guard<std::mutex> lock(mu_);
  rpc_handled_->Add({{"grpc_service", service}, {"grpc_method", method}, {"grpc_code", name}})
      .Increment();
  rpc_seconds_->Add({{"grpc_service", service}, {"grpc_method", method}}, RpcBuckets())
      .Observe(seconds);
}

void Metrics::JobCreated() { jobs_created_->Increment(); }

void Metrics::JobFinished(const std::string& state) {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_finished_->Add({{"state", state}}).Increment();
}

void Metrics::SetJobs(const std::map<std::string, int64_t>& by_state) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [state, n] : by_state)
    jobs_->Add({{"state", state}}).Set(static_cast<double>(n));
}

void Metrics::SetQueue(int64_t lag, int64_t pending, int64_t length) {
  queue_lag_->Set(static_cast<double>(lag));
  queue_pending_->Set(static_cast<double>(pending));
  queue_length_->Set(static_cast<double>(length));
}

void Metrics::SetDeadLetters(int64_t n) { dead_letters_->Set(static_cast<double>(n)); }

void Metrics::Task(const std::string& kind, bool ok, double seconds, double queue_wait_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  tasks_->Add({{"kind", kind}, {"result", ok ? "ok" : "error"}}).Increment();
  task_seconds_->Add({{"kind", kind}}, TaskBuckets()).Observe(seconds);
  if (queue_wait_seconds >= 0) queue_wait_->Observe(queue_wait_seconds);
}

void Metrics::SetBusy(int busy_threads) { busy_->Set(busy_threads); }

void Metrics::SetWorkerThreads(int threads) { worker_threads_->Set(threads); }

void Metrics::TaskHandedBack() { handed_back_->Increment(); }

void Metrics::SetRedisMemory(const std::string& instance, int64_t used_bytes, int64_t max_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  redis_used_->Add({{"redis", instance}}).Set(static_cast<double>(used_bytes));
  redis_max_->Add({{"redis", instance}}).Set(static_cast<double>(max_bytes));
}

void Metrics::ActivationCacheLookup(bool hit, int64_t bytes_read) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_requests_->Add({{"result", hit ? "hit" : "miss"}}).Increment();
  cache_bytes_->Add({{"op", "read"}}).Increment(static_cast<double>(bytes_read));
}

void Metrics::ActivationCacheStore(int64_t bytes_written) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_bytes_->Add({{"op", "write"}}).Increment(static_cast<double>(bytes_written));
}

}  // namespace qs::server
