#include "core/packing.h"

#include <ATen/ATen.h>

#include "core/torch_status.h"

namespace qs::core {
namespace {

torch::Tensor BitWeights(int n) {
  return at::pow(2, torch::arange(n, torch::kInt32)).to(torch::kInt32);
}

}  // namespace

StatusOr<torch::Tensor> PackCodes(const torch::Tensor& codes, int bits, int64_t qmin) {
  if (bits < 1 || bits > 8) return InvalidArgumentError("pack: bits must be 1..8");
  return GuardTorch("pack", [&]() -> StatusOr<torch::Tensor> {
    auto u = codes.flatten().to(torch::kCPU, torch::kInt32) - static_cast<int32_t>(qmin);
    if (u.numel() > 0 && (u.min().item<int>() < 0 || u.max().item<int>() >= (1 << bits))) {
      return InvalidArgumentError("pack: a code lies outside its " + std::to_string(bits) +
                                  "-bit range");
    }
    // [N, bits] bits of each code, LSB first, then regrouped eight to a byte.
    auto bitmat = u.unsqueeze(1).bitwise_right_shift(torch::arange(bits, torch::kInt32)).bitwise_and(1);
    auto stream = bitmat.flatten();
    const int64_t pad = (8 - stream.numel() % 8) % 8;
    if (pad) stream = at::cat({stream, torch::zeros({pad}, torch::kInt32)});
    return (stream.reshape({-1, 8}) * BitWeights(8)).sum(1).to(torch::kUInt8);
  });
}

StatusOr<torch::Tensor> UnpackCodes(const torch::Tensor& packed, int bits, int64_t qmin,
                                    int64_t count) {
  if (bits < 1 || bits > 8) return InvalidArgumentError("unpack: bits must be 1..8");
  if (count < 0 || packed.dim() != 1 || packed.scalar_type() != torch::kUInt8 ||
      packed.numel() * 8 < count * bits) {
    return InvalidArgumentError("unpack: " + std::to_string(packed.numel()) +
                                " bytes cannot hold " + std::to_string(count) + " codes of " +
                                std::to_string(bits) + " bits");
  }
  return GuardTorch("unpack", [&]() -> StatusOr<torch::Tensor> {
    auto bytes = packed.to(torch::kInt32);
    auto stream = bytes.unsqueeze(1).bitwise_right_shift(torch::arange(8, torch::kInt32))
                      .bitwise_and(1)
                      .flatten()
                      .narrow(0, 0, count * bits);
    return (stream.reshape({count, bits}) * BitWeights(bits)).sum(1).to(torch::kInt32) +
           static_cast<int32_t>(qmin);
  });
}

}  // namespace qs::core
