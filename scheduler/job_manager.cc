#include "scheduler/job_manager.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <deque>
#include <random>
#include <sstream>

#include "common/enum_names.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "common/strings.h"
#include "common/tasks.h"
#include "scheduler/artifacts.h"
#include "scheduler/search.h"

namespace qs::scheduler {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr char kJobsKey[] = "qs:v1:jobs";           // every job, by creation time
constexpr char kActiveKey[] = "qs:v1:jobs:active";  // jobs not yet ended, by creation time
constexpr int64_t kFinishedTtlSeconds = 7 * 24 * 3600;

constexpr std::pair<const char*, JobPhase> kPhases[] = {
    {"QUEUED", JobPhase::kQueued},       {"RUNNING", JobPhase::kRunning},
    {"SUCCEEDED", JobPhase::kSucceeded}, {"FAILED", JobPhase::kFailed},
    {"CANCELLED", JobPhase::kCancelled},
};

std::string RecordKey(const std::string& id) { return "qs:v1:jobrec:" + id; }
std::string EventsKey(const std::string& id) { return "qs:v1:job:" + id + ":events"; }

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A job id: time-ordered and random, valid as a store key.
std::string NewJobId() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  std::ostringstream s;
  s << std::hex << NowMs() << "-" << (rng() & 0xffffffffffULL);
  return s.str();
}


// Every blob reference in a spec: the model files and blob data sources.
std::vector<std::string> BlobReferences(const json& spec) {
  std::vector<std::string> refs;
  auto add = [&](const json& section, const char* key) {
    if (section.is_object() && section.contains(key) && section.at(key).is_string()) {
      const std::string v = section.at(key).get<std::string>();
      if (v.rfind("blob:", 0) == 0) refs.push_back(v);
    }
  };
  if (spec.contains("model")) {
    add(spec.at("model"), "config");
    add(spec.at("model"), "weights");
  }
  for (const char* s : {"calibration", "validation", "test"}) {
    if (spec.contains(s)) add(spec.at(s), "source");
  }
  return refs;
}


}  // namespace

const char* ToString(JobPhase p) { return EnumName(p, kPhases); }

bool IsTerminal(JobPhase p) {
  return p == JobPhase::kSucceeded || p == JobPhase::kFailed || p == JobPhase::kCancelled;
}

json ToJson(const JobRecord& r) {
  json artifacts = json::object();
  for (const auto& [file, d] : r.artifacts) artifacts[file] = {{"sha256", d.sha256}, {"size", d.size}};
  return {{"id", r.id},
          {"phase", ToString(r.phase)},
          {"spec", r.spec},
          {"spec_digest", r.spec_digest},
          {"create_ms", r.create_ms},
          {"start_ms", r.start_ms},
          {"end_ms", r.end_ms},
          {"stage", r.stage},
          {"done", r.done},
          {"total", r.total},
          {"error_code", static_cast<int>(r.error.code())},
          {"error", r.error.message()},
          {"cancel_requested", r.cancel_requested},
          {"summary", r.summary},
          {"artifacts", artifacts},
          {"seq", r.seq}};
}

StatusOr<JobRecord> JobRecordFromJson(const json& j) {
  JobRecord r;
  try {
    r.id = j.at("id").get<std::string>();
    QS_ASSIGN_OR_RETURN(r.phase, ParseEnum(j.at("phase").get<std::string>(), "job phase", kPhases));
    r.spec = j.at("spec");
    r.spec_digest = j.at("spec_digest").get<std::string>();
    r.create_ms = j.at("create_ms").get<int64_t>();
    r.start_ms = j.at("start_ms").get<int64_t>();
    r.end_ms = j.at("end_ms").get<int64_t>();
    r.stage = j.at("stage").get<std::string>();
    r.done = j.at("done").get<int64_t>();
    r.total = j.at("total").get<int64_t>();
    const int code = j.at("error_code").get<int>();
    if (code != 0) r.error = Status(static_cast<StatusCode>(code), j.at("error").get<std::string>());
    r.cancel_requested = j.at("cancel_requested").get<bool>();
    r.summary = j.at("summary").get<std::string>();
    for (const auto& [file, d] : j.at("artifacts").items()) {
      r.artifacts[file] = {d.at("sha256").get<std::string>(), d.at("size").get<int64_t>()};
    }
    r.seq = j.at("seq").get<int64_t>();
  } catch (const json::exception& e) {
    return DataLossError(std::string("job record: ") + e.what());
  }
  return r;
}

JobManager::JobManager(std::shared_ptr<storage::RedisClient> redis,
                       storage::DocumentStore& evaluations, storage::DocumentStore& job_states,
                       storage::TaskQueue& queue, storage::BlobStore& blobs,
                       JobManagerOptions options)
    : redis_(std::move(redis)),
      evaluations_(evaluations),
      job_states_(job_states),
      queue_(queue),
      blobs_(blobs),
      options_(std::move(options)) {}

JobManager::~JobManager() { Stop(); }

Status JobManager::Save(JobRecord& record, bool event) {
  std::lock_guard<std::mutex> lock(save_mu_);
  std::vector<std::vector<std::string>> commands;
  if (event) ++record.seq;
  const std::string text = ToJson(record).dump();
  commands.push_back({"SET", RecordKey(record.id), text});
  if (event) {
    commands.push_back({"XADD", EventsKey(record.id), "MAXLEN", "~", "10000",
                        "0-" + std::to_string(record.seq), "time", std::to_string(NowMs()), "job",
                        text});
  }
  if (IsTerminal(record.phase)) {
    const std::string ttl = std::to_string(kFinishedTtlSeconds);
    commands.push_back({"EXPIRE", RecordKey(record.id), ttl});
    commands.push_back({"EXPIRE", EventsKey(record.id), ttl});
    commands.push_back({"ZREM", kActiveKey, record.id});
  }
  QS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(commands));
  for (auto& r : replies) {
    // A re-sent event after a lost reply is already there: that is fine.
    if (!r.ok() && r.status().message().find("equal or smaller") == std::string::npos) {
      return r.status();
    }
  }
  return OkStatus();
}

StatusOr<JobRecord> JobManager::Load(const std::string& id) {
  if (!storage::IsValidStoreKey(id)) return NotFoundError("no job '" + id.substr(0, 80) + "'");
  QS_ASSIGN_OR_RETURN(storage::RedisValue v, redis_->Command({"GET", RecordKey(id)}));
  if (v.is_nil()) return NotFoundError("no job '" + id + "'");
  const json j = json::parse(v.str, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return DataLossError("job " + id + ": record is not JSON");
  return JobRecordFromJson(j);
}

Status JobManager::CheckBlobs(const json& spec) {
  for (const std::string& ref : BlobReferences(spec)) {
    auto hex = storage::ParseBlobReference(ref);
    if (!hex) return InvalidArgumentError("'" + ref + "' is not a blob reference (blob:sha256:<64 hex>)");
    std::error_code ec;
    if (!std::filesystem::exists(blobs_.PathOf(*hex), ec)) {
      return NotFoundError("blob " + *hex + " named by the spec has not been uploaded");
    }
  }
  return OkStatus();
}

bool IsValidRequestId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  }
  return true;
}

StatusOr<JobSpec> CheckJobRequest(const json& spec) {
  QS_ASSIGN_OR_RETURN(JobSpec parsed, ParseJobSpec(spec, ""));
  QS_RETURN_IF_ERROR(CheckRequestBudget(parsed));
  return parsed;
}

StatusOr<ListQuery> CheckListQuery(int page_size, const std::string& page_token) {
  if (page_size < 0 || page_size > 1000) return InvalidArgumentError("page_size must be 0-1000");
  ListQuery q;
  if (page_size > 0) q.page_size = page_size;
  if (!page_token.empty()) {
    const auto start = ParseInt64(page_token);
    if (!start || *start < 0 || *start > (int64_t{1} << 40)) {
      return InvalidArgumentError("invalid page_token");
    }
    q.start = *start;
  }
  return q;
}

Status CheckRequestBudget(const JobSpec& spec) {
  auto over = [](const std::string& what, size_t n, size_t limit) {
    return ResourceExhaustedError(what + ": " + std::to_string(n) + " is over the service's limit of " +
                                  std::to_string(limit));
  };
  const CandidateSpace& s = spec.space;
  for (const auto& [name, n] : std::vector<std::pair<std::string, size_t>>{
           {"search.weight_methods", s.weight_methods.size()},
           {"search.weight_bits", s.weight_bits.size()},
           {"search.weight_granularities", s.weight_granularities.size()},
           {"search.weight_calibrators", s.weight_calibrators.size()},
           {"search.activation_bits", s.activation_bits.size()},
           {"search.activation_calibrators", s.activation_calibrators.size()},
           {"search.softmax_quantizers", s.softmax_quantizers.size()},
           {"search.reparam", s.reparam.size()}}) {
    if (n > kMaxListEntries) return over(name + " entries", n, kMaxListEntries);
  }
  if (s.skip.size() + s.pin.size() > kMaxSiteEntries) {
    return over("search.skip and search.pin entries", s.skip.size() + s.pin.size(), kMaxSiteEntries);
  }
  if (spec.calibration_count > kMaxCalibrationImages) {
    return over("calibration.count", static_cast<size_t>(spec.calibration_count), kMaxCalibrationImages);
  }
  if (spec.max_validations > kMaxValidations) {
    return over("accuracy.max_validations", static_cast<size_t>(spec.max_validations), kMaxValidations);
  }
  return OkStatus();
}

StatusOr<JobRecord> JobManager::Create(const json& spec, const std::string& request_id) {
  // The same checks `qsearch run` makes, and the service's budget, before anything is recorded.
  QS_RETURN_IF_ERROR(CheckJobRequest(spec).status());
  QS_RETURN_IF_ERROR(CheckBlobs(spec));
  QS_ASSIGN_OR_RETURN(storage::RedisValue active, redis_->Command({"ZCARD", kActiveKey}));
  if (active.integer >= options_.max_active_jobs) {
    return ResourceExhaustedError(std::to_string(active.integer) +
                                  " jobs are queued or running, the service's limit (" +
                                  std::to_string(options_.max_active_jobs) + "); retry later");
  }
  JobRecord r;
  r.spec = spec;
  r.spec_digest = Sha256Hex(spec.dump());
  if (!request_id.empty()) {
    if (!IsValidRequestId(request_id)) {
      return InvalidArgumentError("request_id must be 1-64 characters of [0-9a-zA-Z_-]");
    }
    const std::string key = "qs:v1:idem:" + request_id;
    const std::string id = NewJobId();
    QS_ASSIGN_OR_RETURN(storage::RedisValue set,
                        redis_->Command({"SET", key, id + " " + r.spec_digest, "NX", "EX",
                                         std::to_string(options_.request_id_ttl.count())}));
    if (set.is_nil()) {
      QS_ASSIGN_OR_RETURN(storage::RedisValue first, redis_->Command({"GET", key}));
      const auto space = first.str.find(' ');
      if (first.str.substr(space + 1) != r.spec_digest) {
        return Status(StatusCode::kAlreadyExists,
                      "request_id " + request_id + " was used for another spec");
      }
      // The first request may still be recording its job; give it a moment.
      for (int i = 0; i < 50; ++i) {
        auto existing = Load(first.str.substr(0, space));
        if (existing.ok() || existing.status().code() != StatusCode::kNotFound) return existing;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      return Status(StatusCode::kUnavailable, "request " + request_id + " is still being recorded");
    }
    r.id = id;
  } else {
    r.id = NewJobId();
  }
  r.create_ms = NowMs();
  QS_RETURN_IF_ERROR(Save(r));
  QS_ASSIGN_OR_RETURN(auto added,
                      redis_->Pipeline({{"ZADD", kJobsKey, std::to_string(r.create_ms), r.id},
                                        {"ZADD", kActiveKey, std::to_string(r.create_ms), r.id}}));
  for (auto& a : added) QS_RETURN_IF_ERROR(a.status());
  if (options_.on_phase) options_.on_phase(JobPhase::kQueued, JobPhase::kQueued);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++created_;
  }
  wake_.notify_all();
  return r;
}

StatusOr<JobRecord> JobManager::Get(const std::string& id) { return Load(id); }

StatusOr<JobPage> JobManager::List(int page_size, const std::string& page_token,
                                   std::optional<JobPhase> state) {
  QS_ASSIGN_OR_RETURN(const ListQuery query, CheckListQuery(page_size, page_token));
  page_size = query.page_size;
  int64_t start = query.start;
  JobPage page;
  // Newest first; a state filter reads on until the page is full.
  while (static_cast<int>(page.jobs.size()) < page_size) {
    const int64_t batch = std::max(page_size, 100);
    QS_ASSIGN_OR_RETURN(storage::RedisValue ids,
                        redis_->Command({"ZREVRANGE", kJobsKey, std::to_string(start),
                                         std::to_string(start + batch - 1)}));
    if (ids.elements.empty()) return page;
    for (const auto& idv : ids.elements) {
      ++start;
      auto r = Load(idv.str);
      if (!r.ok()) {
        if (r.status().code() == StatusCode::kNotFound) {
          (void)redis_->Command({"ZREM", kJobsKey, idv.str});  // expired
          --start;
          continue;
        }
        return r.status();
      }
      if (state && r->phase != *state) continue;
      page.jobs.push_back(std::move(*r));
      if (static_cast<int>(page.jobs.size()) == page_size) {
        page.next_page_token = std::to_string(start);
        return page;
      }
    }
  }
  return page;
}

StatusOr<JobRecord> JobManager::Cancel(const std::string& id) {
  QS_ASSIGN_OR_RETURN(JobRecord r, Load(id));
  if (IsTerminal(r.phase)) {
    return FailedPreconditionError("job " + id + " has already ended (" + ToString(r.phase) + ")");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (running_.count(id)) {
      cancel_.insert(id);
      r.cancel_requested = true;
      QS_RETURN_IF_ERROR(Save(r));
      return r;
    }
    // Not running here: it ends now (a runner that picks it later finds it cancelled).
    r.phase = JobPhase::kCancelled;
    r.end_ms = NowMs();
    r.error = Status(StatusCode::kCancelled, "cancelled before it ran");
    QS_RETURN_IF_ERROR(Save(r));
  }
  QS_RETURN_IF_ERROR(queue_.CancelJob(id));
  if (options_.on_phase) options_.on_phase(JobPhase::kQueued, JobPhase::kCancelled);
  return r;
}

StatusOr<std::vector<JobEvent>> JobManager::Events(const std::string& id, int64_t after_seq,
                                                   std::chrono::milliseconds wait) {
  QS_ASSIGN_OR_RETURN(JobRecord r, Load(id));
  (void)r;
  QS_ASSIGN_OR_RETURN(
      storage::RedisValue v,
      redis_->Command({"XREAD", "COUNT", "100", "BLOCK", std::to_string(std::max<int64_t>(1, wait.count())),
                       "STREAMS", EventsKey(id), "0-" + std::to_string(std::max<int64_t>(0, after_seq))},
                      wait));
  std::vector<JobEvent> events;
  if (v.is_nil() || v.elements.empty()) return events;
  for (const auto& entry : v.elements[0].elements[1].elements) {
    JobEvent e;
    const std::string& entry_id = entry.elements[0].str;
    e.seq = std::strtoll(entry_id.substr(entry_id.find('-') + 1).c_str(), nullptr, 10);
    const auto& fields = entry.elements[1].elements;
    for (size_t i = 0; i + 1 < fields.size(); i += 2) {
      if (fields[i].str == "time") e.time_ms = std::strtoll(fields[i + 1].str.c_str(), nullptr, 10);
      if (fields[i].str == "job") {
        const json j = json::parse(fields[i + 1].str, nullptr, false);
        QS_ASSIGN_OR_RETURN(e.job, JobRecordFromJson(j));
      }
    }
    events.push_back(std::move(e));
  }
  return events;
}

std::map<JobPhase, int64_t> JobManager::Counts() {
  std::map<JobPhase, int64_t> counts = {{JobPhase::kQueued, 0}, {JobPhase::kRunning, 0}};
  auto ids = redis_->Command({"ZRANGE", kActiveKey, "0", "-1"});
  if (!ids.ok()) return counts;
  for (const auto& id : ids->elements) {
    auto r = Load(id.str);
    if (r.ok() && !IsTerminal(r->phase)) ++counts[r->phase];
  }
  return counts;
}

Status JobManager::Start() {
  // Runners take every job not yet ended, oldest first: RUNNING ones resume from their state.
  QS_RETURN_IF_ERROR(redis_->Command({"PING"}).status());
  std::lock_guard<std::mutex> lock(mu_);
  stop_ = false;
  for (int i = 0; i < std::max(1, options_.max_running); ++i) {
    runners_.emplace_back([this] { RunnerLoop(); });
  }
  return OkStatus();
}

void JobManager::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (runners_.empty()) return;
    stop_ = true;
    for (const auto& id : running_) cancel_.insert(id);
  }
  wake_.notify_all();
  for (auto& t : runners_) t.join();
  runners_.clear();
}

void JobManager::RunnerLoop() {
  while (true) {
    std::string next;
    uint64_t seen;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
      seen = created_;
    }
    // The oldest job not ended and not running here.
    auto ids = redis_->Command({"ZRANGE", kActiveKey, "0", "-1"});
    if (ids.ok()) {
      for (const auto& idv : ids->elements) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (running_.count(idv.str)) continue;
        }
        auto r = Load(idv.str);
        if (!r.ok() || IsTerminal(r->phase)) {
          if (r.ok() || r.status().code() == StatusCode::kNotFound) {
            (void)redis_->Command({"ZREM", kActiveKey, idv.str});
          }
          continue;
        }
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) return;
        if (running_.insert(idv.str).second) {
          next = idv.str;
          break;
        }
      }
    }
    if (next.empty()) {
      std::unique_lock<std::mutex> lock(mu_);
      // A new job wakes the runners; the timeout catches jobs another path made runnable.
      wake_.wait_for(lock, std::chrono::milliseconds(500), [&] { return stop_ || created_ != seen; });
      continue;
    }
    RunJob(next);
    std::lock_guard<std::mutex> lock(mu_);
    running_.erase(next);
    cancel_.erase(next);
  }
}

void JobManager::RunJob(const std::string& id) {
  auto loaded = Load(id);
  if (!loaded.ok() || IsTerminal(loaded->phase)) return;
  JobRecord r = std::move(*loaded);
  const JobPhase before = r.phase;
  if (r.phase == JobPhase::kQueued) {
    r.phase = JobPhase::kRunning;
    r.start_ms = NowMs();
    if (!Save(r).ok()) return;
    if (options_.on_phase) options_.on_phase(before, r.phase);
  }
  Status s = Execute(r);
  bool stopping;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping = stop_;
  }
  // A scheduler shutting down leaves its jobs RUNNING, for the next one to resume.
  if (stopping && s.code() == StatusCode::kCancelled && !r.cancel_requested) return;
  r.phase = s.ok() ? JobPhase::kSucceeded
            : s.code() == StatusCode::kCancelled ? JobPhase::kCancelled
                                                 : JobPhase::kFailed;
  r.error = s;
  r.end_ms = NowMs();
  (void)Save(r);
  if (options_.on_phase) options_.on_phase(JobPhase::kRunning, r.phase);
  (void)queue_.ForgetJob(id);
  (void)job_states_.Delete(id);
}

Status JobManager::Execute(JobRecord& r) {
  QS_ASSIGN_OR_RETURN(JobSpec spec, ParseJobSpec(r.spec, ""));
  SearchOptions options;
  options.dispatch_window = options_.dispatch_window;
  options.prefetch_validation = true;
  options.deadline = Clock::now() + options_.job_deadline;
  const std::string id = r.id;
  options.cancelled = [this, id, &r] {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancel_.count(id)) {
      r.cancel_requested = r.cancel_requested || !stop_;
      return true;
    }
    return false;
  };
  auto last = Clock::now() - options_.progress_interval;
  options.progress = [&](const std::string& stage, size_t done, size_t total) {
    const auto now = Clock::now();
    if (stage == r.stage && done < total && now - last < options_.progress_interval) return;
    last = now;
    r.stage = stage;
    r.done = static_cast<int64_t>(done);
    r.total = static_cast<int64_t>(total);
    (void)Save(r);
  };
  const auto start = Clock::now();
  QS_ASSIGN_OR_RETURN(SearchResult result,
                      RunSearch(id, spec, evaluations_, job_states_, queue_, options));
  options.progress("artifacts", 0, 1);
  const auto artifacts_start = Clock::now();
  // The worker publishes the weights into the blob store it shares with the scheduler.
  QS_ASSIGN_OR_RETURN(
      std::string written,
      RunTask(queue_, id,
              RecipeRequest(TaskKind::kWriteWeights, spec, result.recipe, result.facts.sites, ""),
              options));
  const json w = json::parse(written, nullptr, false);
  if (!w.is_object() || !w.contains("sha256")) {
    return InternalError("write_weights returned no blob: " + written.substr(0, 200));
  }
  r.artifacts["weights.safetensors"] = {w.at("sha256").get<std::string>(), w.at("size").get<int64_t>()};
  for (const auto& [name, text] : ArtifactDocuments(spec, result)) {
    QS_ASSIGN_OR_RETURN(r.artifacts[name], blobs_.PutBytes(text));
  }
  const double artifacts_seconds =
      std::chrono::duration<double>(Clock::now() - artifacts_start).count();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  QS_ASSIGN_OR_RETURN(r.artifacts["metrics.json"],
                      blobs_.PutBytes(MetricsDocument(spec, result, artifacts_seconds, wall).dump(2) + "\n"));
  r.summary = SummaryLine(result);
  options.progress("artifacts", 1, 1);
  return OkStatus();
}

}  // namespace qs::scheduler
