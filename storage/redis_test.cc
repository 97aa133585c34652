#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "storage/chunked_cache.h"
#include "storage/contract_testing.h"
#include "storage/redis_client.h"
#include "storage/redis_store.h"
#include "storage/redis_testing.h"

namespace qs::storage {
namespace {

using std::chrono::milliseconds;

TEST(RedisUrlTest, ParsesWhatIsThereAndNamesWhatIsWrong) {
  auto a = ParseRedisUrl("redis://cache.internal:6380/2");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "cache.internal");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 2);
  auto b = ParseRedisUrl("redis://:s3cret@10.0.0.5");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->password, "s3cret");
  EXPECT_EQ(b->port, 6379);
  EXPECT_EQ(b->ToString().find("s3cret"), std::string::npos);
  for (const auto& [url, needle] : std::vector<std::pair<std::string, std::string>>{
           {"http://x", "redis://"},
           {"redis://", "no host"},
           {"redis://h:0", "port"},
           {"redis://h:70000", "port"},
           {"redis://h:12ab", "port"},
           {"redis://h/16", "database"}}) {
    auto r = ParseRedisUrl(url);
    ASSERT_FALSE(r.ok()) << url;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().ToString();
  }
}

TEST(RedisClientTest, NothingListeningIsUnavailableSoon) {
  RedisAddress nowhere;
  nowhere.port = testing::FreePort();
  RedisOptions options;
  options.retry_for = milliseconds(200);
  const auto start = std::chrono::steady_clock::now();
  auto client = RedisClient::Connect(nowhere, options);
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// One server for the suite (append-only, fsync always); every test starts from an empty one.
class RedisStorageTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new testing::RedisServer(/*aof=*/true);
    ASSERT_TRUE(server_->Start()) << "redis-server did not start";
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    auto c = RedisClient::Connect(server_->address());
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    redis_ = std::move(*c);
    ASSERT_TRUE(redis_->Command({"FLUSHALL"}).ok());
  }
  static testing::RedisServer* server_;
  static std::shared_ptr<RedisClient> redis_;
};

testing::RedisServer* RedisStorageTest::server_ = nullptr;
std::shared_ptr<RedisClient> RedisStorageTest::redis_;

TEST_F(RedisStorageTest, DocumentStore) {
  auto store = NewRedisDocumentStore(redis_, "qs:v1:eval:");
  contract::ExerciseStore(*store);
  EXPECT_EQ(redis_->Command({"GET", "qs:v1:eval:abc123"})->str, "second");
  auto cache = NewRedisDocumentStore(redis_, "qs:v1:act:", std::chrono::seconds(100));
  ASSERT_TRUE(cache->Put("k", "v").ok());
  const int64_t ttl = redis_->Command({"TTL", "qs:v1:act:k"})->integer;
  EXPECT_GT(ttl, 90);
  EXPECT_LE(ttl, 100);
}

TEST_F(RedisStorageTest, TwoProcessesWorthOfQueuesShareOneStream) {
  // A scheduler's queue and a worker's, as separate processes would hold them.
  RedisQueueOptions scheduler_side, worker_side;
  scheduler_side.consumer = "scheduler";
  worker_side.consumer = "worker-1";
  auto scheduler = NewRedisTaskQueue(redis_, scheduler_side);
  auto worker = NewRedisTaskQueue(redis_, worker_side);
  ASSERT_TRUE(scheduler.ok() && worker.ok());
  ASSERT_TRUE((*scheduler)->Push({"j", "t", "payload"}).ok());
  auto t = (*worker)->Pop(milliseconds(500));
  ASSERT_TRUE(t.ok() && t->has_value());
  EXPECT_EQ((*t)->payload, "payload");
  ASSERT_TRUE((*worker)->Complete(**t, "r").ok());
  EXPECT_EQ((*scheduler)->Outcomes("j")->at("t").result, "r");
  // The stream keeps only live tasks.
  EXPECT_EQ(redis_->Command({"XLEN", "qs:v1:tasks"})->integer, 0);
}

TEST_F(RedisStorageTest, QueueAndOutcomesSurviveAKilledRedis) {
  auto queue = NewRedisTaskQueue(redis_);
  ASSERT_TRUE(queue.ok()) << queue.status().ToString();
  TaskQueue* q = queue->get();
  ASSERT_TRUE(q->Push({"j", "a", "p"}).ok());
  ASSERT_TRUE(q->Push({"j", "b", "p"}).ok());
  auto a = q->Pop(milliseconds(500));
  ASSERT_TRUE(a.ok() && a->has_value());
  ASSERT_TRUE(q->Complete(**a, "ra").ok());
  server_->Kill();
  // Commands wait for the server to come back instead of failing the job.
  std::thread restart([] {
    std::this_thread::sleep_for(milliseconds(300));
    ASSERT_TRUE(server_->Start());
  });
  auto b = q->Pop(milliseconds(2000));
  restart.join();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  ASSERT_TRUE(b->has_value());
  EXPECT_EQ((*b)->id, "b");
  ASSERT_TRUE(q->Complete(**b, "rb").ok());
  auto outcomes = q->Outcomes("j");
  ASSERT_TRUE(outcomes.ok());
  EXPECT_EQ(outcomes->at("a").result, "ra");
  EXPECT_EQ(outcomes->at("b").result, "rb");
}

TEST_F(RedisStorageTest, AFullRedisIsResourceExhaustedNotACrash) {
  ASSERT_TRUE(redis_->Command({"CONFIG", "SET", "maxmemory-policy", "noeviction"}).ok());
  ASSERT_TRUE(redis_->Command({"CONFIG", "SET", "maxmemory", "1"}).ok());
  auto store = NewRedisDocumentStore(redis_, "qs:v1:eval:");
  const Status s = store->Put("big", std::string(1 << 20, 'x'));
  ASSERT_TRUE(redis_->Command({"CONFIG", "SET", "maxmemory", "0"}).ok());
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_TRUE(store->Put("small", "x").ok());
}

TEST_F(RedisStorageTest, ChunkedCacheRoundTripsAndTreatsPartialEvictionAsAMiss) {
  ChunkedCache cache(redis_, "qs:v1:act:", std::chrono::seconds(600), /*chunk_bytes=*/1000);
  std::string value(10500, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 7);
  EXPECT_FALSE(cache.Get("x")->has_value());
  ASSERT_TRUE(cache.Put("x", value, {{"dtype", "float32"}}).ok());
  auto hit = cache.Get("x");
  ASSERT_TRUE(hit.ok() && hit->has_value());
  EXPECT_EQ((*hit)->bytes, value);
  EXPECT_EQ((*hit)->meta.at("dtype"), "float32");
  EXPECT_EQ((*hit)->meta.count("_sha256"), 0u);
  EXPECT_EQ(redis_->Command({"EXISTS", "qs:v1:act:x:c:10"})->integer, 1);
  EXPECT_GT(redis_->Command({"TTL", "qs:v1:act:x:c:3"})->integer, 500);
  // LRU eviction of one chunk: a miss, and the metadata goes too.
  ASSERT_TRUE(redis_->Command({"DEL", "qs:v1:act:x:c:4"}).ok());
  EXPECT_FALSE(cache.Get("x")->has_value());
  EXPECT_EQ(redis_->Command({"EXISTS", "qs:v1:act:x:meta"})->integer, 0);
  // A damaged chunk is a miss too.
  ASSERT_TRUE(cache.Put("y", value, {}).ok());
  ASSERT_TRUE(redis_->Command({"SET", "qs:v1:act:y:c:0", std::string(1000, 'z')}).ok());
  EXPECT_FALSE(cache.Get("y")->has_value());
  EXPECT_EQ(cache.Put("z", "v", {{"_size", "1"}}).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(cache.Put("empty", "", {}).ok());
  auto empty = cache.Get("empty");
  ASSERT_TRUE(empty.ok() && empty->has_value());
  EXPECT_EQ((*empty)->bytes, "");
}

TEST_F(RedisStorageTest, ChunkedCacheTreatsHostileMetadataAsAMiss) {
  ChunkedCache cache(redis_, "qs:v1:act:", std::chrono::seconds(600), /*chunk_bytes=*/1000);
  ASSERT_TRUE(cache.Put("x", std::string(2500, 'a'), {{"dtype", "float32"}}).ok());
  // A size of a terabyte in a trillion chunks once meant a reservation of that size and a list of
  // a trillion commands; now the metadata is refused, or the read stops at the first missing chunk.
  for (const auto& [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"_size", "1099511627776"}, {"_chunks", "1000000000000"}, {"_size", "-1"},
           {"_size", "12abc"}, {"_sha256", "zz"}, {"_chunks", "0"}, {"_extra", "1"}}) {
    ASSERT_TRUE(cache.Put("h", std::string(2500, 'a'), {}).ok());
    ASSERT_TRUE(redis_->Command({"HSET", "qs:v1:act:h:meta", field, value}).ok());
    auto got = cache.Get("h");
    ASSERT_TRUE(got.ok()) << field;
    EXPECT_FALSE(got->has_value()) << field << "=" << value;
    EXPECT_EQ(redis_->Command({"EXISTS", "qs:v1:act:h:meta"})->integer, 0) << field;
  }
  // Recorded chunks past the data that exists end the read as a miss.
  ASSERT_TRUE(cache.Put("h", std::string(2500, 'a'), {}).ok());
  ASSERT_TRUE(redis_->Command({"HSET", "qs:v1:act:h:meta", "_size", "1000000000000", "_chunks",
                               "1000000000000"})
                  .ok());
  EXPECT_FALSE(cache.Get("h")->has_value());
  EXPECT_TRUE(cache.Get("x")->has_value());
}

TEST(ChunkedCacheLayoutTest, ParsesWhatPutWritesAndRefusesTheRest) {
  const std::string digest(64, 'a');
  auto ok = ChunkedCache::ParseLayout({"_size", "10", "_chunks", "2", "_sha256", digest, "k", "v"});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->size, 10);
  EXPECT_EQ(ok->chunks, 2);
  EXPECT_EQ(ok->meta.at("k"), "v");
  for (const auto& fields : std::vector<std::vector<std::string>>{
           {"_size", "10", "_chunks", "2", "_sha256", digest, "k"},
           {"_size", "10", "_chunks", "11", "_sha256", digest},
           {"_size", "0", "_chunks", "1", "_sha256", digest},
           {"_size", "99999999999999999999", "_chunks", "1", "_sha256", digest},
           {"_size", "10", "_chunks", "2", "_sha256", digest, "", "v"},
           {"_size", "10", "_chunks", "2", "_sha256", digest, "k", "v", "k", "w"},
           {"_chunks", "2", "_sha256", digest}}) {
    EXPECT_EQ(ChunkedCache::ParseLayout(fields).status().code(), StatusCode::kDataLoss)
        << fields.size();
  }
}

}  // namespace
}  // namespace qs::storage
