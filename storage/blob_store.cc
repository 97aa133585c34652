#include "storage/blob_store.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "common/file_util.h"
#include "common/sha256.h"

namespace qs::storage {
namespace fs = std::filesystem;

Status CheckDigest(const BlobDigest& d) {
  bool hex = d.sha256.size() == 64;
  for (char c : d.sha256) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!hex) {
    return InvalidArgumentError("blob digest '" + d.sha256.substr(0, 80) +
                                "' is not 64 lowercase hex characters");
  }
  if (d.size < 0) return InvalidArgumentError("blob size " + std::to_string(d.size) + " is negative");
  return OkStatus();
}

std::optional<std::string> ParseBlobReference(const std::string& text) {
  const std::string prefix = "blob:sha256:";
  if (text.rfind(prefix, 0) != 0) return std::nullopt;
  const std::string hex = text.substr(prefix.size());
  if (!CheckDigest({hex, 0}).ok()) return std::nullopt;
  return hex;
}

StatusOr<BlobDigest> DigestOfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + path);
  Sha256 h;
  std::string buffer(1 << 20, '\0');
  int64_t size = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = in.gcount();
    if (n <= 0) break;
    h.Update(buffer.data(), static_cast<size_t>(n));
    size += n;
  }
  if (in.bad()) return DataLossError("error reading " + path);
  return BlobDigest{h.HexDigest(), size};
}

StatusOr<std::unique_ptr<BlobStore>> BlobStore::Open(const std::string& dir, int64_t max_blob_bytes) {
  if (dir.empty()) return InvalidArgumentError("blob directory is empty");
  QS_RETURN_IF_ERROR(MakeDirectories(dir + "/sha256"));
  QS_RETURN_IF_ERROR(MakeDirectories(dir + "/uploads"));
  return std::unique_ptr<BlobStore>(new BlobStore(dir, max_blob_bytes));
}

std::string BlobStore::PathOf(const std::string& sha256) const {
  return dir_ + "/sha256/" + sha256.substr(0, 2) + "/" + sha256;
}

std::string BlobStore::PartialPath(const BlobDigest& d) const {
  return dir_ + "/uploads/" + d.sha256 + "-" + std::to_string(d.size);
}

std::mutex& BlobStore::LockFor(const std::string& sha256) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& m = locks_[sha256];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

bool BlobStore::Has(const BlobDigest& d) const {
  std::error_code ec;
  const auto size = fs::file_size(PathOf(d), ec);
  return !ec && static_cast<int64_t>(size) == d.size;
}

StatusOr<int64_t> BlobStore::CommittedSize(const BlobDigest& d) {
  QS_RETURN_IF_ERROR(CheckDigest(d));
  if (Has(d)) return d.size;
  std::error_code ec;
  const auto size = fs::file_size(PartialPath(d), ec);
  return ec ? int64_t{0} : static_cast<int64_t>(size);
}

StatusOr<int64_t> BlobStore::Append(const BlobDigest& d, int64_t offset, const std::string& data) {
  QS_RETURN_IF_ERROR(CheckDigest(d));
  if (d.size > max_) {
    return ResourceExhaustedError("blob of " + std::to_string(d.size) + " bytes is over the " +
                                  std::to_string(max_) + "-byte limit");
  }
  std::lock_guard<std::mutex> lock(LockFor(d.sha256));
  if (Has(d)) return d.size;
  QS_ASSIGN_OR_RETURN(int64_t committed, CommittedSize(d));
  if (offset != committed) {
    return FailedPreconditionError("write at offset " + std::to_string(offset) +
                                   ", but the upload has " + std::to_string(committed) +
                                   " bytes: resume from there");
  }
  if (committed + static_cast<int64_t>(data.size()) > d.size) {
    return InvalidArgumentError("upload runs past the blob's declared size of " +
                                std::to_string(d.size) + " bytes");
  }
  std::FILE* f = std::fopen(PartialPath(d).c_str(), "ab");
  if (f == nullptr) return Status(StatusCode::kUnavailable, "cannot write " + PartialPath(d));
  const size_t written = std::fwrite(data.data(), 1, data.size(), f);
  const bool ok = std::fflush(f) == 0 && written == data.size();
  std::fclose(f);
  if (!ok) return Status(StatusCode::kResourceExhausted, "cannot write " + PartialPath(d) + " (disk full?)");
  return committed + static_cast<int64_t>(data.size());
}

Status BlobStore::Finish(const BlobDigest& d) {
  QS_RETURN_IF_ERROR(CheckDigest(d));
  std::lock_guard<std::mutex> lock(LockFor(d.sha256));
  if (Has(d)) return OkStatus();
  const std::string partial = PartialPath(d);
  auto got = DigestOfFile(partial);
  if (!got.ok()) {
    return d.size == 0 ? PutBytes("").status() : FailedPreconditionError("no upload of blob " + d.sha256);
  }
  if (got->size != d.size || got->sha256 != d.sha256) {
    std::error_code ec;
    fs::remove(partial, ec);
    return InvalidArgumentError("upload of blob " + d.sha256 + " (" + std::to_string(d.size) +
                                " bytes) received " + std::to_string(got->size) +
                                " bytes with sha256 " + got->sha256 + "; discarded");
  }
  QS_RETURN_IF_ERROR(MakeDirectories(dir_ + "/sha256/" + d.sha256.substr(0, 2)));
  std::error_code ec;
  fs::rename(partial, PathOf(d), ec);
  if (ec) return Status(StatusCode::kUnavailable, "cannot publish blob " + d.sha256 + ": " + ec.message());
  return OkStatus();
}

StatusOr<std::string> BlobStore::Read(const BlobDigest& d, int64_t offset, int64_t limit) const {
  QS_RETURN_IF_ERROR(CheckDigest(d));
  if (!Has(d)) return NotFoundError("no blob " + d.sha256 + " of " + std::to_string(d.size) + " bytes");
  if (offset < 0 || offset > d.size) {
    return OutOfRangeError("read offset " + std::to_string(offset) + " is outside the blob's " +
                           std::to_string(d.size) + " bytes");
  }
  const int64_t n = limit <= 0 ? d.size - offset : std::min(limit, d.size - offset);
  std::ifstream in(PathOf(d), std::ios::binary);
  in.seekg(offset);
  std::string out(static_cast<size_t>(n), '\0');
  in.read(out.data(), n);
  if (in.gcount() != n) return DataLossError("short read of blob " + d.sha256);
  return out;
}

StatusOr<BlobDigest> BlobStore::PutBytes(const std::string& bytes) {
  const BlobDigest d{Sha256Hex(bytes), static_cast<int64_t>(bytes.size())};
  if (Has(d)) return d;
  QS_RETURN_IF_ERROR(MakeDirectories(dir_ + "/sha256/" + d.sha256.substr(0, 2)));
  QS_RETURN_IF_ERROR(WriteFileAtomically(PathOf(d), bytes));
  return d;
}

std::string BlobStore::ScratchPath(const std::string& suffix) {
  static std::atomic<uint64_t> counter{0};
  return dir_ + "/uploads/scratch-" + std::to_string(::getpid()) + "-" +
         std::to_string(++counter) + suffix;
}

StatusOr<BlobDigest> BlobStore::MoveIn(const std::string& path) {
  QS_ASSIGN_OR_RETURN(BlobDigest d, DigestOfFile(path));
  std::lock_guard<std::mutex> lock(LockFor(d.sha256));
  std::error_code ec;
  if (Has(d)) {
    fs::remove(path, ec);
    return d;
  }
  QS_RETURN_IF_ERROR(MakeDirectories(dir_ + "/sha256/" + d.sha256.substr(0, 2)));
  fs::rename(path, PathOf(d), ec);
  if (ec) return Status(StatusCode::kUnavailable, "cannot publish " + path + ": " + ec.message());
  return d;
}

StatusOr<BlobDigest> BlobStore::PutFile(const std::string& path) {
  QS_ASSIGN_OR_RETURN(BlobDigest d, DigestOfFile(path));
  if (Has(d)) return d;
  std::lock_guard<std::mutex> lock(LockFor(d.sha256));
  QS_RETURN_IF_ERROR(MakeDirectories(dir_ + "/sha256/" + d.sha256.substr(0, 2)));
  const std::string tmp = PartialPath(d) + ".copy";
  std::error_code ec;
  fs::copy_file(path, tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::rename(tmp, PathOf(d), ec);
  if (ec) return Status(StatusCode::kUnavailable, "cannot store " + path + ": " + ec.message());
  return d;
}

}  // namespace qs::storage
