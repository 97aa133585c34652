// BlobStore: a content-addressed directory of files (model configs and weights, data sets,
// artifacts), named by sha256 and size. On Kubernetes it is a volume the scheduler and the
// workers share, so a job names its model by digest and every worker finds it at the same name.
//
// Uploads arrive in chunks, appended in order to a partial file, and are published (renamed into
// place) only once the whole blob is there and its digest verified; a partial upload survives a
// restart and resumes at its committed size. Published blobs never change.
//
//   QS_ASSIGN_OR_RETURN(auto blobs, BlobStore::Open("/var/lib/qsearch/blobs"));
//   QS_ASSIGN_OR_RETURN(BlobDigest d, blobs->PutFile("model.safetensors"));
//   std::string path = blobs->PathOf(d);
#ifndef QS_STORAGE_BLOB_STORE_H_
#define QS_STORAGE_BLOB_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/status.h"

namespace qs::storage {

struct BlobDigest {
  std::string sha256;  // 64 lowercase hex characters
  int64_t size = 0;
  // "blob:sha256:<hex>", how specs refer to a blob.
  std::string Reference() const { return "blob:sha256:" + sha256; }
};

// INVALID_ARGUMENT unless `d` is a well-formed digest.
Status CheckDigest(const BlobDigest& d);
// The hex digest in a "blob:sha256:<hex>" reference, or nullopt when `text` is not one.
std::optional<std::string> ParseBlobReference(const std::string& text);

class BlobStore {
 public:
  // Creates the directory when missing. `max_blob_bytes` bounds an upload (RESOURCE_EXHAUSTED).
  static StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& dir,
                                                   int64_t max_blob_bytes = int64_t{64} << 30);

  bool Has(const BlobDigest& d) const;
  // Where the published blob with this hex digest lives (whether or not it exists).
  std::string PathOf(const std::string& sha256) const;
  std::string PathOf(const BlobDigest& d) const { return PathOf(d.sha256); }

  // Bytes of `d` received so far (its size once published).
  StatusOr<int64_t> CommittedSize(const BlobDigest& d);
  // Appends `data` at `offset`, which must be the committed size (FAILED_PRECONDITION otherwise,
  // naming it); past the declared size is INVALID_ARGUMENT. A published blob takes no writes
  // (its committed size is returned as a success: the client may stop).
  StatusOr<int64_t> Append(const BlobDigest& d, int64_t offset, const std::string& data);
  // Verifies size and sha256 and publishes. A mismatch discards the upload: INVALID_ARGUMENT
  // saying what was received.
  Status Finish(const BlobDigest& d);
  // Up to `limit` bytes (0: all) from `offset`. NOT_FOUND for an absent blob, OUT_OF_RANGE for an
  // offset past its end.
  StatusOr<std::string> Read(const BlobDigest& d, int64_t offset, int64_t limit) const;

  // Publishes a local file or bytes (copied), returning the digest.
  StatusOr<BlobDigest> PutFile(const std::string& path);
  StatusOr<BlobDigest> PutBytes(const std::string& bytes);
  // A fresh path inside the store's directory for a file about to be published with MoveIn.
  std::string ScratchPath(const std::string& suffix);
  // Publishes the file at `path` (on the store's filesystem) by renaming it.
  StatusOr<BlobDigest> MoveIn(const std::string& path);

 private:
  BlobStore(std::string dir, int64_t max_blob_bytes) : dir_(std::move(dir)), max_(max_blob_bytes) {}
  std::string PartialPath(const BlobDigest& d) const;
  std::mutex& LockFor(const std::string& sha256);

  const std::string dir_;
  const int64_t max_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<std::mutex>> locks_;
};

// sha256 and size of a local file, streamed.
StatusOr<BlobDigest> DigestOfFile(const std::string& path);

}  // namespace qs::storage

#endif  // QS_STORAGE_BLOB_STORE_H_
