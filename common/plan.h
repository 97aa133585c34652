// Plan: the sites of a model crossed with the job's candidate space, and what each candidate costs.
//
// Pure: the model enters only as a list of SiteInfo (names, kinds, sizes), so the scheduler can
// plan without LibTorch. A candidate's key is a content hash: the same key always means the same
// evaluation result, which makes caching and retries safe.
//
//   QS_ASSIGN_OR_RETURN(Plan plan, MakePlan(spec, sites));
//   std::string key = CandidateKey(model_digest, calib_digest, plan.sites[0].candidates[0]);
#ifndef QS_COMMON_PLAN_H_
#define QS_COMMON_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/quant_config.h"
#include "common/status.h"

namespace qs {

// Bumped whenever evaluation results could change for the same inputs; part of every key.
inline constexpr char kCoreVersion[] = "qsearch-core-3";

// One quantizable site as the plan sees it.
struct SiteInfo {
  std::string name;
  SiteKind kind = SiteKind::kLinear;
  int64_t weight_params = 0;  // linear sites: out × in
  int64_t macs = 0;           // multiply-accumulates per image
  int64_t num_heads = 1;      // heads of the attention around the site (per-head grouping)
  int64_t input_width = 0;    // linear sites: the input's last dimension; 0 where unknown
};

// Whether `config` can be applied at `site`, checked before any work starts: the config itself
// (ValidateQuantConfig), each activation quantizer against its operand's values (log grids on
// post-softmax operands only, twin-uniform on post-softmax or post-GELU ones) and per-head
// grouping against the site's heads and input width. INVALID_ARGUMENT naming the site otherwise.
Status CheckConfigSuitsSite(const QuantConfig& config, const SiteInfo& site);

struct Candidate {
  std::string site;
  SiteKind kind = SiteKind::kLinear;
  QuantConfig config;
};

// Costs of one candidate, in the units every budget is counted in.
struct CandidateCost {
  int64_t weight_bits = 0;  // weight_params × bits (float weights count 32 bits)
  int64_t bops = 0;         // macs × weight (or lhs) bits × activation (or rhs) bits
};

struct SitePlan {
  SiteInfo site;
  std::vector<Candidate> candidates;  // canonical order; never empty
  bool fixed = false;                 // skipped (float) or pinned: one candidate
};

struct Plan {
  std::vector<SitePlan> sites;  // in the model's forward order
  int64_t total_weight_params = 0;
  size_t candidate_count() const;
};

// Crosses every site with the space. Skipped sites (name starts with a `skip` prefix) get one float
// candidate, pinned sites their pinned config. INVALID_ARGUMENT for a pin naming an unknown site or
// an invalid config, or a skip prefix that matches nothing.
StatusOr<Plan> MakePlan(const JobSpec& spec, const std::vector<SiteInfo>& sites);

CandidateCost CostOf(const SiteInfo& site, const QuantConfig& config);

// The budget in the knapsack's unit for `spec` (weight bits or BOPs), from the plan's sizes.
StatusOr<int64_t> BudgetUnits(const JobSpec& spec, const Plan& plan);
// The cost in that same unit.
int64_t CostUnits(BudgetKind kind, const CandidateCost& cost);

// sha256 over the model digest, the calibration digest, the site, the canonical config JSON and
// kCoreVersion.
std::string CandidateKey(const std::string& model_digest, const std::string& calibration_digest,
                         const Candidate& candidate);

}  // namespace qs

#endif  // QS_COMMON_PLAN_H_
