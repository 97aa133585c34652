// Quantizes a whole ViT under a Recipe and evaluates it with fake quantization.
//
// Calibration is sequential: one forward pass over the calibration images in which every site
// fits its activation quantizers on the inputs it actually receives (already quantized upstream)
// and quantizes its weight, so later sites see the errors of earlier ones, as deployment will.
//
//   QS_ASSIGN_OR_RETURN(QuantizedModel q, QuantizeModel(model, recipe, calib_images));
//   QS_ASSIGN_OR_RETURN(torch::Tensor logits, q.Logits(eval_images));
#ifndef QS_CORE_QUANTIZE_MODEL_H_
#define QS_CORE_QUANTIZE_MODEL_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/plan.h"
#include "common/quant_config.h"
#include "common/status.h"
#include "core/nonlinear_site.h"
#include "core/quantizer.h"
#include "core/repapq.h"
#include "core/reparam.h"
#include "core/vit.h"

namespace qs::core {

// How one site fared during calibration: its quantized operation against the float operation on
// the same (already quantized upstream) input.
struct SiteReport {
  std::string site;
  SiteKind kind = SiteKind::kLinear;
  double sqnr_db = 0;        // site output
  double mse = 0;            // site output
  double weight_sqnr_db = 0; // linear sites with a quantized weight; +inf otherwise
  double input_sqnr_db = 0;  // input (linear) or left operand (matmul); +inf when float
  double rhs_sqnr_db = 0;    // matmul right operand; +inf when float or linear
};

// What one stage's block reconstruction did (core/block_reconstruction.h). Losses are on every
// calibration image: the stage output's mean squared error per element against the float stage
// output.
struct StageReconstruction {
  std::string stage;        // the stage's name, e.g. "blocks.3", "patch_embed", "head"
  WeightMethod method = WeightMethod::kBrecq;
  double loss_before = 0;   // with the calibrated sites (the init method's weights)
  double loss_after = 0;    // with the learned rounding and steps, as kept
  // The method's objective (brecq: L_block; mgrq: the fused loss; no rounding regularizer),
  // mean over the images: what decides whether the learned sites are kept.
  double objective_before = 0;
  double objective_after = 0;
  bool kept = false;        // false: the objective did not fall, the calibrated sites stay
  int iterations = 0;
  int64_t weights = 0;      // reconstructed weight elements
  int64_t flipped = 0;      // of those, rounded otherwise than the init method did (when kept)
  double seconds = 0;
};

// Everything fitted at one site.
struct QuantizedSite {
  QuantConfig config;
  std::optional<QuantizedWeight> weight;  // linear sites with weight bits > 0
  ActivationQuantizerState input;         // linear input, or matmul left operand
  ActivationQuantizerState input_rhs;     // matmul right operand
  // RepQ-ViT reparameterization at a post-LayerNorm linear (config.reparam): `input` quantizes
  // reparam->Apply(x), and the layer multiplies `folded` (or the weight quantized from it).
  std::optional<ScaleReparam> reparam;
  LinearFold folded;
  // RepAPQ (weight method repapq): the QPRep affine already folded into `weight`, kept so that
  // the across-block calibration can refine it (core/across_block.h).
  std::optional<QprepAffine> qprep;
  // Non-linear sites: the method and its fitted input grid.
  std::optional<NonlinearSiteState> nonlinear;
};

// Applies what calibration fitted at every site, and nothing else (QuantizedModel::Logits).
class FakeQuantHandler : public SiteHandler {
 public:
  explicit FakeQuantHandler(const std::map<std::string, QuantizedSite>& sites) : sites_(sites) {}
  torch::Tensor Linear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                       const torch::Tensor& bias) override;
  torch::Tensor Matmul(const Site& site, const torch::Tensor& lhs,
                       const torch::Tensor& rhs) override;
  torch::Tensor Softmax(const Site& site, const torch::Tensor& x) override;
  torch::Tensor Gelu(const Site& site, const torch::Tensor& x) override;
  torch::Tensor LayerNorm(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                          const torch::Tensor& bias, double eps) override;

 protected:
  const std::map<std::string, QuantizedSite>& sites_;
  // Softmax and GELU sites -> the scale of the accumulator they take (q·kᵀ's, fc1's).
  std::map<std::string, torch::Tensor> accumulator_scales_;
};

// The scale the integer accumulator of a fitted site is on, or undefined where its products are
// no integers of one scale per output. A matmul: the steps' product of uniform per-tensor or
// per-head operands (not float, per channel, log or twin-uniform). A linear: the input step of a
// uniform per-tensor input times the weight's per-tensor or per-channel steps ([out]; not a float
// weight or per-group grids).
torch::Tensor AccumulatorScale(const QuantizedSite& site);
// The non-linear site that takes `site`'s accumulator: "<block>.attn.qk_matmul" feeds
// "<block>.attn.softmax", "<block>.mlp.fc1" feeds "<block>.mlp.act"; "" for other sites.
std::string AccumulatorConsumer(const std::string& site);

struct QuantizeOptions {
  // Compare every site with its float operation on the same input (QuantizedModel::reports()):
  // one extra GEMM per site. A search's validation needs only the logits.
  bool site_reports = true;
  // Grids already fitted to this model's float weights (a search's evaluation fills one); RTN,
  // GPTQ (static or no groups) and ERQ at the patch embedding (no Aqer there) take theirs from
  // it. Null: fitted here.
  WeightGridCache* weight_grids = nullptr;
  // Hears each stage's block reconstruction as it ends (brecq and mgrq sites). May be empty.
  std::function<void(const StageReconstruction&)> on_reconstructed;
};

class QuantizedModel {
 public:
  const ViTModel& float_model() const { return float_model_; }
  const Recipe& recipe() const { return recipe_; }
  const std::map<std::string, QuantizedSite>& sites() const { return sites_; }
  const std::vector<SiteReport>& reports() const { return reports_; }
  // Every stage's block reconstruction, in order (empty without brecq or mgrq sites).
  const std::vector<StageReconstruction>& reconstructions() const { return reconstructions_; }

  // Fake-quantized logits for normalized images (CPU float), in batches.
  StatusOr<torch::Tensor> Logits(const torch::Tensor& images, int64_t batch_size = 256) const;

  // Every tensor of the quantized model as float32 under its timm name and shape: quantized
  // weights dequantized (on their grids), biases moved by ERQ, reparameterized sites' LayerNorm
  // affine and linear weight and bias folded; the rest as in the float model. Loaded as float
  // weights, these give QuantizedModel::Logits once each site's activation quantizers are applied.
  std::map<std::string, torch::Tensor> DeployedTensors() const;

  // Writes the quantized weights in the "qsearch.quantized.v1" format (core/quantized_format.h):
  // bit-packed codes, scales and zero points for every quantized linear weight (the
  // patch-embedding conv flattened in (C, p, p) order), every other tensor in F32 under its timm
  // name (biases moved by ERQ included; reparameterized sites' LayerNorm affine and linear
  // weight and bias folded), and the recipe JSON in the metadata.
  Status WriteWeights(const std::string& path) const;

 private:
  friend StatusOr<QuantizedModel> QuantizeModel(const ViTModel&, const Recipe&,
                                                const torch::Tensor&, const QuantizeOptions&);
  ViTModel float_model_;
  Recipe recipe_;
  std::map<std::string, QuantizedSite> sites_;
  std::vector<SiteReport> reports_;
  std::vector<StageReconstruction> reconstructions_;
};


// Quantizes `model` as `recipe` says, calibrating on `calib_images` (normalized, one batch).
// INVALID_ARGUMENT, before any calibration, when a site's config does not suit it
// (CheckConfigSuitsSite: e.g. per_head on a width the heads do not divide, log2 outside
// post-softmax) or the images do not fit the model.
StatusOr<QuantizedModel> QuantizeModel(const ViTModel& model, const Recipe& recipe,
                                       const torch::Tensor& calib_images,
                                       const QuantizeOptions& options = {});

// One site quantized on one batch of its inputs.
struct SiteResult {
  QuantizedSite site;              // what was fitted
  SiteReport report;               // how it fared
  torch::Tensor output;            // the quantized operation's output
  torch::Tensor reference_output;  // the float operation's output on the same input
};

// Fits `config` at the linear site whose input is `x` ([..., in]): the input's activation
// quantizer, then the weight method on the quantized input. With config.reparam at a site where
// it applies, the input is reparameterized first (core/reparam.h) and the method sees the folded
// input and weight. INVALID_ARGUMENT when the config does
// not suit the site; method errors (e.g. FAILED_PRECONDITION from a singular solve) as they come.
// Without options.site_reports, `report` holds only the site and `reference_output` is undefined.
StatusOr<SiteResult> QuantizeLinearSite(const Site& site, const QuantConfig& config,
                                        int64_t num_heads, const torch::Tensor& x,
                                        const torch::Tensor& weight, const torch::Tensor& bias,
                                        const QuantizeOptions& options = {});
// The same for a non-linear site with input `x` (`ln`: a LayerNorm's affine; `accumulator_scale`:
// a softmax input's, may be undefined).
StatusOr<SiteResult> QuantizeNonlinearSite(const Site& site, const QuantConfig& config,
                                           const torch::Tensor& x, const LayerNormParams* ln,
                                           const torch::Tensor& accumulator_scale,
                                           const QuantizeOptions& options = {});
// The same for an attention matmul site with operands `lhs` [B, H, N, K] and `rhs` [B, H, K, M].
// config.reparam at softmax·v quantizes the post-softmax operand on the log√2 grid.
StatusOr<SiteResult> QuantizeMatmulSite(const Site& site, const QuantConfig& config,
                                        int64_t num_heads, const torch::Tensor& lhs,
                                        const torch::Tensor& rhs,
                                        const QuantizeOptions& options = {});

// The value domain of a site's operand, for quantizers that need one.
ValueDomain OperandDomain(const Site& site, int operand);
// `site` of `model` as the plan sees it (costs, heads, input width).
SiteInfo DescribeSite(const ViTModel& model, const Site& site);
// Which elements of a site's operand share an activation quantizer's parameters under `spec`.
GroupLayout ActivationLayout(const ActivationQuant& spec, const Site& site, int64_t num_heads);

}  // namespace qs::core

#endif  // QS_CORE_QUANTIZE_MODEL_H_
