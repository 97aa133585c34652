// The client side of the API, for `qsearch submit|watch|get|list|cancel|fetch`: a channel with
// the bearer token on every call, blob upload (skipping what the server has, resuming a partial
// upload) and download (verified).
#ifndef QS_SERVER_CLIENT_H_
#define QS_SERVER_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "common/job_spec.h"
#include "common/status.h"
#include "qsearch/v1/blob_store.grpc.pb.h"
#include "qsearch/v1/quant_search.grpc.pb.h"
#include "storage/blob_store.h"

namespace qs::server {

struct ClientConfig {
  std::string server = "127.0.0.1:50051";
  std::string token_file;  // empty: no token
  std::string tls_ca;      // TLS when given (the CA that signed the server's certificate)
  std::string tls_cert, tls_key;  // client certificate, for servers that require one
  std::chrono::seconds timeout{60};  // per unary call
};

class ApiClient {
 public:
  static StatusOr<std::unique_ptr<ApiClient>> Connect(const ClientConfig& config);

  // A context with the token and the call deadline (none for streams when `stream`).
  std::unique_ptr<grpc::ClientContext> Context(bool stream = false) const;
  qsearch::v1::QuantSearch::Stub& search() { return *search_; }
  qsearch::v1::BlobStore::Stub& blobs() { return *blobs_; }

  // Uploads `path` unless the server has it; its digest.
  StatusOr<storage::BlobDigest> Upload(const std::string& path);
  // Downloads `digest` into `path` (written atomically after its sha256 checks out).
  Status Download(const storage::BlobDigest& digest, const std::string& path);
  // The spec with its model files and file data sources uploaded and named as blobs.
  StatusOr<qsearch::v1::JobSpec> UploadSpec(const JobSpec& spec);

 private:
  ApiClient() = default;
  ClientConfig config_;
  std::string token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<qsearch::v1::QuantSearch::Stub> search_;
  std::unique_ptr<qsearch::v1::BlobStore::Stub> blobs_;
};

}  // namespace qs::server

#endif  // QS_SERVER_CLIENT_H_
