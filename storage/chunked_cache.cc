#include "storage/chunked_cache.h"

#include "common/sha256.h"

namespace qs::storage {

ChunkedCache::ChunkedCache(std::shared_ptr<RedisClient> redis, std::string prefix,
                           std::chrono::seconds ttl, int64_t chunk_bytes)
    : redis_(std::move(redis)),
      prefix_(std::move(prefix)),
      ttl_(ttl),
      chunk_bytes_(std::max<int64_t>(1, chunk_bytes)) {}

Status ChunkedCache::Put(const std::string& name, const std::string& bytes,
                         const std::map<std::string, std::string>& meta) {
  const std::string base = prefix_ + name;
  const std::string ttl = std::to_string(ttl_.count());
  const int64_t size = static_cast<int64_t>(bytes.size());
  const int64_t chunks = (size + chunk_bytes_ - 1) / chunk_bytes_;
  // The chunks in a few round trips of bounded size, then the metadata.
  std::vector<std::vector<std::string>> batch;
  for (int64_t i = 0; i < chunks; ++i) {
    batch.push_back({"SET", base + ":c:" + std::to_string(i),
                     bytes.substr(static_cast<size_t>(i * chunk_bytes_),
                                  static_cast<size_t>(chunk_bytes_)),
                     "EX", ttl});
    if (batch.size() == 8 || i + 1 == chunks) {
      QS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(batch));
      for (auto& r : replies) QS_RETURN_IF_ERROR(r.status());
      batch.clear();
    }
  }
  std::vector<std::string> hset = {"HSET", base + ":meta", "_size", std::to_string(size),
                                   "_chunks", std::to_string(chunks), "_sha256", Sha256Hex(bytes)};
  for (const auto& [k, v] : meta) {
    if (!k.empty() && k[0] == '_') return InvalidArgumentError("cache metadata key '" + k + "' is reserved");
    hset.push_back(k);
    hset.push_back(v);
  }
  QS_ASSIGN_OR_RETURN(auto replies,
                      redis_->Pipeline({{"DEL", base + ":meta"}, hset, {"EXPIRE", base + ":meta", ttl}}));
  for (auto& r : replies) QS_RETURN_IF_ERROR(r.status());
  return OkStatus();
}

StatusOr<std::optional<ChunkedCache::Entry>> ChunkedCache::Get(const std::string& name) {
  const std::string base = prefix_ + name;
  QS_ASSIGN_OR_RETURN(RedisValue fields, redis_->Command({"HGETALL", base + ":meta"}));
  if (fields.elements.empty()) return std::optional<Entry>();
  Entry e;
  std::map<std::string, std::string> own;
  for (size_t i = 0; i + 1 < fields.elements.size(); i += 2) {
    const std::string& k = fields.elements[i].str;
    (k[0] == '_' ? own : e.meta)[k] = fields.elements[i + 1].str;
  }
  const int64_t size = std::strtoll(own["_size"].c_str(), nullptr, 10);
  const int64_t chunks = std::strtoll(own["_chunks"].c_str(), nullptr, 10);
  const std::string ttl = std::to_string(ttl_.count());
  std::vector<std::vector<std::string>> gets;
  for (int64_t i = 0; i < chunks; ++i) gets.push_back({"GET", base + ":c:" + std::to_string(i)});
  e.bytes.reserve(static_cast<size_t>(std::max<int64_t>(0, size)));
  bool whole = true;
  for (size_t start = 0; start < gets.size() && whole; start += 8) {
    std::vector<std::vector<std::string>> batch(
        gets.begin() + static_cast<std::ptrdiff_t>(start),
        gets.begin() + static_cast<std::ptrdiff_t>(std::min(gets.size(), start + 8)));
    QS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(batch));
    for (auto& r : replies) {
      QS_RETURN_IF_ERROR(r.status());
      if (r->is_nil()) {
        whole = false;
        break;
      }
      e.bytes += r->str;
    }
  }
  if (!whole || static_cast<int64_t>(e.bytes.size()) != size || Sha256Hex(e.bytes) != own["_sha256"]) {
    // Evicted in part, or damaged: forget it, so the next writer starts clean.
    QS_RETURN_IF_ERROR(redis_->Command({"DEL", base + ":meta"}).status());
    return std::optional<Entry>();
  }
  std::vector<std::vector<std::string>> touch = {{"EXPIRE", base + ":meta", ttl}};
  for (int64_t i = 0; i < chunks; ++i) touch.push_back({"EXPIRE", base + ":c:" + std::to_string(i), ttl});
  QS_ASSIGN_OR_RETURN(auto touched, redis_->Pipeline(touch));
  (void)touched;
  return std::optional<Entry>(std::move(e));
}

}  // namespace qs::storage
