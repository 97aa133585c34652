#include "server/service.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "common/strings.h"
#include "core/threads.h"
#include "qsearch/v1/blob_store.grpc.pb.h"
#include "qsearch/v1/quant_search.grpc.pb.h"
#include "scheduler/job_manager.h"
#include "server/api_convert.h"
#include "server/metrics.h"
#include "server/request_checks.h"
#include "storage/blob_store.h"
#include "storage/chunked_cache.h"
#include "storage/redis_client.h"
#include "storage/redis_store.h"
#include "worker/task_server.h"

namespace qs::server {
namespace {

namespace v1 = qsearch::v1;
using Clock = std::chrono::steady_clock;

constexpr char kVersion[] = "0.1.0";
constexpr int kMaxServerThreads = 256;

void Log(const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); }

// Checks the bearer token and records each call's code and time.
class CallGuard {
 public:
  CallGuard(const std::vector<std::string>& tokens, Metrics& metrics) : tokens_(tokens), metrics_(metrics) {}

  template <typename Fn>
  grpc::Status Run(const char* service, const char* method, grpc::ServerContext* ctx, Fn&& fn) {
    const auto start = Clock::now();
    grpc::Status status = Authorize(ctx);
    if (status.ok()) {
      try {
        status = ToGrpc(fn());
      } catch (const std::exception& e) {
        status = grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
      }
    }
    metrics_.Rpc(service, method, static_cast<int>(status.error_code()),
                 std::chrono::duration<double>(Clock::now() - start).count());
    return status;
  }

 private:
  grpc::Status Authorize(grpc::ServerContext* ctx) const {
    if (tokens_.empty()) return grpc::Status::OK;
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing 'authorization: Bearer <token>'");
    }
    const std::string value(it->second.data(), it->second.size());
    for (const auto& t : tokens_) {
      if (value == "Bearer " + t) return grpc::Status::OK;
    }
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not accepted");
  }

  const std::vector<std::string>& tokens_;
  Metrics& metrics_;
};

class QuantSearchService final : public v1::QuantSearch::Service {
 public:
  QuantSearchService(scheduler::JobManager& jobs, CallGuard& guard) : jobs_(jobs), guard_(guard) {}

  grpc::Status CreateJob(grpc::ServerContext* ctx, const v1::CreateJobRequest* req,
                         v1::Job* out) override {
    return guard_.Run("qsearch.v1.QuantSearch", "CreateJob", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(CreateJobInput in, CheckCreateJob(*req));
      QS_ASSIGN_OR_RETURN(auto job, jobs_.Create(in.spec, in.request_id));
      *out = ToProto(job);
      return OkStatus();
    });
  }

  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* out) override {
    return guard_.Run("qsearch.v1.QuantSearch", "GetJob", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(std::string id, CheckJobName(req->name()));
      QS_ASSIGN_OR_RETURN(auto job, jobs_.Get(id));
      *out = ToProto(job);
      return OkStatus();
    });
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* out) override {
    return guard_.Run("qsearch.v1.QuantSearch", "ListJobs", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(ListJobsInput in, CheckListJobs(*req));
      QS_ASSIGN_OR_RETURN(auto page, jobs_.List(in.page.page_size, req->page_token(), in.state));
      for (const auto& j : page.jobs) *out->add_jobs() = ToProto(j);
      out->set_next_page_token(page.next_page_token);
      return OkStatus();
    });
  }

  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                         v1::Job* out) override {
    return guard_.Run("qsearch.v1.QuantSearch", "CancelJob", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(std::string id, CheckJobName(req->name()));
      QS_ASSIGN_OR_RETURN(auto job, jobs_.Cancel(id));
      *out = ToProto(job);
      return OkStatus();
    });
  }

  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override {
    return guard_.Run("qsearch.v1.QuantSearch", "WatchJob", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(auto watch, CheckWatchJob(*req));
      const std::string& id = watch.first;
      int64_t after = watch.second;
      while (!ctx->IsCancelled()) {
        QS_ASSIGN_OR_RETURN(auto events, jobs_.Events(id, after, std::chrono::milliseconds(2000)));
        for (const auto& e : events) {
          v1::JobEvent out;
          out.set_seq(e.seq);
          out.set_time_ms(e.time_ms);
          *out.mutable_job() = ToProto(e.job);
          if (!writer->Write(out)) return Status(StatusCode::kCancelled, "the watcher left");
          after = e.seq;
          if (scheduler::IsTerminal(e.job.phase)) return OkStatus();
        }
        if (events.empty()) {
          // Nothing new: a job that has ended has said all it will.
          QS_ASSIGN_OR_RETURN(auto job, jobs_.Get(id));
          if (scheduler::IsTerminal(job.phase) && after >= job.seq) return OkStatus();
        }
      }
      return Status(StatusCode::kCancelled, "the watcher left");
    });
  }

  grpc::Status GetResult(grpc::ServerContext* ctx, const v1::GetResultRequest* req,
                         v1::JobResult* out) override {
    return guard_.Run("qsearch.v1.QuantSearch", "GetResult", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(std::string id, CheckJobName(req->name()));
      QS_ASSIGN_OR_RETURN(auto job, jobs_.Get(id));
      if (job.phase != scheduler::JobPhase::kSucceeded) {
        return FailedPreconditionError("job " + id + " has no result: it is " +
                                       scheduler::ToString(job.phase));
      }
      out->set_name(req->name());
      for (const auto& [file, digest] : job.artifacts) {
        auto* a = out->add_artifacts();
        a->set_file(file);
        *a->mutable_digest() = ToProto(digest);
      }
      return OkStatus();
    });
  }

 private:
  scheduler::JobManager& jobs_;
  CallGuard& guard_;
};

class BlobStoreService final : public v1::BlobStore::Service {
 public:
  BlobStoreService(storage::BlobStore& blobs, CallGuard& guard) : blobs_(blobs), guard_(guard) {}

  grpc::Status Write(grpc::ServerContext* ctx, grpc::ServerReader<v1::WriteBlobRequest>* reader,
                     v1::WriteBlobResponse* out) override {
    return guard_.Run("qsearch.v1.BlobStore", "Write", ctx, [&]() -> Status {
      v1::WriteBlobRequest req;
      storage::BlobDigest digest;
      bool first = true;
      int64_t committed = 0;
      while (reader->Read(&req)) {
        QS_RETURN_IF_ERROR(CheckWriteChunk(req, first));
        if (first) {
          digest = FromProto(req.digest());
          first = false;
        }
        if (!req.data().empty() || req.write_offset() != committed) {
          QS_ASSIGN_OR_RETURN(committed, blobs_.Append(digest, req.write_offset(), req.data()));
        }
        if (req.finish_write()) {
          QS_RETURN_IF_ERROR(blobs_.Finish(digest));
          committed = digest.size;
          break;
        }
      }
      if (first) return InvalidArgumentError("an empty upload names no blob");
      out->set_committed_size(committed);
      return OkStatus();
    });
  }

  grpc::Status QueryWriteStatus(grpc::ServerContext* ctx, const v1::QueryWriteStatusRequest* req,
                                v1::QueryWriteStatusResponse* out) override {
    return guard_.Run("qsearch.v1.BlobStore", "QueryWriteStatus", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(const storage::BlobDigest d, CheckDigest(req->digest()));
      QS_ASSIGN_OR_RETURN(int64_t committed, blobs_.CommittedSize(d));
      out->set_committed_size(committed);
      out->set_complete(blobs_.Has(d));
      return OkStatus();
    });
  }

  grpc::Status Read(grpc::ServerContext* ctx, const v1::ReadBlobRequest* req,
                    grpc::ServerWriter<v1::ReadBlobResponse>* writer) override {
    return guard_.Run("qsearch.v1.BlobStore", "Read", ctx, [&]() -> Status {
      QS_ASSIGN_OR_RETURN(const BlobRange range, CheckReadBlob(*req));
      const storage::BlobDigest& d = range.digest;
      if (!blobs_.Has(d)) return NotFoundError("no blob " + d.sha256);
      int64_t offset = range.offset;
      const int64_t end = range.end;
      do {
        QS_ASSIGN_OR_RETURN(std::string data,
                            blobs_.Read(d, offset, std::min(kBlobChunkBytes, end - offset)));
        v1::ReadBlobResponse chunk;
        chunk.set_data(std::move(data));
        if (!writer->Write(chunk)) return Status(StatusCode::kCancelled, "the reader left");
        offset += static_cast<int64_t>(chunk.data().size());
      } while (offset < end);
      return OkStatus();
    });
  }

  grpc::Status FindMissingBlobs(grpc::ServerContext* ctx, const v1::FindMissingBlobsRequest* req,
                                v1::FindMissingBlobsResponse* out) override {
    return guard_.Run("qsearch.v1.BlobStore", "FindMissingBlobs", ctx, [&]() -> Status {
      for (const auto& p : req->digests()) {
        QS_ASSIGN_OR_RETURN(const storage::BlobDigest d, CheckDigest(p));
        if (!blobs_.Has(d)) *out->add_missing() = p;
      }
      return OkStatus();
    });
  }

 private:
  storage::BlobStore& blobs_;
  CallGuard& guard_;
};

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const ServiceConfig& c) {
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  QS_ASSIGN_OR_RETURN(std::string cert, ReadText(c.tls_cert));
  QS_ASSIGN_OR_RETURN(std::string key, ReadText(c.tls_key));
  options.pem_key_cert_pairs.push_back({key, cert});
  if (!c.tls_ca.empty()) {
    QS_ASSIGN_OR_RETURN(options.pem_root_certs, ReadText(c.tls_ca));
    options.client_certificate_request =
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

// Blocks SIGINT and SIGTERM in every thread started after it, and waits for one.
class SignalWaiter {
 public:
  SignalWaiter() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  }
  int Wait() {
    int sig = 0;
    sigwait(&set_, &sig);
    return sig;
  }

 private:
  sigset_t set_;
};

struct Connections {
  std::shared_ptr<storage::RedisClient> redis, cache;
};

StatusOr<Connections> ConnectRedis(const ServiceConfig& c) {
  Connections out;
  QS_ASSIGN_OR_RETURN(auto address, storage::ParseRedisUrl(c.redis));
  QS_ASSIGN_OR_RETURN(auto redis, storage::RedisClient::Connect(address));
  out.redis = std::move(redis);
  out.cache = out.redis;
  if (!c.cache_redis.empty() && c.cache_redis != c.redis) {
    QS_ASSIGN_OR_RETURN(auto cache_address, storage::ParseRedisUrl(c.cache_redis));
    QS_ASSIGN_OR_RETURN(auto cache, storage::RedisClient::Connect(cache_address));
    out.cache = std::move(cache);
  }
  return out;
}

storage::RedisQueueOptions QueueOptionsOf(const ServiceConfig& c, const std::string& role) {
  storage::RedisQueueOptions q;
  q.max_attempts = c.max_attempts;
  q.lease = std::chrono::milliseconds(int64_t{1000} * c.lease_seconds);
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  q.consumer = role + "-" + host + "-" + std::to_string(::getpid());
  return q;
}

// used_memory and maxmemory from INFO memory's "key:value" lines; false when either is missing.
bool ParseRedisMemory(const std::string& info, int64_t* used, int64_t* max) {
  bool found_used = false, found_max = false;
  size_t start = 0;
  while (start < info.size()) {
    size_t end = info.find('\n', start);
    if (end == std::string::npos) end = info.size();
    std::string line = info.substr(start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, colon);
    const auto value = ParseInt64(line.substr(colon + 1));
    if (!value) continue;
    if (key == "used_memory") {
      found_used = true;
      *used = *value;
    } else if (key == "maxmemory") {
      found_max = true;
      *max = *value;
    }
  }
  return found_used && found_max;
}

// Queue depth, job counts and Redis memory for the gauges, every few seconds, off the scrape
// path.
void PollGauges(const Connections& redis_of, scheduler::JobManager& jobs, Metrics& metrics,
                const std::atomic<bool>& stop) {
  storage::RedisClient& redis = *redis_of.redis;
  while (!stop) {
    for (const auto& [instance, client] :
         {std::pair<const char*, storage::RedisClient*>{"queue", redis_of.redis.get()},
          {"cache", redis_of.cache.get()}}) {
      auto info = client->Command({"INFO", "memory"});
      int64_t used = 0, max = 0;
      if (info.ok() && ParseRedisMemory(info->str, &used, &max)) {
        metrics.SetRedisMemory(instance, used, max);
      }
    }
    auto info = redis.Command({"XINFO", "GROUPS", "qs:v1:tasks"});
    auto length = redis.Command({"XLEN", "qs:v1:tasks"});
    auto dead = redis.Command({"XLEN", "qs:v1:tasks:dead"});
    if (dead.ok()) metrics.SetDeadLetters(dead->integer);
    if (info.ok() && length.ok()) {
      int64_t lag = 0, pending = 0;
      for (const auto& group : info->elements) {
        for (size_t i = 0; i + 1 < group.elements.size(); i += 2) {
          if (group.elements[i].str == "lag") lag += group.elements[i + 1].integer;
          if (group.elements[i].str == "pending") pending += group.elements[i + 1].integer;
        }
      }
      metrics.SetQueue(lag, pending, length->integer);
    }
    std::map<std::string, int64_t> by_state;
    for (const auto& [phase, n] : jobs.Counts()) by_state[scheduler::ToString(phase)] = n;
    metrics.SetJobs(by_state);
    for (int i = 0; i < 20 && !stop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int Fail(const std::string& who, const Status& s) {
  Log("qsearch " + who + ": error: " + s.ToString());
  return 1;
}

// A worker's task metrics: busy threads, each task's kind, result, time and queue wait, and the
// tasks handed back at shutdown.
void ReportTasks(Metrics& metrics, std::atomic<int>& busy, worker::ServeOptions* serve) {
  serve->on_start = [&](const storage::Task&) { metrics.SetBusy(++busy); };
  serve->on_task = [&](const storage::Task& task, const Status& s, double seconds) {
    metrics.SetBusy(--busy);
    // The stream entry id starts with the enqueueing time in milliseconds.
    double wait = -1;
    const auto dash = task.receipt.find('-');
    if (dash != std::string::npos) {
      const double enqueued_ms = std::strtod(task.receipt.substr(0, dash).c_str(), nullptr);
      const double now_ms = std::chrono::duration<double, std::milli>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
      wait = std::max(0.0, (now_ms - enqueued_ms) / 1000.0 - seconds);
    }
    metrics.Task(task.id.substr(0, task.id.find(':')), s.ok(), seconds, wait);
  };
  serve->on_hand_back = [&](const storage::Task& task, const Status& released) {
    metrics.SetBusy(--busy);
    if (released.ok()) metrics.TaskHandedBack();
    Log("qsearch worker: task " + task.id + " of job " + task.job +
        (released.ok() ? " handed back" : " not handed back: " + released.ToString()));
  };
}

// A worker's task loops, each on a thread of its own, and whether they have ended.
class TaskLoops {
 public:
  TaskLoops(int n, const std::function<void()>& loop) : running_(n) {
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([this, loop] {
        loop();
        std::lock_guard<std::mutex> lock(mu_);
        --running_;
        ended_.notify_all();
      });
    }
  }
  ~TaskLoops() { Join(); }
  // True when every loop has ended, waiting up to `wait` for it.
  bool WaitEnded(std::chrono::seconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    return ended_.wait_for(lock, wait, [&] { return running_ == 0; });
  }
  int running() {
    std::lock_guard<std::mutex> lock(mu_);
    return running_;
  }
  void Join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable ended_;
  int running_;
  std::vector<std::thread> threads_;
};

}  // namespace

StatusOr<std::vector<std::string>> ReadTokens(const std::string& path) {
  QS_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  std::vector<std::string> tokens;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) line.erase(0, 1);
    if (!line.empty() && line[0] != '#') tokens.push_back(line);
    start = end + 1;
  }
  if (tokens.empty()) return InvalidArgumentError("token file " + path + " holds no token");
  return tokens;
}

int RunScheduler(const ServiceConfig& c) {
  SignalWaiter signals;
  std::vector<std::string> tokens;
  if (!c.token_file.empty()) {
    auto t = ReadTokens(c.token_file);
    if (!t.ok()) return Fail("scheduler", t.status());
    tokens = std::move(*t);
  }
  auto creds = ServerCredentials(c);
  if (!creds.ok()) return Fail("scheduler", creds.status());
  auto redis = ConnectRedis(c);
  if (!redis.ok()) return Fail("scheduler", redis.status());
  auto blobs = storage::BlobStore::Open(c.blob_dir);
  if (!blobs.ok()) return Fail("scheduler", blobs.status());
  auto queue = storage::NewRedisTaskQueue(redis->redis, QueueOptionsOf(c, "scheduler"));
  if (!queue.ok()) return Fail("scheduler", queue.status());
  auto evaluations = storage::NewRedisDocumentStore(redis->redis, "qs:v1:eval:");
  auto job_states = storage::NewRedisDocumentStore(redis->redis, "qs:v1:jobstate:");

  Metrics metrics(kVersion);
  if (!c.metrics_listen.empty()) {
    Status s = metrics.Serve(c.metrics_listen);
    if (!s.ok()) return Fail("scheduler", s);
  }
  scheduler::JobManagerOptions options;
  options.max_running = c.max_running;
  options.dispatch_window = static_cast<size_t>(std::max(1, c.dispatch_window));
  options.job_deadline = std::chrono::seconds(c.job_deadline_seconds);
  options.max_active_jobs = c.max_active_jobs;
  options.on_phase = [&metrics](scheduler::JobPhase from, scheduler::JobPhase to) {
    if (from == scheduler::JobPhase::kQueued && to == scheduler::JobPhase::kQueued) metrics.JobCreated();
    if (scheduler::IsTerminal(to)) metrics.JobFinished(scheduler::ToString(to));
  };
  scheduler::JobManager jobs(redis->redis, *evaluations, *job_states, **queue, **blobs, options);
  Status started = jobs.Start();
  if (!started.ok()) return Fail("scheduler", started);

  CallGuard guard(tokens, metrics);
  QuantSearchService search(jobs, guard);
  BlobStoreService blob_service(**blobs, guard);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(c.listen, *creds, &port);
  builder.RegisterService(&search);
  builder.RegisterService(&blob_service);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  // Time and threads are budgeted too: connections live at most an hour (streams in flight get
  // ten more minutes; uploads resume from QueryWriteStatus and watches from their sequence
  // number), idle ones close after five minutes, and at most kMaxServerThreads calls run at once
  // (more are RESOURCE_EXHAUSTED, not a thread each).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, 3600 * 1000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, 600 * 1000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 300 * 1000);
  grpc::ResourceQuota quota("qsearch-scheduler");
  quota.SetMaxThreads(kMaxServerThreads);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    jobs.Stop();
    return Fail("scheduler", Status(StatusCode::kUnavailable, "cannot listen on " + c.listen));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  std::atomic<bool> stop{false};
  std::thread poller([&] { PollGauges(*redis, jobs, metrics, stop); });
  Log("qsearch scheduler: serving on " + c.listen + " (port " + std::to_string(port) + "), " +
      redis->redis->address().ToString() + ", blobs in " + c.blob_dir +
      (tokens.empty() ? ", no auth" : ", bearer tokens") +
      (c.tls_cert.empty() ? ", plaintext" : ", TLS"));
  const int sig = signals.Wait();
  Log("qsearch scheduler: signal " + std::to_string(sig) + ", shutting down");
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  stop = true;
  poller.join();
  jobs.Stop();  // running jobs stay RUNNING: the next scheduler resumes them
  return 0;
}

int RunWorker(const ServiceConfig& c) {
  SignalWaiter signals;
  auto redis = ConnectRedis(c);
  if (!redis.ok()) return Fail("worker", redis.status());
  auto blobs = storage::BlobStore::Open(c.blob_dir);
  if (!blobs.ok()) return Fail("worker", blobs.status());
  auto queue = storage::NewRedisTaskQueue(redis->redis, QueueOptionsOf(c, "worker"));
  if (!queue.ok()) return Fail("worker", queue.status());
  auto evaluations = storage::NewRedisDocumentStore(redis->redis, "qs:v1:eval:");

  Metrics metrics(kVersion);
  if (!c.metrics_listen.empty()) {
    Status s = metrics.Serve(c.metrics_listen);
    if (!s.ok()) return Fail("worker", s);
  }
  const core::ThreadPlan plan =
      core::PlanThreads(c.worker_threads, core::UsableCores(), /*intra_op_threads=*/0);
  core::ApplyThreadPlan(plan);
  // The calibration checkpoints, shared by every worker and job through the LRU instance.
  storage::ChunkedCache checkpoints(redis->cache, "qs:v1:act:", std::chrono::hours(24));
  worker::SessionCacheOptions session_options;
  session_options.session.capture_blas_threads = plan.blas_threads;
  session_options.session.checkpoint_cache = &checkpoints;
  session_options.session.on_checkpoint_lookup = [&metrics](bool hit, int64_t bytes) {
    metrics.ActivationCacheLookup(hit, bytes);
  };
  session_options.session.on_checkpoint_store = [&metrics](int64_t bytes) {
    metrics.ActivationCacheStore(bytes);
  };
  worker::SessionCache sessions(session_options);
  std::atomic<int> busy{0};
  worker::ServeOptions serve;
  serve.threads = &plan;
  serve.blobs = blobs->get();
  serve.heartbeat = std::chrono::milliseconds(std::max(1000, c.lease_seconds * 1000 / 4));
  ReportTasks(metrics, busy, &serve);
  // A health endpoint for probes; workers serve no other RPC.
  std::unique_ptr<grpc::Server> health;
  if (!c.listen.empty()) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(c.listen, grpc::InsecureServerCredentials(), &port);
    health = builder.BuildAndStart();
    if (!health || port == 0) {
      return Fail("worker", Status(StatusCode::kUnavailable, "cannot listen on " + c.listen));
    }
    health->GetHealthCheckService()->SetServingStatus(true);
  }
  std::atomic<bool> stop{false}, hand_back{false};
  serve.hand_back = &hand_back;
  TaskLoops loops(plan.workers,
                  [&] { worker::ServeTasks(sessions, *evaluations, **queue, stop, serve); });
  metrics.SetWorkerThreads(plan.workers);
  Log("qsearch worker: " + std::to_string(plan.workers) + " task loops on " +
      redis->redis->address().ToString() + ", blobs in " + c.blob_dir + "; " +
      core::DescribeThreads(plan));
  const int sig = signals.Wait();
  Log("qsearch worker: signal " + std::to_string(sig) + ", taking no more tasks; " +
      std::to_string(busy.load()) + " in hand may run " + std::to_string(c.drain_seconds) +
      " s before they are handed back");
  if (health) health->GetHealthCheckService()->SetServingStatus(false);
  stop = true;
  if (!loops.WaitEnded(std::chrono::seconds(c.drain_seconds))) {
    hand_back = true;
    // Each loop's lease keeper hands its task back within a poll (one Redis call); a Redis that
    // does not answer leaves the task to the lease, as a lost worker would.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (busy.load() > 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!loops.WaitEnded(std::chrono::seconds(0))) {
      Log("qsearch worker: exiting with " + std::to_string(loops.running()) +
          " abandoned computation(s); their tasks are back in the queue");
      std::fflush(nullptr);
      std::_Exit(0);  // the loops are still inside their tasks: no destructors may run under them
    }
  }
  loops.Join();
  if (health) health->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

}  // namespace qs::server
