// Bytes a client could send as JSON: a job spec, a task payload, a stored evaluation, a recipe.
// Each parser must return a Status for any input: no crash, no sanitizer report, no hang.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "common/evaluation.h"
#include "common/job_spec.h"
#include "common/quant_config.h"
#include "common/tasks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)qs::ParseTaskRequest(text);
  (void)qs::ParseStoredEvaluation(text, "k");
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  (void)qs::ParseJobSpec(j, "");
  (void)qs::RecipeFromJson(j, {{"blocks.0.attn.qkv", qs::SiteKind::kLinear},
                              {"blocks.0.attn.qk_matmul", qs::SiteKind::kMatmul}});
  (void)qs::ModelFactsFromJson(j);
  return 0;
}
