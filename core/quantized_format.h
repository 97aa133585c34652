// The quantized-weights file, "qsearch.quantized.v1": a safetensors file in which every quantized
// linear weight is stored as bit-packed integer codes plus scales (and zero points for affine
// grids), and every other tensor stays in float under its timm name.
//
// Per quantized weight W (timm name `<site>.weight`, viewed as [out, in]):
//   <site>.weight.codes       U8 [ceil(out·in·bits/8)]: codes − qmin, `bits` each, LSB first,
//                             row-major over [out, in]
//   <site>.weight.scale       F32 [out, groups] (groups = ceil(in / group_size); 1 per channel) or [1]
//   <site>.weight.zero_point  I32, same shape as the scale; affine grids only
// and the metadata "layout" (JSON) gives, per site: weight, weight_shape, bits, qmin, group_size.
// Dequantize: W = (codes + qmin − zero_point) · scale, each scale column covering group_size
// input columns.
#ifndef QS_CORE_QUANTIZED_FORMAT_H_
#define QS_CORE_QUANTIZED_FORMAT_H_

#include <map>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "common/status.h"
#include "core/quantizer.h"
#include "core/safetensors.h"

namespace qs::core {

inline constexpr char kQuantizedFormat[] = "qsearch.quantized.v1";

// One quantized weight to write.
struct PackedWeightInput {
  std::string site;                     // e.g. "blocks.0.mlp.fc1"
  std::string weight;                   // its timm tensor name
  std::vector<int64_t> weight_shape;    // as stored in the float model (4-D for the patch conv)
  const QuantizedWeight* quantized;     // codes [out, in] and grid
  int64_t group_size = 0;               // 0: one scale per row (or per tensor)
};

// Adds the entries above for `w` to `tensors` and its layout to `layout`.
Status AddPackedWeight(const PackedWeightInput& w, std::map<std::string, torch::Tensor>* tensors,
                       nlohmann::json* layout);

// `grid` (a linear weight's, viewed as [out, in]) with its scale and zero point as the file
// stores them: [rows, groups] (groups = ceil(in / group_size); group_size 0: one per row), or
// unchanged when per tensor. Fitted per-group grids hold their parameters expanded to [out, in].
UniformGrid CompactWeightGrid(const UniformGrid& grid, int64_t rows, int64_t group_size);

// Whether `file` is in the quantized format.
bool IsQuantizedWeightsFile(const SafetensorsFile& file);

// Every tensor of a quantized-weights file as float32, under its timm name, quantized weights
// dequantized. DATA_LOSS for a layout that disagrees with the tensors.
StatusOr<std::map<std::string, torch::Tensor>> ReadQuantizedWeights(const SafetensorsFile& file);

}  // namespace qs::core

#endif  // QS_CORE_QUANTIZED_FORMAT_H_
