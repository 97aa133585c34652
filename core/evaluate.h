// The evaluation stage: every candidate of one site measured against the float operation on the
// site's float inputs (captured from the float model on the calibration set), all at once.
//
// Candidates of a site share work. Each activation quantizer is fitted once per (site, activation
// config) and shared by the weight candidates that use it. A linear site's output error is a
// quadratic form in Gram blocks of its inputs: with X̃ = [X, 1], E = Q_a(X) − X the activation
// error, V = [W − Ŵ, b − b̂] and Y − Ŷ = X̃Vᵀ − EŴᵀ,
//   ‖Y − Ŷ‖² = tr(V·A·Vᵀ) − 2·tr(V·C·Ŵᵀ) + tr(Ŵ·D·Ŵᵀ),   A = X̃ᵀX̃, C = X̃ᵀE, D = EᵀE,
// so once A (per site) and C, D (per activation config) exist, a candidate costs O(out · in²)
// whatever the number of tokens; GPTQ's Hessian and ERQ's ridge systems come from the same blocks.
// RTN at a site whose input is more than twice as wide as its output (fc2 at MLP ratio 4) is
// cheaper measured directly, one output GEMM per candidate, and is. The choice depends only on the site and the config, so a key
// always gets the same numbers. MAE is no quadratic form: it costs one output GEMM per candidate
// and is measured only when asked.
//
//   SiteData data{inputs};
//   std::vector<Evaluation> e = EvaluateSite(model, site, candidates, &data, {});
#ifndef QS_CORE_EVALUATE_H_
#define QS_CORE_EVALUATE_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/evaluation.h"
#include "common/plan.h"
#include "common/status.h"
#include "core/quantizer.h"
#include "core/vit.h"

namespace qs::core {

// Per site: the linear input, the matmul's two operands, or the non-linear op's input, from the
// float model.
using SiteInputs = std::map<std::string, std::vector<torch::Tensor>>;

// One float forward pass over `images` (normalized), recording every linear and matmul site's
// inputs, and with `nonlinear` the non-linear sites' too (they are large: the attention scores,
// the MLP's hidden activations).
StatusOr<SiteInputs> CaptureSiteInputs(const ViTModel& model, const torch::Tensor& images,
                                       bool nonlinear = false);

// The same for the sites of one segment (ViTModel::ForwardSegment) run on `input`; returns the
// segment's output too, so segments can be chained.
StatusOr<torch::Tensor> CaptureSegmentInputs(const ViTModel& model, int64_t segment,
                                             const torch::Tensor& input, SiteInputs* inputs,
                                             bool nonlinear = false);

// The plan's view of the model: site names, kinds, weight sizes and MACs per image.
std::vector<SiteInfo> DescribeSites(const ViTModel& model);

// Σ of singular values of the matrices in `t` ([L, ..., r, c]: L leading items, e.g. images, each
// holding one or more r × c matrices), summed per item and averaged over the L items.
double MeanNuclearNorm(const torch::Tensor& t);

// One candidate of a site: its config and the key its Evaluation is stored under.
struct SiteCandidate {
  QuantConfig config;
  std::string key;
};

// A site's float inputs and what is derived from them once and worth keeping.
struct SiteData {
  // Linear: {x} ([..., in]); matmul: {lhs, rhs}. Float32 or float16 (computed in float32).
  std::vector<torch::Tensor> inputs;
  // Linear sites: A = X̃ᵀX̃ (float64, (in + 1)²), filled on first need. A caller that keeps it may
  // leave `inputs` empty when every candidate is weight-only, measured from A, and MAE is not
  // asked.
  torch::Tensor gram;
};

struct SiteEvaluationOptions {
  bool measure_mae = false;  // one extra output GEMM per linear candidate
  // Evaluation::nuclear_error: singular values of the site's float output matrices, once per
  // site (and the output of linear candidates measured from the Gram).
  bool measure_nuclear = false;
  // Weight grids to take and fill (a session keeps one per model, for validation to reuse); null:
  // shared within this call only.
  WeightGridCache* weight_grids = nullptr;
};

// Where EvaluateSite's time went, for benchmarks (seconds unless said otherwise; the parts
// overlap nothing, so total − their sum is everything else: checks, metrics, bookkeeping).
struct EvaluationCosts {
  double gemm_multiply_adds = 0;  // every GEMM: blocks, quadratic forms, direct outputs
  double gemm_seconds = 0;        // inside those GEMMs
  double activation_seconds = 0;  // fitting and applying activation quantizers
  double weight_seconds = 0;      // weight methods (RTN, GPTQ, ERQ), grid fits included
  // The same by method, in WeightMethod's order: RTN, GPTQ, ERQ, Liu, RepAPQ.
  double method_seconds[kWeightMethodCount] = {};
  double total_seconds = 0;       // whole EvaluateSite calls

  void Add(const EvaluationCosts& o);
};

// Measures every candidate at `site` and returns their Evaluations in the order given. Never fails
// as a call: a candidate that does not suit the site, cannot be quantized or produces non-finite
// numbers comes back with `error` set (missing inputs fail every candidate). `on_result` (may be
// empty) sees each Evaluation as soon as it exists. `costs` (may be null) accumulates where the
// time went.
std::vector<Evaluation> EvaluateSite(const ViTModel& model, const Site& site,
                                     const std::vector<SiteCandidate>& candidates, SiteData* data,
                                     const SiteEvaluationOptions& options = {},
                                     const std::function<void(const Evaluation&)>& on_result = {},
                                     EvaluationCosts* costs = nullptr);

// One candidate alone: EvaluateSite with a single candidate.
Evaluation EvaluateCandidate(const ViTModel& model, const Site& site, const QuantConfig& config,
                             const std::vector<torch::Tensor>& inputs, const std::string& key,
                             const SiteEvaluationOptions& options = {});

// Whether `config` at `site` is measured from Gram blocks (else directly, by output GEMMs).
bool MeasuredFromGram(const ViTModel& model, const Site& site, const QuantConfig& config);

}  // namespace qs::core

#endif  // QS_CORE_EVALUATE_H_
