// RepAPQ's across-block calibration (ABC): after calibration has fitted every site of a stage,
// the QPRep affines (γ, β), per-channel weight scales and per-tensor input scales of the stage's
// repapq sites are trained together so that the quantized stage, fed the quantized model's stage
// input, reproduces the float model's stage output under an MAE loss. Rounding passes gradients
// straight through; Adam with cosine decay; mini-batches drawn by a fixed-seed permutation, so a
// run is repeatable. The result is folded back exactly (core/repapq.h).
#ifndef QS_CORE_ACROSS_BLOCK_H_
#define QS_CORE_ACROSS_BLOCK_H_

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "core/quantize_model.h"
#include "core/vit.h"

namespace qs::core {

// The stages ABC supervises, as [first, last] segment ranges covering every segment in order:
// the consecutive blocks of one RepVGG stage ("stages.<s>.") form one; every other segment (the
// stem, the head, each transformer block) is a stage of its own.
std::vector<std::pair<int64_t, int64_t>> StageRanges(const ViTModel& model);

// Segments [first, last] of `model` run on `input` (float where `handler` is null).
torch::Tensor ForwardStage(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                           const torch::Tensor& input, SiteHandler* handler = nullptr);

// Whether any site of segments [first, last] holds a repapq site in `sites`.
bool StageHasRepapq(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                    const std::map<std::string, QuantizedSite>& sites);

struct AcrossBlockReport {
  double loss_before = 0;  // mean |quantized stage output − float stage output|, all images
  double loss_after = 0;
  int iterations = 0;
};

// Trains and refolds the repapq sites of `stage` in `sites` (the others stay as they are).
// `input`: the quantized model's input to the stage; `target`: the float model's output of it
// (one row per calibration image). The spec of the stage's first repapq site sets the iterations,
// batch and learning rate. A stage whose loss does not improve keeps its sites unchanged.
StatusOr<AcrossBlockReport> CalibrateAcrossBlocks(const ViTModel& model,
                                                  std::pair<int64_t, int64_t> stage,
                                                  const torch::Tensor& input,
                                                  const torch::Tensor& target,
                                                  std::map<std::string, QuantizedSite>* sites);

}  // namespace qs::core

#endif  // QS_CORE_ACROSS_BLOCK_H_
