// Core benchmark: each cost is reported as a ratio to a reference measured in the same run (the
// machine's GEMM rate, one FP32 evaluation pass of the fixture), and written as JSON.
//
//   build/bench/qs_core_bench [--images 2000] [--calib 256] [--out bench/results/core.json]
//                             [--intra-op N] [--blas N]   (thread counts; default qsearch's)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include "bench/bench_output.h"
#include "core/dataset.h"
#include "core/quantize_model.h"
#include "core/quantizer.h"
#include "core/threads.h"
#include "core/vit.h"

namespace {

// Median wall time of `repeats` runs after one warm-up, in seconds.
double MedianSeconds(int repeats, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int Fail(const qs::Status& s) { return qs::bench::Fail("qs_core_bench", s); }

}  // namespace

int main(int argc, char** argv) {
  int64_t images = 2000, calib_count = 256;
  int repeats = 3;
  int intra_op = 0, blas_threads = 0;  // 0: qsearch's single-stream plan
  std::string out;
  std::string config = "tests/data/fixture/config.json";
  std::string weights = "tests/data/fixture/model.safetensors";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--images") images = std::stoll(v);
    else if (k == "--calib") calib_count = std::stoll(v);
    else if (k == "--repeats") repeats = std::stoi(v);
    else if (k == "--out") out = v;
    else if (k == "--config") config = v;
    else if (k == "--weights") weights = v;
    else if (k == "--intra-op") intra_op = std::stoi(v);
    else if (k == "--blas") blas_threads = std::stoi(v);
    else {
      std::fprintf(stderr, "usage: qs_core_bench [--images N] [--calib N] [--repeats N] "
                           "[--out FILE] [--config C --weights W] [--intra-op N] [--blas N]\n");
      return 2;
    }
  }
  // The kernels and threads qsearch itself runs with (core/threads.h).
  const std::string blas = qs::core::SelectBlasKernels();
  qs::core::ThreadPlan plan =
      qs::core::SingleStreamPlan(qs::core::PlanThreads(0, qs::core::UsableCores(), intra_op));
  if (blas_threads > 0) plan.blas_threads = blas_threads;
  qs::core::ApplyThreadPlan(plan);
  c10::InferenceMode guard;
  nlohmann::json result = {{"threads", at::get_num_threads()},
                           {"blas", qs::core::BlasKernels()},
                           {"blas_threads", qs::core::BlasThreads()}};

  // Reference 1: the machine's float32 GEMM rate.
  const int64_t n = 1024;
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  double gemm_s = MedianSeconds(repeats * 3, [&] { at::mm(a, b); });
  const double gemm_gflops = 2.0 * n * n * n / gemm_s / 1e9;
  result["gemm_1024_gflops"] = gemm_gflops;

  // Weight-grid fitting against the GEMM of the same size.
  auto w = torch::randn({768, 768});
  double gemm768_s = MedianSeconds(repeats * 3, [&] { at::mm(w, w); });
  for (auto cal : {qs::RangeCalibrator::kMinMax, qs::RangeCalibrator::kOmse}) {
    qs::WeightQuant spec;
    spec.bits = 4;
    spec.calibrator = cal;
    double s = MedianSeconds(repeats, [&] { (void)qs::core::QuantizeWeightRtn(w, spec); });
    result[std::string("rtn_768x768_") + qs::ToString(cal) + "_vs_gemm768"] = s / gemm768_s;
  }

  // Reference 2: one FP32 evaluation pass of the fixture.
  auto model = qs::core::ViTModel::Load(config, weights);
  if (!model.ok()) return Fail(model.status());
  auto test = qs::core::LoadDataset("fashion-mnist:test");
  auto train = qs::core::LoadDataset("fashion-mnist:train");
  if (!test.ok()) return Fail(test.status());
  if (!train.ok()) return Fail(train.status());
  auto eval_x = *qs::core::NormalizeImages(qs::core::Head(*test, images), model->config());
  auto calib_x =
      *qs::core::NormalizeImages(qs::core::DrawSubset(*train, calib_count, 0), model->config());
  double fp32_s = MedianSeconds(repeats, [&] { (void)model->Logits(eval_x); });
  result["fp32_eval_seconds"] = fp32_s;
  result["fp32_eval_images"] = images;
  result["fp32_eval_images_per_second"] = images / fp32_s;
  // The honest reference for a calibration pass: a float pass over the same calibration images.
  double fp32_calib_s = MedianSeconds(repeats, [&] { (void)model->Logits(calib_x); });
  result["fp32_calibration_seconds"] = fp32_calib_s;

  for (const char* r : {"w8a8", "w4a4"}) {
    auto recipe = *qs::ParseUniformRecipe(r);
    qs::StatusOr<qs::core::QuantizedModel> q = qs::InternalError("not run");
    double quantize_s = MedianSeconds(repeats, [&] {
      q = qs::core::QuantizeModel(*model, recipe, calib_x);
    });
    if (!q.ok()) return Fail(q.status());
    double eval_s = MedianSeconds(repeats, [&] { (void)q->Logits(eval_x); });
    result[std::string(r) + "_quantize_vs_fp32_eval"] = quantize_s / fp32_s;
    result[std::string(r) + "_quantize_vs_fp32_calibration"] = quantize_s / fp32_calib_s;
    result[std::string(r) + "_fake_quant_eval_vs_fp32_eval"] = eval_s / fp32_s;
  }

  return qs::bench::Emit("qs_core_bench", result, out);
}
