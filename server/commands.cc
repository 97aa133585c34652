#include "server/commands.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/json_fields.h"
#include "common/quant_config.h"
#include "core/dataset.h"
#include "core/image_set.h"
#include "core/metrics.h"
#include "core/quantize_model.h"
#include "core/safetensors.h"
#include "core/threads.h"
#include "core/vit.h"
#include "bench/engine_bench.h"
#include "server/export_command.h"
#include "server/run_command.h"
#include "server/service_commands.h"

namespace qs::server {
namespace {

// CLI11 reads "-1" into an unsigned seed as 2^64-1; its own range check prints 300 digits.
const CLI::Validator kNonNegativeSeed(
    [](std::string& text) -> std::string {
      return text.find('-') == std::string::npos ? "" : "the seed must be 0 or more, got " + text;
    },
    "SEED >= 0");

using nlohmann::json;

constexpr char kVersion[] = "0.1.0";

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// JSON has no infinity: a lossless site reports null.
json Finite(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

int Fail(const Status& s) {
  std::fprintf(stderr, "qsearch: error: %s\n", s.ToString().c_str());
  return 1;
}

struct ModelArgs {
  std::string config;
  std::string weights;
};

void AddModelOptions(CLI::App* cmd, ModelArgs* m) {
  cmd->add_option("--config", m->config, "model config JSON (timm-style keys)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--weights", m->weights, "model weights (safetensors, timm tensor names)")
      ->required()
      ->check(CLI::ExistingFile);
}

struct QuantizeArgs {
  ModelArgs model;
  std::string calib = "fashion-mnist:train";
  std::string eval = "fashion-mnist:test";
  std::string recipe;
  std::string out;
  int64_t calib_count = 256;
  int64_t eval_limit = 0;
  uint64_t seed = 0;
  std::string sampling = "balanced";
  bool quantize_edges = false;
  bool reparam = false;
  std::string nonlinear;   // "" (as the recipe says), float, ibert, fqvit, ivit or mixed
  int nonlinear_bits = 0;  // 0: the recipe's activation bits
  std::string exports;      // formats written into out/export (exports/export.h)
  std::string dump_logits;  // the quantized logits on the evaluation images
  bool json_output = false;
};

StatusOr<Recipe> LoadRecipe(const std::string& arg, const core::ViTModel& model,
                            bool quantize_edges) {
  const bool is_file = arg.size() > 5 && arg.substr(arg.size() - 5) == ".json";
  if (!is_file) {
    return ParseUniformRecipe(arg, quantize_edges, core::EdgeSites(model));
  }
  QS_ASSIGN_OR_RETURN(json j, ReadJsonFile(arg));
  auto recipe = RecipeFromJson(j, model.SiteKinds());
  if (!recipe.ok()) return recipe.status().WithContext(arg);
  return recipe;
}

// Each site's measured errors and bits, as metrics.json lists them.
json PerSiteReports(const core::QuantizedModel& quantized) {
  json per_site = json::array();
  for (const auto& r : quantized.reports()) {
    const QuantConfig& c = quantized.sites().at(r.site).config;
    per_site.push_back({{"site", r.site},
                        {"kind", ToString(r.kind)},
                        {"sqnr_db", Finite(r.sqnr_db)},
                        {"mse", r.mse},
                        {"weight_sqnr_db", Finite(r.weight_sqnr_db)},
                        {"input_sqnr_db", Finite(r.input_sqnr_db)},
                        {"rhs_sqnr_db", Finite(r.rhs_sqnr_db)},
                        {"weight_bits", c.weight.bits},
                        {"activation_bits", c.activation.bits},
                        {"reparam", c.reparam}});
    if (r.kind == SiteKind::kNonlinear) {
      per_site.back()["nonlinear"] = ToJson(c, r.kind)["nonlinear"];
    }
  }
  return per_site;
}

// Mean bits per linear weight parameter, float weights counting 32, as the search counts them.
double MeanWeightBits(const core::ViTModel& model, const core::QuantizedModel& quantized) {
  double weight_bits = 0, weight_params = 0;
  for (const auto& site : model.sites()) {
    if (site.kind != SiteKind::kLinear) continue;
    const int bits = quantized.sites().at(site.name).config.weight.bits;
    const double params = static_cast<double>(model.tensor(site.weight).numel());
    weight_bits += params * (bits > 0 ? bits : 32);
    weight_params += params;
  }
  return weight_bits / weight_params;
}

int RunQuantize(const QuantizeArgs& a) {
  const auto t_start = std::chrono::steady_clock::now();
  // Where the results go is checked before the work, not found unwritable after it.
  if (Status s = CheckWritableDirectory(a.out); !s.ok()) return Fail(s.WithContext("--out"));
  auto model = core::ViTModel::Load(a.model.config, a.model.weights);
  if (!model.ok()) return Fail(model.status());
  auto recipe = LoadRecipe(a.recipe, *model, a.quantize_edges);
  if (!recipe.ok()) return Fail(recipe.status());
  if (a.reparam) {
    // Wherever it applies: the defaults (Resolve drops it elsewhere) and those per-site entries.
    recipe->linear_default.reparam = recipe->matmul_default.reparam = true;
    for (auto& [site, config] : recipe->sites) {
      config.reparam = ReparamApplies(site, model->SiteKinds().at(site));
    }
  }
  if (a.calib_count < 1) return Fail(InvalidArgumentError("--calib-count must be >= 1"));
  std::vector<exports::ExportFormat> export_formats;
  if (!a.exports.empty()) {
    auto f = exports::ParseExportFormats(a.exports);
    if (!f.ok()) return Fail(f.status().WithContext("--export"));
    export_formats = *f;
    if (Status s = exports::CheckExportable(model->config(), export_formats); !s.ok()) {
      return Fail(s.WithContext("--export"));
    }
  }
  int nonlinear_bits = a.nonlinear_bits;
  if (!a.nonlinear.empty() && nonlinear_bits == 0) {
    nonlinear_bits = recipe->linear_default.activation.bits;
    if (nonlinear_bits < 4 && a.nonlinear != "float") {
      return Fail(InvalidArgumentError(
          "--nonlinear " + a.nonlinear + " needs --nonlinear-bits (4..8): the recipe's activation "
          "bits (" + std::to_string(nonlinear_bits) + ") are no integer width for it"));
    }
  }

  const core::ViTConfig& config = model->config();
  auto calib_set = core::OpenAndDraw(a.calib, config, a.calib_count, a.seed, a.sampling);
  if (!calib_set.ok()) return Fail(calib_set.status().WithContext("--calib"));
  auto calib = core::Materialize(*calib_set);
  if (!calib.ok()) return Fail(calib.status());
  auto eval = core::OpenAndDraw(a.eval, config, a.eval_limit, a.seed, a.sampling);
  if (!eval.ok()) return Fail(eval.status().WithContext("--eval"));
  auto calib_x = core::NormalizeImages(*calib, config);
  if (!calib_x.ok()) return Fail(calib_x.status());
  if (!a.nonlinear.empty()) {
    // One choice at every non-linear site, replacing what the recipe set; `mixed` chooses per
    // site by SQNR difference on the calibration images.
    for (auto it = recipe->sites.begin(); it != recipe->sites.end();) {
      it = model->SiteKinds().at(it->first) == SiteKind::kNonlinear ? recipe->sites.erase(it)
                                                                    : std::next(it);
    }
    recipe->nonlinear_default = QuantConfig{};
    if (a.nonlinear == "mixed") {
      auto chosen = core::ChooseMixedNonlinear(*model, *calib_x, nonlinear_bits);
      if (!chosen.ok()) return Fail(chosen.status().WithContext("--nonlinear mixed"));
      recipe->sites.insert(chosen->begin(), chosen->end());
    } else {
      auto method = ParseNonlinearMethod(a.nonlinear);
      if (!method.ok()) return Fail(method.status().WithContext("--nonlinear"));
      recipe->nonlinear_default.nonlinear = {*method, nonlinear_bits > 0 ? nonlinear_bits : 8};
    }
  }

  auto t0 = std::chrono::steady_clock::now();
  auto fp_logits = core::StreamLogits(*eval, config,
                                      [&](const torch::Tensor& x) { return model->Logits(x); });
  if (!fp_logits.ok()) return Fail(fp_logits.status());
  const double fp_seconds = Seconds(t0);

  t0 = std::chrono::steady_clock::now();
  core::QuantizeOptions quantize_options;
  // Block reconstruction takes a while per stage: say each one as it ends.
  quantize_options.on_reconstructed = [&](const core::StageReconstruction& r) {
    if (a.json_output) return;
    std::fprintf(stderr,
                 "  %s: %s, %d steps, stage MSE %.4g -> %.4g (%s), %lld of %lld weights rounded "
                 "otherwise than at the start, %.1fs\n",
                 r.stage.c_str(), ToString(r.method), r.iterations, r.loss_before, r.loss_after,
                 r.kept ? "kept" : "no lower: the starting weights kept",
                 static_cast<long long>(r.flipped), static_cast<long long>(r.weights), r.seconds);
  };
  auto quantized = core::QuantizeModel(*model, *recipe, *calib_x, quantize_options);
  if (!quantized.ok()) return Fail(quantized.status());
  const double quantize_seconds = Seconds(t0);

  t0 = std::chrono::steady_clock::now();
  auto q_logits = core::StreamLogits(
      *eval, config, [&](const torch::Tensor& x) { return quantized->Logits(x); });
  if (!q_logits.ok()) return Fail(q_logits.status());
  const double q_eval_seconds = Seconds(t0);

  const torch::Tensor labels = eval->labels();
  const double fp_top1 = core::Top1(*fp_logits, labels);
  const double q_top1 = core::Top1(*q_logits, labels);
  json metrics = {
      {"fp32_top1", fp_top1},
      {"avg_weight_bits", MeanWeightBits(*model, *quantized)},
      {"quant_top1", q_top1},
      {"top1_agreement", core::Top1Agreement(*fp_logits, *q_logits)},
      {"output_kl", core::OutputKl(*fp_logits, *q_logits)},
      {"logits_sqnr_db", Finite(core::SqnrDb(*fp_logits, *q_logits))},
      {"eval", {{"source", eval->description}, {"images", eval->size()}}},
      {"calibration",
       {{"source", a.calib}, {"count", calib->size()}, {"seed", a.seed},
        {"sampling", a.sampling}, {"digest", core::DatasetDigest(*calib)}}},
      {"model_digest", model->Digest()},
      {"recipe", a.recipe},
      {"seconds",
       {{"fp32_eval", fp_seconds}, {"quantize", quantize_seconds}, {"quant_eval", q_eval_seconds},
        {"total", Seconds(t_start)}}},
      {"per_site", PerSiteReports(*quantized)},
  };
  if (!quantized->reconstructions().empty()) {
    json stages = json::array();
    for (const auto& r : quantized->reconstructions()) {
      stages.push_back({{"stage", r.stage},
                        {"method", ToString(r.method)},
                        {"iterations", r.iterations},
                        {"mse_before", r.loss_before},
                        {"mse_after", r.loss_after},
                        {"objective_before", r.objective_before},
                        {"objective_after", r.objective_after},
                        {"kept", r.kept},
                        {"weights", r.weights},
                        {"flipped", r.flipped},
                        {"seconds", r.seconds}});
    }
    metrics["reconstruction"] = stages;
  }

  Status s = WriteFileAtomically(a.out + "/recipe.json",
                                 RecipeToJson(*recipe, model->SiteKinds()).dump(2) + "\n");
  if (s.ok()) s = quantized->WriteWeights(a.out + "/weights.safetensors");
  if (s.ok() && !a.dump_logits.empty()) {
    s = core::WriteSafetensors(a.dump_logits, {{"logits", *q_logits}, {"labels", labels}});
  }
  if (s.ok() && !export_formats.empty()) {
    auto written = WriteExports(*quantized, export_formats, a.out + "/export",
                                {{"model_digest", metrics["model_digest"]},
                                 {"calibration", metrics["calibration"]}});
    if (written.ok()) {
      metrics["exports"] = *written;
    } else {
      s = written.status();
    }
  }
  if (s.ok()) s = WriteFileAtomically(a.out + "/metrics.json", metrics.dump(2) + "\n");
  if (!s.ok()) return Fail(s);

  if (a.json_output) {
    std::printf("%s\n", metrics.dump().c_str());
  } else {
    std::printf("recipe %s on %s (%lld images), calibrated on %lld images of %s (seed %llu)\n",
                a.recipe.c_str(), eval->description.c_str(), static_cast<long long>(eval->size()),
                static_cast<long long>(calib->size()), a.calib.c_str(),
                static_cast<unsigned long long>(a.seed));
    std::printf("  %-10s %8s\n", "model", "top-1");
    std::printf("  %-10s %7.2f%%\n", "fp32", 100 * fp_top1);
    std::printf("  %-10s %7.2f%%   (agreement with fp32 %.2f%%, output KL %.4f)\n", "quantized",
                100 * q_top1, 100 * metrics["top1_agreement"].get<double>(),
                metrics["output_kl"].get<double>());
    std::printf("  wrote %s/{recipe.json,metrics.json,weights.safetensors} in %.1fs\n",
                a.out.c_str(), Seconds(t_start));
  }
  return 0;
}

// How many images of a source a command takes, and how they are drawn.
struct DrawArgs {
  int64_t limit = 0;
  uint64_t seed = 0;
  std::string sampling = "balanced";
};

void AddDrawOptions(CLI::App* cmd, DrawArgs* d) {
  cmd->add_option("--limit", d->limit, "N images drawn by --sampling (0: all, in order)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", d->seed, "seed of the draw")
      ->check(kNonNegativeSeed)
      ->capture_default_str();
  cmd->add_option("--sampling", d->sampling, "balanced (classes equally) or uniform")
      ->capture_default_str()
      ->check(CLI::IsMember({"balanced", "uniform"}));
}

struct EvalArgs {
  ModelArgs model;
  std::string data = "fashion-mnist:test";
  DrawArgs draw;
  std::string dump_logits;
  bool json_output = false;
};

int RunEval(const EvalArgs& a) {
  auto model = core::ViTModel::Load(a.model.config, a.model.weights);
  if (!model.ok()) return Fail(model.status());
  auto eval = core::OpenAndDraw(a.data, model->config(), a.draw.limit, a.draw.seed,
                                a.draw.sampling);
  if (!eval.ok()) return Fail(eval.status().WithContext("--data"));
  auto t0 = std::chrono::steady_clock::now();
  auto logits = core::StreamLogits(*eval, model->config(),
                                   [&](const torch::Tensor& x) { return model->Logits(x); });
  if (!logits.ok()) return Fail(logits.status());
  const double secs = Seconds(t0);
  const double top1 = core::Top1(*logits, eval->labels());
  if (!a.dump_logits.empty()) {
    Status s = core::WriteSafetensors(a.dump_logits, {{"logits", *logits}});
    if (!s.ok()) return Fail(s);
  }
  json out = {{"top1", top1}, {"images", eval->size()}, {"seconds", secs},
              {"model_digest", model->Digest()}};
  if (a.json_output) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("fp32 top-1 %.2f%% on %s (%lld images, %.2fs)\n", 100 * top1,
                eval->description.c_str(), static_cast<long long>(eval->size()), secs);
  }
  return 0;
}

struct ImagesArgs {
  std::string config;
  std::string data;
  DrawArgs draw;
  std::string dump;
};

// The images a source yields for a model (after the evaluation transform, before mean/std), for
// checking the data pipeline; the whole set is held in memory, so limit it.
int RunImages(const ImagesArgs& a) {
  auto config = core::LoadViTConfig(a.config);
  if (!config.ok()) return Fail(config.status());
  auto set = core::OpenAndDraw(a.data, *config, a.draw.limit, a.draw.seed, a.draw.sampling);
  if (!set.ok()) return Fail(set.status().WithContext("--data"));
  auto data = core::Materialize(*set);
  if (!data.ok()) return Fail(data.status());
  Status s = core::WriteSafetensors(a.dump, {{"images", data->images}, {"labels", data->labels}});
  if (!s.ok()) return Fail(s);
  std::printf("%lld images of %s -> %s\n", static_cast<long long>(set->size()),
              set->description.c_str(), a.dump.c_str());
  return 0;
}

int RunInspect(const ModelArgs& a) {
  auto model = core::ViTModel::Load(a.config, a.weights);
  if (!model.ok()) return Fail(model.status());
  const auto& c = model->config();
  std::printf("%s: img %lld, patch %lld, chans %lld, dim %lld, depth %lld, heads %lld, "
              "classes %lld, pool %s\n",
              c.architecture.c_str(), (long long)c.img_size, (long long)c.patch_size,
              (long long)c.in_chans, (long long)c.embed_dim, (long long)c.depth,
              (long long)c.num_heads, (long long)c.num_classes, c.global_pool.c_str());
  std::printf("digest %s\n%zu sites:\n", model->Digest().c_str(), model->sites().size());
  for (const auto& s : model->sites()) {
    std::string shape;
    if (!s.weight.empty()) {
      for (auto d : model->tensor(s.weight).sizes()) {
        shape += (shape.empty() ? "" : "x") + std::to_string(d);
      }
    }
    std::printf("  %-28s %-7s %s\n", s.name.c_str(), ToString(s.kind), shape.c_str());
  }
  return 0;
}

}  // namespace

int RunCli(int argc, char** argv) {
  // Before any BLAS work: OpenBLAS's generic kernels are several times slower (core/threads.h).
  (void)core::SelectBlasKernels();
  CLI::App app{"qsearch: mixed-precision post-training quantization search for vision transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", kVersion);
  int threads = 0;
  app.add_option("--threads", threads,
                 "LibTorch intra-op threads (run and bench: per worker); default 1, BLAS gets the "
                 "cores (docs/performance.md)")
      ->check(CLI::Range(0, 1024));

  QuantizeArgs q;
  auto* quantize = app.add_subcommand(
      "quantize", "quantize a model with a fixed recipe and compare its accuracy with fp32");
  AddModelOptions(quantize, &q.model);
  quantize->add_option("--calib", q.calib, "calibration source")->capture_default_str();
  quantize->add_option("--eval", q.eval, "evaluation source")->capture_default_str();
  quantize
      ->add_option("--recipe", q.recipe,
                   "recipe JSON file, or shorthand w<bits>a<bits>[:method] (e.g. w4a8:rtn)")
      ->required();
  quantize->add_option("--out", q.out, "output directory")->required();
  quantize->add_option("--calib-count", q.calib_count, "calibration images drawn")
      ->capture_default_str();
  quantize
      ->add_option("--eval-limit", q.eval_limit,
                   "evaluate N images drawn by --sampling (0: all)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  quantize->add_option("--seed", q.seed, "seed of the calibration and evaluation draws")
      ->check(kNonNegativeSeed)
      ->capture_default_str();
  quantize
      ->add_option("--sampling", q.sampling,
                   "how --calib-count and --eval-limit draw: balanced (classes equally) or "
                   "uniform")
      ->capture_default_str()
      ->check(CLI::IsMember({"balanced", "uniform"}));
  quantize->add_flag("--quantize-edges", q.quantize_edges,
                     "shorthand recipes: quantize patch embedding and head too (default W8A8)");
  quantize->add_flag("--reparam", q.reparam,
                     "RepQ-ViT reparameterization wherever it applies: post-LayerNorm inputs "
                     "calibrated per channel and folded into per-tensor quantizers, log√2 for "
                     "post-softmax values");
  quantize
      ->add_option("--nonlinear", q.nonlinear,
                   "every Softmax, GELU and LayerNorm by one method: float, ibert, fqvit (GELU "
                   "stays float: FQ-ViT has none), ivit, or mixed (per site the method with the "
                   "least SQNR difference on the calibration images)")
      ->check(CLI::IsMember({"float", "ibert", "fqvit", "ivit", "mixed"}));
  quantize
      ->add_option("--nonlinear-bits", q.nonlinear_bits,
                   "integer width of --nonlinear (4..8; default: the recipe's activation bits)")
      ->check(CLI::Range(4, 8));
  quantize->add_option("--export", q.exports,
                       "also write these formats into OUT/export: onnx-qdq, "
                       "safetensors-fakequant, safetensors-packed (comma-separated)");
  quantize->add_option("--dump-logits", q.dump_logits,
                       "write the quantized logits and labels of the evaluation images to this "
                       "safetensors file");
  quantize->add_flag("--json", q.json_output, "print metrics.json on stdout");

  EvalArgs e;
  auto* eval = app.add_subcommand("eval", "fp32 top-1 of a model on a dataset");
  AddModelOptions(eval, &e.model);
  eval->add_option("--data", e.data, "dataset source")->capture_default_str();
  AddDrawOptions(eval, &e.draw);
  eval->add_option("--dump-logits", e.dump_logits, "write the logits to this safetensors file");
  eval->add_flag("--json", e.json_output, "machine-readable output");

  RunArgs run_args;
  auto* run = app.add_subcommand(
      "run", "search the per-site quantization mix under a budget (embedded, one process)");
  run->add_option("--spec", run_args.spec, "job spec, JSON or YAML (.yaml/.yml) (docs/search.md)")
      ->required()
      ->check(CLI::ExistingFile);
  run->add_option("--out", run_args.out, "output directory")->required();
  run->add_option("--cache", run_args.cache,
                  "evaluation cache directory (default $QS_CACHE_DIR, ~/.cache/qsearch)");
  run->add_option("--workers", run_args.workers,
                  "evaluation workers (0: one per usable core, at most 8)")
      ->capture_default_str()
      ->check(CLI::Range(0, 256));
  run->add_option("--export", run_args.exports,
                  "also write the searched recipe in these formats into OUT/export: onnx-qdq, "
                  "safetensors-fakequant, safetensors-packed (comma-separated)");
  run->add_flag("--json", run_args.json_output, "print metrics.json on stdout");

  bench::BenchArgs bench_args;
  auto* bench = app.add_subcommand(
      "bench", "measure the evaluation engine against references taken in the same run (JSON)");
  bench->add_flag("--quick", bench_args.quick,
                  "skip the DeiT-S and ViT-B runs, shorter references");
  bench->add_flag("--json", bench_args.json_output, "print only the JSON object on stdout");
  bench->add_option("--out", bench_args.out, "also write the JSON to this file");
  bench->add_option("--fixture", bench_args.fixture, "the fixture model's directory")
      ->capture_default_str();

  ImagesArgs im;
  auto* images = app.add_subcommand(
      "images", "write the images a data source yields for a model (transformed, not normalized)");
  images->add_option("--config", im.config, "model config JSON")
      ->required()
      ->check(CLI::ExistingFile);
  images->add_option("--data", im.data, "data source (docs/search.md)")->required();
  AddDrawOptions(images, &im.draw);
  images->add_option("--dump", im.dump, "safetensors file to write (images F32, labels I64)")
      ->required();

  ModelArgs i;
  auto* inspect = app.add_subcommand("inspect", "print a model's config, digest and sites");
  AddModelOptions(inspect, &i);

  auto run_service_command = AddServiceCommands(app, argc, argv);
  auto run_export_command = AddExportCommand(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    return app.exit(err) == 0 ? 0 : 2;
  }
  if (const int code = run_service_command(); code >= 0) return code;
  if (run->parsed()) {
    run_args.threads = threads;
    return RunSearchCommand(run_args);
  }
  if (bench->parsed()) {
    bench_args.threads = threads;
    return bench::RunBenchCommand(bench_args);
  }
  // One stream of work: every core for BLAS, as a search's validation has it, so a replayed
  // recipe computes what the search measured.
  if (threads > 0) {
    core::ApplyThreadPlan(
        core::SingleStreamPlan(core::PlanThreads(1, core::UsableCores(), threads)));
  }
  if (quantize->parsed()) return RunQuantize(q);
  if (const int code = run_export_command(); code >= 0) return code;
  if (eval->parsed()) return RunEval(e);
  if (inspect->parsed()) return RunInspect(i);
  if (images->parsed()) return RunImages(im);
  return 2;
}

}  // namespace qs::server
