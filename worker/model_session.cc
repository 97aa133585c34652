#include "worker/model_session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

#include <ATen/Context.h>
#include <c10/core/InferenceMode.h>

#include "core/metrics.h"
#include "core/threads.h"
#include "core/torch_status.h"

namespace qs::worker {
namespace {

using nlohmann::json;

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

StatusOr<torch::Device> PickDevice(const std::string& wanted) {
  const bool cuda = at::hasCUDA();
  if (wanted == "cuda" && !cuda) {
    return FailedPreconditionError(
        "spec compute.device is \"cuda\", but this LibTorch has no usable CUDA device");
  }
  if (wanted == "cuda" || (wanted == "auto" && cuda)) return torch::Device(torch::kCUDA, 0);
  return torch::Device(torch::kCPU);
}

int64_t Bytes(const core::SiteInputs& inputs) {
  int64_t bytes = 0;
  for (const auto& [name, tensors] : inputs) {
    for (const auto& t : tensors) bytes += t.numel() * t.element_size();
  }
  return bytes;
}

// Whether the task can be served from a kept Gram matrix alone: a linear site whose candidates
// all keep float activations and are measured from the Gram, with no MAE or nuclear norm asked.
bool GramSuffices(const core::ViTModel& model, const core::Site& site,
                  const std::vector<core::SiteCandidate>& candidates,
                  const core::SiteEvaluationOptions& options) {
  if (site.kind != SiteKind::kLinear || options.measure_mae || options.measure_nuclear) {
    return false;
  }
  for (const auto& c : candidates) {
    if (c.config.activation.quantized() || !core::MeasuredFromGram(model, site, c.config)) {
      return false;
    }
  }
  return true;
}

// A segment's captured inputs, batch by batch: site → operand → pieces.
using BatchedInputs = std::map<std::string, std::vector<std::vector<torch::Tensor>>>;

void AppendBatch(const core::SiteInputs& batch, BatchedInputs* parts) {
  for (const auto& [site, tensors] : batch) {
    auto& p = (*parts)[site];
    p.resize(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) p[i].push_back(tensors[i]);
  }
}

// The pieces joined in `dtype`, each operand its own contiguous tensor (so a view of a larger
// tensor, like k and v of the qkv output, does not keep all of it alive), copied once.
core::SiteInputs Joined(BatchedInputs* parts, torch::ScalarType dtype) {
  core::SiteInputs out;
  for (auto& [site, operands] : *parts) {
    for (auto& pieces : operands) {
      torch::Tensor joined;
      if (pieces.size() == 1) {
        joined = pieces[0].to(dtype).contiguous();
        if (joined.is_same(pieces[0]) && joined.storage().nbytes() >
                                             static_cast<size_t>(joined.nbytes())) {
          joined = joined.clone();  // a contiguous slice of something larger
        }
      } else {
        joined = at::cat(pieces, 0).to(dtype);
      }
      out[site].push_back(joined);
      pieces.clear();
    }
  }
  return out;
}

// Bytes the inputs of `segment`'s sites take on `images` calibration images.
int64_t SegmentInputBytes(const core::ViTModel& model, int64_t segment, int64_t images,
                          int64_t element_size) {
  int64_t elements = 0;
  for (const core::Site* site : model.SegmentSites(segment)) elements += site->input_elements;
  return elements * images * element_size;
}

}  // namespace

StatusOr<std::unique_ptr<ModelSession>> ModelSession::Open(const JobSpec& spec,
                                                           const SessionOptions& options) {
  if (options.capture_batch < 1 || options.activation_cache_bytes < 0) {
    return InvalidArgumentError("session options: capture_batch must be >= 1 and the activation "
                                "cache size >= 0");
  }
  std::unique_ptr<ModelSession> s(new ModelSession());
  s->options_ = options;
  QS_ASSIGN_OR_RETURN(core::ViTModel model,
                      core::ViTModel::Load(spec.model_config, spec.model_weights));
  s->model_digest_ = model.Digest();
  QS_ASSIGN_OR_RETURN(torch::Device device, PickDevice(spec.device));
  s->model_ = device.is_cpu() ? std::move(model) : model.To(device);
  s->capture_dtype_ = spec.capture_dtype == "float16" ? torch::kFloat16 : torch::kFloat32;

  QS_RETURN_IF_ERROR(s->OpenData(spec));

  // Reference 1: one float pass over the validation set (its logits are every validation's
  // reference). It also warms the machine up for the timed calibration pass.
  auto start = std::chrono::steady_clock::now();
  QS_ASSIGN_OR_RETURN(s->fp32_logits_,
                      s->HeldOutLogits(s->validation_, s->model_, nullptr,
                                       [&](int64_t done) { s->ReportOpenProgress(done); }));
  s->fp32_validation_seconds_ = Since(start);
  s->fp32_top1_ = core::Top1(s->fp32_logits_, s->validation_labels_);

  bool restored = false;
  if (options.checkpoint_cache != nullptr) {
    QS_ASSIGN_OR_RETURN(restored, s->RestoreCheckpoints(device));
  }
  if (!restored) {
    QS_RETURN_IF_ERROR(s->CheckpointCalibration(device));
    if (options.checkpoint_cache != nullptr) s->ShareCheckpoints();
  }
  // The first segments' site inputs, as many as the activation cache holds, captured now so the
  // evaluation starts with them.
  const int64_t element_size = s->capture_dtype_ == torch::kFloat32 ? 4 : 2;
  int64_t planned = 0;
  for (int64_t seg = 0; seg < s->model_.num_segments(); ++seg) {
    planned += SegmentInputBytes(s->model_, seg, s->calibration_images(), element_size);
    if (planned > options.activation_cache_bytes) break;
    QS_RETURN_IF_ERROR(s->SegmentInputs(seg).status());
  }
  s->segment_captures_ = 0;  // count the captures the evaluation needs
  return s;
}

Status ModelSession::OpenData(const JobSpec& spec) {
  const core::ViTConfig& config = model_.config();
  auto open = [&](const std::string& source, int64_t count, const std::string& sampling,
                  const char* role) -> StatusOr<core::ImageSet> {
    auto set = core::OpenAndDraw(source, config, count, spec.seed, sampling);
    if (!set.ok()) return set.status().WithContext(role);
    return set;
  };
  QS_ASSIGN_OR_RETURN(core::ImageSet calib_set,
                      open(spec.calibration_source, spec.calibration_count,
                           spec.calibration_sampling, "calibration"));
  QS_ASSIGN_OR_RETURN(core::Dataset calib, core::Materialize(calib_set));
  calibration_digest_ = core::DatasetDigest(calib);
  if (capture_dtype_ != torch::kFloat32) calibration_digest_ += ":" + spec.capture_dtype;
  QS_ASSIGN_OR_RETURN(calibration_images_, core::NormalizeImages(calib, config));
  QS_ASSIGN_OR_RETURN(validation_, open(spec.validation_source, spec.validation_limit,
                                        spec.validation_sampling, "validation"));
  validation_labels_ = validation_.labels();
  if (spec.test_source.empty()) return OkStatus();
  QS_ASSIGN_OR_RETURN(core::ImageSet test,
                      open(spec.test_source, spec.test_limit, spec.test_sampling, "test"));
  // The reported accuracy is honest only on images nothing was chosen or fitted on. (Calibration
  // and validation may share images: that is the user's call, and it flatters no reported number
  // once a test set exists.)
  QS_RETURN_IF_ERROR(core::CheckDisjoint({{"calibration", &calib_set}, {"test", &test}}));
  QS_RETURN_IF_ERROR(core::CheckDisjoint({{"validation", &validation_}, {"test", &test}}));
  test_ = std::move(test);
  return OkStatus();
}

StatusOr<torch::Tensor> ModelSession::HeldOutLogits(
    const core::ImageSet& set, const core::ViTModel& model, const core::QuantizedModel* quantized,
    const std::function<void(int64_t)>& on_batch) const {
  return core::StreamLogits(
      set, model.config(),
      [&](const torch::Tensor& x) { return quantized ? quantized->Logits(x) : model.Logits(x); },
      256, on_batch);
}

void ModelSession::ReportOpenProgress(int64_t done) const {
  if (options_.open_progress) {
    options_.open_progress(done, validation_.size() + calibration_images_.size(0));
  }
}

std::string ModelSession::CheckpointName(int64_t segment) const {
  return "ckpt:" + model_digest_ + ":" + calibration_digest_ + ":" + std::to_string(segment);
}

CachedCheckpoint EncodeCheckpoint(const torch::Tensor& tensor, double seconds) {
  const torch::Tensor t = tensor.contiguous().cpu();
  std::string shape;
  for (int64_t d : t.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
  return {std::string(static_cast<const char*>(t.data_ptr()), t.nbytes()),
          {{"dtype", t.scalar_type() == torch::kFloat16 ? "float16" : "float32"},
           {"shape", shape},
           {"seconds", json(seconds).dump()}}};
}

StatusOr<std::pair<torch::Tensor, double>> DecodeCheckpoint(const CachedCheckpoint& entry,
                                                            torch::ScalarType dtype,
                                                            const std::vector<int64_t>& shape) {
  auto field = [&](const char* key) {
    auto it = entry.fields.find(key);
    return it == entry.fields.end() ? std::string() : it->second;
  };
  const std::string want_dtype = dtype == torch::kFloat16 ? "float16" : "float32";
  if (field("dtype") != want_dtype) {
    return DataLossError("cached checkpoint: dtype is not " + want_dtype);
  }
  std::string want_shape;
  for (int64_t d : shape) want_shape += (want_shape.empty() ? "" : ",") + std::to_string(d);
  if (field("shape") != want_shape) {
    return DataLossError("cached checkpoint: shape is not [" + want_shape + "]");
  }
  const int64_t element = dtype == torch::kFloat16 ? 2 : 4;
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (numel * element != static_cast<int64_t>(entry.bytes.size())) {
    return DataLossError("cached checkpoint: " + std::to_string(entry.bytes.size()) +
                         " bytes for " + std::to_string(numel) + " elements");
  }
  const std::string seconds_text = field("seconds");
  char* end = nullptr;
  const double seconds = std::strtod(seconds_text.c_str(), &end);
  if (seconds_text.empty() || *end != '\0' || !std::isfinite(seconds) || seconds < 0) {
    return DataLossError("cached checkpoint: seconds is not a non-negative number");
  }
  return core::GuardTorch("cached checkpoint", [&]() -> StatusOr<std::pair<torch::Tensor, double>> {
    torch::Tensor t = torch::empty(shape, dtype);
    if (!entry.bytes.empty()) std::memcpy(t.data_ptr(), entry.bytes.data(), entry.bytes.size());
    return std::make_pair(t, seconds);
  });
}

StatusOr<bool> ModelSession::RestoreCheckpoints(const torch::Device& device) {
  // The shapes a checkpoint of this model and calibration set has: its segments run on one
  // image. An entry of any other shape (another writer's, or damaged) is a miss.
  QS_ASSIGN_OR_RETURN(auto shapes, core::GuardTorch("checkpoint shapes", [&]() -> StatusOr<
                                                        std::vector<std::vector<int64_t>>> {
    c10::InferenceMode guard;
    std::vector<std::vector<int64_t>> out;
    torch::Tensor x = calibration_images_.narrow(0, 0, 1).to(model_.device(), torch::kFloat32);
    for (int64_t seg = 0; seg < model_.num_segments(); ++seg) {
      out.push_back(x.sizes().vec());
      out.back()[0] = calibration_images_.size(0);
      x = model_.ForwardSegment(seg, x);
    }
    return out;
  }));
  std::vector<torch::Tensor> restored;
  double seconds = 0;
  int64_t bytes = 0;
  auto report = [&](bool hit) {
    if (options_.on_checkpoint_lookup) options_.on_checkpoint_lookup(hit, bytes);
    return hit;
  };
  for (int64_t seg = 0; seg < model_.num_segments(); ++seg) {
    auto entry = options_.checkpoint_cache->Get(CheckpointName(seg));
    // An unreachable cache is a miss: the pass can always be run.
    if (!entry.ok() || !entry->has_value()) return report(false);
    auto decoded = DecodeCheckpoint({std::move((*entry)->bytes), std::move((*entry)->meta)},
                                    capture_dtype_, shapes[seg]);
    if (!decoded.ok()) return report(false);
    bytes += static_cast<int64_t>(decoded->first.nbytes());
    restored.push_back(decoded->first.to(device));
    seconds = decoded->second;
  }
  checkpoints_ = std::move(restored);
  fp32_calibration_seconds_ = seconds;
  ReportOpenProgress(validation_.size() + calibration_images_.size(0));
  return report(true);
}

void ModelSession::ShareCheckpoints() const {
  int64_t written = 0;
  for (int64_t seg = 0; seg < static_cast<int64_t>(checkpoints_.size()); ++seg) {
    const CachedCheckpoint entry = EncodeCheckpoint(checkpoints_[seg], fp32_calibration_seconds_);
    const Status s =
        options_.checkpoint_cache->Put(CheckpointName(seg), entry.bytes, entry.fields);
    if (!s.ok()) break;
    written += static_cast<int64_t>(entry.bytes.size());
  }
  if (options_.on_checkpoint_store) options_.on_checkpoint_store(written);
}

Status ModelSession::CheckpointCalibration(const torch::Device& device) {
  // Reference 2: one plain float pass over the calibration set, in the model's segments, keeping
  // each segment's input: the checkpoints site inputs are captured from later. (Capturing during
  // this pass would slow it: the kept inputs stop the allocator from reusing buffers, and the
  // reference would flatter every ratio.)
  QS_RETURN_IF_ERROR(model_.Logits(calibration_images_.narrow(0, 0, 0)).status());
  const int64_t segments = model_.num_segments(), n = calibration_images_.size(0);
  return core::GuardTorch("calibration pass", [&]() -> Status {
    c10::InferenceMode guard;
    std::vector<std::vector<torch::Tensor>> parts(segments);
    double forward_seconds = 0;
    for (int64_t b = 0; b < n; b += options_.capture_batch) {
      auto x = calibration_images_.narrow(0, b, std::min(options_.capture_batch, n - b))
                   .to(device, torch::kFloat32);
      for (int64_t seg = 0; seg < segments; ++seg) {
        // The checkpoint is kept at the capture precision, and the pass goes on from exactly
        // that, so every later capture from it sees what this pass saw.
        parts[seg].push_back(x.to(capture_dtype_));
        if (capture_dtype_ != torch::kFloat32) x = parts[seg].back().to(torch::kFloat32);
        const auto t = std::chrono::steady_clock::now();
        x = model_.ForwardSegment(seg, x);
        if (!device.is_cpu()) x.cpu();  // let the timing see the device's work
        forward_seconds += Since(t);
      }
      ReportOpenProgress(validation_.size() + std::min(n, b + options_.capture_batch));
    }
    for (auto& p : parts) checkpoints_.push_back(p.size() == 1 ? p[0] : at::cat(p, 0));
    fp32_calibration_seconds_ = forward_seconds;
    return OkStatus();
  });
}

std::string ModelSession::device() const { return model_.device().str(); }

StatusOr<std::shared_ptr<const core::SiteInputs>> ModelSession::SegmentInputs(
    int64_t segment) const {
  std::unique_lock<std::mutex> lock(segments_mu_);
  while (true) {
    for (auto it = segments_.begin(); it != segments_.end(); ++it) {
      if (it->segment == segment) {
        segments_.splice(segments_.begin(), segments_, it);
        return segments_.front().inputs;
      }
    }
    if (!capturing_.count(segment)) break;
    segment_ready_.wait(lock);
  }
  capturing_.insert(segment);
  lock.unlock();

  // Run the segment again from its checkpoint, a batch at a time, and keep its sites' inputs.
  auto captured = core::GuardTorch("capture", [&]() -> StatusOr<core::SiteInputs> {
    c10::InferenceMode guard;
    core::ScopedBlasThreads blas(options_.capture_blas_threads);
    const torch::Tensor& input = checkpoints_.at(segment);
    BatchedInputs parts;
    for (int64_t b = 0; b < input.size(0); b += options_.capture_batch) {
      core::SiteInputs batch;
      auto x = input.narrow(0, b, std::min(options_.capture_batch, input.size(0) - b))
                   .to(torch::kFloat32);
      QS_RETURN_IF_ERROR(core::CaptureSegmentInputs(model_, segment, x, &batch).status());
      AppendBatch(batch, &parts);
    }
    return Joined(&parts, capture_dtype_);
  });

  lock.lock();
  capturing_.erase(segment);
  segment_ready_.notify_all();
  if (!captured.ok()) return captured.status();
  ++segment_captures_;
  auto inputs = std::make_shared<const core::SiteInputs>(std::move(*captured));
  segments_.push_front({segment, inputs, Bytes(*inputs)});
  int64_t total = 0;
  for (const auto& c : segments_) total += c.bytes;
  while (segments_.size() > 1 && total > options_.activation_cache_bytes) {
    total -= segments_.back().bytes;
    segments_.pop_back();  // users still holding it keep it alive
  }
  return inputs;
}

StatusOr<std::vector<torch::Tensor>> ModelSession::NonlinearInput(const core::Site& site) const {
  // Not cached with the segment: non-linear inputs are the segment's largest tensors, and only
  // jobs that search non-linear methods ask for them, one task per site.
  return core::GuardTorch("capture", [&]() -> StatusOr<std::vector<torch::Tensor>> {
    c10::InferenceMode guard;
    core::ScopedBlasThreads blas(options_.capture_blas_threads);
    const int64_t segment = model_.SegmentOf(site);
    const torch::Tensor& input = checkpoints_.at(segment);
    std::vector<torch::Tensor> pieces;
    for (int64_t b = 0; b < input.size(0); b += options_.capture_batch) {
      core::SiteInputs batch;
      auto x = input.narrow(0, b, std::min(options_.capture_batch, input.size(0) - b))
                   .to(torch::kFloat32);
      QS_RETURN_IF_ERROR(core::CaptureSegmentInputs(model_, segment, x, &batch, true).status());
      pieces.push_back(batch.at(site.name).at(0).to(capture_dtype_));
    }
    return std::vector<torch::Tensor>{at::cat(pieces, 0)};
  });
}

StatusOr<std::vector<Evaluation>> ModelSession::EvaluateTask(
    const std::string& site, const std::vector<core::SiteCandidate>& candidates,
    const core::SiteEvaluationOptions& options,
    const std::function<void(const Evaluation&)>& on_result) const {
  const core::Site* s = model_.FindSite(site);
  if (s == nullptr) return NotFoundError("the model has no site '" + site + "'");
  core::SiteData data;
  {
    std::lock_guard<std::mutex> lock(gram_mu_);
    auto it = grams_.find(site);
    if (it != grams_.end()) data.gram = it->second;
  }
  if (s->kind == SiteKind::kNonlinear) {
    QS_ASSIGN_OR_RETURN(data.inputs, NonlinearInput(*s));
  } else if (!data.gram.defined() || !GramSuffices(model_, *s, candidates, options)) {
    QS_ASSIGN_OR_RETURN(auto inputs, SegmentInputs(model_.SegmentOf(*s)));
    auto it = inputs->find(site);
    if (it != inputs->end()) data.inputs = it->second;
  }
  core::EvaluationCosts costs;
  core::SiteEvaluationOptions with_grids = options;
  with_grids.weight_grids = &weight_grids_;
  auto results = core::EvaluateSite(model_, *s, candidates, &data, with_grids, on_result, &costs);
  bool weight_only = false;
  for (const auto& c : candidates) weight_only = weight_only || !c.config.activation.quantized();
  std::lock_guard<std::mutex> lock(gram_mu_);
  // Kept only where weight-only candidates can be served from it later.
  if (data.gram.defined() && weight_only) grams_.emplace(site, data.gram);
  costs_.Add(costs);
  return results;
}

double ModelSession::MeasureFp32CalibrationPass(int repeats) const {
  std::vector<double> seconds;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto start = std::chrono::steady_clock::now();
    (void)model_.Logits(calibration_images_, nullptr, options_.capture_batch);
    seconds.push_back(Since(start));
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds[seconds.size() / 2];
}

void ModelSession::DropCapturedInputs() {
  {
    std::lock_guard<std::mutex> lock(segments_mu_);
    segments_.clear();  // tasks still running keep what they hold
  }
  std::lock_guard<std::mutex> lock(gram_mu_);
  grams_.clear();
}

core::EvaluationCosts ModelSession::costs() const {
  std::lock_guard<std::mutex> lock(gram_mu_);
  return costs_;
}

StatusOr<const core::QuantizedModel*> ModelSession::Quantized(const Recipe& recipe) {
  const std::string text = RecipeToJson(recipe, model_.SiteKinds()).dump();
  if (last_quantized_ && text == last_recipe_) return last_quantized_.get();
  // Only the logits are needed, and the evaluation's weight grids are the float weights' own.
  core::QuantizeOptions options;
  options.site_reports = false;
  options.weight_grids = &weight_grids_;
  QS_ASSIGN_OR_RETURN(core::QuantizedModel q,
                      core::QuantizeModel(model_, recipe, calibration_images_, options));
  last_quantized_ = std::make_unique<core::QuantizedModel>(std::move(q));
  last_recipe_ = text;
  return last_quantized_.get();
}

StatusOr<ValidationResult> ModelSession::Validate(const Recipe& recipe) {
  std::lock_guard<std::mutex> lock(mu_);
  auto start = std::chrono::steady_clock::now();
  QS_ASSIGN_OR_RETURN(const core::QuantizedModel* q, Quantized(recipe));
  QS_ASSIGN_OR_RETURN(torch::Tensor logits, HeldOutLogits(validation_, model_, q));
  ValidationResult v;
  v.top1 = core::Top1(logits, validation_labels_);
  v.top1_agreement = core::Top1Agreement(fp32_logits_, logits);
  v.output_kl = core::OutputKl(fp32_logits_, logits);
  v.seconds = Since(start);
  for (const auto& r : q->reconstructions()) v.reconstruction_seconds += r.seconds;
  return v;
}

StatusOr<TestResult> ModelSession::Test(const Recipe& recipe) {
  std::lock_guard<std::mutex> lock(mu_);
  TestResult t;
  if (!test_) return t;
  auto start = std::chrono::steady_clock::now();
  const torch::Tensor labels = test_->labels();
  if (!fp32_test_logits_.defined()) {
    QS_ASSIGN_OR_RETURN(fp32_test_logits_, HeldOutLogits(*test_, model_));
  }
  QS_ASSIGN_OR_RETURN(const core::QuantizedModel* q, Quantized(recipe));
  QS_ASSIGN_OR_RETURN(torch::Tensor logits, HeldOutLogits(*test_, model_, q));
  t.measured = true;
  t.source = test_->description;
  t.images = test_->size();
  t.top1 = core::Top1(logits, labels);
  t.fp32_top1 = core::Top1(fp32_test_logits_, labels);
  t.seconds = Since(start);
  return t;
}

Status ModelSession::WriteWeights(const Recipe& recipe, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  QS_ASSIGN_OR_RETURN(const core::QuantizedModel* q, Quantized(recipe));
  return q->WriteWeights(path);
}

ModelFacts ModelSession::Facts() const {
  ModelFacts f;
  f.model_digest = model_digest_;
  f.calibration_digest = calibration_digest_;
  f.sites = sites();
  f.fp32_top1 = fp32_top1_;
  f.fp32_eval_seconds = fp32_validation_seconds_;
  f.fp32_calibration_seconds = fp32_calibration_seconds_;
  f.validation_images = validation_images();
  f.calibration_images = calibration_images();
  f.device = device();
  return f;
}

}  // namespace qs::worker
