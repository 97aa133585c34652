// JobManager: the service's jobs, kept in Redis by their single writer, the scheduler process.
//
// A job is a record (state, spec, progress, timestamps, error, artifacts) under
// qs:v1:jobrec:<id>, listed by creation time in the sorted set qs:v1:jobs (and, until it ends, in
// qs:v1:jobs:active, which the runners and gauges scan), with every change appended
// to the stream qs:v1:job:<id>:events (entry id 0-<seq>, so watchers resume after a sequence
// number). Create only records and enqueues; runner threads take queued jobs oldest first, at
// most `max_running` at once, and run each through RunSearch's stages (whose own state is saved
// too) and then its artifacts. A restarted scheduler picks up every queued or running job where
// it stopped. Jobs share the workers through the task queue; each keeps at most
// `dispatch_window` evaluation tasks in it, so a small job's tasks are not queued behind all of a
// big one's.
//
//   JobManager jobs(redis, *evaluations, *job_states, *queue, *blobs, {});
//   QS_RETURN_IF_ERROR(jobs.Start());
//   QS_ASSIGN_OR_RETURN(JobRecord job, jobs.Create(spec_json, request_id));
#ifndef QS_SCHEDULER_JOB_MANAGER_H_
#define QS_SCHEDULER_JOB_MANAGER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/job_spec.h"
#include "common/status.h"
#include "storage/blob_store.h"
#include "storage/document_store.h"
#include "storage/redis_client.h"
#include "storage/task_queue.h"

namespace qs::scheduler {

enum class JobPhase { kQueued, kRunning, kSucceeded, kFailed, kCancelled };
const char* ToString(JobPhase p);
bool IsTerminal(JobPhase p);

struct JobRecord {
  std::string id;
  JobPhase phase = JobPhase::kQueued;
  nlohmann::json spec;  // the JSON spec (docs/search.md), blobs by reference
  std::string spec_digest;
  int64_t create_ms = 0, start_ms = 0, end_ms = 0;
  std::string stage;  // progress: the stage and its units done of total
  int64_t done = 0, total = 0;
  Status error;
  bool cancel_requested = false;
  std::string summary;  // the outcome in one line, when done
  std::map<std::string, storage::BlobDigest> artifacts;  // file name -> blob
  int64_t seq = 0;      // of the last event
};

nlohmann::json ToJson(const JobRecord& r);
StatusOr<JobRecord> JobRecordFromJson(const nlohmann::json& j);

struct JobEvent {
  int64_t seq = 0;
  int64_t time_ms = 0;
  JobRecord job;
};

struct JobPage {
  std::vector<JobRecord> jobs;
  std::string next_page_token;
};

// What one job may ask of the service; more is RESOURCE_EXHAUSTED (docs/limits.md). A spec's
// own checks bound each value; these bound the work a job can queue on shared workers.
inline constexpr size_t kMaxListEntries = 32;          // each candidate-space list
inline constexpr size_t kMaxSiteEntries = 10000;       // skip + pin entries
inline constexpr size_t kMaxCalibrationImages = 65536;  // calibration.count
inline constexpr size_t kMaxValidations = 64;          // accuracy.max_validations
Status CheckRequestBudget(const JobSpec& spec);
// The checks every new job passes before anything is recorded: the spec's own (ParseJobSpec,
// INVALID_ARGUMENT naming the field), then the budget above.
StatusOr<JobSpec> CheckJobRequest(const nlohmann::json& spec);
// Whether `id` could name a request: 1-64 characters of [0-9a-zA-Z_-].
bool IsValidRequestId(const std::string& id);

// A page of ListJobs: `page_size` 0 (meaning 50) to 1000, `page_token` empty or the offset a
// previous page returned (0..2^40). INVALID_ARGUMENT otherwise.
struct ListQuery {
  int page_size = 50;
  int64_t start = 0;
};
StatusOr<ListQuery> CheckListQuery(int page_size, const std::string& page_token);

struct JobManagerOptions {
  int max_running = 4;          // jobs running at once
  size_t dispatch_window = 16;  // evaluation tasks a job keeps queued at once
  std::chrono::seconds job_deadline{24 * 3600};
  int64_t max_active_jobs = 1000;  // queued + running; CreateJob past it is RESOURCE_EXHAUSTED
  std::chrono::milliseconds progress_interval{250};  // progress events at most this often
  std::chrono::seconds request_id_ttl{24 * 3600};
  // Hears every job state change (metrics). May be empty.
  std::function<void(JobPhase from, JobPhase to)> on_phase;
};

class JobManager {
 public:
  JobManager(std::shared_ptr<storage::RedisClient> redis, storage::DocumentStore& evaluations,
             storage::DocumentStore& job_states, storage::TaskQueue& queue,
             storage::BlobStore& blobs, JobManagerOptions options = {});
  ~JobManager();

  // Resumes every queued or running job and starts the runners.
  Status Start();
  // Stops the runners; running jobs stay RUNNING in Redis for the next scheduler to resume.
  void Stop();

  // Validates `spec` (INVALID_ARGUMENT naming the field; NOT_FOUND for a blob the store lacks;
  // RESOURCE_EXHAUSTED past the budget per job or with max_active_jobs already active), records
  // the job and queues it. With `request_id`, a retry returns the first job;
  // the same id with another spec is ALREADY_EXISTS.
  StatusOr<JobRecord> Create(const nlohmann::json& spec, const std::string& request_id);
  // NOT_FOUND for an unknown id.
  StatusOr<JobRecord> Get(const std::string& id);
  // Newest first; `state` filters when set. INVALID_ARGUMENT for a bad page size or token.
  StatusOr<JobPage> List(int page_size, const std::string& page_token,
                         std::optional<JobPhase> state);
  // Queued jobs end at once; running ones stop their tasks and end CANCELLED. A finished job is
  // FAILED_PRECONDITION.
  StatusOr<JobRecord> Cancel(const std::string& id);
  // Events after `after_seq`, waiting up to `wait` for one when there are none.
  StatusOr<std::vector<JobEvent>> Events(const std::string& id, int64_t after_seq,
                                         std::chrono::milliseconds wait);
  // Jobs queued and running (for metrics; ended ones are counted as they end).
  std::map<JobPhase, int64_t> Counts();

 private:
  Status Save(JobRecord& record, bool event = true);
  void RunnerLoop();
  void RunJob(const std::string& id);
  Status Execute(JobRecord& record);
  StatusOr<JobRecord> Load(const std::string& id);
  Status CheckBlobs(const nlohmann::json& spec);

  std::shared_ptr<storage::RedisClient> redis_;
  storage::DocumentStore& evaluations_;
  storage::DocumentStore& job_states_;
  storage::TaskQueue& queue_;
  storage::BlobStore& blobs_;
  const JobManagerOptions options_;

  std::mutex mu_;
  std::condition_variable wake_;
  std::set<std::string> running_;
  std::set<std::string> cancel_;  // cancellation asked of running jobs
  std::mutex save_mu_;            // one writer of records at a time
  bool stop_ = false;
  uint64_t created_ = 0;  // bumped by Create, so that idle runners wake at once
  std::vector<std::thread> runners_;
};

}  // namespace qs::scheduler

#endif  // QS_SCHEDULER_JOB_MANAGER_H_
