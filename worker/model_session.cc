#include "worker/model_session.h"

#include <chrono>

#include <nlohmann/json.hpp>

#include <c10/core/InferenceMode.h>

#include "core/erq.h"
#include "core/metrics.h"

namespace qs::worker {
namespace {

using nlohmann::json;

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

StatusOr<std::unique_ptr<ModelSession>> ModelSession::Open(const JobSpec& spec) {
  std::unique_ptr<ModelSession> s(new ModelSession());
  QS_ASSIGN_OR_RETURN(s->model_, core::ViTModel::Load(spec.model_config, spec.model_weights));
  s->model_digest_ = s->model_.Digest();
  QS_ASSIGN_OR_RETURN(core::Dataset calib_all, core::LoadDataset(spec.calibration_source));
  core::Dataset calib = core::DrawSubset(calib_all, spec.calibration_count, spec.seed);
  s->calibration_digest_ = core::DatasetDigest(calib);
  QS_ASSIGN_OR_RETURN(s->calibration_images_, core::NormalizeImages(calib, s->model_.config()));
  QS_ASSIGN_OR_RETURN(core::Dataset val_all, core::LoadDataset(spec.validation_source));
  s->validation_ = core::Head(val_all, spec.validation_limit);
  QS_ASSIGN_OR_RETURN(s->validation_images_,
                      core::NormalizeImages(s->validation_, s->model_.config()));
  auto start = std::chrono::steady_clock::now();
  QS_ASSIGN_OR_RETURN(s->fp32_logits_, s->model_.Logits(s->validation_images_));
  s->fp32_eval_seconds_ = Since(start);
  s->fp32_top1_ = core::Top1(s->fp32_logits_, s->validation_.labels);
  QS_ASSIGN_OR_RETURN(s->site_inputs_, core::CaptureSiteInputs(s->model_, s->calibration_images_));
  return s;
}

Evaluation ModelSession::Evaluate(const std::string& site, const QuantConfig& config,
                                  const std::string& key) const {
  const core::Site* s = model_.FindSite(site);
  if (s == nullptr) {
    Evaluation e;
    e.key = key;
    e.site = site;
    e.error = "the model has no site '" + site + "'";
    return e;
  }
  auto it = site_inputs_.find(site);
  static const std::vector<torch::Tensor> kNone;
  const bool weight_only = s->kind == SiteKind::kLinear && !config.activation.quantized();
  return core::EvaluateCandidate(model_, *s, config, it == site_inputs_.end() ? kNone : it->second,
                                 key, weight_only ? GramOf(site) : torch::Tensor());
}

torch::Tensor ModelSession::GramOf(const std::string& site) const {
  std::lock_guard<std::mutex> lock(gram_mu_);
  auto cached = grams_.find(site);
  if (cached != grams_.end()) return cached->second;
  auto it = site_inputs_.find(site);
  if (it == site_inputs_.end() || it->second.size() != 1) return torch::Tensor();
  c10::InferenceMode guard;
  return grams_[site] = core::AugmentedGram(it->second[0]);
}

StatusOr<const core::QuantizedModel*> ModelSession::Quantized(const Recipe& recipe) {
  const std::string text = RecipeToJson(recipe, model_.SiteKinds()).dump();
  if (last_quantized_ && text == last_recipe_) return last_quantized_.get();
  QS_ASSIGN_OR_RETURN(core::QuantizedModel q,
                      core::QuantizeModel(model_, recipe, calibration_images_));
  last_quantized_ = std::make_unique<core::QuantizedModel>(std::move(q));
  last_recipe_ = text;
  return last_quantized_.get();
}

StatusOr<ValidationResult> ModelSession::Validate(const Recipe& recipe) {
  std::lock_guard<std::mutex> lock(mu_);
  auto start = std::chrono::steady_clock::now();
  QS_ASSIGN_OR_RETURN(const core::QuantizedModel* q, Quantized(recipe));
  QS_ASSIGN_OR_RETURN(torch::Tensor logits, q->Logits(validation_images_));
  ValidationResult v;
  v.top1 = core::Top1(logits, validation_.labels);
  v.top1_agreement = core::Top1Agreement(fp32_logits_, logits);
  v.output_kl = core::OutputKl(fp32_logits_, logits);
  v.seconds = Since(start);
  return v;
}

Status ModelSession::WriteWeights(const Recipe& recipe, const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  QS_ASSIGN_OR_RETURN(const core::QuantizedModel* q, Quantized(recipe));
  return q->WriteWeights(path);
}

void ServeTasks(const ModelSession& session, storage::EvaluationStore& store,
                storage::TaskQueue& queue, const std::atomic<bool>& stop) {
  while (!stop.load()) {
    auto task = queue.Pop(std::chrono::milliseconds(100));
    if (!task.ok() || !task->has_value()) continue;
    const storage::Task& t = **task;
    bool ok = true;
    try {
      const json payload = json::parse(t.payload);
      const std::string site = payload.at("site").get<std::string>();
      const core::Site* s = session.model().FindSite(site);
      if (s == nullptr) throw std::runtime_error("unknown site " + site);
      for (const auto& c : payload.at("candidates")) {
        const std::string key = c.at("key").get<std::string>();
        auto have = store.Get(key);
        if (have.ok() && have->has_value() && ParseStoredEvaluation(**have, key)) continue;
        auto config = QuantConfigFromJson(c.at("config"), s->kind);
        Evaluation e;
        if (config.ok()) {
          e = session.Evaluate(site, *config, key);
        } else {
          e.key = key;
          e.site = site;
          e.error = config.status().ToString();
        }
        if (!store.Put(key, ToJson(e).dump()).ok()) {
          ok = false;
          break;
        }
        if (stop.load()) {
          ok = false;
          break;
        }
      }
    } catch (...) {
      ok = false;  // a malformed payload or an unexpected exception: retried, then dead-lettered
    }
    if (ok) {
      (void)queue.Ack(t.id);
    } else {
      (void)queue.Nack(t.id);
    }
  }
}

}  // namespace qs::worker
