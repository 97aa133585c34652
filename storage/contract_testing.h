// The DocumentStore contract as a test body, run against every implementation (in memory and on
// disk in storage_test.cc, on Redis in redis_test.cc). Test-only.
#ifndef QS_STORAGE_CONTRACT_TESTING_H_
#define QS_STORAGE_CONTRACT_TESTING_H_

#include <gtest/gtest.h>


#include "storage/document_store.h"

namespace qs::storage::contract {


inline void ExerciseStore(DocumentStore& store) {
  auto missing = store.Get("abc123");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(store.Put("abc123", R"({"x":1})").ok());
  auto got = store.Get("abc123");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ(**got, R"({"x":1})");
  ASSERT_TRUE(store.Put("abc123", "second").ok());
  EXPECT_EQ(**store.Get("abc123"), "second");
  ASSERT_TRUE(store.Put("gone", "x").ok());
  ASSERT_TRUE(store.Delete("gone").ok());
  EXPECT_FALSE(store.Get("gone")->has_value());
  EXPECT_TRUE(store.Delete("never-there").ok());
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(store.Put("binary", binary).ok());
  EXPECT_EQ(**store.Get("binary"), binary);
  for (const char* bad : {"", "../etc/passwd", "a/b", "a b", "ä"}) {
    EXPECT_EQ(store.Put(bad, "x").code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store.Get(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace qs::storage::contract

#endif  // QS_STORAGE_CONTRACT_TESTING_H_
