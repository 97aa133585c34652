#include "scheduler/artifacts.h"

#include <cstdio>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace qs::scheduler {
namespace {

using nlohmann::json;

json Finite(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json EvalSummary(const Evaluation& e) {
  json j{{"key", e.key},
         {"sqnr_db", Finite(e.sqnr_db)},
         {"mse", e.mse},
         {"mae", e.mae ? json(*e.mae) : json(nullptr)},
         {"cosine", e.cosine},
         {"noise_ratio", e.noise_ratio},
         {"weight_sqnr_db", Finite(e.weight_sqnr_db)}};
  // Non-linear sites: the input's SQNR and the difference the mixed choice ranks by.
  if (e.input_sqnr_db) {
    j["input_sqnr_db"] = Finite(*e.input_sqnr_db);
    j["sqnr_difference_db"] = Finite(*e.input_sqnr_db - e.sqnr_db);
  }
  return j;
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Fixed(double v, int digits) {
  std::ostringstream s;
  s.precision(digits);
  s << std::fixed << v;
  return s.str();
}

// Blue (high SQNR, harmless) to red (low SQNR, sensitive), over 0..40 dB.
std::string HeatColor(double sqnr_db) {
  if (!std::isfinite(sqnr_db)) return "#2c7bb6";
  double t = std::clamp(sqnr_db / 40.0, 0.0, 1.0);
  int r = static_cast<int>(215 * (1 - t) + 44 * t), g = static_cast<int>(48 * (1 - t) + 123 * t),
      b = static_cast<int>(39 * (1 - t) + 182 * t);
  char buf[8];
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", r, g, b);
  return buf;
}

}  // namespace

std::string ConfigLabel(const QuantConfig& c, SiteKind kind) {
  std::ostringstream s;
  auto act = [](const ActivationQuant& a) {
    if (!a.quantized()) return std::string("f32");
    std::string q = a.quantizer == ActivationQuantizer::kUniform ? "" : std::string(" ") +
                                                                        ToString(a.quantizer);
    return "a" + std::to_string(a.bits) + q;
  };
  if (kind == SiteKind::kNonlinear) {
    if (!c.nonlinear.quantized()) return "float";
    s << ToString(c.nonlinear.method) << " " << c.nonlinear.bits << "-bit";
    return s.str();
  }
  if (kind == SiteKind::kLinear) {
    if (c.weight.quantized()) {
      s << ToString(c.weight.method) << " w" << c.weight.bits << " " << ToString(c.weight.granularity);
      if (c.weight.granularity == Granularity::kPerGroup) s << c.weight.group_size;
      s << " " << ToString(c.weight.calibrator);
    } else {
      s << "w f32";
    }
    s << " · " << act(c.activation);
  } else {
    s << act(c.activation) << " × " << act(c.activation_rhs);
  }
  if (c.reparam) s << " · reparam";
  return s.str();
}

json RecipeDocument(const SearchResult& r) {
  std::map<std::string, SiteKind> kinds;
  for (const auto& s : r.plan.sites) kinds[s.site.name] = s.site.kind;
  json doc = RecipeToJson(r.recipe, kinds);
  json sites = json::object();
  for (const auto& c : r.choices) {
    json entry = {{"chosen", ConfigLabel(c.chosen.config, c.chosen.kind)},
                  {"metrics", EvalSummary(c.chosen_eval)},
                  {"cost_units", c.cost_units},
                  {"why", c.why}};
    if (c.has_runner_up) {
      entry["runner_up"] = {{"config", ToJson(c.runner_up.config, c.runner_up.kind)},
                            {"label", ConfigLabel(c.runner_up.config, c.runner_up.kind)},
                            {"metrics", EvalSummary(c.runner_up_eval)}};
    }
    sites[c.chosen.site] = entry;
  }
  doc["search"] = {{"sites", sites},
                   {"model_digest", r.facts.model_digest},
                   {"calibration_digest", r.facts.calibration_digest}};
  return doc;
}

json MetricsDocument(const JobSpec& spec, const SearchResult& r, double artifacts_seconds,
                     double wall_seconds) {
  const double calib_pass = r.facts.fp32_calibration_seconds;
  const double both_passes = calib_pass + r.facts.fp32_eval_seconds;
  const size_t validations = std::count_if(r.pareto.begin(), r.pareto.end(),
                                           [](const ParetoPoint& p) { return p.validated; });
  auto ratio = [](double a, double b) { return b > 0 ? json(a / b) : json(nullptr); };
  json doc{
      {"fp32_top1", r.facts.fp32_top1},
      {"quant_top1", r.validation.top1},
      {"top1_agreement", r.validation.top1_agreement},
      {"output_kl", r.validation.output_kl},
      // The validation top-1 above chose the recipe; the test set's (disjoint) did not.
      {"test_top1", r.test.measured ? json(r.test.top1) : json(nullptr)},
      {"fp32_test_top1", r.test.measured ? json(r.test.fp32_top1) : json(nullptr)},
      {"test_images", r.test.images},
      {"test_source", r.test.measured ? json(r.test.source) : json(nullptr)},
      {"avg_weight_bits", r.avg_weight_bits},
      {"model_weight_bytes", r.model_weight_bytes},
      {"bops", r.bops},
      {"budget", {{ToString(spec.budget_kind), spec.budget}, {"units", r.budget_units}}},
      {"goal_met", r.goal_met},
      {"goal_note", r.goal_note},
      {"selection_exact", r.selection_exact},
      {"selection_note", r.selection_note},
      {"evaluations", r.evaluated_now},
      {"evaluations_from_cache", r.from_cache},
      {"evaluations_failed", r.failed},
      {"candidates", r.plan.candidate_count()},
      {"validation_images", r.facts.validation_images},
      {"calibration_images", r.facts.calibration_images},
      {"validations", validations},
      {"device", r.facts.device},
      {"seconds",
       {{"prepare", r.seconds.prepare},
        {"evaluate", r.seconds.evaluate},
        {"select", r.seconds.select},
        {"validate", r.seconds.validate},
        {"test", r.seconds.test},
        {"artifacts", artifacts_seconds},
        {"wall", wall_seconds},
        {"fp32_calibration_pass", calib_pass},
        {"fp32_validation_pass", r.facts.fp32_eval_seconds}}},
      // Costs in the references above: evaluation in float passes over the calibration set (per
      // newly evaluated candidate, too), each validation in float passes over calibration plus
      // validation images.
      {"relative",
       {{"evaluate_in_fp32_calibration_passes", ratio(r.seconds.evaluate, calib_pass)},
        {"evaluate_per_candidate_in_fp32_calibration_passes",
         r.evaluated_now > 0 ? ratio(r.seconds.evaluate / r.evaluated_now, calib_pass)
                             : json(nullptr)},
        {"validate_per_validation_in_fp32_passes",
         validations > 0 ? ratio(r.seconds.validate / validations, both_passes) : json(nullptr)}}},
  };
  if (spec.space.reconstruction) {
    // The tier's cost for the returned mix (each validated point paid its own).
    doc["reconstruction"] = {{"method", ToString(spec.space.reconstruction->method)},
                             {"seconds", r.validation.reconstruction_seconds}};
  }
  return doc;
}

json ParetoDocument(const JobSpec& spec, const SearchResult& r) {
  json points = json::array();
  for (size_t i = 0; i < r.pareto.size(); ++i) {
    const auto& p = r.pareto[i];
    json point = {{"cost_units", p.cost_units},
                  {"avg_weight_bits", p.avg_weight_bits},
                  {"predicted_loss", p.predicted_loss},
                  {"chosen", i == r.chosen_point}};
    if (p.validated) point["top1"] = p.top1;
    points.push_back(point);
  }
  return json{{"budget_kind", ToString(spec.budget_kind)},
              {"budget_units", r.budget_units},
              {"metric", ToString(spec.metric)},
              {"points", points}};
}

namespace {

// The report's accuracy table, and the test set's line (or that there was none).
void AccuracyHtml(const SearchResult& r, std::ostream& h) {
  h << "<h2>Accuracy</h2>\n<table id=\"accuracy\"><tr><th>model</th><th>top-1</th>"
       "<th>agreement</th><th>output KL</th><th>avg weight bits</th></tr>\n";
  h << "<tr><td class=\"site\">fp32</td><td>" << Fixed(100 * r.facts.fp32_top1, 2)
    << "%</td><td></td><td></td><td>32</td></tr>\n";
  h << "<tr><td class=\"site\">searched</td><td>" << Fixed(100 * r.validation.top1, 2)
    << "%</td><td>" << Fixed(100 * r.validation.top1_agreement, 2) << "%</td><td>"
    << Fixed(r.validation.output_kl, 4) << "</td><td>" << Fixed(r.avg_weight_bits, 3)
    << "</td></tr></table>\n";
  // The validation images chose the recipe; the test images, when there are any, did not.
  if (r.test.measured) {
    h << "<p id=\"test\">Test set (" << r.test.images << " images of " << Escape(r.test.source)
      << ", not used to choose): fp32 " << Fixed(100 * r.test.fp32_top1, 2) << "%, searched "
      << Fixed(100 * r.test.top1, 2) << "%.</p>\n";
  } else {
    h << "<p id=\"test\">No test set: the searched top-1 above was measured on the validation "
         "images that chose it.</p>\n";
  }
}

// Heatmap: rows are sites, columns the site's candidates in plan order; colour is SQNR.
void HeatmapHtml(const SearchResult& r, std::ostream& h) {
  h << "<h2>Per-site sensitivity (site-output SQNR, dB)</h2>\n<table id=\"heatmap\">\n";
  size_t widest = 1;
  for (const auto& sp : r.plan.sites) widest = std::max(widest, sp.candidates.size());
  for (size_t i = 0; i < r.plan.sites.size(); ++i) {
    const SitePlan& sp = r.plan.sites[i];
    h << "<tr><td class=\"site\">" << Escape(sp.site.name) << "</td>";
    for (const auto& c : sp.candidates) {
      const std::string key = CandidateKey(r.facts.model_digest, r.facts.calibration_digest, c);
      auto it = r.evaluations.find(key);
      const bool chosen = ToJson(c.config, c.kind) == ToJson(r.choices[i].chosen.config, c.kind);
      std::string title = ConfigLabel(c.config, c.kind);
      std::string color = "#999";
      if (it != r.evaluations.end() && it->second.ok()) {
        color = HeatColor(it->second.sqnr_db);
        title += ": " + (std::isfinite(it->second.sqnr_db) ? Fixed(it->second.sqnr_db, 1) + " dB"
                                                           : std::string("lossless"));
        if (it->second.input_sqnr_db && std::isfinite(it->second.sqnr_db)) {
          title += ", SQNR difference " +
                   Fixed(*it->second.input_sqnr_db - it->second.sqnr_db, 1) + " dB";
        }
      } else if (it != r.evaluations.end()) {
        title += ": failed: " + it->second.error;
      }
      h << "<td class=\"cell" << (chosen ? " chosen" : "") << "\" style=\"background:" << color
        << "\" title=\"" << Escape(title) << "\"></td>";
    }
    // Sites with fewer candidates pad their row, so the chosen-config labels line up.
    h << "<td class=\"site\" colspan=\"" << (widest - sp.candidates.size() + 1) << "\">"
      << Escape(ConfigLabel(r.choices[i].chosen.config, r.choices[i].chosen.kind))
      << "</td></tr>\n";
  }
  h << "</table>\n<p>Outlined: the chosen candidate. Hover a cell for its config and SQNR.</p>\n";
}

}  // namespace

std::string ReportHtml(const JobSpec& spec, const SearchResult& r) {
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<title>qsearch report</title><style>"
       "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right;"
       "white-space:nowrap}"
       "th{background:#f3f3f3}td.site{text-align:left;font-family:monospace}"
       ".cell{width:18px;height:16px;padding:0;border:1px solid #fff}"
       ".chosen{outline:2px solid #000;outline-offset:-2px}</style></head><body>\n";
  h << "<h1>qsearch report</h1>\n";
  h << "<p id=\"goal\">" << (r.goal_met ? "Goal met." : "Goal missed: " + Escape(r.goal_note))
    << "</p>\n";
  AccuracyHtml(r, h);
  h << "<p>Budget: " << ToString(spec.budget_kind) << " " << spec.budget << "; "
    << r.plan.candidate_count() << " candidates (" << r.evaluated_now << " evaluated now, "
    << r.from_cache << " from the cache, " << r.failed << " failed).</p>\n";

  // Pareto plot: predicted loss (log scale) against average weight bits.
  h << "<h2>Pareto front</h2>\n";
  const double w = 640, ht = 320, pad = 48;
  double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
  for (const auto& p : r.pareto) {
    const double y = std::log10(std::max(p.predicted_loss, 1e-12));
    xmin = std::min(xmin, p.avg_weight_bits);
    xmax = std::max(xmax, p.avg_weight_bits);
    ymin = std::min(ymin, y);
    ymax = std::max(ymax, y);
  }
  if (xmax <= xmin) xmax = xmin + 1;
  if (ymax <= ymin) ymax = ymin + 1;
  auto px = [&](double x) { return pad + (x - xmin) / (xmax - xmin) * (w - 2 * pad); };
  auto py = [&](double l) {
    return ht - pad - (std::log10(std::max(l, 1e-12)) - ymin) / (ymax - ymin) * (ht - 2 * pad);
  };
  h << "<svg id=\"pareto\" width=\"" << w << "\" height=\"" << ht
    << "\" xmlns=\"http://www.w3.org/2000/svg\">"
    << "<rect width=\"100%\" height=\"100%\" fill=\"#fff\" stroke=\"#ccc\"/>";
  h << "<polyline fill=\"none\" stroke=\"#2c7bb6\" stroke-width=\"1.5\" points=\"";
  for (const auto& p : r.pareto) h << Fixed(px(p.avg_weight_bits), 1) << "," << Fixed(py(p.predicted_loss), 1) << " ";
  h << "\"/>";
  for (size_t i = 0; i < r.pareto.size(); ++i) {
    const auto& p = r.pareto[i];
    const bool chosen = i == r.chosen_point;
    h << "<circle cx=\"" << Fixed(px(p.avg_weight_bits), 1) << "\" cy=\""
      << Fixed(py(p.predicted_loss), 1) << "\" r=\"" << (chosen ? 6 : 2.5) << "\" fill=\""
      << (chosen ? "#d7191c" : "#2c7bb6") << "\"" << (chosen ? " class=\"chosen-point\"" : "")
      << "><title>" << Fixed(p.avg_weight_bits, 3) << " bits, loss " << p.predicted_loss
      << (p.validated ? ", top-1 " + Fixed(100 * p.top1, 2) + "%" : "") << "</title></circle>";
  }
  h << "<text x=\"" << w / 2 << "\" y=\"" << ht - 10
    << "\" text-anchor=\"middle\" font-size=\"12\">average weight bits</text>"
    << "<text x=\"12\" y=\"" << ht / 2 << "\" font-size=\"12\" transform=\"rotate(-90 12 "
    << ht / 2 << ")\" text-anchor=\"middle\">predicted loss (log)</text>"
    << "<text x=\"" << pad << "\" y=\"" << ht - pad + 16 << "\" font-size=\"11\">"
    << Fixed(xmin, 2) << "</text><text x=\"" << w - pad << "\" y=\"" << ht - pad + 16
    << "\" font-size=\"11\" text-anchor=\"end\">" << Fixed(xmax, 2) << "</text></svg>\n";

  HeatmapHtml(r, h);
  h << "</body></html>\n";
  return h.str();
}

std::vector<std::pair<std::string, std::string>> ArtifactDocuments(const JobSpec& spec,
                                                                   const SearchResult& r) {
  return {{"recipe.json", RecipeDocument(r).dump(2) + "\n"},
          {"pareto.json", ParetoDocument(spec, r).dump(2) + "\n"},
          {"report.html", ReportHtml(spec, r)}};
}

std::string FormatPercent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f%%", 100 * fraction);
  return buf;
}

std::string SummaryLine(const SearchResult& r) {
  char bits[32];
  std::snprintf(bits, sizeof(bits), "%.3f", r.avg_weight_bits);
  return std::string(r.goal_met ? "goal met" : "GOAL MISSED") + ": fp32 top-1 " +
         FormatPercent(r.facts.fp32_top1) + ", searched top-1 " + FormatPercent(r.validation.top1) +
         " at " + bits + " average weight bits; " + std::to_string(r.plan.candidate_count()) +
         " candidates, " + std::to_string(r.evaluated_now) + " evaluated now, " +
         std::to_string(r.from_cache) + " from the cache, " + std::to_string(r.failed) + " failed";
}

}  // namespace qs::scheduler
