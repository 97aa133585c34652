// A small Redis client over hiredis: a pool of connections that reconnect on their own, commands
// as argument vectors (binary-safe), Lua scripts, and Redis errors mapped to Status.
//
// A command that fails for want of a connection (Redis restarting, a network blip) is retried
// with backoff for up to `retry_for` before it comes back UNAVAILABLE, so callers ride out a
// Redis restart; LOADING (Redis reading its append-only file) is waited out the same way. Every
// command this project sends is safe to repeat (scripts check before they write). Thread-safe:
// each command takes a connection of its own from the pool, so a blocking read in one thread does
// not hold up the others.
//
//   QS_ASSIGN_OR_RETURN(auto redis, RedisClient::Connect(*ParseRedisUrl("redis://127.0.0.1:6379/0")));
//   QS_ASSIGN_OR_RETURN(RedisValue v, redis->Command({"GET", "qs:v1:k"}));
#ifndef QS_STORAGE_REDIS_CLIENT_H_
#define QS_STORAGE_REDIS_CLIENT_H_

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"

struct redisContext;

namespace qs::storage {

struct RedisAddress {
  std::string host = "127.0.0.1";
  int port = 6379;
  int db = 0;
  std::string password;  // empty: no AUTH
  std::string ToString() const;  // the URL, without the password
};

// Parses redis://[:password@]host[:port][/db]. INVALID_ARGUMENT naming what is wrong.
StatusOr<RedisAddress> ParseRedisUrl(const std::string& url);

struct RedisOptions {
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds command_timeout{10000};
  // How long a command keeps trying while Redis cannot be reached.
  std::chrono::milliseconds retry_for{30000};
};

// One reply, owned. Error replies never appear here: they are a Status.
struct RedisValue {
  enum class Type { kNil, kString, kInteger, kArray, kStatus };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus
  int64_t integer = 0;
  std::vector<RedisValue> elements;

  bool is_nil() const { return type == Type::kNil; }
};

class RedisClient {
 public:
  // Connects once to check the address (UNAVAILABLE when nothing answers, PERMISSION_DENIED for
  // a refused password).
  static StatusOr<std::unique_ptr<RedisClient>> Connect(const RedisAddress& address,
                                                        const RedisOptions& options = {});
  ~RedisClient();

  // Runs one command. `timeout` (0: the default) bounds a blocking command's socket wait. Error
  // replies: OOM → RESOURCE_EXHAUSTED, NOGROUP/WRONGTYPE and others → FAILED_PRECONDITION.
  StatusOr<RedisValue> Command(const std::vector<std::string>& args,
                               std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  // Runs `commands` in one round trip; each reply (or error) in order.
  StatusOr<std::vector<StatusOr<RedisValue>>> Pipeline(
      const std::vector<std::vector<std::string>>& commands);
  // EVAL of `script` with `keys` and `args`.
  StatusOr<RedisValue> Eval(const std::string& script, const std::vector<std::string>& keys,
                            const std::vector<std::string>& args);

  const RedisAddress& address() const { return address_; }

 private:
  struct Connection;
  RedisClient(RedisAddress address, RedisOptions options);
  StatusOr<std::unique_ptr<Connection>> Acquire();
  void Release(std::unique_ptr<Connection> c);
  StatusOr<std::unique_ptr<Connection>> Open() const;
  // Runs `send` on a pooled connection, retrying on connection failures as the file comment says.
  template <typename Fn>
  auto WithRetry(Fn&& send) -> decltype(send(std::declval<Connection&>()));

  const RedisAddress address_;
  const RedisOptions options_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_;
};

}  // namespace qs::storage

#endif  // QS_STORAGE_REDIS_CLIENT_H_
