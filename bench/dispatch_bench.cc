// Dispatch through Redis: how many no-op tasks per second go from the scheduler's push, through
// the stream and a worker's Pop and Complete, to an outcome the scheduler reads, on a
// redis-server this benchmark starts on loopback (append-only, fsync every second, as the
// service's queue instance runs). The reference, measured in the same run on the same server, is
// the rate of plain PING round trips from one connection: tasks/s divided by it says how many
// round trips' worth of time a task costs.
//
//   build/bench/qs_dispatch_bench [--tasks N] [--workers W] [--out FILE]
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_output.h"
#include "storage/redis_client.h"
#include "storage/redis_store.h"
#include "storage/redis_testing.h"

namespace qs::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

StatusOr<double> PingRate(storage::RedisClient& redis, int n) {
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) QS_RETURN_IF_ERROR(redis.Command({"PING"}).status());
  return n / Since(start);
}

// Pushes `tasks` no-op tasks in windows of `batch` (as a job's dispatch does), served by
// `workers` threads with queues of their own (as worker processes hold), until every outcome is
// recorded; tasks per second.
StatusOr<double> Dispatch(const storage::RedisAddress& address, int tasks, int workers, int batch) {
  QS_ASSIGN_OR_RETURN(auto scheduler_redis, storage::RedisClient::Connect(address));
  std::shared_ptr<storage::RedisClient> shared = std::move(scheduler_redis);
  QS_ASSIGN_OR_RETURN(auto queue, storage::NewRedisTaskQueue(shared));
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      auto redis = storage::RedisClient::Connect(address);
      if (!redis.ok()) {
        ++errors;
        return;
      }
      storage::RedisQueueOptions options;
      options.consumer = "bench-worker-" + std::to_string(w);
      auto q = storage::NewRedisTaskQueue(std::shared_ptr<storage::RedisClient>(std::move(*redis)), options);
      if (!q.ok()) {
        ++errors;
        return;
      }
      while (!stop) {
        auto t = (*q)->Pop(std::chrono::milliseconds(50));
        if (!t.ok()) {
          ++errors;
          continue;
        }
        if (t->has_value() && !(*q)->Complete(**t, "").ok()) ++errors;
      }
    });
  }
  const std::string job = "bench-" + std::to_string(tasks) + "-" + std::to_string(workers);
  const auto start = Clock::now();
  int pushed = 0;
  size_t done = 0;
  while (done < static_cast<size_t>(tasks)) {
    // Keep `batch` tasks ahead of the outcomes, as the dispatch window does.
    if (pushed < tasks && pushed - static_cast<int>(done) < batch) {
      std::vector<storage::Task> window;
      for (; pushed < tasks && static_cast<int>(window.size()) < batch; ++pushed) {
        window.push_back({job, "noop:" + std::to_string(pushed), "{}"});
      }
      QS_RETURN_IF_ERROR(queue->PushAll(window));
    }
    QS_ASSIGN_OR_RETURN(auto outcomes, queue->Outcomes(job));
    done = outcomes.size();
    if (done < static_cast<size_t>(tasks) && pushed >= tasks) {
      queue->WaitForOutcome(job, std::chrono::milliseconds(5));
    }
  }
  const double seconds = Since(start);
  stop = true;
  for (auto& t : threads) t.join();
  QS_RETURN_IF_ERROR(queue->ForgetJob(job));
  if (errors.load() != 0) return InternalError(std::to_string(errors.load()) + " queue errors");
  return tasks / seconds;
}

int Main(int argc, char** argv) {
  int tasks = 20000, workers = 4, batch = 512;
  std::string out;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tasks")) tasks = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--workers")) workers = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--out")) out = argv[i + 1];
  }
  storage::testing::RedisServer server(/*aof=*/true, /*fsync=*/"everysec");
  if (!server.Start()) return Fail("dispatch_bench", Status(StatusCode::kUnavailable, "redis-server"));
  auto redis = storage::RedisClient::Connect(server.address());
  if (!redis.ok()) return Fail("dispatch_bench", redis.status());
  auto ping = PingRate(**redis, 20000);
  if (!ping.ok()) return Fail("dispatch_bench", ping.status());
  nlohmann::json result = {{"bench", "dispatch"},
                           {"tasks", tasks},
                           {"batch", batch},
                           {"redis_ping_per_second", *ping}};
  nlohmann::json runs = nlohmann::json::array();
  for (int w : {1, workers}) {
    auto rate = Dispatch(server.address(), tasks, w, batch);
    if (!rate.ok()) return Fail("dispatch_bench", rate.status());
    runs.push_back({{"worker_threads", w},
                    {"tasks_per_second", *rate},
                    {"tasks_per_second_in_pings", *rate / *ping}});
  }
  result["runs"] = runs;
  return Emit("dispatch_bench", result, out);
}

}  // namespace
}  // namespace qs::bench

int main(int argc, char** argv) { return qs::bench::Main(argc, argv); }
