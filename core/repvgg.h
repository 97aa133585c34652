// RepVGG (timm's byobnet "repvgg" layout), the CNN family RepAPQ was made for.
// Trained, each block is three branches summed before the ReLU: a 3×3 conv +
// BatchNorm, a 1×1 conv + BatchNorm and, where the block keeps its width and
// resolution, a BatchNorm alone (the identity branch). For inference the
// branches fuse exactly into one 3×3 conv with a bias, `<block>.reparam_conv`,
// which is what ViTModel's "repvgg" family runs and quantizes: one site per
// fused conv, plus the head.
//
//   auto deploy = FuseRepVggBranches(config, train_tensors);   // timm's
//   reparameterize() auto logits = RepVggTrainForward(config, train_tensors,
//   images, /*training=*/false);
#ifndef QS_CORE_REPVGG_H_
#define QS_CORE_REPVGG_H_

#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "core/vit.h"

namespace qs::core {

// One block of the network in order: the stem, then every stage's blocks.
struct RepVggBlockSpec {
  std::string prefix;  // "stem." or "stages.<s>.<b>."
  int64_t in_chs = 0, out_chs = 0;
  int64_t stride = 1;     // 2 for the stem and each stage's first block, as timm's RepVGG
  bool identity = false;  // the BatchNorm-only branch: in_chs == out_chs and stride 1
  int64_t in_side = 0, out_side = 0;  // feature-map side before and after
};
std::vector<RepVggBlockSpec> RepVggBlocks(const ViTConfig& config);

// The side of a feature map after a 3×3 conv with padding 1 and `stride`.
inline int64_t RepVggOutSide(int64_t side, int64_t stride) { return (side - 1) / stride + 1; }

// Tensor names and shapes. Trained form: per block conv_kxk.{conv.weight,
// bn.*}, conv_1x1.{...}, identity.* (BatchNorm weight, bias, running_mean,
// running_var), then head.fc. Deploy form: per block reparam_conv.{weight,
// bias}, then head.fc. timm's num_batches_tracked counters are accepted on load
// and dropped.
std::map<std::string, std::vector<int64_t>> RepVggTrainShapes(const ViTConfig& config);
std::map<std::string, std::vector<int64_t>> RepVggDeployShapes(const ViTConfig& config);
// Whether `tensors` hold the trained (multi-branch) form.
bool IsRepVggTrainForm(const std::map<std::string, torch::Tensor>& tensors);

// The deploy form of trained tensors: every block's branches folded with their
// BatchNorm into one 3×3 conv with a bias (computed in float64, stored as
// float32), the head copied. Changes no output beyond float rounding. Callers
// validate the shapes first (RepVggTrainShapes).
std::map<std::string, torch::Tensor> FuseRepVggBranches(
    const ViTConfig& config, const std::map<std::string, torch::Tensor>& train_tensors);

// Logits of the trained form, branch by branch. With `training`, BatchNorm
// normalizes with the batch's statistics and updates the running ones in place
// (as nn.BatchNorm2d in train mode); without, it uses the running ones. Records
// autograd when the tensors require grad.
torch::Tensor RepVggTrainForward(const ViTConfig& config,
                                 const std::map<std::string, torch::Tensor>& train_tensors,
                                 const torch::Tensor& images, bool training);

// Fresh trained-form weights (Kaiming-normal convs, BatchNorm at identity, a
// small head) from `seed`, for training and tests.
std::map<std::string, torch::Tensor> InitRepVggTensors(const ViTConfig& config, uint64_t seed);

// A conv with a square kernel, stride `stride` and padding kernel/2, as a
// linear layer over im2col patches so that `handler` sees it as a linear site:
// x [B, C, H, W], weight [O, C, k, k] → [B, O, H', W']. The patches' columns
// follow the weight's (C, k, k) order.
torch::Tensor ConvAsLinear(const Site& site, const torch::Tensor& x, const torch::Tensor& weight,
                           const torch::Tensor& bias, int64_t stride, SiteHandler& handler);

}  // namespace qs::core

#endif  // QS_CORE_REPVGG_H_
