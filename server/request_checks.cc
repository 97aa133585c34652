#include "server/request_checks.h"

#include "server/api_convert.h"
#include "storage/document_store.h"

namespace qs::server {

namespace v1 = qsearch::v1;

StatusOr<CreateJobInput> CheckCreateJob(const v1::CreateJobRequest& req) {
  if (!req.has_spec()) return InvalidArgumentError("CreateJob needs a spec");
  if (!req.request_id().empty() && !scheduler::IsValidRequestId(req.request_id())) {
    return InvalidArgumentError("request_id must be 1-64 characters of [0-9a-zA-Z_-]");
  }
  CreateJobInput in;
  QS_ASSIGN_OR_RETURN(in.spec, SpecJsonFromProto(req.spec()));
  QS_RETURN_IF_ERROR(scheduler::CheckJobRequest(in.spec).status());
  in.request_id = req.request_id();
  return in;
}

StatusOr<std::string> CheckJobName(const std::string& name) {
  const std::string prefix = "jobs/";
  if (name.rfind(prefix, 0) != 0 || !storage::IsValidStoreKey(name.substr(prefix.size()))) {
    return InvalidArgumentError("job name '" + name.substr(0, 80) +
                                "' is not jobs/<id> with an id of [0-9a-zA-Z_-]");
  }
  return name.substr(prefix.size());
}

StatusOr<ListJobsInput> CheckListJobs(const v1::ListJobsRequest& req) {
  ListJobsInput in;
  QS_ASSIGN_OR_RETURN(in.page, scheduler::CheckListQuery(req.page_size(), req.page_token()));
  if (req.state() != v1::JOB_STATE_UNSPECIFIED) {
    in.state = PhaseFromProto(req.state());
    if (!in.state) return InvalidArgumentError("unknown job state filter");
  }
  return in;
}

StatusOr<std::pair<std::string, int64_t>> CheckWatchJob(const v1::WatchJobRequest& req) {
  QS_ASSIGN_OR_RETURN(std::string id, CheckJobName(req.name()));
  if (req.after_seq() < 0) return InvalidArgumentError("after_seq must be >= 0");
  return std::make_pair(id, req.after_seq());
}

StatusOr<storage::BlobDigest> CheckDigest(const v1::Digest& digest) {
  const storage::BlobDigest d = FromProto(digest);
  QS_RETURN_IF_ERROR(storage::CheckDigest(d));
  return d;
}

Status CheckWriteChunk(const v1::WriteBlobRequest& req, bool first) {
  if (first && !req.has_digest()) return InvalidArgumentError("the first message must name the digest");
  if (req.has_digest()) QS_RETURN_IF_ERROR(CheckDigest(req.digest()).status());
  if (static_cast<int64_t>(req.data().size()) > kBlobChunkBytes) {
    return InvalidArgumentError("chunks are at most 1 MiB");
  }
  if (req.write_offset() < 0) return InvalidArgumentError("write_offset must be >= 0");
  return OkStatus();
}

StatusOr<BlobRange> CheckReadBlob(const v1::ReadBlobRequest& req) {
  BlobRange range;
  QS_ASSIGN_OR_RETURN(range.digest, CheckDigest(req.digest()));
  if (req.read_offset() < 0 || req.read_limit() < 0) {
    return InvalidArgumentError("read_offset and read_limit must be >= 0");
  }
  const int64_t size = range.digest.size;
  if (req.read_offset() > size) return OutOfRangeError("read_offset is past the blob's end");
  range.offset = req.read_offset();
  // Compared as a remainder, so a limit near 2^63 cannot overflow the sum.
  range.end = req.read_limit() > 0 && req.read_limit() < size - range.offset
                  ? range.offset + req.read_limit()
                  : size;
  return range;
}

}  // namespace qs::server
