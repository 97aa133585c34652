#include "core/evaluate.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <list>
#include <tuple>
#include <optional>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "core/erq.h"
#include "core/gptq.h"
#include "core/liu.h"
#include "core/metrics.h"
#include "core/nonlinear_site.h"
#include "core/quantize_model.h"
#include "core/torch_status.h"

namespace qs::core {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();
// Token rows per GEMM when Gram blocks are accumulated, bounding the temporary copies.
constexpr int64_t kGramChunkRows = 8192;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

class Recorder : public SiteHandler {
 public:
  Recorder(SiteInputs* inputs, bool nonlinear) : inputs_(inputs), nonlinear_(nonlinear) {}
  torch::Tensor Linear(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                       const torch::Tensor& b) override {
    (*inputs_)[s.name] = {x};
    return SiteHandler::Linear(s, x, w, b);
  }
  torch::Tensor Matmul(const Site& s, const torch::Tensor& a, const torch::Tensor& b) override {
    (*inputs_)[s.name] = {a, b};
    return SiteHandler::Matmul(s, a, b);
  }
  torch::Tensor Softmax(const Site& s, const torch::Tensor& x) override {
    if (nonlinear_) (*inputs_)[s.name] = {x};
    return SiteHandler::Softmax(s, x);
  }
  torch::Tensor Gelu(const Site& s, const torch::Tensor& x) override {
    if (nonlinear_) (*inputs_)[s.name] = {x};
    return SiteHandler::Gelu(s, x);
  }
  torch::Tensor LayerNorm(const Site& s, const torch::Tensor& x, const torch::Tensor& w,
                          const torch::Tensor& b, double eps) override {
    if (nonlinear_) (*inputs_)[s.name] = {x};
    return SiteHandler::LayerNorm(s, x, w, b, eps);
  }

 private:
  SiteInputs* inputs_;
  bool nonlinear_;
};

// Runs a GEMM-shaped computation of `multiply_adds`, adding its work and time to `costs`.
template <typename F>
torch::Tensor Gemm(EvaluationCosts* costs, double multiply_adds, F&& f) {
  const auto start = Clock::now();
  torch::Tensor out = f();
  costs->gemm_multiply_adds += multiply_adds;
  costs->gemm_seconds += Since(start);
  return out;
}

// Adds the time from construction to destruction to a cost field.
class Timed {
 public:
  explicit Timed(double* field) : field_(field), start_(Clock::now()) {}
  ~Timed() { *field_ += Since(start_); }

 private:
  double* field_;
  Clock::time_point start_;
};

// The linear site's float weight ([out, in], the patch conv flattened) and bias (may be undefined).
std::pair<torch::Tensor, torch::Tensor> LinearParamsOf(const ViTModel& model, const Site& site) {
  const std::string bias_name = site.weight.substr(0, site.weight.size() - 6) + "bias";
  auto bias = model.tensors().count(bias_name) ? model.tensor(bias_name) : torch::Tensor();
  const auto& w = model.tensor(site.weight);
  return {w.reshape({w.size(0), -1}), bias};
}

// LᵀR for row-major float32 `left` [T, a] and `right` [T, b] (the same rows): float32 GEMMs on
// views of token chunks, accumulated in float64 across chunks. On the fixture's layers the
// noise from such blocks is within 4e-7 of a float64 computation (evaluate_test asserts 1e-5),
// far below any difference between candidates.
torch::Tensor ChunkedProduct(const torch::Tensor& left, const torch::Tensor& right,
                             EvaluationCosts* costs) {
  torch::Tensor total;
  const int64_t rows = left.size(0);
  for (int64_t start = 0; start < rows; start += kGramChunkRows) {
    const int64_t count = std::min(kGramChunkRows, rows - start);
    auto l = left.narrow(0, start, count), r = right.narrow(0, start, count);
    const double macs = static_cast<double>(count) * l.size(1) * r.size(1);
    auto part = Gemm(costs, macs, [&] { return l.t().mm(r); }).to(torch::kFloat64);
    total = total.defined() ? total.add_(part) : part;
  }
  return total;
}

torch::Tensor ColumnSums(const torch::Tensor& rows) {
  return at::sum(rows, {0}, /*keepdim=*/false, torch::kFloat64);
}

// A = X̃ᵀX̃ for X̃ = [X, 1]: [[XᵀX, Σx], [Σxᵀ, T]], without building X̃.
torch::Tensor AugmentedGramOf(const torch::Tensor& rows, EvaluationCosts* costs) {
  const int64_t n = rows.size(1);
  auto a = torch::empty({n + 1, n + 1}, rows.options().dtype(torch::kFloat64));
  a.narrow(0, 0, n).narrow(1, 0, n).copy_(ChunkedProduct(rows, rows, costs));
  const auto sums = ColumnSums(rows);
  a.select(0, n).narrow(0, 0, n).copy_(sums);
  a.select(1, n).narrow(0, 0, n).copy_(sums);
  a[n][n] = static_cast<double>(rows.size(0));
  return a;
}

// Fills the output-error metrics of `e` from its sums: signal Σy², noise Σ(y − ŷ)² and the
// cross term Σy·(y − ŷ), over `elements` output values.
void SetFromSums(double signal, double noise, double y_dot_error, double elements, Evaluation* e) {
  noise = std::max(0.0, noise);
  e->sqnr_db = noise == 0 ? kInf : 10.0 * std::log10(signal / noise);
  e->noise_ratio = noise / signal;
  e->mse = noise / elements;
  const double q2 = std::max(0.0, signal - 2 * y_dot_error + noise);
  e->cosine = q2 > 0 ? (signal - y_dot_error) / std::sqrt(signal * q2) : 0;
}

// Metrics of a quantized output ŷ against the float output y, computed from both in one pass.
Status SetFromOutputs(const torch::Tensor& y, const torch::Tensor& y_hat, bool with_mae,
                      Evaluation* e) {
  const ErrorSums sums = SumErrors(y, y_hat);
  if (!sums.finite) return FailedPreconditionError("quantized output is not finite");
  if (!(sums.signal > 0)) {
    return FailedPreconditionError("the site's float output is zero, so no SQNR exists");
  }
  const double elements = static_cast<double>(std::max<int64_t>(1, sums.count));
  SetFromSums(sums.signal, sums.noise, sums.signal - sums.cross, elements, e);
  if (with_mae) e->mae = sums.absolute / elements;
  return OkStatus();
}

// Everything one EvaluateSite call shares between its candidates.
struct Context {
  const ViTModel& model;
  const Site& site;
  const std::vector<SiteCandidate>& candidates;
  SiteData* data;
  const SiteEvaluationOptions& options;
  EvaluationCosts* costs;
  std::vector<Evaluation>* results;
  std::vector<double>* own_seconds;
};

// Indices of the candidates, grouped by equal `key(config)`, groups in order of first appearance.
template <typename Key>
std::vector<std::vector<size_t>> GroupBy(const std::vector<SiteCandidate>& candidates,
                                         const std::vector<size_t>& which, Key key) {
  std::vector<std::vector<size_t>> groups;
  std::vector<decltype(key(candidates[0].config))> keys;
  for (size_t i : which) {
    const auto k = key(candidates[i].config);
    size_t g = 0;
    while (g < keys.size() && !(keys[g] == k)) ++g;
    if (g == keys.size()) {
      keys.push_back(k);
      groups.emplace_back();
    }
    groups[g].push_back(i);
  }
  return groups;
}

void FailAll(const std::vector<size_t>& which, const Status& s, std::vector<Evaluation>* results) {
  for (size_t i : which) {
    if ((*results)[i].error.empty()) (*results)[i].SetError(s);
  }
}

// The Gram blocks of one (site, activation config) and what GPTQ and ERQ derive from them,
// computed on first need and shared by the group's candidates: the Hessian factor depends on
// (damping, act-order) and Aqer's moved layer on λ₁ only, not on the bit-width.
class GroupSolves {
 public:
  // `cross` and `error_gram` undefined: float activations (X̄ = X).
  GroupSolves(const torch::Tensor& gram, const torch::Tensor& cross, const torch::Tensor& error_gram)
      : gram_(gram), cross_(cross), error_gram_(error_gram), n_(gram.size(0) - 1) {}

  bool quantized_activations() const { return cross_.defined(); }

  // X̄̃ᵀX̄̃ for X̄̃ = X̃ + [E, 0]: A + [C, 0] + [C, 0]ᵀ + [[D, 0], [0, 0]].
  const torch::Tensor& QuantizedGram() {
    if (!quantized_gram_.defined()) {
      if (!cross_.defined()) {
        quantized_gram_ = gram_;
      } else {
        quantized_gram_ = gram_.clone();
        quantized_gram_.narrow(1, 0, n_).add_(cross_);
        quantized_gram_.narrow(0, 0, n_).add_(cross_.t());
        quantized_gram_.narrow(0, 0, n_).narrow(1, 0, n_).add_(error_gram_);
      }
    }
    return quantized_gram_;
  }

  StatusOr<const GptqFactor*> Gptq(const WeightQuant& spec) {
    const auto key = std::make_pair(spec.gptq_damp, spec.gptq_act_order);
    for (const auto& [k, f] : gptq_) {
      if (k == key) return &f;
    }
    const double tokens = gram_[n_][n_].item<double>();
    auto h = QuantizedGram().narrow(0, 0, n_).narrow(1, 0, n_) * (2.0 / std::max(1.0, tokens));
    QS_ASSIGN_OR_RETURN(GptqFactor f, FactorHessian(h, spec.gptq_damp, spec.gptq_act_order));
    gptq_.emplace_back(key, std::move(f));
    return &gptq_.back().second;
  }

  StatusOr<const LinearParams*> Aqer(const LinearParams& layer, double lambda) {
    for (const auto& [k, p] : aqer_) {
      if (k == lambda) return &p;
    }
    // X̄̃ᵀE = C + [D; 0].
    auto quantized_cross = cross_.clone();
    quantized_cross.narrow(0, 0, n_).add_(error_gram_);
    QS_ASSIGN_OR_RETURN(LinearParams moved, ReduceActivationErrorFromGram(
                                                layer, QuantizedGram(), quantized_cross, lambda));
    aqer_.emplace_back(lambda, std::move(moved));
    return &aqer_.back().second;
  }

 private:
  torch::Tensor gram_, cross_, error_gram_, quantized_gram_;
  int64_t n_;
  std::list<std::pair<std::pair<double, bool>, GptqFactor>> gptq_;
  std::list<std::pair<double, LinearParams>> aqer_;
};

// A linear candidate's quantized weight and bias, by its method.
StatusOr<QuantizedWeight> QuantizeLinearWeight(const Site& site, const WeightQuant& spec,
                                               const torch::Tensor& weight,
                                               const torch::Tensor& bias, bool pooled,
                                               GroupSolves* solves, WeightGridCache* grids) {
  const int64_t n = weight.size(1);
  if (!spec.quantized()) {
    QuantizedWeight q;
    q.dequantized = weight;
    return q;
  }
  const bool dynamic_groups = spec.granularity == Granularity::kPerGroup &&
                              spec.group_size < n && !spec.gptq_static_groups;
  std::shared_ptr<const UniformGrid> fitted;
  if (spec.method != WeightMethod::kGptq || !dynamic_groups) {
    QS_ASSIGN_OR_RETURN(fitted, grids->Get(site.name, weight, spec));
  }
  const UniformGrid* grid = fitted.get();
  if (spec.method == WeightMethod::kRtn) return QuantizeOnGrid(weight, *grid);
  if (spec.method == WeightMethod::kGptq) {
    QS_ASSIGN_OR_RETURN(const GptqFactor* factor, solves->Gptq(spec));
    return QuantizeWeightGptq(weight, *factor, spec, grid);
  }
  LinearParams layer{weight, bias};
  // ERQ leaves the patch-embedding convolution to Wqer alone, on its convolution path; with float
  // activations Aqer has nothing to absorb.
  const bool conv = IsPatchEmbedding(site);
  if (!conv && solves->quantized_activations()) {
    const double lambda = pooled ? spec.erq_aqer_lambda_pooled : spec.erq_aqer_lambda;
    QS_ASSIGN_OR_RETURN(const LinearParams* moved, solves->Aqer(layer, lambda));
    layer = *moved;
  }
  // After Aqer the weight has moved and its grid is fitted again, as ERQ re-calibrates.
  return ReduceWeightErrorFromGram(layer, solves->QuantizedGram(), spec, conv,
                                   layer.weight.is_same(weight) ? grid : nullptr);
}

// What a linear site's candidates share: its float weight, its inputs, the Gram matrix A and the
// float output's terms (each defined only where some candidate needs it).
struct LinearSite {
  torch::Tensor weight, bias;  // float32 [m, n] and [m] (bias may be undefined)
  int64_t m = 0, n = 0;
  bool pooled = false;         // the input is [B, n] (the head)
  torch::Tensor x, rows;       // the input as given, and as [tokens, n] rows
  torch::Tensor w_t, b64;      // W̃ = [W, b] and b, float64
  torch::Tensor gram, gram32;  // A = X̃ᵀX̃, float64 and float32
  torch::Tensor w_gram;        // W̃·A
  double signal = 0;           // Σy² = tr(W̃·A·W̃ᵀ)
  double tokens = 0;
  torch::Tensor y;             // the float output, for direct measurement and MAE
};

// One activation config's quantized rows and the Gram blocks of its error E = X̄ − X (blocks
// undefined for float activations).
struct ActivationBlocks {
  torch::Tensor x_hat_rows;
  torch::Tensor cross, cross32;            // C = X̃ᵀE, float64 and float32
  torch::Tensor error_gram, error_gram32;  // D = EᵀE
  torch::Tensor w_cross;                   // W̃·C
};

// Loads the site's weight and inputs and computes what its candidates need in common.
Status PrepareLinearSite(const Context& c, bool need_inputs, bool need_gram, bool need_output,
                         LinearSite* s) {
  std::tie(s->weight, s->bias) = LinearParamsOf(c.model, c.site);
  s->m = s->weight.size(0);
  s->n = s->weight.size(1);
  const int64_t m = s->m, n = s->n;
  const auto& inputs = c.data->inputs;
  need_inputs = need_inputs || (need_gram && !c.data->gram.defined());
  if (need_inputs && (inputs.size() != 1 || inputs[0].dim() < 1 || inputs[0].size(-1) != n)) {
    return InvalidArgumentError("site " + c.site.name + " has no captured inputs");
  }
  return GuardTorch("site inputs", [&]() -> Status {
    if (need_inputs) {
      s->pooled = inputs[0].dim() == 2;
      s->x = inputs[0].to(torch::kFloat32);
      s->rows = s->x.reshape({-1, n});
    }
    const auto w64 = s->weight.to(torch::kFloat64);
    s->b64 = s->bias.defined() ? s->bias.to(torch::kFloat64) : torch::zeros({m}, w64.options());
    s->w_t = at::cat({w64, s->b64.unsqueeze(1)}, 1);
    if (need_output) {
      s->y = Gemm(c.costs, static_cast<double>(s->rows.size(0)) * n * m,
                  [&] { return at::linear(s->rows, s->weight, s->bias); });
    }
    if (!need_gram) return OkStatus();
    if (!c.data->gram.defined()) c.data->gram = AugmentedGramOf(s->rows, c.costs);
    s->gram = c.data->gram;
    if (s->gram.size(0) != n + 1 || s->gram.size(1) != n + 1) {
      return InvalidArgumentError("the Gram matrix does not match the site's input width");
    }
    s->gram32 = s->gram.to(torch::kFloat32);
    s->w_gram = s->w_t.mm(s->gram);
    s->signal = (s->w_gram * s->w_t).sum().item<double>();
    s->tokens = s->gram[n][n].item<double>();
    if (!(s->signal > 0)) return FailedPreconditionError("the site's float output is zero");
    return OkStatus();
  });
}

// `s` as its candidates with reparam see it (core/reparam.h): the folded input X' = X/r − δ and
// layer W' = W·diag(r), b' = b + W'δ, with A' = TᵀAT for X̃' = X̃T, T = [[diag(1/r), 0], [−δᵀ, 1]].
// The float output, and so the signal and y, are the same.
Status ReparamLinearSite(const LinearSite& s, const ReparamFit& fit, LinearSite* out) {
  return GuardTorch("reparam", [&]() -> Status {
    *out = s;
    const ScaleReparam& rp = fit.reparam;
    LinearFold folded = rp.FoldIntoLinear(s.weight, s.bias);
    out->weight = folded.weight;
    out->bias = folded.bias;
    out->x = rp.Apply(s.x);
    out->rows = out->x.reshape({-1, s.n});
    out->b64 = out->bias.to(torch::kFloat64);
    out->w_t = at::cat({out->weight.to(torch::kFloat64), out->b64.unsqueeze(1)}, 1);
    if (s.gram.defined()) {
      auto t = torch::eye(s.n + 1, s.gram.options());
      t.narrow(0, 0, s.n).narrow(1, 0, s.n).diagonal().copy_(1.0 / rp.ratio.to(torch::kFloat64));
      t[s.n].narrow(0, 0, s.n).copy_(-rp.shift.to(torch::kFloat64));
      out->gram = t.t().mm(s.gram).mm(t);
      out->gram32 = out->gram.to(torch::kFloat32);
      out->w_gram = out->w_t.mm(out->gram);
    }
    return OkStatus();
  });
}

// Fits `act` on the site's inputs (or takes `preset`, a grid fitted already), applies it, and
// (with `blocks`) computes C and D.
Status FitActivation(const Context& c, const LinearSite& s, const ActivationQuant& act,
                     bool blocks, const UniformGrid* preset, ActivationBlocks* out) {
  out->x_hat_rows = s.rows;
  if (!act.quantized()) return OkStatus();
  return GuardTorch("activation quantizer", [&]() -> Status {
    {
      Timed timed(&c.costs->activation_seconds);
      ActivationQuantizerState state;
      if (preset != nullptr) {
        state = ActivationQuantizerState::FromUniformGrid(act, *preset);
      } else {
        QS_ASSIGN_OR_RETURN(state, ActivationQuantizerState::Fit(
                                       s.x, act, ActivationLayout(act, c.site, c.site.num_heads),
                                       OperandDomain(c.site, 0)));
      }
      out->x_hat_rows = state.Apply(s.rows);
    }
    if (!blocks) return OkStatus();
    auto error = out->x_hat_rows - s.rows;
    // C = X̃ᵀE = [XᵀE; Σe] and D = EᵀE.
    out->cross =
        at::cat({ChunkedProduct(s.rows, error, c.costs), ColumnSums(error).unsqueeze(0)}, 0);
    out->error_gram = ChunkedProduct(error, error, c.costs);
    out->cross32 = out->cross.to(torch::kFloat32);
    out->error_gram32 = out->error_gram.to(torch::kFloat32);
    out->w_cross = s.w_t.mm(out->cross);
    return OkStatus();
  });
}

// The output error of quantized weight Ŵ (and bias b̂) from the blocks: float32 GEMMs of the same
// shape for every candidate (a GEMM stacking several candidates would give one of them other
// bits depending on its neighbours), the products they meet summed in float64.
Status MeasureFromBlocks(const Context& c, const LinearSite& s, const ActivationBlocks& a,
                         const torch::Tensor& w_hat, const torch::Tensor& b_hat, Evaluation* e) {
  const int64_t m = s.m, n = s.n;
  auto dot = [](const torch::Tensor& x, const torch::Tensor& y) {
    return (x.to(torch::kFloat64) * y).sum().item<double>();
  };
  auto w_hat64 = w_hat.to(torch::kFloat64);
  auto b_hat64 = b_hat.defined() ? b_hat.to(torch::kFloat64) : s.b64;
  if (!torch::isfinite(w_hat64).all().item<bool>() ||
      !torch::isfinite(b_hat64).all().item<bool>()) {
    return FailedPreconditionError("quantized weights are not finite");
  }
  const auto v = s.w_t - at::cat({w_hat64, b_hat64.unsqueeze(1)}, 1);  // V = W̃ − Ŵ̃
  const auto v32 = v.to(torch::kFloat32);
  auto va = Gemm(c.costs, static_cast<double>(m) * (n + 1) * (n + 1),
                 [&] { return v32.mm(s.gram32); });
  double noise = dot(va, v), y_dot_error = dot(s.w_gram, v);
  if (a.cross.defined()) {
    auto vc = Gemm(c.costs, static_cast<double>(m) * (n + 1) * n,
                   [&] { return v32.mm(a.cross32); });
    auto wd = Gemm(c.costs, static_cast<double>(m) * n * n,
                   [&] { return w_hat64.to(torch::kFloat32).mm(a.error_gram32); });
    noise += -2 * dot(vc, w_hat64) + dot(wd, w_hat64);
    y_dot_error -= dot(a.w_cross, w_hat64);
  }
  if (!std::isfinite(noise)) return FailedPreconditionError("quantized output is not finite");
  SetFromSums(s.signal, noise, y_dot_error, s.tokens * m, e);
  return OkStatus();
}

// Methods that fit more than the weight: measured directly, never from the Gram blocks.
bool MeasuredDirectly(const WeightQuant& w) {
  return w.quantized() && (w.method == WeightMethod::kLiu || w.method == WeightMethod::kRepapq);
}

// A candidate whose method fits more than the weight (Liu et al.: both intervals together;
// RepAPQ: the affine against the float output) is quantized as calibration does it, on the site's
// float inputs, and measured directly. RepAPQ's across-block refinement needs the whole stage and
// runs in validation (QuantizeModel), so the search ranks repapq by its site-local fit.
Status EvaluateDirectCandidate(const Context& c, const LinearSite& s, const QuantConfig& config,
                            Evaluation* e) {
  std::optional<Timed> timed(&c.costs->weight_seconds);
  std::optional<Timed> by_method(&c.costs->method_seconds[static_cast<int>(config.weight.method)]);
  QuantizeOptions options;
  options.site_reports = false;
  QS_ASSIGN_OR_RETURN(SiteResult r, QuantizeLinearSite(c.site, config, c.site.num_heads, s.x,
                                                       s.weight, s.bias, options));
  timed.reset();
  by_method.reset();
  const auto& folded = r.site.reparam ? r.site.folded.weight : s.weight;
  e->weight_sqnr_db = SqnrDb(folded, r.site.weight->dequantized);
  return SetFromOutputs(s.y, r.output.reshape(s.y.sizes()), /*with_mae=*/true, e);
}

// Quantizes one candidate's weight and measures it, from the blocks or directly.
Status EvaluateLinearCandidate(const Context& c, const LinearSite& s, const ActivationBlocks& a,
                               const QuantConfig& config, GroupSolves* solves,
                               WeightGridCache* grids, Evaluation* e) {
  std::optional<Timed> timed(&c.costs->weight_seconds);
  std::optional<Timed> by_method(&c.costs->method_seconds[static_cast<int>(config.weight.method)]);
  QS_ASSIGN_OR_RETURN(QuantizedWeight q, QuantizeLinearWeight(c.site, config.weight, s.weight,
                                                              s.bias, s.pooled, solves, grids));
  timed.reset();
  by_method.reset();
  const auto& b_hat = q.bias.defined() ? q.bias : s.bias;
  e->weight_sqnr_db = config.weight.quantized() ? SqnrDb(s.weight, q.dequantized) : kInf;
  const bool from_gram = MeasuredFromGram(c.model, c.site, config);
  torch::Tensor y_hat;
  if (!from_gram || c.options.measure_mae) {
    y_hat = Gemm(c.costs, static_cast<double>(s.rows.size(0)) * s.n * s.m,
                 [&] { return at::linear(a.x_hat_rows, q.dequantized, b_hat); });
  }
  if (!from_gram) return SetFromOutputs(s.y, y_hat, /*with_mae=*/true, e);
  if (y_hat.defined()) {
    const ErrorSums sums = SumErrors(s.y, y_hat);
    if (!sums.finite) return FailedPreconditionError("quantized output is not finite");
    e->mae = sums.absolute / static_cast<double>(std::max<int64_t>(1, sums.count));
  }
  return MeasureFromBlocks(c, s, a, q.dequantized, b_hat, e);
}

// Liu et al.'s sensitivity-weighted error for every candidate that evaluated: ν, the mean nuclear
// norm per item of the site's float output matrices (`sensitivity`, [L, ..., r, c]), times the
// squared output error per item (MSE × output elements / L).
void SetNuclearErrors(const Context& c, const torch::Tensor& sensitivity,
                      const torch::Tensor& output) {
  Status s = GuardTorch("nuclear norm", [&]() -> Status {
    const double nu = MeanNuclearNorm(sensitivity);
    const double per_item =
        static_cast<double>(output.numel()) / static_cast<double>(sensitivity.size(0));
    for (auto& e : *c.results) {
      if (e.ok()) e.nuclear_error = nu * e.mse * per_item;
    }
    return OkStatus();
  });
  if (!s.ok()) {
    for (auto& e : *c.results) {
      if (e.ok()) e.SetError(s);
    }
  }
}

// One group of a linear site's candidates, those sharing an activation config (and reparam):
// the activation quantizer and its blocks fitted once, then each candidate's weight measured.
void EvaluateLinearGroup(const Context& c, const LinearSite& site,
                         const std::vector<size_t>& group, WeightGridCache* grids) {
  auto& results = *c.results;
  const auto group_start = Clock::now();
  bool blocks = false;
  for (size_t i : group) blocks |= MeasuredFromGram(c.model, c.site, c.candidates[i].config);
  const ActivationQuant& act = c.candidates[group[0]].config.activation;
  // Reparameterized candidates see a folded input and weight of their own, and their weight
  // grids are not the float weight's (a cache of the group's own).
  const bool reparam = c.candidates[group[0]].config.reparam && act.quantized();
  const LinearSite* view = &site;
  LinearSite folded;
  std::optional<ReparamFit> fit;
  WeightGridCache folded_grids;
  if (reparam) {
    Status made = GuardTorch("reparam", [&]() -> Status {
      if (!site.bias.defined()) {
        return InvalidArgumentError("reparam moves a shift into the bias, and this layer has "
                                    "none (qkv_bias false)");
      }
      QS_ASSIGN_OR_RETURN(fit, FitScaleReparam(site.x, act));
      return ReparamLinearSite(site, *fit, &folded);
    });
    if (!made.ok()) {
      FailAll(group, made, &results);
      return;
    }
    view = &folded;
  }
  ActivationBlocks activation;
  Status fitted = FitActivation(c, *view, act, blocks, fit ? &fit->per_tensor : nullptr,
                                &activation);
  if (!fitted.ok()) {
    FailAll(group, fitted, &results);
    return;
  }
  const double shared = Since(group_start) / static_cast<double>(group.size());
  std::optional<GroupSolves> solves;  // GPTQ and ERQ are always measured from the blocks
  if (view->gram.defined()) solves.emplace(view->gram, activation.cross, activation.error_gram);
  for (size_t i : group) {
    const auto start = Clock::now();
    Status s = GuardTorch("evaluate", [&]() -> Status {
      const QuantConfig& config = c.candidates[i].config;
      if (MeasuredDirectly(config.weight)) {
        return EvaluateDirectCandidate(c, site, config, &results[i]);  // folds for itself
      }
      return EvaluateLinearCandidate(c, *view, activation, config, solves ? &*solves : nullptr,
                                     reparam ? &folded_grids : grids, &results[i]);
    });
    if (!s.ok()) results[i].SetError(s);
    (*c.own_seconds)[i] = shared + Since(start);
  }
}

void EvaluateLinearSite(const Context& c) {
  auto& results = *c.results;
  std::vector<size_t> all;
  const bool outputs = c.options.measure_mae || c.options.measure_nuclear;
  bool need_gram = false, need_inputs = outputs, need_output = outputs;
  for (size_t i = 0; i < c.candidates.size(); ++i) {
    const QuantConfig& config = c.candidates[i].config;
    Status valid = CheckReparam(config, c.site.name, c.site.kind);
    if (valid.ok()) valid = ValidateQuantConfig(config, c.site.kind);
    if (valid.ok() && config.weight.quantized() && IsReconstructionMethod(config.weight.method)) {
      valid = InvalidArgumentError(
          std::string("weight method ") + ToString(config.weight.method) +
          " trains whole blocks, so no site measures it alone: a search applies it to validated "
          "mixes (search.reconstruction)");
    }
    if (!valid.ok()) {
      results[i].SetError(valid);
      continue;
    }
    all.push_back(i);
    const bool from_gram = MeasuredFromGram(c.model, c.site, config);
    need_gram = need_gram || from_gram;
    need_output = need_output || !from_gram;
    need_inputs = need_inputs || !from_gram || config.activation.quantized();
  }
  if (all.empty()) return;
  LinearSite site;
  Status prepared = PrepareLinearSite(c, need_inputs, need_gram, need_output, &site);
  if (!prepared.ok()) {
    FailAll(all, prepared, &results);
    return;
  }

  WeightGridCache local_grids;
  WeightGridCache* grids = c.options.weight_grids ? c.options.weight_grids : &local_grids;
  for (const auto& group : GroupBy(c.candidates, all, [](const QuantConfig& q) {
         return std::make_pair(q.activation, q.reparam && q.activation.quantized());
       })) {
    EvaluateLinearGroup(c, site, group, grids);
  }
  if (c.options.measure_nuclear) {
    // One matrix per leading item: [B, N, out] per image (Swin: per window); pooled rows alone.
    const int64_t items = site.x.size(0);
    SetNuclearErrors(c, site.y.reshape({items, -1, site.m}), site.y);
  }
}

void EvaluateMatmulSite(const Context& c) {
  const Site& site = c.site;
  auto& results = *c.results;
  std::vector<size_t> all;
  for (size_t i = 0; i < c.candidates.size(); ++i) {
    Status valid = CheckReparam(c.candidates[i].config, site.name, site.kind);
    if (valid.ok()) valid = ValidateQuantConfig(c.candidates[i].config, site.kind);
    if (valid.ok()) {
      all.push_back(i);
    } else {
      results[i].SetError(valid);
    }
  }
  if (all.empty()) return;
  const auto& inputs = c.data->inputs;
  if (inputs.size() != 2) {
    FailAll(all, InvalidArgumentError("site " + site.name + " has no captured inputs"), &results);
    return;
  }
  const int64_t heads = site.num_heads;
  torch::Tensor lhs, rhs, y;
  Status setup = GuardTorch("matmul inputs", [&]() -> Status {
    lhs = inputs[0].to(torch::kFloat32);
    rhs = inputs[1].to(torch::kFloat32);
    y = at::matmul(lhs, rhs);
    return OkStatus();
  });
  if (!setup.ok()) {
    FailAll(all, setup, &results);
    return;
  }
  const double macs = static_cast<double>(y.numel()) * lhs.size(-1);
  // Each operand's quantizer is fitted once per distinct config and applied once.
  auto operand = [&](int which, const ActivationQuant& spec,
                     std::vector<std::pair<ActivationQuant, StatusOr<torch::Tensor>>>* memo)
      -> StatusOr<torch::Tensor> {
    for (const auto& [k, v] : *memo) {
      if (k == spec) return v;
    }
    const torch::Tensor& t = which == 0 ? lhs : rhs;
    StatusOr<torch::Tensor> out = GuardTorch("activation quantizer", [&]() -> StatusOr<torch::Tensor> {
      Timed timed(&c.costs->activation_seconds);
      QS_ASSIGN_OR_RETURN(auto state,
                          ActivationQuantizerState::Fit(t, spec, ActivationLayout(spec, site, heads),
                                                        OperandDomain(site, which)));
      return state.Apply(t);
    });
    memo->emplace_back(spec, out);
    return out;
  };
  std::vector<std::pair<ActivationQuant, StatusOr<torch::Tensor>>> lhs_memo, rhs_memo;
  for (size_t i : all) {
    const auto start = Clock::now();
    const QuantConfig& config = c.candidates[i].config;
    Status s = GuardTorch("evaluate", [&]() -> Status {
      if (SearchedByLiu(MatmulLhsSpec(config, site.name)) || SearchedByLiu(config.activation_rhs)) {
        // Both operands searched together: quantized as calibration does it, measured directly.
        QuantizeOptions options;
        options.site_reports = false;
        Timed timed(&c.costs->activation_seconds);
        QS_ASSIGN_OR_RETURN(SiteResult r, QuantizeMatmulSite(site, config, heads, lhs, rhs,
                                                             options));
        return SetFromOutputs(y, r.output, /*with_mae=*/true, &results[i]);
      }
      QS_ASSIGN_OR_RETURN(torch::Tensor a, operand(0, MatmulLhsSpec(config, site.name), &lhs_memo));
      QS_ASSIGN_OR_RETURN(torch::Tensor b, operand(1, config.activation_rhs, &rhs_memo));
      auto out = Gemm(c.costs, macs, [&] { return at::matmul(a, b); });
      return SetFromOutputs(y, out, /*with_mae=*/true, &results[i]);
    });
    if (!s.ok()) results[i].SetError(s);
    (*c.own_seconds)[i] = Since(start);
  }
  // Liu et al.: the attention map's nuclear norm at softmax·v, the scores' at q·kᵀ.
  if (c.options.measure_nuclear) {
    SetNuclearErrors(c, OperandDomain(site, 0) == ValueDomain::kPostSoftmax ? lhs : y, y);
  }
}

// A non-linear site: each method's kernel on the float input gridded as the method takes it,
// against the float op; the input's SQNR on the reference grid of its bits gives the SQNR
// difference.
void EvaluateNonlinearSite(const Context& c) {
  const Site& site = c.site;
  auto& results = *c.results;
  std::vector<size_t> all;
  for (size_t i = 0; i < c.candidates.size(); ++i) {
    Status valid = ValidateQuantConfig(c.candidates[i].config, site.kind);
    if (valid.ok() && !NonlinearMethodHasOp(c.candidates[i].config.nonlinear.method,
                                            NonlinearOpOf(site.name))) {
      valid = InvalidArgumentError(std::string(ToString(c.candidates[i].config.nonlinear.method)) +
                                   " has no " + ToString(NonlinearOpOf(site.name)) + " kernel");
    }
    if (valid.ok()) {
      all.push_back(i);
    } else {
      results[i].SetError(valid);
    }
  }
  if (all.empty()) return;
  if (c.data->inputs.size() != 1) {
    FailAll(all, InvalidArgumentError("site " + site.name + " has no captured inputs"), &results);
    return;
  }
  const NonlinearOp op = NonlinearOpOf(site.name);
  std::optional<LayerNormParams> ln;
  torch::Tensor x, y;
  Status setup = GuardTorch("non-linear inputs", [&]() -> Status {
    if (op == NonlinearOp::kLayerNorm) {
      QS_ASSIGN_OR_RETURN(ln, LayerNormParamsOf(c.model, site));
    }
    x = c.data->inputs[0].to(torch::kFloat32);
    y = FloatNonlinear(op, x, ln ? &*ln : nullptr);
    return OkStatus();
  });
  if (!setup.ok()) {
    FailAll(all, setup, &results);
    return;
  }
  std::map<int, double> input_sqnr;  // by bits
  for (size_t i : all) {
    const auto start = Clock::now();
    const NonlinearQuant& n = c.candidates[i].config.nonlinear;
    Status s = GuardTorch("evaluate", [&]() -> Status {
      Timed timed(&c.costs->activation_seconds);
      QS_ASSIGN_OR_RETURN(auto state,
                          FitNonlinearSite(site, n, x, ln ? &*ln : nullptr));
      auto out = ApplyNonlinearSite(state, x, ln ? &*ln : nullptr);
      QS_RETURN_IF_ERROR(SetFromOutputs(y, out, /*with_mae=*/true, &results[i]));
      if (n.quantized()) {
        if (!input_sqnr.count(n.bits)) input_sqnr[n.bits] = NonlinearInputSqnr(n.bits, x);
        results[i].input_sqnr_db = input_sqnr[n.bits];
      }
      return OkStatus();
    });
    if (!s.ok()) results[i].SetError(s);
    (*c.own_seconds)[i] = Since(start);
  }
  if (c.options.measure_nuclear) SetNuclearErrors(c, y.reshape({y.size(0), -1, y.size(-1)}), y);
}

}  // namespace

double MeanNuclearNorm(const torch::Tensor& t) {
  const int64_t items = t.size(0), r = t.size(-2), cols = t.size(-1);
  auto values = at::linalg_svdvals(t.reshape({-1, r, cols}).to(torch::kFloat64));
  return values.sum().item<double>() / static_cast<double>(items);
}

StatusOr<SiteInputs> CaptureSiteInputs(const ViTModel& model, const torch::Tensor& images,
                                       bool nonlinear) {
  QS_RETURN_IF_ERROR(model.Logits(images.narrow(0, 0, 0)).status());
  return GuardTorch("capture site inputs", [&]() -> StatusOr<SiteInputs> {
    c10::InferenceMode guard;
    SiteInputs inputs;
    Recorder recorder(&inputs, nonlinear);
    model.Forward(images.to(model.device(), torch::kFloat32), &recorder);
    return inputs;
  });
}

StatusOr<torch::Tensor> CaptureSegmentInputs(const ViTModel& model, int64_t segment,
                                             const torch::Tensor& input, SiteInputs* inputs,
                                             bool nonlinear) {
  if (segment < 0 || segment >= model.num_segments()) {
    return InvalidArgumentError("no segment " + std::to_string(segment));
  }
  return GuardTorch("capture segment inputs", [&]() -> StatusOr<torch::Tensor> {
    c10::InferenceMode guard;
    Recorder recorder(inputs, nonlinear);
    return model.ForwardSegment(segment, input, &recorder);
  });
}

std::vector<SiteInfo> DescribeSites(const ViTModel& model) {
  std::vector<SiteInfo> out;
  for (const auto& site : model.sites()) out.push_back(DescribeSite(model, site));
  return out;
}

void EvaluationCosts::Add(const EvaluationCosts& o) {
  gemm_multiply_adds += o.gemm_multiply_adds;
  gemm_seconds += o.gemm_seconds;
  activation_seconds += o.activation_seconds;
  weight_seconds += o.weight_seconds;
  for (int i = 0; i < kWeightMethodCount; ++i) method_seconds[i] += o.method_seconds[i];
  total_seconds += o.total_seconds;
}

bool MeasuredFromGram(const ViTModel& model, const Site& site, const QuantConfig& config) {
  if (site.kind != SiteKind::kLinear) return false;
  if (MeasuredDirectly(config.weight)) return false;
  if (config.weight.quantized() && config.weight.method != WeightMethod::kRtn) return true;
  // RTN (or a float weight) needs nothing of the inputs but its error: measured directly a
  // candidate costs a [tokens, in] × [in, out] GEMM, against about 2·tokens·in² per activation
  // config for the blocks, shared by its weight candidates. Searches offer several of those, so
  // the blocks pay up to inputs twice as wide as the output (every ViT linear but fc2 at MLP
  // ratio 4). The rule looks at the site only, so a key always gets the same numbers.
  const auto& w = model.tensor(site.weight);
  return w.numel() / w.size(0) <= 2 * w.size(0);
}

std::vector<Evaluation> EvaluateSite(const ViTModel& model, const Site& site,
                                     const std::vector<SiteCandidate>& candidates, SiteData* data,
                                     const SiteEvaluationOptions& options,
                                     const std::function<void(const Evaluation&)>& on_result,
                                     EvaluationCosts* costs) {
  EvaluationCosts local;
  if (costs == nullptr) costs = &local;
  const auto start = Clock::now();
  std::vector<Evaluation> results(candidates.size());
  std::vector<double> seconds(candidates.size(), 0.0);
  for (size_t i = 0; i < candidates.size(); ++i) {
    results[i].key = candidates[i].key;
    results[i].site = site.name;
  }
  {
    c10::InferenceMode guard;
    Context c{model, site, candidates, data, options, costs, &results, &seconds};
    if (site.kind == SiteKind::kLinear) {
      EvaluateLinearSite(c);
    } else if (site.kind == SiteKind::kMatmul) {
      EvaluateMatmulSite(c);
    } else {
      EvaluateNonlinearSite(c);
    }
  }
  costs->total_seconds += Since(start);
  for (size_t i = 0; i < results.size(); ++i) {
    results[i].seconds = seconds[i];
    if (on_result) on_result(results[i]);
  }
  return results;
}

Evaluation EvaluateCandidate(const ViTModel& model, const Site& site, const QuantConfig& config,
                             const std::vector<torch::Tensor>& inputs, const std::string& key,
                             const SiteEvaluationOptions& options) {
  SiteData data{inputs, torch::Tensor()};
  return EvaluateSite(model, site, {SiteCandidate{config, key}}, &data, options)[0];
}

}  // namespace qs::core
