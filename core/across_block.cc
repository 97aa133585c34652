#include "core/across_block.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/torch_status.h"
#include "core/training.h"

namespace qs::core {
namespace {

constexpr double kMinGamma = 0.25, kMaxGamma = 4.0;  // as FitAffineL1 keeps them
constexpr uint64_t kBatchSeed = 0x5eed;

// x fake-quantized on a uniform grid with scale exp(log_scale), differentiable in both.
torch::Tensor LearnedFakeQuantize(const torch::Tensor& x, const torch::Tensor& log_scale,
                                  const UniformGrid& grid) {
  auto scale = log_scale.exp();
  auto zero = grid.zero_point.to(x.device());
  return (RoundSte(x / scale) + zero).clamp(grid.qmin, grid.qmax).sub(zero).mul(scale);
}

// One repapq site's trainable state and its float layer.
struct LearnedSite {
  torch::Tensor log_weight_scale, gamma, beta;
  torch::Tensor log_input_scale;  // undefined unless the input is a per-tensor uniform grid
  torch::Tensor weight, bias;     // the float layer, [out, in] and [out]
};

// The stage's sites with the repapq ones computed from their trainable state.
class TrainingHandler : public FakeQuantHandler {
 public:
  TrainingHandler(const std::map<std::string, QuantizedSite>& sites,
                  std::map<std::string, LearnedSite>& learned)
      : FakeQuantHandler(sites), sites_(sites), learned_(learned) {}

  torch::Tensor Linear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias) override {
    auto it = learned_.find(site.name);
    if (it == learned_.end()) return FakeQuantHandler::Linear(site, x, weight, bias);
    const LearnedSite& l = it->second;
    const QuantizedSite& q = sites_.at(site.name);
    torch::Tensor x_hat = x;
    if (l.log_input_scale.defined()) {
      x_hat = LearnedFakeQuantize(x, l.log_input_scale, q.input.uniform());
    } else if (q.input.spec().quantized()) {
      x_hat = x + (q.input.Apply(x) - x).detach();
    }
    auto w_hat = LearnedFakeQuantize(l.weight, l.log_weight_scale, q.qprep->grid);
    return at::linear(x_hat, w_hat, l.bias) * l.gamma + l.beta;
  }

 private:
  const std::map<std::string, QuantizedSite>& sites_;
  std::map<std::string, LearnedSite>& learned_;
};

bool IsPerTensorUniform(const ActivationQuantizerState& input) {
  const ActivationQuant& a = input.spec();
  return a.quantized() && a.quantizer == ActivationQuantizer::kUniform &&
         input.uniform().scale.numel() == 1;
}

double MeanAbsError(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                    const torch::Tensor& input, const torch::Tensor& target, SiteHandler* handler) {
  torch::NoGradGuard no_grad;
  double total = 0;
  const int64_t n = input.size(0), batch = 256;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t len = std::min(batch, n - start);
    auto out = ForwardStage(model, stage, input.narrow(0, start, len), handler);
    total += (out - target.narrow(0, start, len)).abs().sum().item<double>();
  }
  return total / static_cast<double>(target.numel());
}

}  // namespace

torch::Tensor ForwardStage(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                           const torch::Tensor& input, SiteHandler* handler) {
  auto x = input;
  for (int64_t s = stage.first; s <= stage.second; ++s) x = model.ForwardSegment(s, x, handler);
  return x;
}

std::vector<std::pair<int64_t, int64_t>> StageRanges(const ViTModel& model) {
  // "stages.<s>." of a segment's first site, or "" where it has none.
  auto stage_of = [&](int64_t segment) -> std::string {
    const auto sites = model.SegmentSites(segment);
    if (sites.empty() || sites.front()->name.rfind("stages.", 0) != 0) return "";
    const std::string& name = sites.front()->name;
    return name.substr(0, name.find('.', 7) + 1);
  };
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t s = 0; s < model.num_segments(); ++s) {
    const std::string stage = stage_of(s);
    if (!out.empty() && !stage.empty() && stage_of(out.back().second) == stage) {
      out.back().second = s;
    } else {
      out.push_back({s, s});
    }
  }
  return out;
}

bool StageHasRepapq(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                    const std::map<std::string, QuantizedSite>& sites) {
  for (int64_t s = stage.first; s <= stage.second; ++s) {
    for (const Site* site : model.SegmentSites(s)) {
      auto it = sites.find(site->name);
      if (it != sites.end() && it->second.qprep) return true;
    }
  }
  return false;
}

namespace {

// The trainable state of every repapq site of `stage`, on tensors of our own (a model loaded
// under inference mode could not be saved for backward), and the spec that sets the training.
struct StageState {
  std::map<std::string, LearnedSite> learned;
  std::vector<torch::Tensor> params;
  const WeightQuant* spec = nullptr;
};

StageState CollectLearnedSites(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                               const std::map<std::string, QuantizedSite>& sites) {
  StageState state;
  for (int64_t s = stage.first; s <= stage.second; ++s) {
    for (const Site* site : model.SegmentSites(s)) {
      auto it = sites.find(site->name);
      if (it == sites.end() || !it->second.qprep) continue;
      const QuantizedSite& q = it->second;
      if (state.spec == nullptr) state.spec = &q.config.weight;
      LearnedSite l;
      const auto& w = model.tensor(site->weight);
      const std::string bias_name = site->weight.substr(0, site->weight.size() - 6) + "bias";
      l.weight = w.reshape({w.size(0), -1}).clone();
      l.bias = model.tensor(bias_name).clone();
      l.log_weight_scale = q.qprep->grid.scale.log().clone().set_requires_grad(true);
      l.gamma = q.qprep->gamma.clone().set_requires_grad(true);
      l.beta = q.qprep->beta.clone().set_requires_grad(true);
      state.params.insert(state.params.end(), {l.log_weight_scale, l.gamma, l.beta});
      if (IsPerTensorUniform(q.input)) {
        l.log_input_scale = q.input.uniform().scale.log().clone().set_requires_grad(true);
        state.params.push_back(l.log_input_scale);
      }
      state.learned.emplace(site->name, std::move(l));
    }
  }
  return state;
}

// Adam with cosine decay on the stage's MAE, over mini-batches from a fixed-seed permutation.
void TrainStage(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                const torch::Tensor& x_all, const torch::Tensor& y_all, SiteHandler* handler,
                StageState* state) {
  const WeightQuant& spec = *state->spec;
  SeededBatches batches(x_all.size(0), spec.repapq_batch, kBatchSeed);
  Adam adam(state->params);
  const int iterations = spec.repapq_iterations;
  for (int step = 0; step < iterations; ++step) {
    auto idx = batches.Next(x_all.device());
    torch::AutoGradMode grad(true);
    auto out = ForwardStage(model, stage, x_all.index_select(0, idx), handler);
    auto loss = (out - y_all.index_select(0, idx)).abs().mean();
    adam.ZeroGrad();
    loss.backward();
    torch::NoGradGuard no_grad;
    const double lr = 0.5 * spec.repapq_lr * (1 + std::cos(M_PI * step / iterations));
    adam.Step(std::vector<double>(state->params.size(), lr));
    for (auto& [name, l] : state->learned) l.gamma.clamp_(kMinGamma, kMaxGamma);
  }
}

// `sites` with every trained site folded back exactly (core/repapq.h: FoldQprep).
std::map<std::string, QuantizedSite> Refold(const std::map<std::string, QuantizedSite>& sites,
                                            const std::map<std::string, LearnedSite>& learned) {
  torch::NoGradGuard no_grad;
  std::map<std::string, QuantizedSite> out = sites;
  for (const auto& [name, l] : learned) {
    QuantizedSite& q = out.at(name);
    QprepAffine affine = *q.qprep;
    affine.grid.scale = l.log_weight_scale.detach().exp();
    affine.gamma = l.gamma.detach().clone();
    affine.beta = l.beta.detach().clone();
    q.weight = FoldQprep(QuantizeCodes(l.weight, affine.grid), l.bias, affine);
    q.qprep = std::move(affine);
    if (l.log_input_scale.defined()) {
      UniformGrid grid = q.input.uniform();
      grid.scale = l.log_input_scale.detach().exp();
      q.input = ActivationQuantizerState::FromUniformGrid(q.input.spec(), grid);
    }
  }
  return out;
}

}  // namespace

StatusOr<AcrossBlockReport> CalibrateAcrossBlocks(const ViTModel& model,
                                                  std::pair<int64_t, int64_t> stage,
                                                  const torch::Tensor& input,
                                                  const torch::Tensor& target,
                                                  std::map<std::string, QuantizedSite>* sites) {
  if (input.size(0) != target.size(0) || input.size(0) == 0) {
    return InvalidArgumentError("across-block calibration needs one target per input image");
  }
  return GuardTorch("across-block calibration", [&]() -> StatusOr<AcrossBlockReport> {
    AcrossBlockReport report;
    StageState state = CollectLearnedSites(model, stage, *sites);
    if (state.spec == nullptr) return report;
    auto x_all = input.clone(), y_all = target.clone();
    TrainingHandler handler(*sites, state.learned);
    report.loss_before = MeanAbsError(model, stage, x_all, y_all, &handler);
    report.loss_after = report.loss_before;
    TrainStage(model, stage, x_all, y_all, &handler, &state);
    report.iterations = state.spec->repapq_iterations;
    // Keep the old sites if the folded stage did not improve.
    auto refolded = Refold(*sites, state.learned);
    FakeQuantHandler folded(refolded);
    const double after = MeanAbsError(model, stage, x_all, y_all, &folded);
    if (after < report.loss_before) {
      *sites = std::move(refolded);
      report.loss_after = after;
    }
    return report;
  });
}

}  // namespace qs::core
