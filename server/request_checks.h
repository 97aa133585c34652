// What each RPC of qsearch.v1 checks in its request before it touches a store: the request's
// meaning, or the status the RPC answers with (INVALID_ARGUMENT naming the field,
// RESOURCE_EXHAUSTED past the service's budget per job). The handlers in service.cc call these
// first; fuzz/fuzz_grpc_request.cc feeds them arbitrary messages.
#ifndef QS_SERVER_REQUEST_CHECKS_H_
#define QS_SERVER_REQUEST_CHECKS_H_

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "qsearch/v1/blob_store.pb.h"
#include "qsearch/v1/quant_search.pb.h"
#include "scheduler/job_manager.h"
#include "storage/blob_store.h"

namespace qs::server {

// Blob chunks in either direction are at most this, so every message stays under kMaxMessageBytes.
inline constexpr int64_t kBlobChunkBytes = int64_t{1} << 20;
// The largest message the service accepts.
inline constexpr int kMaxMessageBytes = 4 << 20;

// CreateJob: a spec (its JSON form passes scheduler::CheckJobRequest) and an optional request_id.
struct CreateJobInput {
  nlohmann::json spec;
  std::string request_id;
};
StatusOr<CreateJobInput> CheckCreateJob(const qsearch::v1::CreateJobRequest& req);

// "jobs/<id>" -> id, where id is 1-128 characters of [0-9a-zA-Z_-] (what a job id can be).
StatusOr<std::string> CheckJobName(const std::string& name);

// ListJobs: the page and an optional state filter.
struct ListJobsInput {
  scheduler::ListQuery page;
  std::optional<scheduler::JobPhase> state;
};
StatusOr<ListJobsInput> CheckListJobs(const qsearch::v1::ListJobsRequest& req);

// WatchJob: the job id and the sequence number to read after (>= 0).
StatusOr<std::pair<std::string, int64_t>> CheckWatchJob(const qsearch::v1::WatchJobRequest& req);

// A digest: 64 lowercase hex characters and a non-negative size (the blob store bounds it).
StatusOr<storage::BlobDigest> CheckDigest(const qsearch::v1::Digest& digest);

// One message of a Write stream (`first`: it opens the stream and must name the digest): data of
// at most kBlobChunkBytes, a write offset in 0..the digest's size.
Status CheckWriteChunk(const qsearch::v1::WriteBlobRequest& req, bool first);

// Read: the digest and the byte range [offset, end) it asks for, clipped to the blob's size
// (read_limit 0: to the end). OUT_OF_RANGE for an offset past the end.
struct BlobRange {
  storage::BlobDigest digest;
  int64_t offset = 0;
  int64_t end = 0;
};
StatusOr<BlobRange> CheckReadBlob(const qsearch::v1::ReadBlobRequest& req);

}  // namespace qs::server

#endif  // QS_SERVER_REQUEST_CHECKS_H_
