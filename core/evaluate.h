// The evaluation stage: one float forward pass captures every site's inputs on the calibration
// set, then each candidate is measured on its own site alone (its quantized operation against the
// float one on the same float inputs), which needs nothing but that site's inputs.
//
//   QS_ASSIGN_OR_RETURN(SiteInputs inputs, CaptureSiteInputs(model, calib_images));
//   Evaluation e = EvaluateCandidate(model, *model.FindSite(c.site), c.config, inputs.at(c.site));
#ifndef QS_CORE_EVALUATE_H_
#define QS_CORE_EVALUATE_H_

#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "common/evaluation.h"
#include "common/plan.h"
#include "common/status.h"
#include "core/vit.h"

namespace qs::core {

// Per site: the linear input, or the matmul's two operands, from the float model.
using SiteInputs = std::map<std::string, std::vector<torch::Tensor>>;

// One float forward pass over `images` (normalized), recording every site's inputs.
StatusOr<SiteInputs> CaptureSiteInputs(const ViTModel& model, const torch::Tensor& images);

// The plan's view of the model: site names, kinds, weight sizes and MACs per image.
std::vector<SiteInfo> DescribeSites(const ViTModel& model);

// Measures `config` at `site` on `inputs`. Never fails as a call: a candidate that cannot be
// quantized or produces non-finite output comes back with `error` set. `key` is copied into it.
//
// With `augmented_gram` (AugmentedGram of a linear site's input) a weight-only candidate (float
// activations) is measured from the Gram matrix: the weight method takes its Hessian or moments
// from it, and SQNR, MSE, cosine and the noise ratio are quadratic forms tr(E G Eᵀ), exact and
// O(out · in²) whatever the number of tokens. Only MAE, not a quadratic form, takes one pass
// over the inputs.
Evaluation EvaluateCandidate(const ViTModel& model, const Site& site, const QuantConfig& config,
                             const std::vector<torch::Tensor>& inputs, const std::string& key,
                             const torch::Tensor& augmented_gram = torch::Tensor());

}  // namespace qs::core

#endif  // QS_CORE_EVALUATE_H_
