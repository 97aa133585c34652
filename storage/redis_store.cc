#include "storage/redis_store.h"

#include <unistd.h>

#include <atomic>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

namespace qs::storage {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

class RedisDocumentStore : public DocumentStore {
 public:
  RedisDocumentStore(std::shared_ptr<RedisClient> redis, std::string prefix, std::chrono::seconds ttl)
      : redis_(std::move(redis)), prefix_(std::move(prefix)), ttl_(ttl) {}

  StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    QS_RETURN_IF_ERROR(Check(key));
    QS_ASSIGN_OR_RETURN(RedisValue v, redis_->Command({"GET", prefix_ + key}));
    if (v.is_nil()) return std::optional<std::string>();
    return std::optional<std::string>(std::move(v.str));
  }

  Status Put(const std::string& key, const std::string& value) override {
    QS_RETURN_IF_ERROR(Check(key));
    std::vector<std::string> cmd = {"SET", prefix_ + key, value};
    if (ttl_.count() > 0) cmd.insert(cmd.end(), {"EX", std::to_string(ttl_.count())});
    return redis_->Command(cmd).status();
  }

  Status Delete(const std::string& key) override {
    QS_RETURN_IF_ERROR(Check(key));
    return redis_->Command({"DEL", prefix_ + key}).status();
  }

 private:
  static Status Check(const std::string& key) {
    if (!IsValidStoreKey(key)) {
      return InvalidArgumentError("store key '" + key.substr(0, 40) +
                                  "' is not 1-128 characters of [0-9a-zA-Z_-]");
    }
    return OkStatus();
  }

  std::shared_ptr<RedisClient> redis_;
  const std::string prefix_;
  const std::chrono::seconds ttl_;
};

// Shared by the scripts that end a task: KEYS = stream, known, outcomes, attempts, cancelled,
// notify, dead-letter stream; ARGV[1] = the consumer group. Records the outcome unless one
// exists (a dead task also goes to the dead-letter stream, for operators), forgets the task as
// live, acknowledges and deletes its stream entry, and wakes waiters.
constexpr char kFinish[] = R"lua(
local function finish(id, entry, state, result, code, message, attempts)
  local first = redis.call('HSETNX', KEYS[3], id, cjson.encode({state = state, result = result,
      code = code, message = message, attempts = attempts}))
  if first == 1 and state == 'dead' then
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', '100000', '*', 'outcomes', KEYS[3], 'id', id,
               'code', code, 'message', message, 'attempts', attempts)
  end
  redis.call('SREM', KEYS[2], id)
  if entry ~= '' then
    redis.call('XACK', KEYS[1], ARGV[1], entry)
    redis.call('XDEL', KEYS[1], entry)
  end
  redis.call('LPUSH', KEYS[6], '1')
  redis.call('LTRIM', KEYS[6], 0, 0)
end
)lua";

// KEYS: stream, known, outcomes. ARGV: job, id, payload. 1 when queued, 0 when already live or
// finished.
constexpr char kPush[] = R"lua(
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'id', ARGV[2], 'payload', ARGV[3])
return 1
)lua";

// ARGV: group, entry, id, max attempts. {the delivery's attempt (0-based), the entry's delivery
// count (which names this delivery in its receipt)}, or {-1} (job cancelled), {-2} (dead: leases
// lost on every attempt), {-3} (the task had an outcome already).
constexpr char kDeliver[] = R"lua(
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  return {-3}
end
local n = redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
if redis.call('EXISTS', KEYS[5]) == 1 then
  finish(ARGV[3], ARGV[2], 'cancelled', '', 'CANCELLED', 'job cancelled', n - 1)
  return {-1}
end
if n > tonumber(ARGV[4]) then
  finish(ARGV[3], ARGV[2], 'dead', '', 'UNAVAILABLE',
         'lease expired on every attempt (' .. (n - 1) .. '): the worker was lost', n - 1)
  return {-2}
end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
return {n - 1, p[1][4]}
)lua";

// ARGV: group, entry, id, result.
constexpr char kComplete[] = R"lua(
local n = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '1')
finish(ARGV[3], ARGV[2], 'done', ARGV[4], 'OK', '', n)
return 1
)lua";

// ARGV: group, entry, id, consumer, job, payload, max attempts, transient (1/0), code, message,
// delivery count. 0 when the caller no longer holds the delivery, 2 when queued again, 1 when
// finished.
constexpr char kFail[] = R"lua(
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[4] or tostring(p[1][4]) ~= ARGV[11] then return 0 end
local n = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '1')
if redis.call('EXISTS', KEYS[5]) == 1 then
  finish(ARGV[3], ARGV[2], 'cancelled', '', 'CANCELLED', 'job cancelled', n)
  return 1
end
if ARGV[8] == '1' and n < tonumber(ARGV[7]) then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('XADD', KEYS[1], '*', 'job', ARGV[5], 'id', ARGV[3], 'payload', ARGV[6])
  return 2
end
finish(ARGV[3], ARGV[2], 'dead', '', ARGV[9], ARGV[10], n)
return 1
)lua";

// ARGV: group, entry, id, consumer, job, payload, delivery count. 0 when the caller no longer
// holds the delivery; 1 when queued again, the delivery not counted as an attempt.
constexpr char kRelease[] = R"lua(
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[4] or tostring(p[1][4]) ~= ARGV[7] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[4], ARGV[3], -1)
redis.call('XADD', KEYS[1], '*', 'job', ARGV[5], 'id', ARGV[3], 'payload', ARGV[6])
return 1
)lua";

// KEYS: stream. ARGV: group, entry, consumer, delivery count. 1 when renewed, 0 when no longer
// held (taken over, or finished).
constexpr char kHeartbeat[] = R"lua(
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] or tostring(p[1][4]) ~= ARGV[4] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
)lua";

// KEYS: known, outcomes, cancelled, notify.
constexpr char kCancel[] = R"lua(
redis.call('SET', KEYS[3], '1')
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('HSETNX', KEYS[2], id, cjson.encode({state = 'cancelled', result = '',
      code = 'CANCELLED', message = 'job cancelled', attempts = 0}))
end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return 1
)lua";

StatusOr<TaskOutcome> ParseOutcome(const std::string& text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return DataLossError("task outcome is not a JSON object");
  TaskOutcome o;
  try {
    const std::string state = j.at("state").get<std::string>();
    o.state = state == "done" ? TaskState::kDone
              : state == "dead" ? TaskState::kDead
                                : TaskState::kCancelled;
    o.result = j.at("result").get<std::string>();
    o.attempts = j.at("attempts").get<int>();
    const auto code = StatusCodeFromName(j.at("code").get<std::string>());
    if (o.state != TaskState::kDone) {
      o.error = Status(code && *code != StatusCode::kOk ? *code : StatusCode::kUnknown,
                       j.at("message").get<std::string>());
    }
  } catch (const json::exception& e) {
    return DataLossError(std::string("task outcome: ") + e.what());
  }
  return o;
}

class RedisTaskQueue : public TaskQueue {
 public:
  RedisTaskQueue(std::shared_ptr<RedisClient> redis, RedisQueueOptions options)
      : redis_(std::move(redis)), options_(std::move(options)) {
    if (options_.consumer.empty()) {
      char host[256] = {0};
      ::gethostname(host, sizeof(host) - 1);
      options_.consumer = std::string(host) + "-" + std::to_string(::getpid());
    }
    options_.max_attempts = std::max(1, options_.max_attempts);
  }

  Status CreateGroup() {
    auto r = redis_->Command({"XGROUP", "CREATE", options_.stream, options_.group, "0", "MKSTREAM"});
    if (!r.ok() && r.status().message().find("BUSYGROUP") == std::string::npos) return r.status();
    return OkStatus();
  }

  Status Push(const Task& task) override { return PushAll({task}); }

  Status PushAll(const std::vector<Task>& tasks) override {
    if (closed_) return FailedPreconditionError("task queue is closed");
    std::vector<std::vector<std::string>> commands;
    for (const Task& t : tasks) {
      if (t.job.empty() || t.id.empty()) return InvalidArgumentError("a task needs a job and an id");
      commands.push_back({"EVAL", kPush, "3", options_.stream, Key(t.job, "known"),
                          Key(t.job, "outcomes"), t.job, t.id, t.payload});
    }
    if (commands.empty()) return OkStatus();
    QS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(commands));
    for (auto& r : replies) QS_RETURN_IF_ERROR(r.status());
    return OkStatus();
  }

  StatusOr<std::optional<Task>> Pop(std::chrono::milliseconds wait) override {
    const auto until = Clock::now() + wait;
    const auto slice = std::max(std::chrono::milliseconds(50), options_.lease / 4);
    while (!closed_) {
      if (Clock::now() - last_reclaim_.load() >= slice) {
        last_reclaim_ = Clock::now();
        QS_ASSIGN_OR_RETURN(auto reclaimed, Reclaim());
        if (reclaimed) return reclaimed;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      const auto block = std::max(std::chrono::milliseconds(1), std::min(left, slice));
      auto read =
          redis_->Command({"XREADGROUP", "GROUP", options_.group, options_.consumer, "COUNT", "1",
                           "BLOCK", std::to_string(block.count()), "STREAMS", options_.stream, ">"},
                          block);
      if (!read.ok() && read.status().message().find("NOGROUP") != std::string::npos) {
        // Redis lost its data (restarted without persistence): start the group again.
        QS_RETURN_IF_ERROR(CreateGroup());
        continue;
      }
      QS_ASSIGN_OR_RETURN(RedisValue r, std::move(read));
      // [[stream, [[entry, [field, value, ...]]]]], or nil when nothing came.
      if (!r.is_nil() && !r.elements.empty() && r.elements[0].elements.size() == 2) {
        for (const RedisValue& entry : r.elements[0].elements[1].elements) {
          QS_ASSIGN_OR_RETURN(auto task, Deliver(entry));
          if (task) return task;
        }
      }
      if (Clock::now() >= until) break;
    }
    return std::optional<Task>();
  }

  Status Heartbeat(const Task& task) override {
    QS_ASSIGN_OR_RETURN(Receipt receipt, ParseReceipt(task));
    QS_ASSIGN_OR_RETURN(RedisValue r, redis_->Eval(kHeartbeat, {options_.stream},
                                                   {options_.group, receipt.entry, receipt.consumer,
                                                    receipt.delivery}));
    if (r.integer != 1) {
      return NotFoundError("task " + task.id + " of job " + task.job + " is no longer leased");
    }
    return OkStatus();
  }

  Status Complete(const Task& task, const std::string& result) override {
    QS_ASSIGN_OR_RETURN(Receipt receipt, ParseReceipt(task));
    return redis_
        ->Eval(std::string(kFinish) + kComplete, LifecycleKeys(task.job),
               {options_.group, receipt.entry, task.id, result})
        .status();
  }

  Status Fail(const Task& task, const Status& error) override {
    QS_ASSIGN_OR_RETURN(Receipt receipt, ParseReceipt(task));
    QS_ASSIGN_OR_RETURN(
        RedisValue r,
        redis_->Eval(std::string(kFinish) + kFail, LifecycleKeys(task.job),
                     {options_.group, receipt.entry, task.id, receipt.consumer, task.job,
                      task.payload, std::to_string(options_.max_attempts),
                      IsTransient(error.code()) ? "1" : "0", StatusCodeName(error.code()),
                      error.message(), receipt.delivery}));
    if (r.integer == 0) {
      return NotFoundError("task " + task.id + " of job " + task.job + " is no longer leased");
    }
    return OkStatus();
  }

  Status Release(const Task& task) override {
    QS_ASSIGN_OR_RETURN(Receipt receipt, ParseReceipt(task));
    QS_ASSIGN_OR_RETURN(RedisValue r,
                        redis_->Eval(kRelease, LifecycleKeys(task.job),
                                     {options_.group, receipt.entry, task.id, receipt.consumer,
                                      task.job, task.payload, receipt.delivery}));
    if (r.integer == 0) {
      return NotFoundError("task " + task.id + " of job " + task.job + " is no longer leased");
    }
    return OkStatus();
  }

  StatusOr<std::map<std::string, TaskOutcome>> Outcomes(const std::string& job) override {
    QS_ASSIGN_OR_RETURN(RedisValue r, redis_->Command({"HGETALL", Key(job, "outcomes")}));
    std::map<std::string, TaskOutcome> out;
    for (size_t i = 0; i + 1 < r.elements.size(); i += 2) {
      QS_ASSIGN_OR_RETURN(TaskOutcome o, ParseOutcome(r.elements[i + 1].str));
      out[r.elements[i].str] = std::move(o);
    }
    return out;
  }

  void WaitForOutcome(const std::string& job, std::chrono::milliseconds wait) override {
    const double seconds = std::max<int64_t>(1, wait.count()) / 1000.0;
    auto r = redis_->Command({"BLPOP", Key(job, "notify"), std::to_string(seconds)}, wait);
    if (!r.ok()) std::this_thread::sleep_for(std::min(wait, std::chrono::milliseconds(100)));
  }

  Status CancelJob(const std::string& job) override {
    return redis_
        ->Eval(kCancel,
               {Key(job, "known"), Key(job, "outcomes"), Key(job, "cancelled"), Key(job, "notify")},
               {})
        .status();
  }

  StatusOr<bool> Cancelled(const std::string& job) override {
    QS_ASSIGN_OR_RETURN(RedisValue r, redis_->Command({"EXISTS", Key(job, "cancelled")}));
    return r.integer == 1;
  }

  Status ForgetJob(const std::string& job) override {
    return redis_
        ->Command({"DEL", Key(job, "known"), Key(job, "outcomes"), Key(job, "attempts"),
                   Key(job, "cancelled"), Key(job, "notify")})
        .status();
  }

  void Close() override { closed_ = true; }

 private:
  // Names one delivery: the stream entry, who holds it, and the entry's delivery count (a lease
  // taken over by the same consumer is another delivery).
  struct Receipt {
    std::string entry, consumer, delivery;
  };

  std::string Key(const std::string& job, const char* sub) const {
    return "qs:v1:job:" + job + ":" + sub;
  }

  std::vector<std::string> LifecycleKeys(const std::string& job) const {
    return {options_.stream,      Key(job, "known"),     Key(job, "outcomes"),
            Key(job, "attempts"), Key(job, "cancelled"), Key(job, "notify"),
            options_.stream + ":dead"};
  }

  static StatusOr<Receipt> ParseReceipt(const Task& task) {
    const auto first = task.receipt.find('|');
    const auto last = task.receipt.rfind('|');
    if (first == std::string::npos || first == last) {
      return InvalidArgumentError("task " + task.id + " carries no delivery receipt");
    }
    return Receipt{task.receipt.substr(0, first), task.receipt.substr(first + 1, last - first - 1),
                   task.receipt.substr(last + 1)};
  }

  // Takes over one delivery idle past the lease, if there is one.
  StatusOr<std::optional<Task>> Reclaim() {
    QS_ASSIGN_OR_RETURN(
        RedisValue r,
        redis_->Command({"XAUTOCLAIM", options_.stream, options_.group, options_.consumer,
                         std::to_string(options_.lease.count()), "0-0", "COUNT", "1"}));
    // [next cursor, [[entry, [field, value, ...]]], [deleted ids]]
    if (r.elements.size() < 2) return std::optional<Task>();
    for (const RedisValue& entry : r.elements[1].elements) {
      QS_ASSIGN_OR_RETURN(auto task, Deliver(entry));
      if (task) return task;
    }
    return std::optional<Task>();
  }

  // Counts the delivery of stream `entry` and returns its task, or nullopt when the task is not
  // to run (its job cancelled, its attempts spent, or finished already).
  StatusOr<std::optional<Task>> Deliver(const RedisValue& entry) {
    if (entry.elements.size() != 2) return std::optional<Task>();
    Task t;
    const std::string& entry_id = entry.elements[0].str;
    const auto& fields = entry.elements[1].elements;
    for (size_t i = 0; i + 1 < fields.size(); i += 2) {
      if (fields[i].str == "job") t.job = fields[i + 1].str;
      if (fields[i].str == "id") t.id = fields[i + 1].str;
      if (fields[i].str == "payload") t.payload = fields[i + 1].str;
    }
    if (t.job.empty() || t.id.empty()) {
      // Not a task this code wrote: drop it rather than deliver it forever.
      QS_RETURN_IF_ERROR(redis_->Command({"XACK", options_.stream, options_.group, entry_id}).status());
      return std::optional<Task>();
    }
    QS_ASSIGN_OR_RETURN(RedisValue n,
                        redis_->Eval(std::string(kFinish) + kDeliver, LifecycleKeys(t.job),
                                     {options_.group, entry_id, t.id,
                                      std::to_string(options_.max_attempts)}));
    if (n.elements.size() != 2) return std::optional<Task>();
    t.attempt = static_cast<int>(n.elements[0].integer);
    t.receipt = entry_id + "|" + options_.consumer + "|" + std::to_string(n.elements[1].integer);
    return std::optional<Task>(std::move(t));
  }

  std::shared_ptr<RedisClient> redis_;
  RedisQueueOptions options_;
  std::atomic<bool> closed_{false};
  std::atomic<Clock::time_point> last_reclaim_{Clock::time_point()};
};

}  // namespace

std::unique_ptr<DocumentStore> NewRedisDocumentStore(std::shared_ptr<RedisClient> redis,
                                                     std::string prefix, std::chrono::seconds ttl) {
  return std::make_unique<RedisDocumentStore>(std::move(redis), std::move(prefix), ttl);
}

StatusOr<std::unique_ptr<TaskQueue>> NewRedisTaskQueue(std::shared_ptr<RedisClient> redis,
                                                       const RedisQueueOptions& options) {
  auto queue = std::make_unique<RedisTaskQueue>(std::move(redis), options);
  QS_RETURN_IF_ERROR(queue->CreateGroup());
  return std::unique_ptr<TaskQueue>(std::move(queue));
}

}  // namespace qs::storage
