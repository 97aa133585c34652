// The "onnx-qdq" export: a quantized ViT/DeiT as an ONNX graph (opset 17, IR 8) in which every
// quantized weight and every uniformly quantized activation passes a QuantizeLinear /
// DequantizeLinear pair, so ONNX Runtime or TensorRT run the quantized model qsearch measured.
//
// The graph takes `images`, normalized NCHW float [batch, C, H, W] as timm models take them, and
// returns `logits` [batch, classes]. It follows core/vit.h's forward op for op:
//   - weights: the dequantized weight (on its grid) as a float initializer, transposed to
//     [in, out], then Q/DQ per tensor or per output channel (axis 1); per-group grids become one
//     per-channel Q/DQ'd MatMul per group of input columns, summed.
//   - activations: Q/DQ at each linear input and each attention matmul operand (q after the
//     1/√head_dim scaling, kᵀ, the softmax output, v), per tensor, per channel or per head.
//     Integer types: int8 for symmetric grids, uint8 for affine ones. A grid narrower than 8 bits
//     is encoded by a Clip (Min/Max where per channel or head) to its float range before the
//     QuantizeLinear, which with the integer zero point gives exactly clamp(round(x/s)+z, qmin,
//     qmax).
//   - what has no standard operator stays float and is named in the metadata: integer non-linear
//     kernels (I-BERT, FQ-ViT, I-ViT) at softmax/GELU/LayerNorm sites (metadata
//     "qsearch.float_nonlinear_sites") and log2, log√2 and twin-uniform activation grids
//     ("qsearch.float_activation_sites"). The recipe is in "qsearch.recipe".
#ifndef QS_EXPORTS_ONNX_QDQ_H_
#define QS_EXPORTS_ONNX_QDQ_H_

#include <string>
#include <vector>

#include "common/status.h"
#include "core/quantize_model.h"

namespace onnx {
class ModelProto;
}

namespace qs::exports {

// What the export left in float, for the caller to report.
struct OnnxExportSummary {
  int64_t weight_qdq = 0;      // Q/DQ pairs on weights (per-group: one per group)
  int64_t activation_qdq = 0;  // Q/DQ pairs on activations
  std::vector<std::string> float_nonlinear_sites;   // integer kernels left as float ops
  std::vector<std::string> float_activation_sites;  // non-uniform grids left in float
};

// Builds the graph of `quantized`. UNIMPLEMENTED for families other than ViT/DeiT (Swin,
// RepVGG); INVALID_ARGUMENT for a grid wider than 8 bits.
StatusOr<onnx::ModelProto> BuildQdqModel(const core::QuantizedModel& quantized,
                                         OnnxExportSummary* summary = nullptr);

// Runs the ONNX checker and strict shape and type inference on `model`; INTERNAL with the checker's
// message when it fails.
Status CheckOnnxModel(const onnx::ModelProto& model);

// BuildQdqModel, CheckOnnxModel, then the serialized model written to `path` atomically.
StatusOr<OnnxExportSummary> WriteQdqModel(const core::QuantizedModel& quantized,
                                          const std::string& path);

}  // namespace qs::exports

#endif  // QS_EXPORTS_ONNX_QDQ_H_
