#include <gtest/gtest.h>

#include <filesystem>
#include <atomic>
#include <thread>

#include "common/sha256.h"
#include "storage/blob_store.h"
#include "storage/document_store.h"
#include "storage/contract_testing.h"
#include "storage/task_queue.h"

namespace qs::storage {
namespace {

using std::chrono::milliseconds;

using contract::ExerciseStore;

TEST(DocumentStoreTest, InMemory) {
  auto store = NewInMemoryDocumentStore();
  ExerciseStore(*store);
}

TEST(DocumentStoreTest, DirectorySurvivesReopening) {
  auto dir = std::filesystem::temp_directory_path() / "qs_store_test";
  std::filesystem::remove_all(dir);
  {
    auto store = OpenDirectoryDocumentStore(dir.string());
    ASSERT_TRUE(store.ok());
    ExerciseStore(**store);
  }
  auto again = OpenDirectoryDocumentStore(dir.string());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(**(*again)->Get("abc123"), "second");
  std::filesystem::remove_all(dir);
}

TEST(BlobStoreTest, ChunkedUploadsResumeVerifyAndPublish) {
  auto dir = std::filesystem::temp_directory_path() / "qs_blob_test";
  std::filesystem::remove_all(dir);
  auto blobs = BlobStore::Open(dir.string());
  ASSERT_TRUE(blobs.ok());
  BlobStore& b = **blobs;
  const std::string content = "0123456789abcdefghij";
  const BlobDigest d{Sha256Hex(content), static_cast<int64_t>(content.size())};
  EXPECT_FALSE(b.Has(d));
  ASSERT_EQ(*b.Append(d, 0, content.substr(0, 8)), 8);
  // A resumed upload must continue at the committed size.
  EXPECT_EQ(*b.CommittedSize(d), 8);
  EXPECT_EQ(b.Append(d, 4, "xxxx").status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(b.Append(d, 8, std::string(100, 'y')).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b.Read(d, 0, 0).status().code(), StatusCode::kNotFound);  // not published yet
  ASSERT_EQ(*b.Append(d, 8, content.substr(8)), 20);
  ASSERT_TRUE(b.Finish(d).ok());
  EXPECT_TRUE(b.Has(d));
  EXPECT_EQ(*b.Read(d, 0, 0), content);
  EXPECT_EQ(*b.Read(d, 5, 3), "567");
  EXPECT_EQ(b.Read(d, 21, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(*b.Append(d, 0, "again"), 20);  // published: nothing to do

  // Bytes that do not match their digest are discarded, not published.
  const BlobDigest lie{Sha256Hex("something else"), 4};
  ASSERT_TRUE(b.Append(lie, 0, "abcd").ok());
  const Status mismatch = b.Finish(lie);
  EXPECT_EQ(mismatch.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.message().find("discarded"), std::string::npos);
  EXPECT_FALSE(b.Has(lie));
  EXPECT_EQ(*b.CommittedSize(lie), 0);

  EXPECT_EQ(b.Append({"NOTHEX", 1}, 0, "x").status().code(), StatusCode::kInvalidArgument);
  auto small = BlobStore::Open((dir / "small").string(), /*max_blob_bytes=*/10);
  EXPECT_EQ((*small)->Append({Sha256Hex(content), 20}, 0, "x").status().code(),
            StatusCode::kResourceExhausted);
  auto copied = b.PutFile(b.PathOf(d));
  ASSERT_TRUE(copied.ok());
  EXPECT_EQ(copied->sha256, d.sha256);
  EXPECT_EQ(ParseBlobReference(d.Reference()), d.sha256);
  EXPECT_FALSE(ParseBlobReference("blob:sha256:xyz").has_value());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qs::storage
