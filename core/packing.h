// Bit-packing of integer codes: n-bit codes (2..8) stored back to back, least significant bit
// first, in a byte stream. A 3-bit weight takes 3/8 of a byte.
//
//   torch::Tensor bytes = PackCodes(codes, /*bits=*/3, /*qmin=*/-4);
//   torch::Tensor back = UnpackCodes(bytes, 3, -4, codes.numel());   // == codes.flatten()
#ifndef QS_CORE_PACKING_H_
#define QS_CORE_PACKING_H_

#include <cstdint>

#include <torch/types.h>

#include "common/status.h"

namespace qs::core {

// Packs `codes` (integers in [qmin, qmin + 2^bits − 1], any shape, flattened row-major) into
// ceil(numel · bits / 8) bytes (uint8). INVALID_ARGUMENT for bits outside 1..8 or a code out of
// range.
StatusOr<torch::Tensor> PackCodes(const torch::Tensor& codes, int bits, int64_t qmin);

// The inverse: `count` int32 codes from `packed`. INVALID_ARGUMENT if `packed` is too short.
StatusOr<torch::Tensor> UnpackCodes(const torch::Tensor& packed, int bits, int64_t qmin,
                                    int64_t count);

}  // namespace qs::core

#endif  // QS_CORE_PACKING_H_
