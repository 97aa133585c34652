// Search benchmark: the evaluation stage (every candidate of a spec, in-memory store) with one
// worker thread and with two, each against one FP32 evaluation pass measured in the same run.
//
//   build/bench/qs_search_bench [--spec examples/fixture_search.json] [--out FILE]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "bench/bench_output.h"
#include "common/job_spec.h"
#include "common/plan.h"
#include "scheduler/search.h"
#include "storage/evaluation_store.h"
#include "storage/task_queue.h"
#include "worker/model_session.h"

namespace {

int Fail(const qs::Status& s) { return qs::bench::Fail("qs_search_bench", s); }

}  // namespace

int main(int argc, char** argv) {
  std::string spec_path = "examples/fixture_search.json", out;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--spec") spec_path = v;
    else if (k == "--out") out = v;
    else {
      std::fprintf(stderr, "usage: qs_search_bench [--spec FILE] [--out FILE]\n");
      return 2;
    }
  }
  auto spec = qs::LoadJobSpec(spec_path);
  if (!spec.ok()) return Fail(spec.status());
  auto session = qs::worker::ModelSession::Open(*spec);
  if (!session.ok()) return Fail(session.status());
  auto plan = qs::MakePlan(*spec, (*session)->sites());
  if (!plan.ok()) return Fail(plan.status());

  nlohmann::json result = {{"spec", spec_path},
                           {"candidates", plan->candidate_count()},
                           {"intra_op_threads", at::get_num_threads()},
                           {"fp32_eval_seconds", (*session)->fp32_validation_seconds()},
                           {"validation_images", (*session)->validation_images()}};
  double one_worker = 0;
  for (int workers : {1, 2}) {
    auto store = qs::storage::NewInMemoryEvaluationStore();
    auto queue = qs::storage::NewInProcessTaskQueue();
    for (const auto& site : plan->sites) {
      std::vector<std::string> keys;
      std::vector<size_t> all;
      for (size_t j = 0; j < site.candidates.size(); ++j) {
        keys.push_back(qs::CandidateKey((*session)->model_digest(),
                                        (*session)->calibration_digest(), site.candidates[j]));
        all.push_back(j);
      }
      auto pushed = queue->Push({site.site.name, qs::scheduler::TaskPayload(site, keys, all).dump()});
      if (!pushed.ok()) return Fail(pushed);
    }
    std::atomic<bool> stop{false};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&] { qs::worker::ServeTasks(**session, *store, *queue, stop); });
    }
    queue->WaitIdle();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    stop = true;
    queue->Close();
    for (auto& t : threads) t.join();
    if (workers == 1) one_worker = secs;
    const std::string k = "workers_" + std::to_string(workers);
    result[k + "_seconds"] = secs;
    result[k + "_vs_fp32_eval"] = secs / (*session)->fp32_validation_seconds();
  }
  result["speedup_two_vs_one"] = one_worker / result["workers_2_seconds"].get<double>();
  return qs::bench::Emit("qs_search_bench", result, out);
}
