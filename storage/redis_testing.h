// A real redis-server for tests, on a free loopback port, in a directory of its own, started and
// killed by the test. Test-only.
#ifndef QS_STORAGE_REDIS_TESTING_H_
#define QS_STORAGE_REDIS_TESTING_H_

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "storage/redis_client.h"

namespace qs::storage::testing {

// A TCP port nothing listens on right now.
inline int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

class RedisServer {
 public:
  // `aof`: append-only file, fsync'd `fsync` ("always": a kill -9 loses nothing; "everysec", as
  // the service's queue instance runs).
  explicit RedisServer(bool aof = true, std::string fsync = "always")
      : port_(FreePort()), aof_(aof), fsync_(std::move(fsync)) {
    dir_ = (std::filesystem::temp_directory_path() /
            ("qs_redis_" + std::to_string(::getpid()) + "_" + std::to_string(port_)))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  ~RedisServer() {
    Kill();
    std::filesystem::remove_all(dir_);
  }

  // Starts the server (again, on the same port and data) and waits until it answers PING.
  bool Start() {
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string port = std::to_string(port_);
      std::vector<const char*> argv = {"redis-server", "--port", port.c_str(), "--bind",
                                       "127.0.0.1", "--save", "", "--dir", dir_.c_str(),
                                       "--appendonly", aof_ ? "yes" : "no", "--appendfsync",
                                       fsync_.c_str(), "--logfile", "redis.log", nullptr};
      ::execvp("redis-server", const_cast<char* const*>(argv.data()));
      ::_exit(127);
    }
    RedisOptions quick;
    quick.retry_for = std::chrono::milliseconds(0);
    for (int i = 0; i < 200; ++i) {
      auto client = RedisClient::Connect(address(), quick);
      if (client.ok() && (*client)->Command({"PING"}).ok()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  }

  // kill -9, as a crash would.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  RedisAddress address() const {
    RedisAddress a;
    a.port = port_;
    return a;
  }
  std::string url() const { return address().ToString(); }

 private:
  int port_;
  bool aof_;
  std::string fsync_;
  std::string dir_;
  pid_t pid_ = -1;
};

}  // namespace qs::storage::testing

#endif  // QS_STORAGE_REDIS_TESTING_H_
