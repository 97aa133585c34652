// Trains the fixture ViT on Fashion-MNIST with qsearch's own forward pass (LibTorch autograd),
// AdamW, cosine learning-rate decay and label smoothing, then writes config.json and
// model.safetensors (timm layout). Runs on CUDA when LibTorch has it, else on the CPU.
//
//   build/tools/qs_train_fixture --out tests/data/fixture --epochs 12
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>
#include <torch/types.h>

#include "common/file_util.h"
#include "core/dataset.h"
#include "core/metrics.h"
#include "core/safetensors.h"
#include "core/vit.h"
#include "tools/training.h"

namespace {

using qs::core::ViTConfig;

struct Args {
  std::string out = "tests/data/fixture";
  int epochs = 12;
  int batch = 128;
  double lr = 2e-3;
  double weight_decay = 0.05;
  double label_smoothing = 0.1;
  int threads = 0;
  uint64_t seed = 0;
  int64_t embed_dim = 96;
  int64_t depth = 4;
  int64_t heads = 4;
  double mlp_ratio = 2.0;
  int64_t patch = 7;
};

void Usage() {
  std::fprintf(stderr,
               "usage: qs_train_fixture [--out DIR] [--epochs N] [--batch N] [--lr X] "
               "[--threads N] [--seed N] [--embed-dim N] [--depth N] [--heads N] "
               "[--mlp-ratio X] [--patch N]\n");
}

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--help" || k == "-h") return false;
    if (i + 1 >= argc) return false;
    std::string v = argv[++i];
    if (k == "--out") a->out = v;
    else if (k == "--epochs") a->epochs = std::stoi(v);
    else if (k == "--batch") a->batch = std::stoi(v);
    else if (k == "--lr") a->lr = std::stod(v);
    else if (k == "--threads") a->threads = std::stoi(v);
    else if (k == "--seed") a->seed = std::stoull(v);
    else if (k == "--embed-dim") a->embed_dim = std::stoll(v);
    else if (k == "--depth") a->depth = std::stoll(v);
    else if (k == "--heads") a->heads = std::stoll(v);
    else if (k == "--mlp-ratio") a->mlp_ratio = std::stod(v);
    else if (k == "--patch") a->patch = std::stoll(v);
    else return false;
  }
  return true;
}

int Fail(const qs::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    Usage();
    return 2;
  }
  if (args.threads > 0) at::set_num_threads(args.threads);
  const torch::Device device = torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;

  ViTConfig config;
  config.img_size = 28;
  config.patch_size = args.patch;
  config.in_chans = 1;
  config.embed_dim = args.embed_dim;
  config.depth = args.depth;
  config.num_heads = args.heads;
  config.mlp_ratio = args.mlp_ratio;
  config.num_classes = 10;
  config.global_pool = "token";
  config.qkv_bias = true;
  config.layer_norm_eps = 1e-6;
  config.mean = {0.2860};
  config.std = {0.3530};

  auto train = qs::core::LoadDataset("fashion-mnist:train");
  if (!train.ok()) return Fail(train.status());
  auto test = qs::core::LoadDataset("fashion-mnist:test");
  if (!test.ok()) return Fail(test.status());
  auto train_x = qs::core::NormalizeImages(*train, config);
  if (!train_x.ok()) return Fail(train_x.status());
  auto test_x = qs::core::NormalizeImages(*test, config);
  if (!test_x.ok()) return Fail(test_x.status());
  auto train_images = train_x->to(device);
  auto train_labels = train->labels.to(device);

  auto tensors = qs::core::InitViTTensors(config, args.seed);
  std::vector<std::string> names;
  std::vector<torch::Tensor> params;
  std::vector<bool> decay;
  for (auto& [name, t] : tensors) {
    t = t.to(device).set_requires_grad(true);
    names.push_back(name);
    params.push_back(t);
    decay.push_back(t.dim() >= 2 && name != "pos_embed" && name != "cls_token");
  }
  qs::tools::AdamW optimizer(params, decay, args.weight_decay);
  auto model = qs::core::ViTModel::FromTensors(config, tensors);
  if (!model.ok()) return Fail(model.status());

  const int64_t n = train_images.size(0);
  const int64_t steps_per_epoch = n / args.batch;
  const int64_t total_steps = steps_per_epoch * args.epochs;
  const int64_t warmup = steps_per_epoch / 2;
  torch::manual_seed(args.seed + 1);
  int64_t step = 0;
  double best_top1 = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int epoch = 0; epoch < args.epochs; ++epoch) {
    auto perm = torch::randperm(n, torch::TensorOptions().device(device).dtype(torch::kLong));
    double loss_sum = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      auto idx = perm.narrow(0, b * args.batch, args.batch);
      auto x = train_images.index_select(0, idx);
      x = qs::tools::AugmentBatch(x);
      auto y = train_labels.index_select(0, idx);
      auto logits = model->Forward(x);
      auto loss = at::cross_entropy_loss(logits, y, {}, at::Reduction::Mean, -100,
                                         args.label_smoothing);
      optimizer.ZeroGrad();
      loss.backward();
      optimizer.Step(qs::tools::WarmupCosineLr(args.lr, step, warmup, total_steps));
      loss_sum += loss.item<double>();
    }
    auto logits = model->Logits(*test_x);
    if (!logits.ok()) return Fail(logits.status());
    double top1 = qs::core::Top1(*logits, test->labels);
    double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("epoch %d/%d  loss %.4f  test top-1 %.4f  elapsed %.0fs\n", epoch + 1,
                args.epochs, loss_sum / steps_per_epoch, top1, secs);
    std::fflush(stdout);
    best_top1 = std::max(best_top1, top1);
  }

  auto status = qs::MakeDirectories(args.out);
  if (!status.ok()) return Fail(status);
  std::map<std::string, torch::Tensor> out;
  for (size_t i = 0; i < params.size(); ++i) out[names[i]] = params[i].detach().to(torch::kCPU);
  auto final_model = qs::core::ViTModel::FromTensors(config, out);
  if (!final_model.ok()) return Fail(final_model.status());
  auto logits = final_model->Logits(*test_x);
  if (!logits.ok()) return Fail(logits.status());
  double top1 = qs::core::Top1(*logits, test->labels);
  status = qs::core::WriteSafetensors(args.out + "/model.safetensors", out,
                                      {{"format", "pt"}, {"trained_by", "qs_train_fixture"}});
  if (!status.ok()) return Fail(status);
  status = qs::WriteFileAtomically(args.out + "/config.json",
                                   qs::core::ToJson(config).dump(2) + "\n");
  if (!status.ok()) return Fail(status);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json log = {{"epochs", args.epochs}, {"batch", args.batch}, {"lr", args.lr},
                        {"seed", args.seed},     {"device", device.str()},
                        {"test_top1", top1},     {"train_seconds", secs}};
  status = qs::WriteFileAtomically(args.out + "/training.json", log.dump(2) + "\n");
  if (!status.ok()) return Fail(status);
  std::printf("wrote %s (test top-1 %.4f, %.0fs)\n", args.out.c_str(), top1, secs);
  return 0;
}
