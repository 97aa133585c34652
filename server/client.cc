#include "server/client.h"

#include <sys/stat.h>

#include <fstream>

#include "common/file_util.h"
#include "common/sha256.h"
#include "server/api_convert.h"
#include "server/service.h"

namespace qs::server {
namespace {

namespace v1 = qsearch::v1;
constexpr int64_t kChunkBytes = 1 << 20;

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

StatusOr<std::unique_ptr<ApiClient>> ApiClient::Connect(const ClientConfig& config) {
  std::unique_ptr<ApiClient> c(new ApiClient());
  c->config_ = config;
  if (!config.token_file.empty()) {
    QS_ASSIGN_OR_RETURN(auto tokens, ReadTokens(config.token_file));
    c->token_ = tokens.front();
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!config.tls_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    QS_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadText(config.tls_ca));
    if (!config.tls_cert.empty()) {
      QS_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadText(config.tls_cert));
      QS_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadText(config.tls_key));
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(4 << 20);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  c->channel_ = grpc::CreateCustomChannel(config.server, creds, args);
  c->search_ = v1::QuantSearch::NewStub(c->channel_);
  c->blobs_ = v1::BlobStore::NewStub(c->channel_);
  return c;
}

std::unique_ptr<grpc::ClientContext> ApiClient::Context(bool stream) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
  if (!stream) ctx->set_deadline(std::chrono::system_clock::now() + config_.timeout);
  ctx->set_wait_for_ready(false);
  return ctx;
}

StatusOr<storage::BlobDigest> ApiClient::Upload(const std::string& path) {
  QS_ASSIGN_OR_RETURN(storage::BlobDigest d, storage::DigestOfFile(path));
  v1::FindMissingBlobsRequest find;
  *find.add_digests() = ToProto(d);
  v1::FindMissingBlobsResponse missing;
  QS_RETURN_IF_ERROR(FromGrpc(blobs_->FindMissingBlobs(Context().get(), find, &missing)));
  if (missing.missing_size() == 0) return d;
  // Resume where an earlier upload stopped.
  v1::QueryWriteStatusRequest query;
  *query.mutable_digest() = ToProto(d);
  v1::QueryWriteStatusResponse status;
  QS_RETURN_IF_ERROR(FromGrpc(blobs_->QueryWriteStatus(Context().get(), query, &status)));
  int64_t offset = status.committed_size();
  std::ifstream in(path, std::ios::binary);
  in.seekg(offset);
  auto ctx = Context(/*stream=*/true);
  v1::WriteBlobResponse response;
  auto writer = blobs_->Write(ctx.get(), &response);
  std::string buffer(kChunkBytes, '\0');
  do {
    in.read(buffer.data(), kChunkBytes);
    const auto n = in.gcount();
    v1::WriteBlobRequest req;
    *req.mutable_digest() = ToProto(d);
    req.set_write_offset(offset);
    req.set_data(buffer.data(), static_cast<size_t>(std::max<std::streamsize>(0, n)));
    offset += n;
    req.set_finish_write(offset >= d.size);
    if (!writer->Write(req)) break;
  } while (offset < d.size);
  writer->WritesDone();
  QS_RETURN_IF_ERROR(FromGrpc(writer->Finish()).WithContext("upload of " + path));
  return d;
}

Status ApiClient::Download(const storage::BlobDigest& d, const std::string& path) {
  v1::ReadBlobRequest req;
  *req.mutable_digest() = ToProto(d);
  auto ctx = Context(/*stream=*/true);
  auto reader = blobs_->Read(ctx.get(), req);
  std::string bytes;
  v1::ReadBlobResponse chunk;
  while (reader->Read(&chunk)) bytes += chunk.data();
  QS_RETURN_IF_ERROR(FromGrpc(reader->Finish()).WithContext("download of " + d.sha256));
  if (static_cast<int64_t>(bytes.size()) != d.size || Sha256Hex(bytes) != d.sha256) {
    return DataLossError("download of " + d.sha256 + " does not match its digest");
  }
  return WriteFileAtomically(path, bytes);
}

StatusOr<v1::JobSpec> ApiClient::UploadSpec(const JobSpec& spec) {
  JobSpec sent = spec;
  for (std::string* file : {&sent.model_config, &sent.model_weights}) {
    QS_ASSIGN_OR_RETURN(storage::BlobDigest d, Upload(*file));
    *file = d.Reference();
  }
  // A data source that is a local file (a safetensors image set) travels too; named data sets
  // and folders are read by the workers where they are.
  for (std::string* source : {&sent.calibration_source, &sent.validation_source, &sent.test_source}) {
    if (!source->empty() && IsRegularFile(*source)) {
      QS_ASSIGN_OR_RETURN(storage::BlobDigest d, Upload(*source));
      *source = d.Reference();
    }
  }
  return ProtoFromSpec(sent);
}

}  // namespace qs::server
