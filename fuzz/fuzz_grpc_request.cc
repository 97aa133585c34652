// Bytes a client could send to the service: the first byte picks an RPC, the rest is parsed as
// its request message (protobuf's own parser), then run through the checks the handler makes
// before it touches a store (server/request_checks.h).
#include <cstddef>
#include <cstdint>

#include "server/request_checks.h"

namespace v1 = qsearch::v1;

template <typename Message>
bool Parse(const uint8_t* data, size_t size, Message* m) {
  return m->ParseFromArray(data, static_cast<int>(size));
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t rpc = data[0] % 7;
  ++data;
  --size;
  using namespace qs::server;
  switch (rpc) {
    case 0: {
      v1::CreateJobRequest m;
      if (Parse(data, size, &m)) (void)CheckCreateJob(m);
      break;
    }
    case 1: {
      v1::GetJobRequest m;
      if (Parse(data, size, &m)) (void)CheckJobName(m.name());
      break;
    }
    case 2: {
      v1::ListJobsRequest m;
      if (Parse(data, size, &m)) (void)CheckListJobs(m);
      break;
    }
    case 3: {
      v1::WatchJobRequest m;
      if (Parse(data, size, &m)) (void)CheckWatchJob(m);
      break;
    }
    case 4: {
      v1::WriteBlobRequest m;
      if (Parse(data, size, &m)) (void)CheckWriteChunk(m, /*first=*/true);
      break;
    }
    case 5: {
      v1::ReadBlobRequest m;
      if (Parse(data, size, &m)) (void)CheckReadBlob(m);
      break;
    }
    default: {
      v1::FindMissingBlobsRequest m;
      if (Parse(data, size, &m)) {
        for (const auto& d : m.digests()) (void)CheckDigest(d);
      }
      break;
    }
  }
  return 0;
}
