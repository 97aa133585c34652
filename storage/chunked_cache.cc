#include "storage/chunked_cache.h"

#include "common/sha256.h"
#include "common/strings.h"

namespace qs::storage {
namespace {

constexpr int64_t kMaxValueBytes = int64_t{1} << 40;

}  // namespace

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

StatusOr<ChunkedCache::Layout> ChunkedCache::ParseLayout(const std::vector<std::string>& fields) {
  if (fields.size() % 2 != 0) return DataLossError("cache metadata: a field without a value");
  Layout layout;
  std::map<std::string, std::string> own;
  for (size_t i = 0; i < fields.size(); i += 2) {
    const std::string& k = fields[i];
    if (k.empty()) return DataLossError("cache metadata: an empty field name");
    auto& into = k[0] == '_' ? own : layout.meta;
    if (!into.emplace(k, fields[i + 1]).second) {
      return DataLossError("cache metadata: field '" + k.substr(0, 64) + "' twice");
    }
  }
  for (const auto& [k, v] : own) {
    if (k != "_size" && k != "_chunks" && k != "_sha256") {
      return DataLossError("cache metadata: unknown reserved field '" + k.substr(0, 64) + "'");
    }
  }
  const auto size = ParseInt64(own["_size"]);
  if (!size || *size < 0 || *size > kMaxValueBytes) {
    return DataLossError("cache metadata: _size is not a byte count in 0..2^40");
  }
  const auto chunks = ParseInt64(own["_chunks"]);
  // Every chunk Put writes holds at least one byte.
  if (!chunks || (*size == 0 ? *chunks != 0 : (*chunks < 1 || *chunks > *size))) {
    return DataLossError("cache metadata: _chunks cannot hold _size bytes");
  }
  const std::string& digest = own["_sha256"];
  if (digest.size() != 64 ||
      digest.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return DataLossError("cache metadata: _sha256 is not 64 hex digits");
  }
  layout.size = *size;
  layout.chunks = *chunks;
  layout.sha256 = digest;
  return layout;
}

StatusOr<std::optional<ChunkedCache::Entry>> ChunkedCache::Get(const std::string& name) {
  const std::string base = prefix_ + name;
  QS_ASSIGN_OR_RETURN(RedisValue fields, redis_->Command({"HGETALL", base + ":meta"}));
  if (fields.elements.empty()) return std::optional<Entry>();
  std::vector<std::string> strings;
  for (const auto& f : fields.elements) strings.push_back(f.str);
  auto forget = [&]() -> StatusOr<std::optional<Entry>> {
    // Evicted in part, damaged or not ours: forget it, so the next writer starts clean.
    QS_RETURN_IF_ERROR(redis_->Command({"DEL", base + ":meta"}).status());
    return std::optional<Entry>();
  };
  auto layout = ParseLayout(strings);
  if (!layout.ok()) return forget();
  Entry e;
  e.meta = std::move(layout->meta);
  const int64_t size = layout->size, chunks = layout->chunks;
  const std::string ttl = std::to_string(ttl_.count());
  bool whole = true;
  // Eight chunks a round trip, asked for as they are needed: the recorded count is not trusted
  // with memory, and a missing chunk ends the read.
  for (int64_t start = 0; start < chunks && whole; start += 8) {
    std::vector<std::vector<std::string>> batch;
    for (int64_t i = start; i < std::min(chunks, start + 8); ++i) {
      batch.push_back({"GET", base + ":c:" + std::to_string(i)});
    }
    QS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(batch));
    for (auto& r : replies) {
      QS_RETURN_IF_ERROR(r.status());
      if (r->is_nil()) {
        whole = false;
        break;
      }
      // Memory follows the bytes that arrive, up to the recorded size.
      if (static_cast<int64_t>(e.bytes.size() + r->str.size()) > size) {
        whole = false;
        break;
      }
      e.bytes += r->str;
    }
  }
  if (!whole || static_cast<int64_t>(e.bytes.size()) != size || Sha256Hex(e.bytes) != layout->sha256) {
    return forget();
  }
  std::vector<std::vector<std::string>> touch = {{"EXPIRE", base + ":meta", ttl}};
  for (int64_t i = 0; i < chunks; ++i) touch.push_back({"EXPIRE", base + ":c:" + std::to_string(i), ttl});
  QS_ASSIGN_OR_RETURN(auto touched, redis_->Pipeline(touch));
  (void)touched;
  return std::optional<Entry>(std::move(e));
}

}  // namespace qs::storage
