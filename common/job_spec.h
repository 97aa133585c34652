// JobSpec: what a search job asks for, parsed and validated from JSON.
//
// The spec names the model, the calibration and validation data, the candidate space per site
// kind, the objective (a budget and the metric that ranks candidates) and the accuracy criterion.
// Paths are resolved relative to the spec file. Every error names the offending field.
//
//   QS_ASSIGN_OR_RETURN(JobSpec spec, LoadJobSpec("job.json"));
#ifndef QS_COMMON_JOB_SPEC_H_
#define QS_COMMON_JOB_SPEC_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/quant_config.h"
#include "common/status.h"

namespace qs {

// What the budget limits.
enum class BudgetKind {
  kAvgWeightBits,  // mean bits per quantizable linear weight parameter
  kModelBytes,     // bytes of all linear weights (scales not counted)
  kBops,           // Σ MACs × operand bits × operand bits over linear and matmul sites, plus
                   // elements × bits × bits at planned non-linear sites (32 bits when float)
};

// The per-site number the selection minimizes (summed over sites).
enum class RankingMetric {
  kNoiseRatio,  // site-output noise power / signal power (1 / linear SQNR), default
  kMse,         // site-output mean squared error
  kMae,         // site-output mean absolute error
  kNuclear,     // Liu et al. 2021: float output's nuclear norm × squared error (per image)
};

struct CandidateSpace {
  std::vector<WeightMethod> weight_methods = {WeightMethod::kRtn};
  std::vector<int> weight_bits = {4, 8};
  std::vector<Granularity> weight_granularities = {Granularity::kPerChannel};
  int group_size = 64;  // for per_group
  std::vector<RangeCalibrator> weight_calibrators = {RangeCalibrator::kOmse};
  std::vector<int> activation_bits = {8};  // 0 keeps activations in float
  // Range calibrators of quantized activations (linear inputs and both matmul operands).
  std::vector<RangeCalibrator> activation_calibrators = {RangeCalibrator::kOmse};
  std::vector<ActivationQuantizer> softmax_quantizers = {ActivationQuantizer::kUniform};
  // RepQ-ViT reparameterization off and/or on, at the sites where it applies (ReparamApplies)
  // and activations are quantized; {false, true} puts both in the candidate space.
  std::vector<bool> reparam = {false};
  // Non-linear sites (Softmax, GELU, LayerNorm): the methods offered ("float" included leaves
  // the float op a candidate) and their bits (empty: the non-zero activation bits, else 8). With
  // only float offered (the default) and no non-linear pin, the plan leaves non-linear sites out
  // and they stay float.
  std::vector<NonlinearMethod> nonlinear_methods = {NonlinearMethod::kFloat};
  std::vector<int> nonlinear_bits;
  // The reconstruction tier: when set (method brecq or mgrq with its recon_* and mgrq_* fields),
  // every mix that validation measures has its quantized linear weights, pinned sites apart,
  // re-quantized by that block reconstruction at the bits, granularity and grid of the chosen
  // candidate (ApplyReconstructionTier). Too costly to run per candidate, it refines the
  // selection instead: the candidates rank the mixes, validation measures them reconstructed.
  std::optional<WeightQuant> reconstruction;
  std::vector<std::string> skip;  // site-name prefixes kept in float
  std::map<std::string, nlohmann::json> pin;  // site -> fixed config (recipe site JSON)
};

struct JobSpec {
  std::string spec_path;  // where the spec was read from ("" for inline specs)
  std::string model_config;
  std::string model_weights;
  std::string calibration_source = "fashion-mnist:train";
  int64_t calibration_count = 256;
  uint64_t seed = 0;
  std::string validation_source = "fashion-mnist:test";
  int64_t validation_limit = 0;  // 0: all
  // The set the returned recipe's accuracy is reported on, disjoint from calibration and
  // validation ("" for none: then only the validation top-1, which chose the recipe, is known).
  std::string test_source;
  int64_t test_limit = 0;  // 0: all
  // How count/limit draw each subset: "balanced" (classes equally) or "uniform" (the draw
  // qsearch made before it balanced classes), seeded by `seed`.
  std::string calibration_sampling = "balanced";
  std::string validation_sampling = "balanced";
  std::string test_sampling = "balanced";
  CandidateSpace space;
  BudgetKind budget_kind = BudgetKind::kAvgWeightBits;
  double budget = 4.0;
  RankingMetric metric = RankingMetric::kNoiseRatio;
  // Accuracy criterion on validated top-1 (fractions); a negative value means "none".
  double max_abs_top1_drop = -1;
  double max_rel_top1_drop = -1;
  // How many Pareto points at or below the budget validation may try in all.
  int max_validations = 3;
  // Tiered validation: also validate the optimum's cheaper neighbour, and keep going while the
  // cheaper point measures better (prediction and measurement disagree). Off: only when the
  // accuracy criterion fails.
  bool refine_validation = true;
  // Where the model side runs: "auto" (CUDA when LibTorch has it, else the CPU), "cpu", "cuda".
  std::string device = "auto";
  // Precision the float model's checkpoints and captured site inputs are kept in: "float32", or
  // "float16" (half the memory; the results differ slightly, so candidate keys differ too).
  std::string capture_dtype = "float32";
};

// Parses a spec. `spec_path` anchors relative paths. INVALID_ARGUMENT naming the field for any
// missing required field, unknown field, wrong type or out-of-range value.
StatusOr<JobSpec> ParseJobSpec(const nlohmann::json& j, const std::string& spec_path);
StatusOr<JobSpec> LoadJobSpec(const std::string& path);

// The canonical JSON of a spec (sorted keys; paths as resolved).
nlohmann::json ToJson(const JobSpec& spec);

// `recipe` with the spec's reconstruction tier applied (unchanged without one): each quantized
// linear weight outside the spec's pins takes the tier's method and fields and keeps its bits,
// granularity, group size, calibrator, symmetry and percentile.
Recipe ApplyReconstructionTier(const Recipe& recipe, const JobSpec& spec);

const char* ToString(BudgetKind v);
const char* ToString(RankingMetric v);

}  // namespace qs

#endif  // QS_COMMON_JOB_SPEC_H_
