// `qsearch export`, and the --export option of `quantize`, `run` and `fetch`: a recipe's
// quantized model written in formats other tools load (exports/export.h, docs/export.md).
//
// The export refits the quantizers: it quantizes the model under the recipe on the calibration
// images, as `quantize` does (deterministic: the same images give the same grids bit for bit), so
// it needs the float model and the calibration draw the recipe was made with. A recipe written by
// a search records the model and calibration digests; a mismatch is FAILED_PRECONDITION, before
// any quantization.
//
//   qsearch export --config C --weights W --recipe R --format onnx-qdq --out DIR
//       [--calib SRC --calib-count N --seed S --sampling balanced|uniform] [--spec job.json]
#ifndef QS_SERVER_EXPORT_COMMAND_H_
#define QS_SERVER_EXPORT_COMMAND_H_

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/quant_config.h"
#include "common/status.h"
#include "core/quantize_model.h"
#include "exports/export.h"

namespace qs::server {

// Where a recipe's quantizers are fitted: the float model and the calibration draw.
struct ExportSource {
  std::string config;
  std::string weights;
  std::string calib = "fashion-mnist:train";
  int64_t calib_count = 256;
  uint64_t seed = 0;
  std::string sampling = "balanced";
};

// The source a job spec names (its model and calibration fields).
ExportSource ExportSourceOf(const JobSpec& spec);

// Quantizes `source`'s model under `recipe_json` (a "qsearch.recipe.v1" document) on its
// calibration draw and writes each of `formats` into `out_dir`. Returns what was written: files,
// per-format summaries, the calibration used. FAILED_PRECONDITION when the recipe's recorded
// model or calibration digest differs from `source`'s.
StatusOr<nlohmann::json> ExportRecipe(const ExportSource& source, const nlohmann::json& recipe_json,
                                      const std::vector<exports::ExportFormat>& formats,
                                      const std::string& out_dir);

// Writes each of `formats` for an already quantized model into `out_dir`; `provenance` goes into
// quant_config.json. Returns the summaries.
StatusOr<nlohmann::json> WriteExports(const core::QuantizedModel& quantized,
                                      const std::vector<exports::ExportFormat>& formats,
                                      const std::string& out_dir, const nlohmann::json& provenance);

// Adds `qsearch export` to `app`; the returned function runs it when it was parsed (exit code),
// else returns -1.
std::function<int()> AddExportCommand(CLI::App& app);

}  // namespace qs::server

#endif  // QS_SERVER_EXPORT_COMMAND_H_
