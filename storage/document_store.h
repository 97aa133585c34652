// DocumentStore: small text documents by key. Two uses: evaluation results by candidate key (the
// scheduler reads it to skip finished work; workers write each result as soon as it exists, so a
// killed job loses nothing finished), and job states by job id (the scheduler's, so a restarted
// one resumes its jobs).
//
// Implementations: in memory (tests, throwaway runs), a directory of files (embedded mode:
// survives restarts and is shared by every job on the machine) and Redis (the service; see
// storage/redis_store.h).
//
//   auto store = OpenDirectoryDocumentStore("~/.cache/qsearch/evaluations");
//   QS_RETURN_IF_ERROR((*store)->Put(key, json_text));
#ifndef QS_STORAGE_DOCUMENT_STORE_H_
#define QS_STORAGE_DOCUMENT_STORE_H_

#include <memory>
#include <optional>
#include <string>

#include "common/status.h"

namespace qs::storage {

class DocumentStore {
 public:
  virtual ~DocumentStore() = default;
  // The value stored under `key`, or nullopt. INVALID_ARGUMENT for a key that is not 1-128
  // characters of [0-9a-zA-Z_-]; DATA_LOSS / UNAVAILABLE when the backend fails.
  virtual StatusOr<std::optional<std::string>> Get(const std::string& key) = 0;
  // Stores `value` under `key`, replacing any previous value. Thread-safe.
  virtual Status Put(const std::string& key, const std::string& value) = 0;
  // Removes `key` (absent: OK).
  virtual Status Delete(const std::string& key) = 0;
};

std::unique_ptr<DocumentStore> NewInMemoryDocumentStore();

// Files under `dir` (created if missing), one per key, written atomically (temp file + rename).
StatusOr<std::unique_ptr<DocumentStore>> OpenDirectoryDocumentStore(const std::string& dir);

// Whether `key` is acceptable to every store.
bool IsValidStoreKey(const std::string& key);

}  // namespace qs::storage

#endif  // QS_STORAGE_DOCUMENT_STORE_H_
