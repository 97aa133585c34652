// Bytes a client or a shared store could hand over as JSON: a job spec, a task payload, a stored
// evaluation, a recipe, model facts, validation and test results, a job record, a saved job
// state, a model config. Each parser must return a Status for any input: no crash, no sanitizer
// report, no hang.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "common/evaluation.h"
#include "common/job_spec.h"
#include "common/quant_config.h"
#include "common/tasks.h"
#include "core/vit.h"
#include "scheduler/job_manager.h"
#include "scheduler/search.h"

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
  (void)qs::ValidationResultFromJson(j);
  (void)qs::TestResultFromJson(j);
  (void)qs::EvaluationFromJson(j);
  (void)qs::scheduler::JobRecordFromJson(j);
  (void)qs::scheduler::JobStateFromJson(j);
  (void)qs::core::ParseViTConfig(j);
  return 0;
}
