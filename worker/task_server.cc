#include "worker/task_server.h"

#include <unistd.h>

#include <exception>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/evaluation.h"
#include "common/tasks.h"

namespace qs::worker {
namespace {

using nlohmann::json;

// Renews the lease of the task its thread is working on, from a thread of its own, and hands the
// task back when the worker shuts down.
class LeaseKeeper {
 public:
  LeaseKeeper(storage::TaskQueue& queue, const ServeOptions& options)
      : queue_(queue), options_(options), thread_([this] { Loop(); }) {}
  ~LeaseKeeper() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void Hold(const storage::Task& task) {
    std::lock_guard<std::mutex> lock(mu_);
    task_ = task;
    held_ = true;
    handed_back_ = false;
  }
  // Ends the hold; true when the task was handed back meanwhile (then it is no longer ours).
  bool Drop() {
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait(lock, [&] { return !handing_back_; });
    held_ = false;
    return handed_back_;
  }

 private:
  bool ShuttingDown() const { return options_.hand_back != nullptr && options_.hand_back->load(); }

  void Loop() {
    using Clock = std::chrono::steady_clock;
    const auto tick =
        options_.hand_back != nullptr ? std::min(options_.heartbeat, options_.hand_back_poll)
                                      : options_.heartbeat;
    auto next_heartbeat = Clock::now() + options_.heartbeat;
    std::unique_lock<std::mutex> lock(mu_);
    while (!done_) {
      wake_.wait_for(lock, tick, [&] { return done_; });
      if (done_ || !held_ || handed_back_) continue;
      const storage::Task task = task_;
      if (ShuttingDown()) {
        handing_back_ = true;
        lock.unlock();
        const Status released = queue_.Release(task);
        if (options_.on_hand_back) options_.on_hand_back(task, released);
        lock.lock();
        handing_back_ = false;
        handed_back_ = true;
        wake_.notify_all();
        continue;
      }
      if (Clock::now() < next_heartbeat) continue;
      next_heartbeat = Clock::now() + options_.heartbeat;
      lock.unlock();
      // A lost lease is not an error here: the task goes on, and its writes are idempotent.
      (void)queue_.Heartbeat(task);
      lock.lock();
    }
  }

  storage::TaskQueue& queue_;
  const ServeOptions& options_;
  std::mutex mu_;
  std::condition_variable wake_;
  storage::Task task_;
  bool held_ = false;
  bool handing_back_ = false;
  bool handed_back_ = false;
  bool done_ = false;
  std::thread thread_;
};

// Runs `fn` under the single-stream thread plan and goes back to the worker plan after.
template <typename Fn>
auto WholeModel(const ServeOptions& options, Fn&& fn) -> decltype(fn()) {
  if (options.threads) core::ApplyThreadPlan(core::SingleStreamPlan(*options.threads));
  auto result = fn();
  if (options.threads) core::ApplyThreadPlan(*options.threads);
  return result;
}

StatusOr<Recipe> ReadRecipe(const ModelSession& session, const json& recipe) {
  std::map<std::string, SiteKind> kinds;
  for (const auto& s : session.sites()) kinds[s.name] = s.kind;
  return RecipeFromJson(recipe, kinds);
}

// The candidates of an evaluate task that the store lacks (or holds without the metric asked
// for); a config that does not parse is stored as that candidate's permanent failure.
StatusOr<std::vector<core::SiteCandidate>> CandidatesToEvaluate(
    const TaskRequest& request, SiteKind kind, storage::DocumentStore& evaluations) {
  // MAE when the request asks; the nuclear sensitivity when the job ranks by it (the request
  // carries the job's spec).
  RankingMetric needs = RankingMetric::kNoiseRatio;
  if (request.measure_mae) {
    needs = RankingMetric::kMae;
  } else if (request.spec.metric == RankingMetric::kNuclear) {
    needs = RankingMetric::kNuclear;
  }
  std::vector<core::SiteCandidate> todo;
  for (const auto& [key, config_json] : request.candidates) {
    QS_ASSIGN_OR_RETURN(auto have, evaluations.Get(key));
    if (have) {
      auto stored = ParseStoredEvaluation(*have, key);
      if (stored && HasMetric(*stored, needs)) continue;
    }
    auto config = QuantConfigFromJson(config_json, kind);
    if (!config.ok()) {
      Evaluation e;
      e.key = key;
      e.site = request.site;
      e.SetError(config.status());
      QS_RETURN_IF_ERROR(evaluations.Put(key, ToJson(e).dump()));
      continue;
    }
    todo.push_back({*config, key});
  }
  return todo;
}

StatusOr<std::string> Evaluate(const ModelSession& session, const TaskRequest& request,
                               storage::DocumentStore& evaluations) {
  const core::Site* site = session.model().FindSite(request.site);
  if (site == nullptr) return NotFoundError("the model has no site " + request.site);
  QS_ASSIGN_OR_RETURN(auto todo, CandidatesToEvaluate(request, site->kind, evaluations));
  size_t stored = 0;
  Status put_error, transient;
  if (!todo.empty()) {
    core::SiteEvaluationOptions options;
    options.measure_mae = request.measure_mae;
    options.measure_nuclear = request.spec.metric == RankingMetric::kNuclear;
    auto done = session.EvaluateTask(request.site, todo, options, [&](const Evaluation& e) {
      if (!e.ok() && IsTransient(e.error_code)) {
        if (transient.ok()) transient = Status(e.error_code, e.error);
        return;
      }
      Status s = evaluations.Put(e.key, ToJson(e).dump());
      if (s.ok()) {
        ++stored;
      } else if (put_error.ok()) {
        put_error = s;
      }
    });
    // A task-wide failure (no inputs: out of memory, say) is not the candidates' result.
    QS_RETURN_IF_ERROR(done.status());
  }
  QS_RETURN_IF_ERROR(put_error);
  QS_RETURN_IF_ERROR(transient);
  return json{{"stored", stored}}.dump();
}

// Writes `recipe`'s weights to the request's path, or publishes them into the blob store when the
// request names none.
StatusOr<std::string> WriteWeights(ModelSession& session, const Recipe& recipe,
                                   const TaskRequest& request, const ServeOptions& options) {
  if (!request.path.empty()) {
    QS_RETURN_IF_ERROR(session.WriteWeights(recipe, request.path));
    return json{{"path", request.path}}.dump();
  }
  if (options.blobs == nullptr) {
    return InvalidArgumentError("write_weights names no path and this worker has no blob store");
  }
  const std::string scratch = options.blobs->ScratchPath(".safetensors");
  QS_RETURN_IF_ERROR(session.WriteWeights(recipe, scratch));
  QS_ASSIGN_OR_RETURN(storage::BlobDigest d, options.blobs->MoveIn(scratch));
  return json{{"sha256", d.sha256}, {"size", d.size}}.dump();
}

StatusOr<std::string> DoRequest(SessionCache& sessions, storage::DocumentStore& evaluations,
                                const TaskRequest& request, const ServeOptions& options) {
  JobSpec spec = request.spec;
  QS_RETURN_IF_ERROR(ResolveBlobReferences(options.blobs, &spec));
  if (request.kind == TaskKind::kEvaluate) {
    QS_ASSIGN_OR_RETURN(auto session, sessions.Get(request.session, spec));
    return Evaluate(*session, request, evaluations);
  }
  return WholeModel(options, [&]() -> StatusOr<std::string> {
    QS_ASSIGN_OR_RETURN(auto session, sessions.Get(request.session, spec));
    if (request.kind == TaskKind::kPrepare) return ToJson(session->Facts()).dump();
    QS_ASSIGN_OR_RETURN(Recipe recipe, ReadRecipe(*session, request.recipe));
    switch (request.kind) {
      case TaskKind::kValidate: {
        // The evaluation stage is over for this session's job: validation wants the memory.
        session->DropCapturedInputs();
        QS_ASSIGN_OR_RETURN(ValidationResult v, session->Validate(recipe));
        return ToJson(v).dump();
      }
      case TaskKind::kTest: {
        QS_ASSIGN_OR_RETURN(TestResult t, session->Test(recipe));
        return ToJson(t).dump();
      }
      case TaskKind::kWriteWeights:
        return WriteWeights(*session, recipe, request, options);
      default:
        return InternalError("unhandled task kind");
    }
  });
}

}  // namespace

Status ResolveBlobReferences(const storage::BlobStore* blobs, JobSpec* spec) {
  for (std::string* field : {&spec->model_config, &spec->model_weights, &spec->calibration_source,
                             &spec->validation_source, &spec->test_source}) {
    if (field->rfind("blob:", 0) != 0) continue;
    auto hex = storage::ParseBlobReference(*field);
    if (!hex) return InvalidArgumentError("'" + *field + "' is not a blob reference");
    if (blobs == nullptr) {
      return FailedPreconditionError("the spec names blobs but this worker has no blob store");
    }
    const std::string path = blobs->PathOf(*hex);
    if (::access(path.c_str(), R_OK) != 0) {
      return NotFoundError("blob " + *hex + " is not in the blob store (" + path + ")");
    }
    *field = path;
  }
  return OkStatus();
}

SessionCache::SessionCache(SessionCacheOptions options) : options_(std::move(options)) {}

StatusOr<std::shared_ptr<ModelSession>> SessionCache::Get(const std::string& digest,
                                                          const JobSpec& spec) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      if (it->first != digest) continue;
      sessions_.splice(sessions_.begin(), sessions_, it);
      return sessions_.front().second;
    }
    if (!opening_.count(digest)) break;
    ready_.wait(lock);
  }
  opening_.insert(digest);
  // Make room first, so that the new session's memory does not add to the evicted one's
  // (a session still in use elsewhere lives on until that task ends).
  while (!sessions_.empty() &&
         static_cast<int>(sessions_.size() + opening_.size()) > std::max(1, options_.max_sessions)) {
    sessions_.pop_back();
  }
  lock.unlock();
  auto opened = ModelSession::Open(spec, options_.session);
  lock.lock();
  opening_.erase(digest);
  ready_.notify_all();
  QS_RETURN_IF_ERROR(opened.status());
  ++opened_;
  std::shared_ptr<ModelSession> session = std::move(*opened);
  sessions_.emplace_front(digest, session);
  return session;
}

void SessionCache::Adopt(const std::string& digest, std::shared_ptr<ModelSession> session) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.remove_if([&](const auto& entry) { return entry.first == digest; });
  sessions_.emplace_front(digest, std::move(session));
}

StatusOr<std::string> DoTask(SessionCache& sessions, storage::DocumentStore& evaluations,
                             const std::string& payload, const ServeOptions& options) {
  try {
    QS_ASSIGN_OR_RETURN(TaskRequest request, ParseTaskRequest(payload));
    return DoRequest(sessions, evaluations, request, options);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError("out of memory");
  } catch (const std::exception& e) {
    return InternalError(std::string("unexpected exception: ") + e.what());
  }
}

void ServeTasks(SessionCache& sessions, storage::DocumentStore& evaluations,
                storage::TaskQueue& queue, const std::atomic<bool>& stop,
                const ServeOptions& options) {
  if (options.threads != nullptr) core::ApplyWorkerThreads(*options.threads);
  LeaseKeeper keeper(queue, options);
  auto handing_back = [&] { return options.hand_back != nullptr && options.hand_back->load(); };
  while (!stop.load() && !handing_back()) {
    auto popped = queue.Pop(options.poll);
    if (!popped.ok()) {
      // The queue's backend is unreachable: wait, then try again.
      std::this_thread::sleep_for(options.poll);
      continue;
    }
    if (!popped->has_value()) continue;
    const storage::Task& task = **popped;
    keeper.Hold(task);
    if (options.on_start) options.on_start(task);
    const auto start = std::chrono::steady_clock::now();
    auto result = DoTask(sessions, evaluations, task.payload, options);
    // Handed back while it ran: the queue gives it to another worker, which records it.
    if (keeper.Drop()) break;
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // When recording fails the lease runs out and the task is delivered again; what it wrote
    // stands, so the retry is cheap.
    if (result.ok()) {
      (void)queue.Complete(task, *result);
    } else {
      (void)queue.Fail(task, result.status());
    }
    if (options.on_task) options.on_task(task, result.status(), seconds);
  }
}

}  // namespace qs::worker
