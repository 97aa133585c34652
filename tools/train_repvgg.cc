// Trains the fixture RepVGG on Fashion-MNIST in its multi-branch form (3×3 +
// 1×1 + identity, each with BatchNorm in training mode), then writes
// config.json and model.safetensors in timm's trained layout: qsearch fuses the
// branches when it loads the model (core/repvgg.h). Each epoch reports the
// fused model's test top-1, so fusion is exercised on real weights. Runs on
// CUDA when LibTorch has it, else on the CPU.
//
//   build/tools/qs_train_repvgg --out tests/data/repvgg --epochs 8 --threads 2
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "core/dataset.h"
#include "core/metrics.h"
#include "core/repvgg.h"
#include "core/safetensors.h"
#include "core/vit.h"
#include "tools/training.h"

namespace {

int Fail(const qs::Status& s) {
  std::fprintf(stderr, "qs_train_repvgg: %s\n", s.ToString().c_str());
  return 1;
}

// Test top-1 of the fused model.
qs::StatusOr<double> FusedTop1(const qs::core::ViTConfig& config,
                               const std::map<std::string, torch::Tensor>& tensors,
                               const torch::Tensor& images, const torch::Tensor& labels) {
  std::map<std::string, torch::Tensor> cpu;
  for (const auto& [name, t] : tensors) cpu[name] = t.detach().to(torch::kCPU);
  QS_ASSIGN_OR_RETURN(auto model, qs::core::ViTModel::FromTensors(config, cpu));
  QS_ASSIGN_OR_RETURN(auto logits, model.Logits(images));
  return qs::core::Top1(logits, labels);
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "tests/data/repvgg";
  int epochs = 8, batch = 128, threads = 0;
  double lr = 2e-3, weight_decay = 0.05, label_smoothing = 0.1;
  uint64_t seed = 0;
  int64_t stem = 16;
  std::vector<int64_t> depths = {2, 3, 1}, widths = {32, 64, 128};
  CLI::App app("qs_train_repvgg: trains the fixture RepVGG on Fashion-MNIST");
  app.add_option("--out", out, "output directory")->capture_default_str();
  app.add_option("--epochs", epochs)->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--batch", batch)->check(CLI::Range(1, 65536))->capture_default_str();
  app.add_option("--lr", lr)->check(CLI::Range(1e-8, 10.0))->capture_default_str();
  app.add_option("--threads", threads, "0: LibTorch's default")->capture_default_str();
  app.add_option("--seed", seed)->capture_default_str();
  app.add_option("--stem", stem, "stem width")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--depths", depths, "blocks per stage")->delimiter(',')->capture_default_str();
  app.add_option("--widths", widths, "width per stage")->delimiter(',')->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) at::set_num_threads(threads);
  const torch::Device device = torch::cuda::is_available() ? torch::kCUDA : torch::kCPU;

  nlohmann::json config_json = {{"architecture", "repvgg"}, {"img_size", 28},   {"in_chans", 1},
                                {"num_classes", 10},        {"stem_chs", stem}, {"depths", depths},
                                {"widths", widths},         {"mean", {0.2860}}, {"std", {0.3530}}};
  auto config = qs::core::ParseViTConfig(config_json);
  if (!config.ok()) return Fail(config.status());

  auto train = qs::core::LoadDataset("fashion-mnist:train");
  if (!train.ok()) return Fail(train.status());
  auto test = qs::core::LoadDataset("fashion-mnist:test");
  if (!test.ok()) return Fail(test.status());
  auto train_x = qs::core::NormalizeImages(*train, *config);
  if (!train_x.ok()) return Fail(train_x.status());
  auto test_x = qs::core::NormalizeImages(*test, *config);
  if (!test_x.ok()) return Fail(test_x.status());
  auto train_images = train_x->to(device);
  auto train_labels = train->labels.to(device);

  auto tensors = qs::core::InitRepVggTensors(*config, seed);
  std::vector<torch::Tensor> params;
  std::vector<bool> decay;
  for (auto& [name, t] : tensors) {
    t = t.to(device);
    // Running statistics are buffers, updated by the forward pass, not by the
    // optimizer.
    if (name.find("running_") != std::string::npos) continue;
    t.set_requires_grad(true);
    params.push_back(t);
    decay.push_back(t.dim() >= 2);
  }
  qs::tools::AdamW optimizer(params, decay, weight_decay);

  const int64_t n = train_images.size(0);
  const int64_t steps_per_epoch = n / batch;
  const int64_t total_steps = steps_per_epoch * epochs;
  const int64_t warmup = steps_per_epoch / 2;
  torch::manual_seed(seed + 1);
  int64_t step = 0;
  double top1 = 0;
  auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (int epoch = 0; epoch < epochs; ++epoch) {
    auto perm = torch::randperm(n, torch::TensorOptions().device(device).dtype(torch::kLong));
    double loss_sum = 0;
    for (int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      auto idx = perm.narrow(0, b * batch, batch);
      auto x = qs::tools::AugmentBatch(train_images.index_select(0, idx));
      auto y = train_labels.index_select(0, idx);
      auto logits = qs::core::RepVggTrainForward(*config, tensors, x, /*training=*/true);
      auto loss = at::cross_entropy_loss(logits, y, {}, at::Reduction::Mean, -100, label_smoothing);
      optimizer.ZeroGrad();
      loss.backward();
      optimizer.Step(qs::tools::WarmupCosineLr(lr, step, warmup, total_steps));
      loss_sum += loss.item<double>();
    }
    auto fused = FusedTop1(*config, tensors, *test_x, test->labels);
    if (!fused.ok()) return Fail(fused.status());
    top1 = *fused;
    std::printf("epoch %d/%d  loss %.4f  test top-1 (fused) %.4f  elapsed %.0fs\n", epoch + 1,
                epochs, loss_sum / steps_per_epoch, top1, elapsed());
    std::fflush(stdout);
  }

  if (auto s = qs::MakeDirectories(out); !s.ok()) return Fail(s);
  std::map<std::string, torch::Tensor> cpu;
  for (const auto& [name, t] : tensors) cpu[name] = t.detach().to(torch::kCPU).contiguous();
  auto s = qs::core::WriteSafetensors(out + "/model.safetensors", cpu,
                                      {{"format", "pt"}, {"trained_by", "qs_train_repvgg"}});
  if (s.ok()) {
    s = qs::WriteFileAtomically(out + "/config.json", qs::core::ToJson(*config).dump(2) + "\n");
  }
  const nlohmann::json log = {{"epochs", epochs},
                              {"batch", batch},
                              {"lr", lr},
                              {"seed", seed},
                              {"device", device.str()},
                              {"test_top1", top1},
                              {"train_seconds", elapsed()}};
  if (s.ok()) s = qs::WriteFileAtomically(out + "/training.json", log.dump(2) + "\n");
  if (!s.ok()) return Fail(s);
  std::printf("wrote %s (fused test top-1 %.4f, %.0fs)\n", out.c_str(), top1, elapsed());
  return 0;
}
