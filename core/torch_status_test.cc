#include "core/torch_status.h"

#include <gtest/gtest.h>

#include <new>
#include <stdexcept>

#include <torch/types.h>

namespace qs::core {
namespace {

TEST(GuardTorchTest, OutOfMemoryIsResourceExhaustedAndTransient) {
  // Once std::bad_alloc came back INTERNAL and the CPU allocator's failure INVALID_ARGUMENT, so
  // a worker short of memory stored the candidate as failed for good.
  Status s = GuardTorch("alloc", []() -> Status { throw std::bad_alloc(); });
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(IsTransient(s.code()));
  s = GuardTorch("huge", []() -> Status {
    auto t = torch::empty({int64_t{1} << 44}, torch::kFloat32);  // 64 TiB: beyond any machine
    (void)t;
    return OkStatus();
  });
  // (Under vm.overcommit_memory=1 the allocation itself succeeds; then there is nothing to map.)
  if (!s.ok()) EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  s = GuardTorch("shape", []() -> Status {
    auto t = torch::ones({2, 3}).mm(torch::ones({2, 3}));
    (void)t;
    return OkStatus();
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  s = GuardTorch("other", []() -> Status { throw std::runtime_error("boom"); });
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("boom"), std::string::npos);
}

}  // namespace
}  // namespace qs::core
