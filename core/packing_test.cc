#include "core/packing.h"

#include <gtest/gtest.h>

namespace qs::core {
namespace {

TEST(PackingTest, RoundTripsEveryWidthAndTakesTheExpectedBytes) {
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t qmin : {int64_t{0}, -(int64_t{1} << (bits - 1))}) {
      torch::manual_seed(bits);
      const int64_t n = 1001;  // not a multiple of 8
      auto codes = torch::randint(qmin, qmin + (int64_t{1} << bits), {7, 143}, torch::kInt32);
      auto packed = PackCodes(codes, bits, qmin);
      ASSERT_TRUE(packed.ok()) << packed.status().ToString();
      EXPECT_EQ(packed->numel(), (n * bits + 7) / 8);
      auto back = UnpackCodes(*packed, bits, qmin, n);
      ASSERT_TRUE(back.ok());
      EXPECT_TRUE(torch::equal(*back, codes.flatten())) << bits;
    }
  }
}

TEST(PackingTest, KnownLayoutIsLsbFirst) {
  // 2-bit codes 1, 2, 3, 0 → bits 10 01 11 00 (LSB first) → byte 0b00111001 = 57.
  auto packed = PackCodes(torch::tensor({1, 2, 3, 0}, torch::kInt32), 2, 0);
  ASSERT_TRUE(packed.ok());
  ASSERT_EQ(packed->numel(), 1);
  EXPECT_EQ((*packed)[0].item<int>(), 57);
}

TEST(PackingTest, RejectsOutOfRangeCodesAndShortStreams) {
  EXPECT_FALSE(PackCodes(torch::tensor({0, 4}, torch::kInt32), 2, 0).ok());
  EXPECT_FALSE(PackCodes(torch::tensor({-3}, torch::kInt32), 2, -2).ok());
  EXPECT_FALSE(PackCodes(torch::tensor({0}), 9, 0).ok());
  EXPECT_FALSE(UnpackCodes(torch::zeros({2}, torch::kUInt8), 3, 0, 6).ok());
  EXPECT_TRUE(UnpackCodes(torch::zeros({3}, torch::kUInt8), 3, 0, 8).ok());
}

}  // namespace
}  // namespace qs::core
