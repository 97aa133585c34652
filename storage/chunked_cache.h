// ChunkedCache: large binary values (activations) in Redis, split into chunks of a few MiB, for
// an allkeys-lru instance that may evict any key at any time.
//
// A value is its chunks <prefix><name>:c:<i> plus a metadata hash <prefix><name>:meta (size,
// chunk count, sha256 and the caller's fields), written last: the metadata is the commit marker,
// so a reader never sees a half-written value. A chunk evicted since (or bytes that no longer
// match their digest) make the value a miss, and its metadata is removed. Every key has the TTL,
// refreshed on each hit.
//
//   ChunkedCache cache(redis, "qs:v1:act:", std::chrono::hours(24));
//   QS_RETURN_IF_ERROR(cache.Put("ckpt:...", bytes, {{"dtype", "float32"}}));
//   QS_ASSIGN_OR_RETURN(auto hit, cache.Get("ckpt:..."));
#ifndef QS_STORAGE_CHUNKED_CACHE_H_
#define QS_STORAGE_CHUNKED_CACHE_H_

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "storage/redis_client.h"

namespace qs::storage {

class ChunkedCache {
 public:
  struct Entry {
    std::string bytes;
    std::map<std::string, std::string> meta;  // the caller's fields
  };

  ChunkedCache(std::shared_ptr<RedisClient> redis, std::string prefix, std::chrono::seconds ttl,
               int64_t chunk_bytes = int64_t{4} << 20);

  // Stores `bytes` under `name` with `meta` (keys must not start with "_").
  Status Put(const std::string& name, const std::string& bytes,
             const std::map<std::string, std::string>& meta);
  // The value, or nullopt on a miss (absent, partly evicted, or damaged).
  StatusOr<std::optional<Entry>> Get(const std::string& name);

  // What a value's metadata hash records, as HGETALL returns it (field, value, field, ...).
  struct Layout {
    int64_t size = 0;
    int64_t chunks = 0;
    std::string sha256;
    std::map<std::string, std::string> meta;  // the caller's fields
  };
  // DATA_LOSS naming the defect when the fields are not what Put writes: a reserved field missing
  // or unknown, a size outside 0..2^40, a chunk count that cannot hold the size (0 for an empty
  // value, else 1..size), a digest that is not 64 hex digits, an empty or repeated field. Get
  // treats such a value as a miss and removes it.
  static StatusOr<Layout> ParseLayout(const std::vector<std::string>& fields);

 private:
  std::shared_ptr<RedisClient> redis_;
  const std::string prefix_;
  const std::chrono::seconds ttl_;
  const int64_t chunk_bytes_;
};

}  // namespace qs::storage

#endif  // QS_STORAGE_CHUNKED_CACHE_H_
