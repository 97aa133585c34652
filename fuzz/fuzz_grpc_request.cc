// Bytes a client could send to the service: the first byte picks an RPC, the rest is parsed as
// its request message (protobuf's own parser), then run through the checks the handler makes
// before it touches a store (server/request_checks.h).
#include <cstddef>
#include <cstdint>

#include "server/request_checks.h"

namespace {

namespace v1 = qsearch::v1;
using namespace qs::server;

template <typename Message, typename Check>
void ParseAndCheck(const uint8_t* data, size_t size, Check check) {
  Message m;
  if (m.ParseFromArray(data, static_cast<int>(size))) check(m);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t rpc = data[0] % 7;
  ++data;
  --size;
  switch (rpc) {
    case 0:
      ParseAndCheck<v1::CreateJobRequest>(data, size, [](auto& m) { (void)CheckCreateJob(m); });
      break;
    case 1:
      ParseAndCheck<v1::GetJobRequest>(data, size, [](auto& m) { (void)CheckJobName(m.name()); });
      break;
    case 2:
      ParseAndCheck<v1::ListJobsRequest>(data, size, [](auto& m) { (void)CheckListJobs(m); });
      break;
    case 3:
      ParseAndCheck<v1::WatchJobRequest>(data, size, [](auto& m) { (void)CheckWatchJob(m); });
      break;
    case 4:
      ParseAndCheck<v1::WriteBlobRequest>(data, size,
                                          [](auto& m) { (void)CheckWriteChunk(m, true); });
      break;
    case 5:
      ParseAndCheck<v1::ReadBlobRequest>(data, size, [](auto& m) { (void)CheckReadBlob(m); });
      break;
    default:
      ParseAndCheck<v1::FindMissingBlobsRequest>(data, size, [](auto& m) {
        for (const auto& d : m.digests()) (void)CheckDigest(d);
      });
  }
  return 0;
}
