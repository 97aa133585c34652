// Exports of a quantized model that other tools load (docs/export.md):
//   onnx-qdq               model.onnx: the graph with QuantizeLinear/DequantizeLinear pairs
//                          (exports/onnx_qdq.h)
//   safetensors-fakequant  model.safetensors: every tensor in float under its timm name (quantized
//                          weights dequantized), loadable by timm's load_state_dict;
//                          encodings.json: every site's quantizers; quant_config.json: the
//                          recipe and where it came from
//   safetensors-packed     weights.safetensors: the "qsearch.quantized.v1" format
//                          (core/quantized_format.h; docs/export.md gives it as a spec)
//
//   QS_ASSIGN_OR_RETURN(ExportFormat f, ParseExportFormat("onnx-qdq"));
//   QS_ASSIGN_OR_RETURN(ExportResult r, Export(quantized, f, {"out/export"}));
#ifndef QS_EXPORTS_EXPORT_H_
#define QS_EXPORTS_EXPORT_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "core/quantize_model.h"

namespace qs::exports {

enum class ExportFormat { kOnnxQdq, kSafetensorsFakeQuant, kSafetensorsPacked };

// "onnx-qdq", "safetensors-fakequant" or "safetensors-packed"; INVALID_ARGUMENT naming the known
// ones otherwise.
StatusOr<ExportFormat> ParseExportFormat(const std::string& name);
const char* ToString(ExportFormat format);
// A comma-separated list of formats (each once).
StatusOr<std::vector<ExportFormat>> ParseExportFormats(const std::string& list);

// OK when every format can export a model of `config`'s family (onnx-qdq: ViT and DeiT only,
// UNIMPLEMENTED otherwise), so a command can refuse before its work rather than after it.
Status CheckExportable(const core::ViTConfig& config, const std::vector<ExportFormat>& formats);

struct ExportOptions {
  std::string out_dir;  // created if missing
  // Where the quantizers were fitted, recorded in quant_config.json (e.g. the calibration
  // source, count, seed, sampling and digest). May be empty.
  nlohmann::json provenance = nlohmann::json::object();
};

struct ExportResult {
  std::vector<std::string> files;  // written, in out_dir
  nlohmann::json summary;          // what was exported and what stayed float
};

// Writes `format`'s files for `quantized` into options.out_dir.
StatusOr<ExportResult> Export(const core::QuantizedModel& quantized, ExportFormat format,
                              const ExportOptions& options);

// encodings.json's content: "format" "qsearch.encodings.v1", the model digest, and per site its
// activation encodings ("input" for a linear site, "lhs"/"rhs" for a matmul site; uniform grids
// with bits, qmin, qmax, symmetric, granularity, scale, zero_point and the broadcast shape of
// scale against the operand, log and twin-uniform grids with their parameters), its weight
// encoding ("param_encodings", by tensor name) and non-linear sites' methods.
nlohmann::json ActivationEncodings(const core::QuantizedModel& quantized);

}  // namespace qs::exports

#endif  // QS_EXPORTS_EXPORT_H_
