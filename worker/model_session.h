// The model side of a search, in the process that evaluates: the model, the calibration and
// validation data and every site's captured inputs, loaded once and shared by worker threads.
//
//   QS_ASSIGN_OR_RETURN(auto session, ModelSession::Open(spec));
//   std::thread t([&] { ServeTasks(*session, store, queue, stop); });
#ifndef QS_WORKER_MODEL_SESSION_H_
#define QS_WORKER_MODEL_SESSION_H_

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/evaluation.h"
#include "common/job_spec.h"
#include "common/plan.h"
#include "common/status.h"
#include "core/dataset.h"
#include "core/evaluate.h"
#include "core/quantize_model.h"
#include "core/vit.h"
#include "storage/evaluation_store.h"
#include "storage/task_queue.h"

namespace qs::worker {

class ModelSession {
 public:
  // Loads the model and both data sets, draws the calibration subset, runs the float model once
  // over the validation set and once over the calibration set (capturing site inputs).
  static StatusOr<std::unique_ptr<ModelSession>> Open(const JobSpec& spec);

  const core::ViTModel& model() const { return model_; }
  const std::string& model_digest() const { return model_digest_; }
  const std::string& calibration_digest() const { return calibration_digest_; }
  std::vector<SiteInfo> sites() const { return core::DescribeSites(model_); }
  double fp32_top1() const { return fp32_top1_; }
  double fp32_eval_seconds() const { return fp32_eval_seconds_; }
  int64_t validation_images() const { return validation_.size(); }

  // Measures one candidate (thread-safe; failures come back inside the Evaluation). Weight-only
  // candidates at linear sites use the site's Gram matrix, computed once and kept.
  Evaluation Evaluate(const std::string& site, const QuantConfig& config,
                      const std::string& key) const;

  // Quantizes the whole model with `recipe` and measures it on the validation set. Keeps the
  // quantized model for WriteWeights.
  StatusOr<ValidationResult> Validate(const Recipe& recipe);
  // Writes the weights of `recipe` (quantizing again unless it was the last one validated).
  Status WriteWeights(const Recipe& recipe, const std::string& path);

 private:
  ModelSession() = default;
  StatusOr<const core::QuantizedModel*> Quantized(const Recipe& recipe);

  core::ViTModel model_;
  std::string model_digest_, calibration_digest_;
  core::Dataset validation_;
  torch::Tensor calibration_images_, validation_images_, fp32_logits_;
  core::SiteInputs site_inputs_;
  double fp32_top1_ = 0, fp32_eval_seconds_ = 0;
  // The augmented Gram matrix of a linear site's captured input, computed on first use.
  torch::Tensor GramOf(const std::string& site) const;

  std::mutex mu_;  // guards the cached quantized model
  mutable std::mutex gram_mu_;
  mutable std::map<std::string, torch::Tensor> grams_;
  std::string last_recipe_;
  std::unique_ptr<core::QuantizedModel> last_quantized_;
};

// Serves `queue` until `stop` is set: each task's candidates are evaluated (those already in
// `store` skipped), each result written to `store` as soon as it exists, then the task acked. A
// task whose payload cannot be read is nacked (and dead-lettered after its attempts).
void ServeTasks(const ModelSession& session, storage::EvaluationStore& store,
                storage::TaskQueue& queue, const std::atomic<bool>& stop);

}  // namespace qs::worker

#endif  // QS_WORKER_MODEL_SESSION_H_
