#include "server/run_command.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/json_fields.h"
#include "core/threads.h"
#include "core/vit.h"
#include "scheduler/artifacts.h"
#include "server/export_command.h"
#include "server/progress.h"
#include "server/spec_file.h"
#include "scheduler/search.h"
#include "storage/document_store.h"
#include "storage/task_queue.h"
#include "common/sha256.h"
#include "common/tasks.h"
#include "worker/task_server.h"

namespace qs::server {
namespace {

using nlohmann::json;

// The model side in this process: worker threads serving the queue from one session cache.
class EmbeddedWorkers {
 public:
  // `progress`, when set, hears the session's float passes as stage "prepare".
  EmbeddedWorkers(storage::DocumentStore& evaluations, storage::TaskQueue& queue,
                  const core::ThreadPlan& threads, const scheduler::ProgressFn& progress)
      : queue_(queue), threads_plan_(threads), sessions_(SessionOptionsFor(threads, progress)) {
    serve_.threads = &threads_plan_;
    for (int i = 0; i < threads_plan_.workers; ++i) {
      threads_.emplace_back(
          [this, &evaluations] { worker::ServeTasks(sessions_, evaluations, queue_, stop_, serve_); });
    }
  }

  ~EmbeddedWorkers() {
    stop_ = true;
    queue_.Close();
    for (auto& t : threads_) t.join();
  }

 private:
  static worker::SessionCacheOptions SessionOptionsFor(const core::ThreadPlan& threads,
                                                      const scheduler::ProgressFn& progress) {
    worker::SessionCacheOptions options;
    options.max_sessions = 1;
    options.session.capture_blas_threads = threads.blas_threads;
    if (progress) {
      options.session.open_progress = [progress](int64_t done, int64_t total) {
        progress("prepare", static_cast<size_t>(done), static_cast<size_t>(total));
      };
    }
    return options;
  }

  storage::TaskQueue& queue_;
  const core::ThreadPlan threads_plan_;
  worker::SessionCache sessions_;
  worker::ServeOptions serve_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

int Fail(const Status& s) {
  std::fprintf(stderr, "qsearch: error: %s\n", s.ToString().c_str());
  return 1;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

std::string DefaultCacheDir() {
  if (const char* d = std::getenv("QS_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return std::string(d) + "/qsearch";
  if (const char* d = std::getenv("HOME"); d && *d) return std::string(d) + "/.cache/qsearch";
  return ".qsearch-cache";
}

int RunSearchCommand(const RunArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  auto spec = LoadSpecFile(args.spec);
  if (!spec.ok()) return Fail(spec.status());
  // Where the results go is checked before the search, not found unwritable after it.
  if (Status s = CheckWritableDirectory(args.out); !s.ok()) return Fail(s.WithContext("--out"));
  std::vector<exports::ExportFormat> export_formats;
  if (!args.exports.empty()) {
    auto f = exports::ParseExportFormats(args.exports);
    if (!f.ok()) return Fail(f.status().WithContext("--export"));
    export_formats = *f;
    // Refused before the search rather than after it.
    auto config = core::LoadViTConfig(spec->model_config);
    if (!config.ok()) return Fail(config.status());
    if (Status s = exports::CheckExportable(*config, export_formats); !s.ok()) {
      return Fail(s.WithContext("--export"));
    }
  }
  const std::string cache = args.cache.empty() ? DefaultCacheDir() : args.cache;
  auto store = storage::OpenDirectoryDocumentStore(cache + "/evaluations");
  if (!store.ok()) return Fail(store.status());
  // The job's state, so that a run killed part-way resumes where it stopped when started again.
  auto jobs = storage::OpenDirectoryDocumentStore(cache + "/jobs");
  if (!jobs.ok()) return Fail(jobs.status());
  const std::string job = "run-" + Sha256Hex(ToJson(*spec).dump()).substr(0, 32);
  auto queue = storage::NewInProcessTaskQueue();
  const core::ThreadPlan threads = core::PlanThreads(args.workers, core::UsableCores(), args.threads);
  scheduler::SearchResult result;
  double artifacts_seconds = 0;
  {
    ProgressPrinter printer;
    scheduler::SearchOptions options;
    options.progress = [&](const std::string& stage, size_t done, size_t total) {
      printer.Update(stage, done, total);
    };
    EmbeddedWorkers workers(**store, *queue, threads, options.progress);
    auto r = scheduler::RunSearch(job, *spec, **store, **jobs, *queue, options);
    if (!r.ok()) {
      // A job that ended (not one cut short) starts afresh next time.
      (void)(*jobs)->Delete(job);
      return Fail(r.status());
    }
    result = std::move(*r);
    const auto artifacts_start = std::chrono::steady_clock::now();
    auto written = scheduler::RunTask(
        *queue, job,
        RecipeRequest(TaskKind::kWriteWeights, *spec, result.recipe, result.facts.sites,
                      args.out + "/weights.safetensors"),
        options);
    if (!written.ok()) return Fail(written.status());
    // The other documents first; metrics.json, which says the run is complete, last.
    for (const auto& [name, text] : scheduler::ArtifactDocuments(*spec, result)) {
      const Status s = WriteFileAtomically(args.out + "/" + name, text);
      if (!s.ok()) return Fail(s);
    }
    artifacts_seconds = Seconds(artifacts_start);
  }
  json exported;
  if (!export_formats.empty()) {
    // The recipe just written, refitted on the job's calibration images as validation fitted
    // it (its recorded digests are checked).
    auto recipe = ReadJsonFile(args.out + "/recipe.json");
    if (!recipe.ok()) return Fail(recipe.status());
    auto written = ExportRecipe(ExportSourceOf(*spec), *recipe, export_formats,
                                args.out + "/export");
    if (!written.ok()) return Fail(written.status().WithContext("--export"));
    exported = (*written)["exports"];
  }
  json metrics =
      scheduler::MetricsDocument(*spec, result, artifacts_seconds, Seconds(start));
  if (!exported.is_null()) metrics["exports"] = exported;
  Status s = WriteFileAtomically(args.out + "/metrics.json", metrics.dump(2) + "\n");
  if (!s.ok()) return Fail(s);
  s = (*jobs)->Delete(job);
  if (!s.ok()) return Fail(s);
  const double wall = metrics["seconds"]["wall"].get<double>();
  if (args.json_output) {
    std::printf("%s\n", metrics.dump().c_str());
  } else {
    std::printf("%s: fp32 top-1 %.2f%%, searched top-1 %.2f%% at %.3f average weight bits "
                "(budget %s %g)\n",
                result.goal_met ? "goal met" : "GOAL MISSED", 100 * result.facts.fp32_top1,
                100 * result.validation.top1, result.avg_weight_bits,
                ToString(spec->budget_kind), spec->budget);
    if (!result.goal_met) std::printf("  %s\n", result.goal_note.c_str());
    if (result.test.measured) {
      std::printf("  test set (%lld images of %s, not used to choose): fp32 top-1 %.2f%%, "
                  "searched top-1 %.2f%%\n",
                  static_cast<long long>(result.test.images), result.test.source.c_str(),
                  100 * result.test.fp32_top1, 100 * result.test.top1);
    } else {
      std::printf("  no test set: the searched top-1 is on the validation images that chose the "
                  "recipe (name a disjoint \"test\" source for an unbiased figure)\n");
    }
    std::printf("  %zu candidates: %zu evaluated now, %zu from the cache, %zu failed; %.1fs in "
                "all, evaluation %.2fs = %.1f fp32 passes over the %lld calibration images "
                "(%.3fs each)\n",
                result.plan.candidate_count(), result.evaluated_now, result.from_cache,
                result.failed, wall, result.seconds.evaluate,
                result.facts.fp32_calibration_seconds > 0
                    ? result.seconds.evaluate / result.facts.fp32_calibration_seconds
                    : 0.0,
                static_cast<long long>(result.facts.calibration_images),
                result.facts.fp32_calibration_seconds);
    std::printf("  wrote %s/{recipe.json,metrics.json,pareto.json,weights.safetensors,report.html}\n",
                args.out.c_str());
  }
  return 0;
}

}  // namespace qs::server
