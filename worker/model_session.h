// The model side of a search, in the process that evaluates: the model, the calibration and
// validation data, and the float model's activations, loaded once and shared by worker threads.
//
// Memory is bounded by the checkpoints, the activation cache and the Gram matrices kept for
// weight-only candidates ((in + 1)² float64 per linear site), whatever the size of the
// calibration set: no site's inputs are held for the whole model at once. Open runs the float
// model once over the
// calibration images and keeps the residual stream at each segment boundary (the input of each
// block), plus the first segments' site inputs as far as the activation cache holds them. Other
// site inputs are captured when a task needs them, by running the segment again from its
// checkpoint; captured segments live in an LRU cache bounded in bytes, and what a linear site's
// weight-only candidates need, its Gram matrix, is kept on its own. The timed reference pass
// captures nothing (kept inputs would slow it and flatter every ratio); the first segments are
// captured after it.
//
//   QS_ASSIGN_OR_RETURN(auto session, ModelSession::Open(spec));
//   QS_ASSIGN_OR_RETURN(auto evals, session->EvaluateTask(site, candidates, {}));
#ifndef QS_WORKER_MODEL_SESSION_H_
#define QS_WORKER_MODEL_SESSION_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/evaluation.h"
#include "common/job_spec.h"
#include "common/plan.h"
#include "common/tasks.h"
#include "common/status.h"
#include "core/dataset.h"
#include "core/image_set.h"
#include "core/evaluate.h"
#include "core/quantize_model.h"
#include "core/threads.h"
#include "core/vit.h"
#include "storage/chunked_cache.h"

namespace qs::worker {

// One calibration checkpoint as the shared cache holds it: raw bytes plus the fields "dtype"
// ("float32" or "float16"), "shape" (comma-separated) and "seconds" (the calibration pass's time).
struct CachedCheckpoint {
  std::string bytes;
  std::map<std::string, std::string> fields;
};
CachedCheckpoint EncodeCheckpoint(const torch::Tensor& tensor, double seconds);
// The tensor and the pass's seconds back, when the entry is exactly a checkpoint of `dtype` and
// `shape`; DATA_LOSS naming the defect otherwise (another dtype or shape, a size that disagrees,
// a field that is not a number). Whatever the fields say, no more than the bytes present is read.
StatusOr<std::pair<torch::Tensor, double>> DecodeCheckpoint(const CachedCheckpoint& entry,
                                                            torch::ScalarType dtype,
                                                            const std::vector<int64_t>& shape);

struct SessionOptions {
  // Bytes of captured segment inputs kept at once (at least one segment is always kept).
  int64_t activation_cache_bytes = int64_t{2} << 30;
  // Calibration images per forward batch when checkpointing and capturing.
  int64_t capture_batch = 64;
  // BLAS threads while site inputs are captured (0: whatever is set): the evaluation plan's, so
  // inputs captured while opening (under the whole-model plan) and those captured again in a task
  // are the same numbers (core/threads.h on why the count matters).
  int capture_blas_threads = 0;
  // Hears Open's progress: images through its two float passes (validation, then calibration)
  // out of the total. May be empty.
  std::function<void(int64_t done, int64_t total)> open_progress;
  // Where the calibration checkpoints are shared across processes and jobs (the service's
  // Redis LRU instance); null: not shared. A session whose model and calibration set are there
  // restores them instead of running the calibration pass, and reports that pass's time as first
  // measured. The hooks hear each lookup and each store, with the bytes moved. May be empty.
  storage::ChunkedCache* checkpoint_cache = nullptr;
  std::function<void(bool hit, int64_t bytes_read)> on_checkpoint_lookup;
  std::function<void(int64_t bytes_written)> on_checkpoint_store;
};

class ModelSession {
 public:
  // Loads the model (onto spec.compute.device) and both data sets, draws the calibration subset,
  // and runs the float model once over the validation set (its top-1, the reference logits) and
  // once over the calibration set (the segment checkpoints). Each pass is timed: they are the
  // references every cost is reported against. INVALID_ARGUMENT for options out of range;
  // FAILED_PRECONDITION for a CUDA device LibTorch lacks; load errors as they come.
  static StatusOr<std::unique_ptr<ModelSession>> Open(const JobSpec& spec,
                                                      const SessionOptions& options = {});

  const core::ViTModel& model() const { return model_; }
  const std::string& model_digest() const { return model_digest_; }
  // The calibration set's digest, with the capture precision when it is not float32 (results
  // differ with it, so it is part of every candidate key).
  const std::string& calibration_digest() const { return calibration_digest_; }
  std::vector<SiteInfo> sites() const { return core::DescribeSites(model_); }
  double fp32_top1() const { return fp32_top1_; }
  double fp32_validation_seconds() const { return fp32_validation_seconds_; }
  double fp32_calibration_seconds() const { return fp32_calibration_seconds_; }
  int64_t validation_images() const { return validation_.size(); }
  // The test set's size (0 without one).
  int64_t test_images() const { return test_ ? test_->size() : 0; }
  int64_t calibration_images() const { return calibration_images_.size(0); }
  std::string device() const;
  // What the scheduler needs to plan and report the search.
  ModelFacts Facts() const;

  // Measures `candidates` at `site` in one go (thread-safe), calling `on_result` with each
  // Evaluation as soon as it exists. A candidate's own failure comes back inside its Evaluation
  // (and is cached like any result); a failure of the task as a whole comes back as the status,
  // for the queue to retry: NOT_FOUND for a site the model lacks, and whatever capturing the
  // site's inputs returned (RESOURCE_EXHAUSTED when memory ran out, say).
  StatusOr<std::vector<Evaluation>> EvaluateTask(const std::string& site,
                                       const std::vector<core::SiteCandidate>& candidates,
                                       const core::SiteEvaluationOptions& options,
                                       const std::function<void(const Evaluation&)>& on_result = {}) const;

  // Frees the captured site inputs and the kept Gram matrices (the checkpoints stay, so a later
  // task captures again): the evaluation stage is over and validation wants the memory.
  void DropCapturedInputs();

  // Quantizes the whole model with `recipe` and measures it on the validation set. Keeps the
  // quantized model for WriteWeights.
  StatusOr<ValidationResult> Validate(const Recipe& recipe);
  // The top-1 of `recipe` and of the float model on the test set (measured = false without one).
  // The float pass runs on the first call.
  StatusOr<TestResult> Test(const Recipe& recipe);
  // Writes the weights of `recipe` (quantizing again unless it was the last one validated).
  Status WriteWeights(const Recipe& recipe, const std::string& path);

  // The median of `repeats` plain float passes over the calibration images (for benchmarks,
  // which want a steadier reference than Open's single pass).
  double MeasureFp32CalibrationPass(int repeats) const;
  // Where the evaluations' time went so far (for benchmarks).
  core::EvaluationCosts costs() const;
  // Segments captured since Open returned (a segment evicted and needed again counts twice).
  int64_t segment_captures() const { return segment_captures_.load(); }

 private:
  ModelSession() = default;
  StatusOr<const core::QuantizedModel*> Quantized(const Recipe& recipe);
  // Opens the data sets, draws the subsets and checks the test set shares nothing.
  Status OpenData(const JobSpec& spec);
  // `set`'s logits under `model` (quantized when `quantized` is given), read in batches.
  StatusOr<torch::Tensor> HeldOutLogits(const core::ImageSet& set, const core::ViTModel& model,
                                        const core::QuantizedModel* quantized = nullptr,
                                        const std::function<void(int64_t)>& on_batch = {}) const;
  // Calls options_.open_progress with `done` images of Open's two passes.
  void ReportOpenProgress(int64_t done) const;
  // The timed float pass over the calibration images that keeps the segment checkpoints.
  Status CheckpointCalibration(const torch::Device& device);
  // The checkpoints from options_.checkpoint_cache: whether they were all there.
  StatusOr<bool> RestoreCheckpoints(const torch::Device& device);
  // Stores the checkpoints there (a failure costs later sessions the pass, nothing more).
  void ShareCheckpoints() const;
  std::string CheckpointName(int64_t segment) const;
  // The float inputs of every site of `segment` on the calibration set, captured on demand.
  StatusOr<std::shared_ptr<const core::SiteInputs>> SegmentInputs(int64_t segment) const;
  // A non-linear site's float input over the calibration set (captured anew each call).
  StatusOr<std::vector<torch::Tensor>> NonlinearInput(const core::Site& site) const;

  SessionOptions options_;
  core::ViTModel model_;
  std::string model_digest_, calibration_digest_;
  core::ImageSet validation_;
  std::optional<core::ImageSet> test_;
  torch::Tensor calibration_images_, validation_labels_, fp32_logits_, fp32_test_logits_;
  torch::ScalarType capture_dtype_ = torch::kFloat32;
  // checkpoints_[s]: the input of segment s on the calibration images (images for s = 0).
  std::vector<torch::Tensor> checkpoints_;
  double fp32_top1_ = 0, fp32_validation_seconds_ = 0, fp32_calibration_seconds_ = 0;

  // Captured segments, most recently used first; `capturing_` holds the ones being captured.
  struct CachedSegment {
    int64_t segment;
    std::shared_ptr<const core::SiteInputs> inputs;
    int64_t bytes;
  };
  mutable std::mutex segments_mu_;
  mutable std::condition_variable segment_ready_;
  mutable std::list<CachedSegment> segments_;
  mutable std::set<int64_t> capturing_;
  mutable std::atomic<int64_t> segment_captures_{0};

  // Weight grids fitted by evaluations, which validation reuses.
  mutable core::WeightGridCache weight_grids_;
  mutable std::mutex gram_mu_;  // also guards costs_
  mutable std::map<std::string, torch::Tensor> grams_;
  mutable core::EvaluationCosts costs_;

  std::mutex mu_;  // guards the cached quantized model
  std::string last_recipe_;
  std::unique_ptr<core::QuantizedModel> last_quantized_;
};

}  // namespace qs::worker

#endif  // QS_WORKER_MODEL_SESSION_H_
