#include "bench/engine_bench.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/json_fields.h"
#include "common/plan.h"
#include "common/tasks.h"
#include "core/image_io.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "core/vit.h"
#include "scheduler/search.h"
#include "storage/document_store.h"
#include "storage/task_queue.h"
#include "worker/model_session.h"
#include "worker/task_server.h"

namespace qs::bench {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

json OrNull(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// The best float32 GEMM rate over square sizes, in GFLOP/s (the reference for gemm_fraction).
double GemmPeakGflops(const torch::Device& device, bool quick) {
  c10::InferenceMode guard;
  double best = 0;
  for (int64_t n : {512, 1024, 2048}) {
    if (quick && n > 1024) break;
    auto a = torch::randn({n, n}, torch::TensorOptions().device(device));
    auto b = torch::randn({n, n}, torch::TensorOptions().device(device));
    (void)at::mm(a, b).sum().item<float>();  // warm-up
    for (int r = 0; r < (quick ? 3 : 6); ++r) {
      const auto start = Clock::now();
      auto c = at::mm(a, b);
      (void)c[0][0].item<float>();  // waits for the device
      best = std::max(best, 2.0 * n * n * n / Since(start) / 1e9);
    }
  }
  return best;
}

// A temporary directory removed when this goes out of scope.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "qsearch-bench-XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes a random-weight ViT (timm layout) for `config` under `dir`; returns the spec's model
// paths.
Status WriteRandomModel(const core::ViTConfig& config, uint64_t seed, const std::string& dir,
                        JobSpec* spec) {
  spec->model_config = dir + "/config.json";
  spec->model_weights = dir + "/model.safetensors";
  QS_RETURN_IF_ERROR(WriteFileAtomically(spec->model_config, core::ToJson(config).dump(2)));
  return core::WriteSafetensors(spec->model_weights, core::InitViTTensors(config, seed), {});
}

// Random images in [0, 1] and labels, as a safetensors dataset.
Status WriteRandomImages(const std::string& path, int64_t count, const core::ViTConfig& c,
                         uint64_t seed) {
  torch::manual_seed(seed);
  return core::WriteSafetensors(
      path, {{"images", torch::rand({count, c.in_chans, c.img_size, c.img_size})},
             {"labels", torch::randint(0, c.num_classes, {count}, torch::kInt64)}},
      {});
}

struct EvaluationRun {
  int workers = 1;
  double seconds = 0;              // the evaluation stage: every candidate, fresh store
  double fp32_calibration = 0;     // median float pass over the calibration images
  double fp32_validation = 0;      // Open's float pass over the validation images
  size_t candidates = 0;
  size_t failed = 0;
  core::EvaluationCosts costs;
  std::string device;
  double validate_seconds = -1;    // one validation of `validate`, when asked
};

// Evaluates every candidate of `spec` with `workers` threads on a fresh in-memory store, and
// optionally validates `validate` afterwards.
StatusOr<EvaluationRun> RunEvaluation(const JobSpec& spec, int workers, int intra_op_threads,
                                      const Recipe* validate = nullptr) {
  const core::ThreadPlan threads = core::PlanThreads(workers, core::UsableCores(), intra_op_threads);
  core::ApplyThreadPlan(core::SingleStreamPlan(threads));
  QS_ASSIGN_OR_RETURN(std::shared_ptr<worker::ModelSession> session,
                      worker::ModelSession::Open(spec));
  QS_ASSIGN_OR_RETURN(Plan plan, MakePlan(spec, session->sites()));
  auto store = storage::NewInMemoryDocumentStore();
  auto queue = storage::NewInProcessTaskQueue();
  EvaluationRun run;
  run.workers = threads.workers;
  run.device = session->device();
  run.candidates = plan.candidate_count();
  run.fp32_calibration = session->MeasureFp32CalibrationPass(5);
  run.fp32_validation = session->fp32_validation_seconds();
  for (const auto& site : plan.sites) {
    std::vector<std::string> keys;
    std::vector<size_t> all;
    for (size_t j = 0; j < site.candidates.size(); ++j) {
      keys.push_back(
          CandidateKey(session->model_digest(), session->calibration_digest(), site.candidates[j]));
      all.push_back(j);
    }
    const nlohmann::json payload = EvaluateRequest(spec, site, keys, all, /*measure_mae=*/false);
    QS_RETURN_IF_ERROR(queue->Push({"bench", TaskIdFor(payload), payload.dump()}));
  }
  worker::SessionCache sessions;
  sessions.Adopt(SessionDigest(spec), session);
  worker::ServeOptions serve;
  serve.threads = &threads;
  core::ApplyThreadPlan(threads);
  std::atomic<bool> stop{false};
  const auto start = Clock::now();
  std::vector<std::thread> pool;
  for (int w = 0; w < threads.workers; ++w) {
    pool.emplace_back([&] { worker::ServeTasks(sessions, *store, *queue, stop, serve); });
  }
  while (true) {
    QS_ASSIGN_OR_RETURN(auto outcomes, queue->Outcomes("bench"));
    if (outcomes.size() == plan.sites.size()) break;
    queue->WaitForOutcome("bench", std::chrono::milliseconds(100));
  }
  run.seconds = Since(start);
  stop = true;
  queue->Close();
  for (auto& t : pool) t.join();
  for (const auto& site : plan.sites) {
    for (const auto& c : site.candidates) {
      auto stored = store->Get(
          CandidateKey(session->model_digest(), session->calibration_digest(), c));
      if (!stored.ok() || !stored->has_value()) return InternalError("a candidate was not stored");
      auto e = ParseStoredEvaluation(**stored, CandidateKey(session->model_digest(),
                                                            session->calibration_digest(), c));
      if (!e || !e->ok()) ++run.failed;
    }
  }
  run.costs = session->costs();
  core::ApplyThreadPlan(core::SingleStreamPlan(threads));
  if (validate != nullptr) {
    QS_ASSIGN_OR_RETURN(ValidationResult v, session->Validate(*validate));
    run.validate_seconds = v.seconds;
  }
  return run;
}

// Seconds in each weight method the engine evaluates, by its recipe name (Liu and RepAPQ
// included; block reconstruction is no candidate, so never measured here).
json MethodSeconds(const core::EvaluationCosts& costs) {
  json out = json::object();
  for (int m = 0; m < kWeightMethodCount; ++m) {
    const auto method = static_cast<WeightMethod>(m);
    if (!IsReconstructionMethod(method)) out[ToString(method)] = costs.method_seconds[m];
  }
  return out;
}

json Describe(const EvaluationRun& r) {
  return json{{"evaluate_seconds", r.seconds},
              {"workers", r.workers},
              {"candidates", r.candidates},
              {"failed", r.failed},
              {"fp32_calibration_pass_seconds", r.fp32_calibration},
              {"fp32_validation_pass_seconds", r.fp32_validation},
              {"gemm_multiply_adds", r.costs.gemm_multiply_adds},
              // Where the workers' time went (worker-seconds: summed over workers): inside GEMMs,
              // activation quantizers, weight methods, the rest of EvaluateSite, and outside it
              // (capturing segments, the queue, the store, waiting for work).
              {"worker_seconds_in",
               {{"gemms", r.costs.gemm_seconds},
                {"activation_quantizers", r.costs.activation_seconds},
                {"weight_methods", r.costs.weight_seconds},
                {"weight_methods_rtn_gptq_erq",
                 {r.costs.method_seconds[0], r.costs.method_seconds[1], r.costs.method_seconds[2]}},
                {"weight_methods_by_name", MethodSeconds(r.costs)},
                {"other_evaluation", r.costs.total_seconds - r.costs.gemm_seconds -
                                         r.costs.activation_seconds - r.costs.weight_seconds},
                {"outside_evaluation", r.workers * r.seconds - r.costs.total_seconds}}}};
}

// A ViT of the given shape, normalized as Fashion-MNIST (one channel) or ImageNet (three) is.
core::ViTConfig ViTShape(int64_t img, int64_t patch, int64_t channels, int64_t dim, int64_t depth,
                         int64_t heads, double mlp_ratio, int64_t classes) {
  core::ViTConfig c;
  c.img_size = img;
  c.patch_size = patch;
  c.in_chans = channels;
  c.embed_dim = dim;
  c.depth = depth;
  c.num_heads = heads;
  c.mlp_ratio = mlp_ratio;
  c.num_classes = classes;
  c.mean = channels == 1 ? std::vector<double>{0.2860} : std::vector<double>{0.485, 0.456, 0.406};
  c.std = channels == 1 ? std::vector<double>{0.3530} : std::vector<double>{0.229, 0.224, 0.225};
  return c;
}

// ViT-B/16 at 224×224 (timm's vit_base_patch16_224 shape).
core::ViTConfig ViTBase() { return ViTShape(224, 16, 3, 768, 12, 12, 4.0, 1000); }

JobSpec FixtureSpec(const std::string& fixture, bool quick) {
  JobSpec spec;
  spec.model_config = fixture + "/config.json";
  spec.model_weights = fixture + "/model.safetensors";
  spec.calibration_count = 256;
  spec.validation_limit = quick ? 2000 : 0;
  spec.space.weight_methods = {WeightMethod::kRtn, WeightMethod::kGptq, WeightMethod::kErq};
  spec.space.weight_bits = {2, 3, 4, 6, 8};
  spec.space.activation_bits = {8};
  return spec;
}

// Runs `qsearch run` on `spec_path` as a child process; its peak resident memory in GiB and its
// metrics.json.
StatusOr<std::pair<double, json>> RunChildSearch(const std::string& spec_path,
                                                 const std::string& dir) {
  const std::string out = dir + "/out", cache = dir + "/cache", log = dir + "/log.txt";
  const pid_t pid = fork();
  if (pid < 0) return InternalError("fork failed");
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    if (f != nullptr) dup2(fileno(stdout), STDERR_FILENO);
    const char* argv[] = {"qsearch", "run", "--spec", spec_path.c_str(), "--out", out.c_str(),
                          "--cache", cache.c_str(), nullptr};
    execv("/proc/self/exe", const_cast<char* const*>(argv));
    _exit(127);
  }
  int status = 0;
  struct rusage usage {};
  if (wait4(pid, &status, 0, &usage) != pid) return InternalError("wait4 failed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    auto text = ReadFileBytes(log);
    return InternalError("the ViT-B search failed: " + (text.ok() ? *text : std::string("")));
  }
  QS_ASSIGN_OR_RETURN(json metrics, ReadJsonFile(out + "/metrics.json"));
  // ru_maxrss is in KiB on Linux.
  return std::make_pair(static_cast<double>(usage.ru_maxrss) / (1024.0 * 1024.0), metrics);
}

}  // namespace

namespace {

// Prints a progress line on stderr unless only the JSON is wanted.
void Note(const BenchArgs& args, const std::string& line) {
  if (!args.json_output) std::fprintf(stderr, "bench: %s\n", line.c_str());
}

// The fixture search's evaluation (with the default workers, then one and two), a validation of
// w4a8:rtn, and the GEMM peak every GEMM fraction is measured against.
Status BenchFixture(const BenchArgs& args, const core::ThreadPlan& plan, json* result) {
  Note(args, "fixture search evaluation");
  const JobSpec fixture = FixtureSpec(args.fixture, args.quick);
  QS_ASSIGN_OR_RETURN(Recipe w4a8, ParseUniformRecipe("w4a8:rtn"));
  QS_ASSIGN_OR_RETURN(EvaluationRun one, RunEvaluation(fixture, 0, args.threads, &w4a8));
  (*result)["device"] = one.device;
  Note(args, "GEMM peak");
  const double peak = GemmPeakGflops(torch::Device(one.device), args.quick);
  (*result)["gemm_peak_gflops"] = peak;
  (*result)["gemm_fraction_fixture"] = 2 * one.costs.gemm_multiply_adds / one.seconds / 1e9 / peak;
  (*result)["search_fp32_pass_ratio"] = one.seconds / one.fp32_calibration;
  (*result)["validation_fp32_pass_ratio"] =
      one.validate_seconds / (one.fp32_calibration + one.fp32_validation);
  json fixture_json = Describe(one);
  fixture_json["validate_w4a8_rtn_seconds"] = one.validate_seconds;
  (*result)["fixture"] = fixture_json;

  Note(args, "fixture evaluation with one worker and with two");
  QS_ASSIGN_OR_RETURN(EvaluationRun single, RunEvaluation(fixture, 1, args.threads));
  EvaluationRun two = one;
  if (plan.workers != 2) {
    QS_ASSIGN_OR_RETURN(two, RunEvaluation(fixture, 2, args.threads));
  }
  (*result)["embedded_two_worker_speedup"] =
      (single.seconds / single.fp32_calibration) / (two.seconds / two.fp32_calibration);
  (*result)["fixture_one_worker"] = Describe(single);
  return OkStatus();
}

// bench/plain_sweep.py under the BLAS kernels qsearch uses: its JSON, or {"error": why}.
json PlainSweep() {
  const std::string script = "bench/plain_sweep.py", python = "/usr/bin/python3";
  if (!std::filesystem::exists(script) || !std::filesystem::exists(python)) {
    return {{"error", "needs " + script + " (run from the repository root) and " + python}};
  }
  const std::string kernels = core::BlasKernels();
  const std::string command = (kernels.empty() ? "" : "OPENBLAS_CORETYPE=" + kernels + " ") +
                              python + " " + script + " 2>/dev/null";
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {{"error", "cannot start " + python}};
  char buffer[4096];
  while (size_t got = std::fread(buffer, 1, sizeof(buffer), pipe)) output.append(buffer, got);
  const int status = pclose(pipe);
  json plain = json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (status != 0 || !plain.is_object() || !plain.contains("candidate_ratio")) {
    return {{"error", "the script failed (is python3-torch installed?)"}};
  }
  return plain;
}

// The RTN sweep: a 6-block, width-96 ViT at patch 4 (50 tokens), random weights, min-max ranges
// for weights and activations, as a plain script sweeping the same grid would use; the plain
// script itself; and (not --quick) the sweep with qsearch's default OMSE activation ranges.
Status BenchSweep(const BenchArgs& args, const std::string& dir, json* result) {
  Note(args, "RTN sweep");
  JobSpec sweep;
  std::filesystem::create_directories(dir);
  QS_RETURN_IF_ERROR(WriteRandomModel(ViTShape(28, 4, 1, 96, 6, 4, 2.0, 10), 7, dir, &sweep));
  sweep.calibration_count = 256;
  sweep.validation_limit = 1000;
  sweep.space.weight_methods = {WeightMethod::kRtn};
  sweep.space.weight_bits = {2, 3, 4, 6, 8};
  sweep.space.weight_calibrators = {RangeCalibrator::kMinMax};
  sweep.space.activation_bits = {4, 6, 8};
  sweep.space.activation_calibrators = {RangeCalibrator::kMinMax};
  QS_ASSIGN_OR_RETURN(EvaluationRun r, RunEvaluation(sweep, 0, args.threads));
  (*result)["sweep_candidate_ratio"] = r.seconds / r.candidates / r.fp32_calibration;
  (*result)["sweep"] = Describe(r);

  Note(args, "the plain PyTorch sweep (bench/plain_sweep.py)");
  const json plain = PlainSweep();
  (*result)["plain_script_sweep"] = plain;
  (*result)["plain_script_sweep_candidate_ratio"] =
      plain.contains("candidate_ratio") ? plain["candidate_ratio"] : json(nullptr);

  if (args.quick) return OkStatus();
  sweep.space.activation_calibrators = {RangeCalibrator::kOmse};
  QS_ASSIGN_OR_RETURN(EvaluationRun omse, RunEvaluation(sweep, 0, args.threads));
  (*result)["sweep_omse_activations_candidate_ratio"] =
      omse.seconds / omse.candidates / omse.fp32_calibration;
  (*result)["sweep_omse_activations"] = Describe(omse);
  return OkStatus();
}

// Candidate evaluation at ViT-B width: one block of a ViT-B (dim 768, 12 heads, MLP 3072,
// 197 tokens), RTN, GPTQ and ERQ at 4 and 8 bits with 8-bit activations (then RTN alone), over
// 128 calibration images (32 with --quick): `gemm_fraction` and `gemm_fraction_rtn`.
Status BenchVitbBlock(const BenchArgs& args, const std::string& dir, double peak, json* result) {
  Note(args, "ViT-B block evaluation");
  core::ViTConfig c = ViTBase();
  c.depth = 1;
  std::filesystem::create_directories(dir);
  JobSpec spec;
  const int64_t images = args.quick ? 32 : 128;
  QS_RETURN_IF_ERROR(WriteRandomModel(c, 21, dir, &spec));
  QS_RETURN_IF_ERROR(WriteRandomImages(dir + "/calib.safetensors", images, c, 22));
  QS_RETURN_IF_ERROR(WriteRandomImages(dir + "/val.safetensors", 8, c, 23));
  spec.calibration_source = dir + "/calib.safetensors";
  spec.calibration_count = images;
  spec.validation_source = dir + "/val.safetensors";
  spec.space.weight_bits = {4, 8};
  spec.space.activation_bits = {8};
  for (bool rtn_only : {false, true}) {
    spec.space.weight_methods = {WeightMethod::kRtn};
    if (!rtn_only) {
      spec.space.weight_methods = {WeightMethod::kRtn, WeightMethod::kGptq, WeightMethod::kErq};
    }
    QS_ASSIGN_OR_RETURN(EvaluationRun r, RunEvaluation(spec, 0, args.threads));
    const double fraction = 2 * r.costs.gemm_multiply_adds / r.seconds / 1e9 / peak;
    json block = Describe(r);
    block["calibration_images"] = images;
    block["evaluate_in_fp32_calibration_passes"] = r.seconds / r.fp32_calibration;
    block["gemm_fraction"] = fraction;
    (*result)[rtn_only ? "gemm_fraction_rtn" : "gemm_fraction"] = fraction;
    (*result)[rtn_only ? "vitb_block_rtn" : "vitb_block"] = block;
  }
  return OkStatus();
}

// An ImageNet-style folder of generated JPEGs: `classes` class folders of `per_class` images of
// random sizes (smooth colour fields with noise, so the codec has work), as a user would bring.
Status WriteJpegFolder(const std::string& dir, int classes, int per_class, uint64_t seed) {
  torch::manual_seed(seed);
  for (int k = 0; k < classes; ++k) {
    const std::string class_dir = dir + "/class_" + std::to_string(k);
    std::filesystem::create_directories(class_dir);
    for (int i = 0; i < per_class; ++i) {
      const int64_t h = torch::randint(240, 480, {1}).item<int64_t>();
      const int64_t w = torch::randint(240, 480, {1}).item<int64_t>();
      auto field = at::upsample_bilinear2d(torch::rand({1, 3, 6, 6}), {h, w}, false);
      auto pixels = (field * 200 + torch::rand({1, 3, h, w}) * 55)
                        .clamp(0, 255)
                        .to(torch::kUInt8)[0]
                        .permute({1, 2, 0})
                        .contiguous();
      QS_ASSIGN_OR_RETURN(std::string jpeg, core::EncodeJpeg(pixels, 90));
      QS_RETURN_IF_ERROR(WriteFileAtomically(
          class_dir + "/" + std::to_string(i) + ".jpg", jpeg));
    }
  }
  return OkStatus();
}

// A whole `qsearch run` on a random model in the timm layout with image folders of generated
// JPEGs (calibration, validation and test apart), in a child process: its peak resident memory
// and its wall time in float passes over the calibration images.
Status BenchTimmSearch(const BenchArgs& args, const std::string& name, const core::ViTConfig& c,
                       const std::string& dir, json* result) {
  Note(args, name + " search on JPEG folders in a child process (minutes)");
  std::filesystem::create_directories(dir);
  JobSpec spec;
  QS_RETURN_IF_ERROR(WriteRandomModel(c, 11, dir, &spec));
  QS_RETURN_IF_ERROR(WriteJpegFolder(dir + "/calib", 16, 8, 12));
  QS_RETURN_IF_ERROR(WriteJpegFolder(dir + "/val", 16, 4, 13));
  QS_RETURN_IF_ERROR(WriteJpegFolder(dir + "/test", 16, 4, 14));
  const json spec_json = {
      {"model", {{"config", "config.json"}, {"weights", "model.safetensors"}}},
      {"calibration", {{"source", "imagefolder:calib"}, {"count", 128}}},
      {"validation", {{"source", "imagefolder:val"}}},
      {"test", {{"source", "imagefolder:test"}}},
      {"search", {{"weight_methods", {"rtn"}}, {"weight_bits", {4, 8}}, {"activation_bits", {8}}}},
      {"objective", {{"avg_weight_bits", 6.0}}},
      {"accuracy", {{"max_validations", 1}, {"refine", false}}}};
  QS_RETURN_IF_ERROR(WriteFileAtomically(dir + "/spec.json", spec_json.dump(2)));
  QS_ASSIGN_OR_RETURN(auto child, RunChildSearch(dir + "/spec.json", dir));
  const json& seconds = child.second["seconds"];
  const double calib_pass = seconds["fp32_calibration_pass"].get<double>();
  (*result)["peak_rss_" + name + "_gib"] = child.first;
  (*result)[name] = {
      {"model", {{"architecture", c.architecture}, {"embed_dim", c.embed_dim},
                 {"depth", c.depth}, {"num_heads", c.num_heads}, {"img_size", c.img_size}}},
      {"data", "imagefolder of generated JPEGs (240-479 px sides): calibration 128 of 128, "
               "validation 64, test 64"},
      {"wall_in_fp32_calibration_passes", calib_pass > 0 ? json(seconds["wall"].get<double>() /
                                                                 calib_pass)
                                                         : json(nullptr)},
      {"seconds", seconds},
      {"relative", child.second["relative"]},
      {"candidates", child.second["candidates"]},
      {"test_top1", child.second["test_top1"]},
      {"calibration_images", child.second["calibration_images"]}};
  return OkStatus();
}

Status RunBench(const BenchArgs& args, json* result) {
  const core::ThreadPlan plan = core::PlanThreads(0, core::UsableCores(), args.threads);
  core::ApplyThreadPlan(plan);
  *result = {{"quick", args.quick},
             {"threads", core::DescribeThreads(plan)},
             {"peak_rss_vitb_gib", nullptr},
             {"peak_rss_deits_gib", nullptr}};
  QS_RETURN_IF_ERROR(BenchFixture(args, plan, result));
  TempDir dir;
  if (dir.path().empty()) return InternalError("cannot create a temporary directory");
  QS_RETURN_IF_ERROR(BenchSweep(args, dir.path() + "/sweep", result));
  QS_RETURN_IF_ERROR(BenchVitbBlock(args, dir.path() + "/vitb_block",
                                    (*result)["gemm_peak_gflops"].get<double>(), result));
  if (!args.quick) {
    // DeiT-S (timm's deit_small_patch16_224 shape) and ViT-B, as users bring them.
    auto deit_small = ViTShape(224, 16, 3, 384, 12, 6, 4.0, 1000);
    deit_small.architecture = "deit";
    QS_RETURN_IF_ERROR(BenchTimmSearch(args, "deits", deit_small, dir.path() + "/deits", result));
    QS_RETURN_IF_ERROR(BenchTimmSearch(args, "vitb", ViTBase(), dir.path() + "/vitb", result));
  }
  return OkStatus();
}

}  // namespace

int RunBenchCommand(const BenchArgs& args) {
  json result;
  Status s = RunBench(args, &result);
  const std::string text = result.dump(2);
  if (s.ok() && !args.out.empty()) s = WriteFileAtomically(args.out, text + "\n");
  if (!s.ok()) {
    std::fprintf(stderr, "qsearch bench: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("%s\n", text.c_str());
  return 0;
}

}  // namespace qs::bench
