// QuantConfig and Recipe: what to do at one site, and at every site of a model.
//
// A QuantConfig is the unit the search varies: weight {method, bits, granularity, group size, range
// calibrator} plus the activation quantizers of the site's inputs. A Recipe maps every site to one
// QuantConfig; it round-trips through JSON ("qsearch.recipe.v1") so `qsearch quantize` can replay it.
//
//   QS_ASSIGN_OR_RETURN(Recipe recipe, ParseUniformRecipe("w4a8:rtn"));
//   QuantConfig qkv = recipe.Resolve("blocks.0.attn.qkv", SiteKind::kLinear);
#ifndef QS_COMMON_QUANT_CONFIG_H_
#define QS_COMMON_QUANT_CONFIG_H_

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace qs {

// Which elements share one (scale, zero point).
enum class Granularity {
  kPerTensor,   // one pair for the whole tensor
  kPerChannel,  // weights: per output row; activations: per last-dim channel
  kPerGroup,    // weights only: per output row and run of `group_size` input columns
  kPerHead,     // per attention head (activations split along heads)
};

// How the clipping range is chosen from observed values.
enum class RangeCalibrator {
  kMinMax,      // observed min and max
  kPercentile,  // the `percentile` quantile of each side
  kOmse,        // shrink search: max·(1−0.01i), i<90, lowest squared error
  kMae,         // the same shrink search, lowest absolute error
  kLiu,         // attention-matmul operands only: Liu et al. 2021's search of both operands'
                // intervals around min-max for output Pearson correlation (and, at q·kᵀ, the
                // attention ranking loss)
};

// The value grid of an activation quantizer.
enum class ActivationQuantizer {
  kUniform,      // affine or symmetric uniform grid
  kLog2,         // s·2^−q, for post-softmax values in [0, 1]
  kLogSqrt2,     // s·2^−q/2, finer log grid for post-softmax values
  kTwinUniform,  // PTQ4ViT: two uniform ranges sharing the bits (post-softmax, post-GELU)
};

// How quantized weights are produced from the float ones.
enum class WeightMethod {
  kRtn,   // round to nearest on the calibrated grid
  kGptq,  // GPTQ: column-by-column rounding with Hessian-weighted error feedback
  kErq,   // ERQ: Aqer (ridge absorbs activation error) then Wqer (rounding refinement + ridge)
  kLiu,   // Liu et al. 2021: weight and input intervals searched for output Pearson correlation
  kRepapq,  // RepAPQ: MAE-calibrated grids, a per-output-channel affine (QPRep) folded into the
            // weight scales and bias, refined across blocks against stage outputs
  kBrecq,   // BRECQ: block reconstruction, AdaRound rounding and LSQ activation steps learned
            // per block against the float block output
  kMgrq,    // MGRQ: block reconstruction plus global (model output) and local (per-layer
            // output distribution) supervision, the three losses fused by weights
};

inline constexpr int kWeightMethodCount = 7;
// Whether `method` is a block-reconstruction method (brecq, mgrq): trained over whole blocks, so
// measured only by whole-model validation (a search's reconstruction tier), never per site.
bool IsReconstructionMethod(WeightMethod method);

enum class SiteKind {
  kLinear,     // weight and input activation of a linear layer (incl. the patch-embedding conv)
  kMatmul,     // the two operands of an attention matmul (q·kᵀ or softmax·v)
  kNonlinear,  // a Softmax, GELU or LayerNorm, computed in float or by an integer-only method
};

// The operator of a non-linear site.
enum class NonlinearOp { kSoftmax, kGelu, kLayerNorm };

// How a non-linear site computes (core/integer_nonlinear.h has the kernels).
enum class NonlinearMethod {
  kFloat,  // the float operator
  kIbert,  // I-BERT: i-softmax, i-GELU, integer LayerNorm with an integer square root
  kFqvit,  // FQ-ViT: Log-Int-Softmax, Power-of-Two-Factor LayerNorm (no GELU kernel)
  kIvit,   // I-ViT: Shiftmax, ShiftGELU, I-LayerNorm
};

const char* ToString(Granularity v);
const char* ToString(RangeCalibrator v);
const char* ToString(ActivationQuantizer v);
const char* ToString(WeightMethod v);
const char* ToString(SiteKind v);
const char* ToString(NonlinearOp v);
const char* ToString(NonlinearMethod v);
StatusOr<NonlinearMethod> ParseNonlinearMethod(const std::string& s);
// The operator of the non-linear site named `site_name` ("....attn.softmax", "....mlp.act",
// every other name a LayerNorm: "blocks.3.norm1", "norm", "fc_norm", "patch_embed.norm", ...).
NonlinearOp NonlinearOpOf(const std::string& site_name);
// Whether `method` has a kernel for `op` (FQ-ViT has none for GELU; float has every op).
bool NonlinearMethodHasOp(NonlinearMethod method, NonlinearOp op);
StatusOr<Granularity> ParseGranularity(const std::string& s);
StatusOr<RangeCalibrator> ParseRangeCalibrator(const std::string& s);
StatusOr<ActivationQuantizer> ParseActivationQuantizer(const std::string& s);
StatusOr<WeightMethod> ParseWeightMethod(const std::string& s);

// Weight quantization of a linear site. bits == 0 leaves the weight in float.
struct WeightQuant {
  WeightMethod method = WeightMethod::kRtn;
  int bits = 0;                                     // 0 (float) or 2..8
  Granularity granularity = Granularity::kPerChannel;
  int group_size = 0;                               // input columns per group; kPerGroup only
  RangeCalibrator calibrator = RangeCalibrator::kOmse;
  bool symmetric = true;                            // signed grid with zero point 0
  double percentile = 0.9999;                       // kPercentile only, in (0.5, 1]

  // GPTQ (kGptq only).
  double gptq_damp = 0.01;         // damping λ = gptq_damp · mean(diag H)
  int gptq_block_size = 128;       // lazy-update block; does not change the result
  bool gptq_act_order = false;     // quantize columns by descending diag(H)
  bool gptq_static_groups = false; // per_group: fit every group before any update

  // ERQ (kErq only). Ridge strengths are absolute, as in the reference code (λ = 0.1 · coe with
  // coe = 10000): they scale with the number of calibration tokens.
  double erq_aqer_lambda = 1000.0;        // Aqer λ₁ for token inputs ([B, N, C])
  double erq_aqer_lambda_pooled = 0.1;    // Aqer λ₁ for pooled 2-D inputs (the head)
  double erq_wqer_lambda = 1000.0;        // Wqer ridge λ₂
  int erq_wqer_iterations = 100;          // rounding-refinement steps per row and round

  // Liu et al. 2021 (kLiu only): scale multipliers of the min-max grids searched on a linear
  // grid over [liu_alpha, liu_beta] (1 always included), weight then input, for `liu_rounds`
  // rounds; then the mean output shift is moved into the bias.
  double liu_alpha = 0.5;
  double liu_beta = 1.2;
  int liu_grid = 100;
  int liu_rounds = 1;
  bool liu_bias_correction = true;

  // RepAPQ (kRepapq only; per_channel weights): Adam steps of the across-block calibration on
  // mini-batches of `repapq_batch` images, at learning rate `repapq_lr` (log-scales, affine).
  int repapq_iterations = 300;
  int repapq_batch = 64;
  double repapq_lr = 1e-2;

  // Block reconstruction (kBrecq, kMgrq; core/block_reconstruction.h). Per stage, Adam steps on
  // mini-batches of `recon_batch` images drawn by a permutation seeded with `recon_seed`:
  // AdaRound rounding variables at `recon_lr`, activation step sizes (LSQ) at `recon_act_lr`.
  // The rounding regularizer weighs `recon_round_weight` after the first `recon_warmup`
  // fraction of steps, its exponent β annealed from `recon_beta_start` to `recon_beta_end`.
  int recon_iterations = 500;
  int recon_batch = 32;
  double recon_lr = 1e-3;
  double recon_act_lr = 4e-5;
  double recon_round_weight = 0.01;
  double recon_warmup = 0.2;
  double recon_beta_start = 20.0;
  double recon_beta_end = 2.0;
  int recon_seed = 0;
  // Where the rounding starts: the weights of `rtn`, `gptq` or `erq` at the same bits and grid
  // settings (ERQ's bias change kept). Zero steps give exactly that method's weights.
  WeightMethod recon_init = WeightMethod::kRtn;
  // MGRQ (kMgrq only): L = block_weight·L_block + global_weight·L_global + local_weight·L_local.
  // L_global compares the model output after the float rest of the network ("kl": KL from the
  // float softmax, "mse"); L_local each linear output inside the block ("moments": per-channel
  // mean and standard deviation, "mse").
  double mgrq_block_weight = 1.0;
  double mgrq_global_weight = 1.0;
  double mgrq_local_weight = 1.0;
  std::string mgrq_global_distance = "kl";
  std::string mgrq_local_distance = "moments";

  bool quantized() const { return bits > 0; }
  bool operator==(const WeightQuant& o) const;
};

// Quantization of one activation tensor. bits == 0 leaves it in float.
struct ActivationQuant {
  int bits = 0;                                     // 0 (float) or 2..8
  ActivationQuantizer quantizer = ActivationQuantizer::kUniform;
  Granularity granularity = Granularity::kPerTensor;  // kPerTensor, kPerChannel or kPerHead
  RangeCalibrator calibrator = RangeCalibrator::kOmse;
  bool symmetric = false;                           // uniform only
  double percentile = 0.9999;                       // kPercentile only

  bool quantized() const { return bits > 0; }
  bool operator==(const ActivationQuant& o) const;
};

// How a non-linear site computes. `bits` (4..8) is the integer width the method works at: the
// output probabilities of a softmax (its input is the q·kᵀ accumulator), the input of a GELU (the
// fc1 output requantized), the input of a LayerNorm (the residual stream quantized). The next
// site's input quantizer takes the output as it takes any activation.
struct NonlinearQuant {
  NonlinearMethod method = NonlinearMethod::kFloat;
  int bits = 8;

  bool quantized() const { return method != NonlinearMethod::kFloat; }
  bool operator==(const NonlinearQuant& o) const {
    return method == o.method && (!quantized() || bits == o.bits);
  }
};

// What to do at one site. For a linear site `activation` quantizes the input and `activation_rhs`
// is unused; for a matmul site `activation` quantizes the left operand (q, or the softmax output)
// and `activation_rhs` the right one (k, or v), and `weight` is unused.
struct QuantConfig {
  WeightQuant weight;
  ActivationQuant activation;
  ActivationQuant activation_rhs;
  // RepQ-ViT reparameterization, where it applies (ReparamApplies): a post-LayerNorm input is
  // calibrated per channel and folded into the LayerNorm affine and this linear's weight, so that
  // a per-tensor quantizer serves it; post-softmax values get the log√2 grid. Elsewhere it has no
  // effect, and Recipe::Resolve clears it.
  bool reparam = false;
  // Non-linear sites only (the other fields unused there).
  NonlinearQuant nonlinear;

  bool operator==(const QuantConfig& o) const;
};

// Checks the ranges and combinations of one config (bits 2..8, group size with kPerGroup, ...).
Status ValidateQuantConfig(const QuantConfig& config, SiteKind kind);

// What the values of one operand are, for quantizers built for one kind of value.
enum class ValueDomain { kGeneral, kPostSoftmax, kPostGelu };

// The domain of operand `operand` (0: a linear's input or a matmul's left operand, 1: a matmul's
// right operand) at the site named `site_name`: softmax·v's left operand is post-softmax, fc2's
// input post-GELU, everything else general.
ValueDomain OperandDomain(const std::string& site_name, SiteKind kind, int operand);

// Whether RepQ-ViT reparameterization applies at the site named `site_name`: the linear layers
// whose input is a LayerNorm output (a block's attn.qkv and mlp.fc1, ViT and Swin), and the
// softmax·v matmul (its post-softmax operand).
bool ReparamApplies(const std::string& site_name, SiteKind kind);
// INVALID_ARGUMENT when `config` asks for reparam at a site where it does not apply, or with an
// activation quantizer it contradicts (a linear input must be per_tensor uniform; softmax·v's
// left operand uniform or log_sqrt2).
Status CheckReparam(const QuantConfig& config, const std::string& site_name, SiteKind kind);

// INVALID_ARGUMENT naming `where` when `spec`'s quantizer cannot take values of `domain` (log
// grids need post-softmax values; twin-uniform needs post-softmax or post-GELU values).
Status CheckQuantizerSuitsDomain(const ActivationQuant& spec, ValueDomain domain,
                                 const std::string& where);

nlohmann::json ToJson(const QuantConfig& config, SiteKind kind);
// One weight config's JSON (the "weight" object of a recipe site), both ways; the parse checks
// keys and types, ValidateQuantConfig the values.
nlohmann::json ToJson(const WeightQuant& weight);
StatusOr<WeightQuant> WeightQuantFromJson(const nlohmann::json& j);
// Fields left out keep their defaults; unknown fields are INVALID_ARGUMENT.
StatusOr<QuantConfig> QuantConfigFromJson(const nlohmann::json& j, SiteKind kind);

// A QuantConfig for every site: defaults per site kind plus per-site entries that replace them.
struct Recipe {
  QuantConfig linear_default;
  QuantConfig matmul_default;
  // Non-linear sites: float unless set. A default method without a kernel for a site's operator
  // (FQ-ViT at a GELU) leaves that site in float.
  QuantConfig nonlinear_default;
  std::map<std::string, QuantConfig> sites;  // site name -> full config

  // The per-site entry if present, else the default for `kind`; `reparam` cleared where it does
  // not apply.
  QuantConfig Resolve(const std::string& site, SiteKind kind) const;
};

inline constexpr char kRecipeFormat[] = "qsearch.recipe.v1";

// Serializes with sorted keys, so equal recipes give byte-identical text. `site_kinds` names the
// kind of every entry in `recipe.sites`.
nlohmann::json RecipeToJson(const Recipe& recipe,
                            const std::map<std::string, SiteKind>& site_kinds);
// Parses a "qsearch.recipe.v1" document. `site_kinds` lists the model's sites: an entry naming a
// site not in it is INVALID_ARGUMENT.
StatusOr<Recipe> RecipeFromJson(const nlohmann::json& j,
                                const std::map<std::string, SiteKind>& site_kinds);

// Parses the uniform shorthand "w<bits>a<bits>[:method]", e.g. "w4a8", "w4a4:rtn", "w8a32" (32 or
// "f" keeps that part in float). Weights: per-channel symmetric with OMSE ranges; activations:
// per-tensor asymmetric with OMSE ranges (MAE ranges for both under repapq, as RepAPQ has it). The edge sites, the patch embedding and the classifier
// head(s) (a model's EdgeSites; ViT's by default), stay at W8A8, as the PTQ papers keep them,
// unless `quantize_edges` is set.
StatusOr<Recipe> ParseUniformRecipe(
    const std::string& shorthand, bool quantize_edges = false,
    const std::vector<std::string>& edge_sites = {"patch_embed.proj", "head"});

}  // namespace qs

#endif  // QS_COMMON_QUANT_CONFIG_H_
