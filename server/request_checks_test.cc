#include "server/request_checks.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

namespace qs::server {
namespace {

namespace v1 = qsearch::v1;

v1::Digest Digest(int64_t size) {
  v1::Digest d;
  d.set_sha256(std::string(64, 'a'));
  d.set_size_bytes(size);
  return d;
}

TEST(RequestChecksTest, JobNamesAreJobsSlashAnId) {
  EXPECT_EQ(*CheckJobName("jobs/18c2-ab_9"), "18c2-ab_9");
  for (const std::string& bad : std::vector<std::string>{
           "", "jobs/", "job/x", "jobs/a:b", "jobs/a b", "jobs/../x", "jobs/" + std::string(129, 'a')}) {
    EXPECT_EQ(CheckJobName(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RequestChecksTest, CreateJobNeedsASpecAndAValidRequestId) {
  v1::CreateJobRequest req;
  EXPECT_EQ(CheckCreateJob(req).status().message(), "CreateJob needs a spec");
  req.mutable_spec();
  req.set_request_id("bad id");
  EXPECT_NE(CheckCreateJob(req).status().message().find("request_id"), std::string::npos);
}

TEST(RequestChecksTest, PagesAndTokensAreBounded) {
  v1::ListJobsRequest req;
  auto in = CheckListJobs(req);
  ASSERT_TRUE(in.ok());
  EXPECT_EQ(in->page.page_size, 50);
  EXPECT_EQ(in->page.start, 0);
  req.set_page_token("120");
  EXPECT_EQ(CheckListJobs(req)->page.start, 120);
  // A token at the top of int64 once overflowed the range read from Redis.
  for (const std::string bad :
       {"9223372036854775807", "99999999999999999999", "-1", "12x", " 1"}) {
    req.set_page_token(bad);
    EXPECT_EQ(CheckListJobs(req).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  req.set_page_token("");
  req.set_page_size(1001);
  EXPECT_EQ(CheckListJobs(req).status().code(), StatusCode::kInvalidArgument);
  req.set_page_size(10);
  req.set_state(static_cast<v1::JobState>(77));
  EXPECT_EQ(CheckListJobs(req).status().message(), "unknown job state filter");
}

TEST(RequestChecksTest, BlobReadRangesCannotOverflow) {
  v1::ReadBlobRequest req;
  *req.mutable_digest() = Digest(1000);
  req.set_read_offset(10);
  req.set_read_limit(std::numeric_limits<int64_t>::max());  // offset + limit overflows int64
  auto range = CheckReadBlob(req);
  ASSERT_TRUE(range.ok()) << range.status().ToString();
  EXPECT_EQ(range->offset, 10);
  EXPECT_EQ(range->end, 1000);
  req.set_read_limit(5);
  EXPECT_EQ(CheckReadBlob(req)->end, 15);
  req.set_read_offset(1001);
  EXPECT_EQ(CheckReadBlob(req).status().code(), StatusCode::kOutOfRange);
  req.set_read_offset(-1);
  EXPECT_EQ(CheckReadBlob(req).status().code(), StatusCode::kInvalidArgument);
  *req.mutable_digest() = Digest(-5);
  req.set_read_offset(0);
  EXPECT_EQ(CheckReadBlob(req).status().code(), StatusCode::kInvalidArgument);
}

TEST(RequestChecksTest, WriteChunksNameTheirBlobAndStayUnderAMebibyte) {
  v1::WriteBlobRequest req;
  EXPECT_EQ(CheckWriteChunk(req, /*first=*/true).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckWriteChunk(req, /*first=*/false).ok());
  *req.mutable_digest() = Digest(10);
  EXPECT_TRUE(CheckWriteChunk(req, true).ok());
  req.set_data(std::string(kBlobChunkBytes + 1, 'x'));
  EXPECT_EQ(CheckWriteChunk(req, true).message(), "chunks are at most 1 MiB");
  req.clear_data();
  req.set_write_offset(-3);
  EXPECT_EQ(CheckWriteChunk(req, true).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qs::server
