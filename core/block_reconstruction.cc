#include "core/block_reconstruction.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <vector>

#include "core/across_block.h"
#include "core/torch_status.h"
#include "core/training.h"

namespace qs::core {
namespace {

// AdaRound's rectified sigmoid stretch.
constexpr double kZeta = 1.1, kGamma = -0.1;
constexpr int64_t kLossBatch = 64;
constexpr double kMinStep = 1e-8;

torch::Tensor SoftRounding(const torch::Tensor& v) {
  return (torch::sigmoid(v) * (kZeta - kGamma) + kGamma).clamp(0, 1);
}

// One linear weight's learned rounding between two neighbouring codes:
// Ŵ = (clamp(B + h + z, qmin, qmax) − z)·s, B the lower of the two.
struct LearnedRounding {
  UniformGrid grid;
  torch::Tensor base;  // B (float)
  torch::Tensor zero;  // the grid's zero point, on the weight's device
  torch::Tensor v;     // trained
  torch::Tensor init_codes;

  torch::Tensor Codes(bool hard) const {
    auto h = hard ? (v >= 0).to(torch::kFloat32) : SoftRounding(v);
    return (base + h + zero).clamp(grid.qmin, grid.qmax);
  }
  torch::Tensor Weight(bool hard) const { return (Codes(hard) - zero) * grid.scale; }
};

// Starts where the init method's codes c are: the choice is between B and B + 1 with c one of
// them (B = c − 1 when c lies above W/s, else c), and h(V) starts at W/s − B within [0, 1] on
// c's side of ½, so that hard rounding before any step gives c exactly. For round-to-nearest
// codes B = ⌊W/s⌋ and h(V) = frac(W/s): AdaRound's start.
LearnedRounding StartRounding(const torch::Tensor& weight, const QuantizedWeight& init) {
  torch::NoGradGuard no_grad;
  LearnedRounding r;
  r.grid = init.grid;
  r.zero = init.grid.zero_point.to(weight.device());
  const auto ratio = weight / init.grid.scale;
  const auto c = init.codes.to(weight.device(), torch::kFloat32) - r.zero;
  const auto up = c > ratio;
  r.base = at::where(up, c - 1, c);
  auto sigma = (((ratio - r.base).clamp(0, 1)) - kGamma) / (kZeta - kGamma);
  auto v = (sigma / (1 - sigma)).log();
  v = at::where(up, v.clamp_min(1e-4), v.clamp_max(-1e-4));
  r.v = v.clone().set_requires_grad(true);
  r.init_codes = init.codes;
  return r;
}

// The trainable state of one stage.
struct Trainables {
  const WeightQuant* spec = nullptr;
  std::map<std::string, LearnedRounding> rounding;
  // Learned activation steps: key "<site>/0" (linear input, matmul left) or "<site>/1".
  std::map<std::string, torch::Tensor> steps;
};

std::string StepKey(const std::string& site, int operand) {
  return site + "/" + std::to_string(operand);
}

bool LearnableGrid(const ActivationQuantizerState& state) {
  const ActivationQuant& a = state.spec();
  return a.quantized() && a.quantizer == ActivationQuantizer::kUniform &&
         state.uniform().scale.defined();
}

// The stage's sites computed from the trainables: soft or hard rounding, learned steps, and
// straight-through gradients past every fixed quantizer and integer kernel.
class ReconstructionHandler : public FakeQuantHandler {
 public:
  ReconstructionHandler(const std::map<std::string, QuantizedSite>& sites, const Trainables& t)
      : FakeQuantHandler(sites), t_(t) {}

  // Linear outputs by site, while set (MGRQ's L_local).
  void set_record(std::map<std::string, torch::Tensor>* record) { record_ = record; }

  torch::Tensor Linear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias) override {
    const QuantizedSite& q = sites_.at(site.name);
    NoteAccumulator(site.name, q);
    const auto x_in = q.reparam ? q.reparam->Apply(x) : x;
    const auto x_hat = Activation(StepKey(site.name, 0), q.input, x_in);
    torch::Tensor w;
    if (auto it = t_.rounding.find(site.name); it != t_.rounding.end()) {
      w = it->second.Weight(/*hard=*/false);
    } else if (q.weight) {
      w = q.weight->dequantized.to(weight.device());
    } else {
      w = q.reparam ? q.folded.weight.to(weight.device()) : weight;
    }
    torch::Tensor b = bias;
    if (q.weight && q.weight->bias.defined()) {
      b = q.weight->bias.to(weight.device());
    } else if (q.reparam) {
      b = q.folded.bias.to(weight.device());
    }
    auto out = at::linear(x_hat, w, b);
    if (record_ != nullptr) (*record_)[site.name] = out;
    return out;
  }

  torch::Tensor Matmul(const Site& site, const torch::Tensor& lhs,
                       const torch::Tensor& rhs) override {
    const QuantizedSite& q = sites_.at(site.name);
    NoteAccumulator(site.name, q);
    return at::matmul(Activation(StepKey(site.name, 0), q.input, lhs),
                      Activation(StepKey(site.name, 1), q.input_rhs, rhs));
  }

  // Without gradients (measuring the objective) every fixed site computes exactly what
  // FakeQuantHandler computes; with them, its float op carries the gradient.
  torch::Tensor Softmax(const Site& site, const torch::Tensor& x) override {
    if (!torch::GradMode::is_enabled()) return FakeQuantHandler::Softmax(site, x);
    auto exact = SiteHandler::Softmax(site, x);
    if (FloatSite(site)) return exact;
    return exact + (FakeQuantHandler::Softmax(site, x.detach()) - exact).detach();
  }
  torch::Tensor Gelu(const Site& site, const torch::Tensor& x) override {
    if (!torch::GradMode::is_enabled()) return FakeQuantHandler::Gelu(site, x);
    auto exact = SiteHandler::Gelu(site, x);
    if (FloatSite(site)) return exact;
    return exact + (FakeQuantHandler::Gelu(site, x.detach()) - exact).detach();
  }
  torch::Tensor LayerNorm(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                          const torch::Tensor& bias, double eps) override {
    if (!torch::GradMode::is_enabled()) {
      return FakeQuantHandler::LayerNorm(site, x, weight, bias, eps);
    }
    auto exact = SiteHandler::LayerNorm(site, x, weight, bias, eps);
    if (FloatSite(site)) return exact;
    auto integer = FakeQuantHandler::LayerNorm(site, x.detach(), weight, bias, eps);
    return exact + (integer - exact).detach();
  }

 private:
  bool FloatSite(const Site& site) const {
    const QuantizedSite& q = sites_.at(site.name);
    return !q.nonlinear || !q.nonlinear->config.quantized();
  }

  // The integer softmax and GELU take the accumulator scale of the fitted grids.
  void NoteAccumulator(const std::string& site, const QuantizedSite& q) {
    const std::string consumer = AccumulatorConsumer(site);
    if (!consumer.empty() && !accumulator_scales_.count(consumer)) {
      accumulator_scales_[consumer] = AccumulatorScale(q);
    }
  }

  torch::Tensor Activation(const std::string& key, const ActivationQuantizerState& state,
                           const torch::Tensor& x) const {
    if (auto it = t_.steps.find(key); it != t_.steps.end()) {
      const UniformGrid& grid = state.uniform();
      auto zero = grid.zero_point.to(x.device());
      return (RoundSte(x / it->second) + zero)
          .clamp(grid.qmin, grid.qmax)
          .sub(zero)
          .mul(it->second);
    }
    if (!state.spec().quantized()) return x;
    if (!torch::GradMode::is_enabled()) return state.Apply(x);
    return x + (state.Apply(x.detach()) - x).detach();
  }

  const Trainables& t_;
  std::map<std::string, torch::Tensor>* record_ = nullptr;
};

bool Reconstructed(const QuantizedSite& q) {
  return q.weight && q.config.weight.quantized() &&
         IsReconstructionMethod(q.config.weight.method) && !q.qprep;
}

Trainables CollectTrainables(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                             const std::map<std::string, QuantizedSite>& sites) {
  Trainables t;
  std::vector<const Site*> matmuls;
  for (int64_t s = stage.first; s <= stage.second; ++s) {
    for (const Site* site : model.SegmentSites(s)) {
      auto it = sites.find(site->name);
      if (it == sites.end()) continue;
      const QuantizedSite& q = it->second;
      if (site->kind == SiteKind::kMatmul) matmuls.push_back(site);
      if (site->kind != SiteKind::kLinear || !Reconstructed(q)) continue;
      if (t.spec == nullptr) t.spec = &q.config.weight;
      const torch::Tensor& float_weight = q.reparam ? q.folded.weight : model.tensor(site->weight);
      t.rounding.emplace(site->name,
                         StartRounding(float_weight.reshape(q.weight->codes.sizes()), *q.weight));
      if (LearnableGrid(q.input)) t.steps[StepKey(site->name, 0)] = q.input.uniform().scale;
    }
  }
  if (t.spec == nullptr) return t;
  // The attention matmuls belong to the block: their operand grids are learned with it.
  for (const Site* site : matmuls) {
    const QuantizedSite& q = sites.at(site->name);
    if (LearnableGrid(q.input)) t.steps[StepKey(site->name, 0)] = q.input.uniform().scale;
    if (LearnableGrid(q.input_rhs)) t.steps[StepKey(site->name, 1)] = q.input_rhs.uniform().scale;
  }
  if (t.spec->recon_act_lr == 0) t.steps.clear();
  for (auto& [key, step] : t.steps) step = step.detach().clone().set_requires_grad(true);
  return t;
}

// The pieces of the objective on one batch.
struct BatchLosses {
  torch::Tensor block, global, local;
};

// Their means over images (0 where a piece is not computed).
struct LossMeans {
  double block = 0, global = 0, local = 0;
};

class Objective {
 public:
  Objective(const ViTModel& model, std::pair<int64_t, int64_t> stage,
            const StageReconstructionInputs& in, const WeightQuant& spec)
      : model_(model), stage_(stage), in_(in), spec_(spec) {
    const bool mgrq = spec.method == WeightMethod::kMgrq;
    global_ = mgrq && spec.mgrq_global_weight > 0;
    local_ = mgrq && spec.mgrq_local_weight > 0;
  }
  bool global() const { return global_; }
  bool local() const { return local_; }

  // The losses of `handler` on the images `idx`.
  BatchLosses Measure(ReconstructionHandler& handler, const torch::Tensor& idx) const {
    BatchLosses l;
    std::map<std::string, torch::Tensor> quantized_outputs;
    handler.set_record(local_ ? &quantized_outputs : nullptr);
    auto out = ForwardStage(model_, stage_, in_.input.index_select(0, idx), &handler);
    handler.set_record(nullptr);
    // BRECQ's distance: squared error summed over an image's elements, mean over images.
    l.block = (out - in_.target.index_select(0, idx)).pow(2).flatten(1).sum(1).mean();
    if (global_) l.global = Global(out, idx);
    if (local_) l.local = Local(quantized_outputs, idx);
    return l;
  }

  // The fused objective (no rounding regularizer). L_global and L_local come scaled by
  // SetScales, so that a weight of 1 gives a term the block loss's size at the start.
  torch::Tensor Fuse(const BatchLosses& l) const {
    if (spec_.method != WeightMethod::kMgrq) return l.block;
    auto loss = l.block * spec_.mgrq_block_weight;
    if (global_) loss = loss + l.global * (spec_.mgrq_global_weight * global_scale_);
    if (local_) loss = loss + l.local * (spec_.mgrq_local_weight * local_scale_);
    return loss;
  }
  double Fuse(const LossMeans& l) const {
    if (spec_.method != WeightMethod::kMgrq) return l.block;
    double loss = l.block * spec_.mgrq_block_weight;
    if (global_) loss += l.global * (spec_.mgrq_global_weight * global_scale_);
    if (local_) loss += l.local * (spec_.mgrq_local_weight * local_scale_);
    return loss;
  }
  // The three losses live on unrelated scales (a block's summed squared error is thousands of
  // times a KL in nats), so each supervision is measured against the block loss of the
  // calibrated sites: scale = L_block / L_x at the start.
  void SetScales(const LossMeans& start) {
    global_scale_ = start.global > 0 ? start.block / start.global : 1;
    local_scale_ = start.local > 0 ? start.block / start.local : 1;
  }

 private:
  torch::Tensor Global(const torch::Tensor& out, const torch::Tensor& idx) const {
    const int64_t last = model_.num_segments() - 1;
    auto logits = stage_.second < last ? ForwardStage(model_, {stage_.second + 1, last}, out) : out;
    auto reference = in_.float_logits.index_select(0, idx);
    if (spec_.mgrq_global_distance == "mse") {
      return (logits - reference).pow(2).sum(1).mean();
    }
    auto p_log = at::log_softmax(reference, 1);
    return (p_log.exp() * (p_log - at::log_softmax(logits, 1))).sum(1).mean();
  }

  torch::Tensor Local(const std::map<std::string, torch::Tensor>& quantized,
                      const torch::Tensor& idx) const {
    std::map<std::string, torch::Tensor> reference;
    {
      torch::NoGradGuard no_grad;
      RecordingHandler recorder(&reference);
      ForwardStage(model_, stage_, in_.float_input.index_select(0, idx), &recorder);
    }
    torch::Tensor total;
    int64_t layers = 0;
    for (const auto& [name, y_hat] : quantized) {
      auto it = reference.find(name);
      if (it == reference.end()) continue;
      const int64_t channels = y_hat.size(-1);
      auto q_rows = y_hat.reshape({-1, channels}), f_rows = it->second.reshape({-1, channels});
      torch::Tensor d;
      if (spec_.mgrq_local_distance == "mse") {
        d = (q_rows - f_rows).pow(2).mean();
      } else {
        d = (q_rows.mean(0) - f_rows.mean(0)).pow(2).mean() +
            (q_rows.std(0, /*unbiased=*/false) - f_rows.std(0, /*unbiased=*/false)).pow(2).mean();
      }
      total = total.defined() ? total + d : d;
      ++layers;
    }
    if (!total.defined()) return torch::zeros({}, in_.input.options());
    return total / static_cast<double>(layers);
  }

  // Float linear outputs by site.
  class RecordingHandler : public SiteHandler {
   public:
    explicit RecordingHandler(std::map<std::string, torch::Tensor>* out) : out_(out) {}
    torch::Tensor Linear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias) override {
      auto y = SiteHandler::Linear(site, x, weight, bias);
      (*out_)[site.name] = y;
      return y;
    }

   private:
    std::map<std::string, torch::Tensor>* out_;
  };

  const ViTModel& model_;
  std::pair<int64_t, int64_t> stage_;
  const StageReconstructionInputs& in_;
  const WeightQuant spec_;  // a copy: the sites it came from are replaced at the end
  bool global_ = false, local_ = false;
  double global_scale_ = 1, local_scale_ = 1;
};

// The losses over every calibration image.
LossMeans MeasureAll(const Objective& objective, ReconstructionHandler& handler, int64_t n,
                     const torch::Device& device) {
  torch::NoGradGuard no_grad;
  LossMeans m;
  for (int64_t start = 0; start < n; start += kLossBatch) {
    const int64_t len = std::min(kLossBatch, n - start);
    auto idx = torch::arange(start, start + len, torch::TensorOptions(torch::kLong).device(device));
    const BatchLosses l = objective.Measure(handler, idx);
    const double weight = static_cast<double>(len) / static_cast<double>(n);
    m.block += l.block.item<double>() * weight;
    if (l.global.defined()) m.global += l.global.item<double>() * weight;
    if (l.local.defined()) m.local += l.local.item<double>() * weight;
  }
  return m;
}

void Train(const Objective& objective, ReconstructionHandler& handler, int64_t n,
           const torch::Device& device, Trainables* t) {
  const WeightQuant& spec = *t->spec;
  std::vector<torch::Tensor> params;
  std::vector<bool> is_step;
  for (auto& [name, r] : t->rounding) {
    params.push_back(r.v);
    is_step.push_back(false);
  }
  for (auto& [key, step] : t->steps) {
    params.push_back(step);
    is_step.push_back(true);
  }
  SeededBatches batches(n, spec.recon_batch, static_cast<uint64_t>(spec.recon_seed));
  Adam adam(params);
  const int iterations = spec.recon_iterations;
  const int warmup = static_cast<int>(spec.recon_warmup * iterations);
  std::vector<double> lrs(params.size());
  for (int step = 0; step < iterations; ++step) {
    auto idx = batches.Next(device);
    torch::AutoGradMode grad(true);
    auto loss = objective.Fuse(objective.Measure(handler, idx));
    if (step >= warmup && spec.recon_round_weight > 0) {
      // β falls linearly from start to end over the steps after the warm-up.
      const double progress = static_cast<double>(step - warmup) / std::max(1, iterations - warmup);
      const double beta =
          spec.recon_beta_end + (spec.recon_beta_start - spec.recon_beta_end) * (1 - progress);
      torch::Tensor regularizer;
      for (const auto& [name, r] : t->rounding) {
        auto term = (1 - (SoftRounding(r.v) * 2 - 1).abs().pow(beta)).sum();
        regularizer = regularizer.defined() ? regularizer + term : term;
      }
      loss = loss + regularizer * spec.recon_round_weight;
    }
    adam.ZeroGrad();
    loss.backward();
    // Rounding at a constant rate; steps with cosine decay, as BRECQ trains them.
    const double step_lr = 0.5 * spec.recon_act_lr * (1 + std::cos(M_PI * step / iterations));
    for (size_t i = 0; i < params.size(); ++i) lrs[i] = is_step[i] ? step_lr : spec.recon_lr;
    adam.Step(lrs);
    torch::NoGradGuard no_grad;
    for (auto& [key, s] : t->steps) s.clamp_min_(kMinStep);
  }
}

// `sites` with the hard rounding and the learned steps in place.
std::map<std::string, QuantizedSite> Learned(const std::map<std::string, QuantizedSite>& sites,
                                             const Trainables& t, int64_t* flipped) {
  torch::NoGradGuard no_grad;
  std::map<std::string, QuantizedSite> out = sites;
  *flipped = 0;
  for (const auto& [name, r] : t.rounding) {
    QuantizedWeight& w = *out.at(name).weight;
    w.codes = r.Codes(/*hard=*/true).to(torch::kInt32);
    w.dequantized = DequantizeCodes(w.codes, w.grid);
    *flipped += w.codes.ne(r.init_codes.to(w.codes.device())).sum().item<int64_t>();
  }
  for (const auto& [key, step] : t.steps) {
    const size_t slash = key.rfind('/');
    QuantizedSite& q = out.at(key.substr(0, slash));
    ActivationQuantizerState& state = key.substr(slash + 1) == "0" ? q.input : q.input_rhs;
    UniformGrid grid = state.uniform();
    grid.scale = step.detach().clone();
    state = ActivationQuantizerState::FromUniformGrid(state.spec(), grid);
  }
  return out;
}

std::string StageName(const ViTModel& model, std::pair<int64_t, int64_t> stage) {
  const auto sites = model.SegmentSites(stage.first);
  if (sites.empty()) return "segment " + std::to_string(stage.first);
  const std::string& name = sites.front()->name;
  // "blocks.3.attn.qkv" -> "blocks.3"; "patch_embed.proj" -> "patch_embed"; "head" -> "head".
  const size_t first = name.find('.');
  if (first == std::string::npos) return name;
  const size_t second = name.find('.', first + 1);
  const bool indexed = second != std::string::npos &&
                       std::all_of(name.begin() + first + 1, name.begin() + second, ::isdigit);
  return indexed ? name.substr(0, second) : name.substr(0, first);
}

}  // namespace

bool StageHasReconstruction(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                            const std::map<std::string, QuantizedSite>& sites) {
  for (int64_t s = stage.first; s <= stage.second; ++s) {
    for (const Site* site : model.SegmentSites(s)) {
      auto it = sites.find(site->name);
      if (site->kind == SiteKind::kLinear && it != sites.end() && Reconstructed(it->second)) {
        return true;
      }
    }
  }
  return false;
}

StatusOr<StageReconstruction> ReconstructStage(const ViTModel& model,
                                               std::pair<int64_t, int64_t> stage,
                                               const StageReconstructionInputs& inputs,
                                               std::map<std::string, QuantizedSite>* sites) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t n = inputs.input.defined() ? inputs.input.size(0) : 0;
  if (n == 0 || !inputs.target.defined() || inputs.target.size(0) != n) {
    return InvalidArgumentError("block reconstruction needs one float target per input image");
  }
  return GuardTorch("block reconstruction", [&]() -> StatusOr<StageReconstruction> {
    StageReconstruction report;
    report.stage = StageName(model, stage);
    Trainables t = CollectTrainables(model, stage, *sites);
    if (t.spec == nullptr) return report;
    report.method = t.spec->method;
    report.iterations = t.spec->recon_iterations;
    Objective objective(model, stage, inputs, *t.spec);
    if (objective.global() &&
        (!inputs.float_logits.defined() || inputs.float_logits.size(0) != n)) {
      return InvalidArgumentError("mgrq's global supervision needs the float logits per image");
    }
    if (objective.local() && (!inputs.float_input.defined() || inputs.float_input.size(0) != n)) {
      return InvalidArgumentError("mgrq's local supervision needs the float stage input per image");
    }
    for (const auto& [name, r] : t.rounding) report.weights += r.v.numel();
    const torch::Device device = inputs.input.device();
    const int64_t elements = inputs.target.numel();

    Trainables fixed;  // the calibrated sites exactly: no trainables at all
    ReconstructionHandler calibrated(*sites, fixed);
    const LossMeans start_losses = MeasureAll(objective, calibrated, n, device);
    objective.SetScales(start_losses);

    ReconstructionHandler training(*sites, t);
    Train(objective, training, n, device, &t);

    int64_t flipped = 0;
    auto learned = Learned(*sites, t, &flipped);
    ReconstructionHandler after(learned, fixed);
    const LossMeans end_losses = MeasureAll(objective, after, n, device);
    // Per image the block loss sums the output's elements: per element it is the MSE.
    const double per_image = static_cast<double>(elements) / static_cast<double>(n);
    report.loss_before = report.loss_after = start_losses.block / per_image;
    report.objective_before = report.objective_after = objective.Fuse(start_losses);
    const double objective_after = objective.Fuse(end_losses);
    if (objective_after < report.objective_before) {
      report.kept = true;
      report.loss_after = end_losses.block / per_image;
      report.objective_after = objective_after;
      report.flipped = flipped;
      *sites = std::move(learned);  // last: `t` points into the old sites
    }
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  });
}

}  // namespace qs::core
