// The search's output documents, built from a SearchResult (pure; the caller writes the files).
//
// recipe.json  the chosen QuantConfig of every site (replayable by `qsearch quantize --recipe`),
//              plus a "search" section: per site its metrics, the runner-up and why it lost.
//              Holds no timings, so the same spec and seed give byte-identical files.
// metrics.json accuracy, achieved budget, evaluation counts, goal flag, timings.
// pareto.json  the whole front: cost → least predicted loss, with validated top-1 where measured.
// report.html  one self-contained page: the per-site sensitivity heatmap (site × candidate), the
//              Pareto plot with the chosen point, and the accuracy table.
#ifndef QS_SCHEDULER_ARTIFACTS_H_
#define QS_SCHEDULER_ARTIFACTS_H_

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/job_spec.h"
#include "scheduler/search.h"

namespace qs::scheduler {

// A short human label of a config, e.g. "gptq w4 per_channel omse · a8".
std::string ConfigLabel(const QuantConfig& config, SiteKind kind);

nlohmann::json RecipeDocument(const SearchResult& r);
// metrics.json. `artifacts_seconds` is the time writing the other artifacts took, `wall_seconds`
// the whole run's.
nlohmann::json MetricsDocument(const JobSpec& spec, const SearchResult& r,
                               double artifacts_seconds, double wall_seconds);
nlohmann::json ParetoDocument(const JobSpec& spec, const SearchResult& r);
std::string ReportHtml(const JobSpec& spec, const SearchResult& r);

// recipe.json, pareto.json and report.html as (file name, text), in the order they are written
// (metrics.json, which says a set is complete, comes last and separately: it holds the timings).
std::vector<std::pair<std::string, std::string>> ArtifactDocuments(const JobSpec& spec,
                                                                   const SearchResult& r);

// The outcome in one line: goal, top-1s, bits, and where the candidates came from.
std::string SummaryLine(const SearchResult& r);

// "87.32%" for 0.8732.
std::string FormatPercent(double fraction);

}  // namespace qs::scheduler

#endif  // QS_SCHEDULER_ARTIFACTS_H_
