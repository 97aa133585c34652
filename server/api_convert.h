// Conversions between the API's messages (proto/qsearch/v1) and the project's own types: the
// typed JobSpec and the JSON spec of docs/search.md, both ways; job records as Job messages;
// Status and gRPC status.
#ifndef QS_SERVER_API_CONVERT_H_
#define QS_SERVER_API_CONVERT_H_

#include <grpcpp/support/status.h>
#include <nlohmann/json.hpp>

#include "common/job_spec.h"
#include "common/status.h"
#include "qsearch/v1/quant_search.pb.h"
#include "scheduler/job_manager.h"
#include "storage/blob_store.h"

namespace qs::server {

// The JSON spec a typed spec stands for (fields left unset keep the JSON spec's defaults).
// INVALID_ARGUMENT for a pin whose text is not JSON.
StatusOr<nlohmann::json> SpecJsonFromProto(const qsearch::v1::JobSpec& spec);
// The typed spec of a parsed one, with the model files and sources as `spec` names them.
qsearch::v1::JobSpec ProtoFromSpec(const JobSpec& spec);

qsearch::v1::Job ToProto(const scheduler::JobRecord& r);
qsearch::v1::JobState ToProto(scheduler::JobPhase p);
std::optional<scheduler::JobPhase> PhaseFromProto(qsearch::v1::JobState s);

qsearch::v1::Digest ToProto(const storage::BlobDigest& d);
storage::BlobDigest FromProto(const qsearch::v1::Digest& d);

grpc::Status ToGrpc(const Status& s);
Status FromGrpc(const grpc::Status& s);

}  // namespace qs::server

#endif  // QS_SERVER_API_CONVERT_H_
