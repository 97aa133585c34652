#include "server/export_command.h"

#include <chrono>
#include <cstdio>

#include "common/file_util.h"
#include "common/json_fields.h"
#include "core/dataset.h"
#include "core/image_set.h"
#include "core/vit.h"
#include "server/spec_file.h"

namespace qs::server {
namespace {

using nlohmann::json;

int Fail(const Status& s) {
  std::fprintf(stderr, "qsearch: error: %s\n", s.ToString().c_str());
  return 1;
}

// The digest a search recorded in the recipe ("search"."<key>"), or "".
std::string RecordedDigest(const json& recipe, const char* key) {
  auto search = recipe.find("search");
  if (search == recipe.end() || !search->is_object()) return "";
  auto it = search->find(key);
  return it != search->end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

ExportSource ExportSourceOf(const JobSpec& spec) {
  ExportSource s;
  s.config = spec.model_config;
  s.weights = spec.model_weights;
  s.calib = spec.calibration_source;
  s.calib_count = spec.calibration_count;
  s.seed = spec.seed;
  s.sampling = spec.calibration_sampling;
  return s;
}

StatusOr<json> WriteExports(const core::QuantizedModel& quantized,
                            const std::vector<exports::ExportFormat>& formats,
                            const std::string& out_dir, const json& provenance) {
  json written = json::array();
  for (exports::ExportFormat f : formats) {
    QS_ASSIGN_OR_RETURN(exports::ExportResult r,
                        exports::Export(quantized, f, {out_dir, provenance}));
    json entry = r.summary;
    entry["files"] = r.files;
    written.push_back(entry);
  }
  return written;
}

StatusOr<json> ExportRecipe(const ExportSource& source, const json& recipe_json,
                            const std::vector<exports::ExportFormat>& formats,
                            const std::string& out_dir) {
  QS_RETURN_IF_ERROR(CheckWritableDirectory(out_dir).WithContext("export directory"));
  QS_ASSIGN_OR_RETURN(core::ViTModel model, core::ViTModel::Load(source.config, source.weights));
  QS_RETURN_IF_ERROR(exports::CheckExportable(model.config(), formats));
  QS_ASSIGN_OR_RETURN(Recipe recipe, RecipeFromJson(recipe_json, model.SiteKinds()));
  if (const std::string want = RecordedDigest(recipe_json, "model_digest");
      !want.empty() && want != model.Digest()) {
    return FailedPreconditionError("the recipe was searched on model " + want + ", but " +
                                   source.weights + " is " + model.Digest() +
                                   ": export with the float checkpoint the search quantized");
  }
  if (source.calib_count < 1) return InvalidArgumentError("--calib-count must be >= 1");
  auto set = core::OpenAndDraw(source.calib, model.config(), source.calib_count, source.seed,
                               source.sampling);
  if (!set.ok()) return set.status().WithContext("--calib");
  QS_ASSIGN_OR_RETURN(core::Dataset calib, core::Materialize(*set));
  const std::string digest = core::DatasetDigest(calib);
  if (const std::string want = RecordedDigest(recipe_json, "calibration_digest");
      !want.empty() && want != digest) {
    return FailedPreconditionError(
        "the recipe was fitted on calibration images with digest " + want + ", but " +
        std::to_string(calib.size()) + " images of " + source.calib + " (seed " +
        std::to_string(source.seed) + ", " + source.sampling + ") have digest " + digest +
        ": pass the job's calibration source, count, seed and sampling (or its --spec)");
  }
  QS_ASSIGN_OR_RETURN(torch::Tensor calib_x, core::NormalizeImages(calib, model.config()));
  core::QuantizeOptions options;
  options.site_reports = false;
  QS_ASSIGN_OR_RETURN(core::QuantizedModel quantized,
                      core::QuantizeModel(model, recipe, calib_x, options));
  const json provenance = {{"model_digest", model.Digest()},
                           {"calibration",
                            {{"source", source.calib},
                             {"count", calib.size()},
                             {"seed", source.seed},
                             {"sampling", source.sampling},
                             {"digest", digest}}}};
  QS_ASSIGN_OR_RETURN(json written, WriteExports(quantized, formats, out_dir, provenance));
  return json{{"out", out_dir}, {"exports", written}, {"fitted_on", provenance}};
}

namespace {

struct ExportArgs {
  ExportSource source;
  std::string spec, recipe, formats, out;
  bool json_output = false;
};

// Which source flags were given: --spec fills only the others.
struct GivenFlags {
  bool config, weights, calib, count, seed, sampling;
};

StatusOr<ExportSource> ResolveSource(const ExportArgs& a, const GivenFlags& given) {
  ExportSource source = a.source;
  if (!a.spec.empty()) {
    auto spec = LoadSpecFile(a.spec);
    if (!spec.ok()) return spec.status().WithContext("--spec");
    const ExportSource from = ExportSourceOf(*spec);
    if (!given.config) source.config = from.config;
    if (!given.weights) source.weights = from.weights;
    if (!given.calib) source.calib = from.calib;
    if (!given.count) source.calib_count = from.calib_count;
    if (!given.seed) source.seed = from.seed;
    if (!given.sampling) source.sampling = from.sampling;
  }
  if (source.config.empty() || source.weights.empty()) {
    return InvalidArgumentError("export needs the model: --config and --weights, or --spec");
  }
  return source;
}

void PrintExports(const json& written, const std::string& out, const std::string& calib) {
  for (const auto& e : written["exports"]) {
    std::string files;
    for (const auto& f : e["files"]) files += (files.empty() ? "" : ", ") + f.get<std::string>();
    std::printf("%s: %s/{%s}\n", e["format"].get<std::string>().c_str(), out.c_str(),
                files.c_str());
    if (e.contains("float_nonlinear_sites") && !e["float_nonlinear_sites"].empty()) {
      std::printf("  left in float (no standard ONNX operator): %s\n",
                  e["float_nonlinear_sites"].dump().c_str());
    }
    if (e.contains("float_activation_sites") && !e["float_activation_sites"].empty()) {
      std::printf("  non-uniform grids left in float: %s\n",
                  e["float_activation_sites"].dump().c_str());
    }
  }
  std::printf("refitted on %lld images of %s in %.1fs\n",
              written["fitted_on"]["calibration"]["count"].get<long long>(), calib.c_str(),
              written["seconds"].get<double>());
}

int RunExport(const ExportArgs& a, const GivenFlags& given) {
  auto source = ResolveSource(a, given);
  if (!source.ok()) return Fail(source.status());
  auto formats = exports::ParseExportFormats(a.formats);
  if (!formats.ok()) return Fail(formats.status().WithContext("--format"));
  auto recipe = ReadJsonFile(a.recipe);
  if (!recipe.ok()) return Fail(recipe.status().WithContext("--recipe"));
  const auto start = std::chrono::steady_clock::now();
  auto written = ExportRecipe(*source, *recipe, *formats, a.out);
  if (!written.ok()) return Fail(written.status());
  (*written)["seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (a.json_output) {
    std::printf("%s\n", written->dump().c_str());
  } else {
    PrintExports(*written, a.out, source->calib);
  }
  return 0;
}

}  // namespace

std::function<int()> AddExportCommand(CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  auto* cmd = app.add_subcommand(
      "export",
      "write a recipe's quantized model as ONNX QDQ, fake-quant safetensors with encodings, or "
      "the packed format (docs/export.md)");
  cmd->add_option("--spec", args->spec,
                  "job spec whose model and calibration fields to take (the flags below win)")
      ->check(CLI::ExistingFile);
  auto* config = cmd->add_option("--config", args->source.config, "model config JSON")
                     ->check(CLI::ExistingFile);
  auto* weights = cmd->add_option("--weights", args->source.weights,
                                  "the float weights the recipe was made for")
                      ->check(CLI::ExistingFile);
  cmd->add_option("--recipe", args->recipe, "recipe JSON (quantize's or a search's recipe.json)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--format", args->formats,
                  "onnx-qdq, safetensors-fakequant or safetensors-packed; several comma-separated")
      ->required();
  cmd->add_option("--out", args->out, "output directory")->required();
  auto* calib = cmd->add_option("--calib", args->source.calib,
                                "calibration source the recipe "
                                "was fitted on")
                    ->capture_default_str();
  auto* count =
      cmd->add_option("--calib-count", args->source.calib_count, "calibration images drawn")
          ->capture_default_str();
  auto* seed = cmd->add_option("--seed", args->source.seed, "seed of the calibration draw")
                   ->capture_default_str();
  auto* sampling =
      cmd->add_option("--sampling", args->source.sampling, "balanced (classes equally) or uniform")
          ->capture_default_str()
          ->check(CLI::IsMember({"balanced", "uniform"}));
  cmd->add_flag("--json", args->json_output, "print what was written as JSON");
  return [=]() -> int {
    if (!cmd->parsed()) return -1;
    return RunExport(*args, {config->count() > 0, weights->count() > 0, calib->count() > 0,
                             count->count() > 0, seed->count() > 0, sampling->count() > 0});
  };
}

}  // namespace qs::server
