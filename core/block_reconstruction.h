// Block reconstruction (weight methods brecq and mgrq), after calibration has fitted every site
// of a stage (a transformer block, the patch embedding, the head; core/across_block.h:
// StageRanges).
//
// BRECQ: every quantized linear weight of the stage whose method is brecq or mgrq rounds by a
// learned AdaRound variable V (Ŵ = s·(clamp(B + h(V) + z, qmin, qmax) − z), h(V) =
// clamp(σ(V)·1.2 − 0.1, 0, 1)), started from the codes of its recon_init method (RTN: B = ⌊W/s⌋
// and h(V) = frac(W/s); GPTQ or ERQ: B and B + 1 around their code), and the stage's uniform
// activation grids (linear inputs, matmul operands) learn their step sizes (LSQ: the scale
// itself, rounding passing gradients straight through). Both are trained with Adam so that the
// quantized stage, fed the quantized model's stage input, reproduces the float model's stage
// output: L_block = Σ (output − target)² per image, averaged over the batch, plus
// λ·Σ (1 − |2h(V) − 1|^β) after the warm-up, β annealed. Rounding ends hard: h = [V ≥ 0].
//
// MGRQ adds L_global, the quantized stage output passed through the rest of the float model to
// the logits and compared with the float logits (KL or MSE), and L_local, every linear output of
// the stage against the float stage's on the float input (per-channel mean and standard
// deviation, or MSE), fused as block_weight·L_block + global_weight·L_global +
// local_weight·L_local, where L_global and L_local are rescaled by L_block / L_x measured before
// the first step (a weight of 1 makes a term as large as the block loss at the start). With both
// extra weights 0 it computes exactly what brecq computes.
//
// Memory: the stage's inputs and targets on the calibration images (and MGRQ's float inputs and
// logits), one batch's activations through the stage (and the float rest, for L_global).
// Deterministic for one recon_seed and thread count.
#ifndef QS_CORE_BLOCK_RECONSTRUCTION_H_
#define QS_CORE_BLOCK_RECONSTRUCTION_H_

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>

#include "common/status.h"
#include "core/quantize_model.h"
#include "core/vit.h"

namespace qs::core {

// Whether some site of segments [first, last] is a quantized linear weight under brecq or mgrq.
bool StageHasReconstruction(const ViTModel& model, std::pair<int64_t, int64_t> stage,
                            const std::map<std::string, QuantizedSite>& sites);

// StageReconstruction (what one stage's reconstruction did) is in core/quantize_model.h.

struct StageReconstructionInputs {
  torch::Tensor input;         // the quantized model's stage input, one row per image
  torch::Tensor target;        // the float model's stage output on the float input
  torch::Tensor float_input;   // the float model's stage input (MGRQ's L_local)
  torch::Tensor float_logits;  // the float model's logits (MGRQ's L_global)
};

// Reconstructs the brecq and mgrq sites of `stage` in `sites` (other sites stay fixed but pass
// gradients; their uniform activation grids are learned too). The spec of the stage's first
// reconstructed site sets the training. MGRQ needs `float_input` when its local weight is
// non-zero and `float_logits` when its global weight is; INVALID_ARGUMENT when missing or when
// the row counts disagree. When the learned sites do not lower the objective, `sites` is left
// as it was.
StatusOr<StageReconstruction> ReconstructStage(const ViTModel& model,
                                               std::pair<int64_t, int64_t> stage,
                                               const StageReconstructionInputs& inputs,
                                               std::map<std::string, QuantizedSite>* sites);

}  // namespace qs::core

#endif  // QS_CORE_BLOCK_RECONSTRUCTION_H_
