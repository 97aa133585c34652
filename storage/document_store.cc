#include "storage/document_store.h"

#include <filesystem>
#include <map>
#include <mutex>

#include "common/file_util.h"

namespace qs::storage {
namespace {

Status CheckKey(const std::string& key) {
  if (!IsValidStoreKey(key)) {
    return InvalidArgumentError("store key '" + key.substr(0, 40) +
                                "' is not 1-128 characters of [0-9a-zA-Z_-]");
  }
  return OkStatus();
}

class InMemoryDocumentStore : public DocumentStore {
 public:
  StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    QS_RETURN_IF_ERROR(CheckKey(key));
    std::lock_guard<std::mutex> lock(mu_);
    auto it = values_.find(key);
    if (it == values_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }
  Status Put(const std::string& key, const std::string& value) override {
    QS_RETURN_IF_ERROR(CheckKey(key));
    std::lock_guard<std::mutex> lock(mu_);
    values_[key] = value;
    return OkStatus();
  }
  Status Delete(const std::string& key) override {
    QS_RETURN_IF_ERROR(CheckKey(key));
    std::lock_guard<std::mutex> lock(mu_);
    values_.erase(key);
    return OkStatus();
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::string> values_;
};

class DirectoryDocumentStore : public DocumentStore {
 public:
  explicit DirectoryDocumentStore(std::string dir) : dir_(std::move(dir)) {}

  StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    QS_RETURN_IF_ERROR(CheckKey(key));
    auto bytes = ReadFileBytes(PathOf(key));
    if (!bytes.ok()) {
      if (bytes.status().code() == StatusCode::kNotFound) return std::optional<std::string>();
      return bytes.status();
    }
    return std::optional<std::string>(*bytes);
  }

  Status Put(const std::string& key, const std::string& value) override {
    QS_RETURN_IF_ERROR(CheckKey(key));
    QS_RETURN_IF_ERROR(MakeDirectories(dir_ + "/" + key.substr(0, 2)));
    return WriteFileAtomically(PathOf(key), value);
  }

  Status Delete(const std::string& key) override {
    QS_RETURN_IF_ERROR(CheckKey(key));
    std::error_code ec;
    std::filesystem::remove(PathOf(key), ec);
    if (ec) return Status(StatusCode::kUnavailable, "cannot remove " + PathOf(key) + ": " + ec.message());
    return OkStatus();
  }

 private:
  // Two-character fan-out keeps directories small with millions of keys.
  std::string PathOf(const std::string& key) const {
    return dir_ + "/" + key.substr(0, 2) + "/" + key + ".json";
  }
  std::string dir_;
};

}  // namespace

bool IsValidStoreKey(const std::string& key) {
  if (key.empty() || key.size() > 128) return false;
  for (char c : key) {
    const bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::unique_ptr<DocumentStore> NewInMemoryDocumentStore() {
  return std::make_unique<InMemoryDocumentStore>();
}

StatusOr<std::unique_ptr<DocumentStore>> OpenDirectoryDocumentStore(const std::string& dir) {
  if (dir.empty()) return InvalidArgumentError("document store directory is empty");
  QS_RETURN_IF_ERROR(MakeDirectories(dir));
  return std::unique_ptr<DocumentStore>(std::make_unique<DirectoryDocumentStore>(dir));
}

}  // namespace qs::storage
