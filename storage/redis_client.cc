#include "storage/redis_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace qs::storage {
namespace {

using Clock = std::chrono::steady_clock;

timeval ToTimeval(std::chrono::milliseconds ms) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

// Errors that pass on their own: Redis loading its data after a restart, a busy script.
bool RetryableReply(const std::string& error) {
  for (const char* prefix : {"LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY "}) {
    if (error.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

Status ErrorReplyStatus(const std::string& error) {
  const std::string message = "redis: " + error;
  if (RetryableReply(error)) return Status(StatusCode::kUnavailable, message);
  if (error.rfind("OOM", 0) == 0) return ResourceExhaustedError(message);
  if (error.rfind("NOAUTH", 0) == 0 || error.rfind("WRONGPASS", 0) == 0) {
    return Status(StatusCode::kPermissionDenied, message);
  }
  return FailedPreconditionError(message);
}

StatusOr<RedisValue> Convert(const redisReply* r) {
  RedisValue v;
  switch (r->type) {
    case REDIS_REPLY_ERROR:
      return ErrorReplyStatus(std::string(r->str, r->len));
    case REDIS_REPLY_NIL:
      return v;
    case REDIS_REPLY_STRING:
      v.type = RedisValue::Type::kString;
      v.str.assign(r->str, r->len);
      return v;
    case REDIS_REPLY_STATUS:
      v.type = RedisValue::Type::kStatus;
      v.str.assign(r->str, r->len);
      return v;
    case REDIS_REPLY_INTEGER:
      v.type = RedisValue::Type::kInteger;
      v.integer = r->integer;
      return v;
    case REDIS_REPLY_ARRAY:
      v.type = RedisValue::Type::kArray;
      for (size_t i = 0; i < r->elements; ++i) {
        // An error inside an array (a script's) fails the whole reply.
        QS_ASSIGN_OR_RETURN(RedisValue e, Convert(r->element[i]));
        v.elements.push_back(std::move(e));
      }
      return v;
    default:
      return InternalError("redis: unexpected reply type " + std::to_string(r->type));
  }
}

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

void ToArgv(const std::vector<std::string>& args, std::vector<const char*>* argv,
            std::vector<size_t>* lens) {
  argv->clear();
  lens->clear();
  for (const auto& a : args) {
    argv->push_back(a.data());
    lens->push_back(a.size());
  }
}

}  // namespace

struct RedisClient::Connection {
  redisContext* ctx = nullptr;
  bool broken = false;
  ~Connection() {
    if (ctx != nullptr) redisFree(ctx);
  }
  // UNAVAILABLE (and broken) when the connection failed; the converted reply otherwise.
  StatusOr<RedisValue> Take(redisReply* raw) {
    Reply reply(raw);
    if (!reply || ctx->err) {
      broken = true;
      return Status(StatusCode::kUnavailable,
                    std::string("redis: connection lost: ") + (ctx->err ? ctx->errstr : "no reply"));
    }
    return Convert(reply.get());
  }
};

std::string RedisAddress::ToString() const {
  return "redis://" + host + ":" + std::to_string(port) + "/" + std::to_string(db);
}

StatusOr<RedisAddress> ParseRedisUrl(const std::string& url) {
  const std::string scheme = "redis://";
  if (url.rfind(scheme, 0) != 0) {
    return InvalidArgumentError("redis address '" + url + "' must start with redis://");
  }
  std::string rest = url.substr(scheme.size());
  RedisAddress a;
  if (auto at = rest.rfind('@'); at != std::string::npos) {
    std::string auth = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (auto colon = auth.find(':'); colon != std::string::npos) auth = auth.substr(colon + 1);
    a.password = auth;
  }
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    const std::string db = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    if (!db.empty()) {
      char* end = nullptr;
      const long v = std::strtol(db.c_str(), &end, 10);
      if (*end != '\0' || v < 0 || v > 15) {
        return InvalidArgumentError("redis address '" + url + "': database '" + db +
                                    "' is not 0-15");
      }
      a.db = static_cast<int>(v);
    }
  }
  if (auto colon = rest.rfind(':'); colon != std::string::npos) {
    const std::string port = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
    char* end = nullptr;
    const long v = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || v < 1 || v > 65535) {
      return InvalidArgumentError("redis address '" + url + "': port '" + port + "' is not 1-65535");
    }
    a.port = static_cast<int>(v);
  }
  if (rest.empty()) return InvalidArgumentError("redis address '" + url + "' names no host");
  a.host = rest;
  return a;
}

RedisClient::RedisClient(RedisAddress address, RedisOptions options)
    : address_(std::move(address)), options_(options) {}

RedisClient::~RedisClient() = default;

StatusOr<std::unique_ptr<RedisClient>> RedisClient::Connect(const RedisAddress& address,
                                                            const RedisOptions& options) {
  std::unique_ptr<RedisClient> client(new RedisClient(address, options));
  QS_ASSIGN_OR_RETURN(auto c, client->Open());
  client->Release(std::move(c));
  return client;
}

StatusOr<std::unique_ptr<RedisClient::Connection>> RedisClient::Open() const {
  auto c = std::make_unique<Connection>();
  c->ctx = redisConnectWithTimeout(address_.host.c_str(), address_.port,
                                   ToTimeval(options_.connect_timeout));
  if (c->ctx == nullptr || c->ctx->err) {
    return Status(StatusCode::kUnavailable,
                  "redis: cannot connect to " + address_.ToString() + ": " +
                      (c->ctx ? c->ctx->errstr : "out of memory"));
  }
  redisSetTimeout(c->ctx, ToTimeval(options_.command_timeout));
  redisEnableKeepAlive(c->ctx);
  std::vector<std::vector<std::string>> setup;
  if (!address_.password.empty()) setup.push_back({"AUTH", address_.password});
  if (address_.db != 0) setup.push_back({"SELECT", std::to_string(address_.db)});
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& cmd : setup) {
    ToArgv(cmd, &argv, &lens);
    auto r = c->Take(static_cast<redisReply*>(
        redisCommandArgv(c->ctx, static_cast<int>(argv.size()), argv.data(), lens.data())));
    if (!r.ok()) return r.status().WithContext("redis " + cmd[0]);
  }
  return c;
}

StatusOr<std::unique_ptr<RedisClient::Connection>> RedisClient::Acquire() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
  }
  return Open();
}

void RedisClient::Release(std::unique_ptr<Connection> c) {
  if (c->broken) return;
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(std::move(c));
}

template <typename Fn>
auto RedisClient::WithRetry(Fn&& send) -> decltype(send(std::declval<Connection&>())) {
  const auto give_up = Clock::now() + options_.retry_for;
  auto backoff = std::chrono::milliseconds(20);
  while (true) {
    auto c = Acquire();
    Status failure;
    if (c.ok()) {
      auto result = send(**c);
      Release(std::move(*c));
      if (result.ok() || result.status().code() != StatusCode::kUnavailable) return result;
      failure = result.status();
    } else {
      failure = c.status();
    }
    if (failure.code() != StatusCode::kUnavailable || Clock::now() + backoff >= give_up) {
      return failure;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
}

StatusOr<RedisValue> RedisClient::Command(const std::vector<std::string>& args,
                                          std::chrono::milliseconds timeout) {
  if (args.empty()) return InvalidArgumentError("redis: empty command");
  return WithRetry([&](Connection& c) -> StatusOr<RedisValue> {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    ToArgv(args, &argv, &lens);
    if (timeout.count() > 0) redisSetTimeout(c.ctx, ToTimeval(timeout + options_.command_timeout));
    auto r = c.Take(static_cast<redisReply*>(
        redisCommandArgv(c.ctx, static_cast<int>(argv.size()), argv.data(), lens.data())));
    if (timeout.count() > 0 && !c.broken) redisSetTimeout(c.ctx, ToTimeval(options_.command_timeout));
    return r;
  });
}

StatusOr<std::vector<StatusOr<RedisValue>>> RedisClient::Pipeline(
    const std::vector<std::vector<std::string>>& commands) {
  using Replies = std::vector<StatusOr<RedisValue>>;
  return WithRetry([&](Connection& c) -> StatusOr<Replies> {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& cmd : commands) {
      ToArgv(cmd, &argv, &lens);
      if (redisAppendCommandArgv(c.ctx, static_cast<int>(argv.size()), argv.data(), lens.data()) !=
          REDIS_OK) {
        c.broken = true;
        return Status(StatusCode::kUnavailable, "redis: cannot queue a pipelined command");
      }
    }
    Replies replies;
    for (size_t i = 0; i < commands.size(); ++i) {
      void* raw = nullptr;
      if (redisGetReply(c.ctx, &raw) != REDIS_OK) raw = nullptr;
      auto r = c.Take(static_cast<redisReply*>(raw));
      if (c.broken) return r.status();
      replies.push_back(std::move(r));
    }
    return replies;
  });
}

StatusOr<RedisValue> RedisClient::Eval(const std::string& script,
                                       const std::vector<std::string>& keys,
                                       const std::vector<std::string>& args) {
  std::vector<std::string> cmd = {"EVAL", script, std::to_string(keys.size())};
  cmd.insert(cmd.end(), keys.begin(), keys.end());
  cmd.insert(cmd.end(), args.begin(), args.end());
  return Command(cmd);
}

}  // namespace qs::storage
